{#- Removes the Airflow software from a minion that keeps none of the Airflow-software roles
    (master, worker, flower; salt/top.sls): after their daemons are stopped (their clean SLS), the
    venv, the home directory (airflow.cfg, DAGs, logs, constraints) and the airflow user + group.
    Renders only where this formula installed Airflow (its install marker or airflow.cfg is
    there): an /opt/airflow of someone else is never touched. OS packages (python3-venv) stay. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- set installed = salt['file.file_exists'](airflow.venv ~ '/.airflow-install-spec')
                    or salt['file.file_exists'](airflow.home ~ '/airflow.cfg') %}
include:
  - airflow.master.clean
  - airflow.worker.clean
  - airflow.flower.clean
{%- if installed %}
{%-   for path in [airflow.home, airflow.venv] if path.rstrip('/').count('/') < 2 %}
{{ raise('airflow.software.clean refuses to remove ' ~ path ~ ' (airflow:home/venv too shallow)') }}
{%-   endfor %}
{%-   if not (airflow.venv ~ '/').startswith(airflow.home ~ '/') %}

airflow-software-clean-venv:
  file.absent:
    - name: {{ airflow.venv }}
    - require:
      - sls: airflow.master.clean
      - sls: airflow.worker.clean
      - sls: airflow.flower.clean
    - require_in:
      - file: airflow-software-clean-home
{%-   endif %}

airflow-software-clean-home:
  file.absent:
    - name: {{ airflow.home }}
    - require:
      - sls: airflow.master.clean
      - sls: airflow.worker.clean
      - sls: airflow.flower.clean

airflow-software-clean-user:
  user.absent:
    - name: {{ airflow.user }}
    - require:
      - file: airflow-software-clean-home

airflow-software-clean-group:
  group.absent:
    - name: {{ airflow.group }}
    - require:
      - user: airflow-software-clean-user
{%- else %}

airflow-software-clean-nothing:
  test.nop:
    - name: 'no Airflow software of this formula on this minion: nothing to clean'
{%- endif %}
