{#- Scheduler. active-standby: running+enabled only on airflow:scheduler:active (default: first
    airflow-master by minion id), dead+disabled elsewhere; an ExecCondition guard also refuses to
    start while another host's scheduler heartbeat is fresh. active-active: running on every master. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/hosts.jinja' import airflow with context %}
{%- from tplroot ~ '/macros.jinja' import daemon with context %}
{%- from tplroot ~ '/libtofs.jinja' import files_switch with context %}
{%- set mode = airflow.scheduler.mode %}
{%- set guard = airflow.home ~ '/scheduler-guard.py' %}
{%- set running = mode == 'active-active' or grains['id'] == airflow.scheduler.active %}
include:
  - airflow
  - airflow.systemd
  - airflow.migrate

airflow-scheduler-guard-script:
  file.managed:
    - name: {{ guard }}
    - source: {{ files_switch(['scheduler-guard.py.jinja'], lookup='airflow-scheduler-guard-script') }}
    - template: jinja
    - user: root
    - group: {{ airflow.group }}
    - mode: '0750'
    - context:
        mode: {{ mode }}
        stale_seconds: {{ airflow.scheduler.heartbeat_stale }}
        home: {{ airflow.home }}
    - require:
      - file: airflow-home-dir

{{ daemon(airflow, 'scheduler', 'scheduler (' ~ mode ~ ')', 'scheduler', running=running, migrate=True,
          exec_condition=airflow.venv ~ '/bin/python ' ~ guard,
          watch_extra=[{'file': 'airflow-scheduler-guard-script'}]) }}
