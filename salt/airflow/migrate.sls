{#- Metastore migration, once per Airflow version, on ONE node: airflow:migrate:node if set, else the
    active scheduler master (first airflow-master by minion id). Every other node gets a no-op with
    the same ID so daemons can `require: sls: airflow.migrate` everywhere. The orchestration
    (orch.deploy) applies this before any master highstate. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/hosts.jinja' import airflow with context %}
{%- set node = salt['pillar.get']('airflow:migrate:node', airflow.scheduler.active) %}
{%- set marker = airflow.home ~ '/.db-migrated-' ~ airflow.version %}
include:
  - airflow

{%- if grains['id'] == node %}

airflow-db-migrate:
  cmd.run:
    - name: >-
        ({{ airflow.venv }}/bin/airflow db check-migrations -t 0
        || {{ airflow.venv }}/bin/airflow db migrate)
        && touch {{ marker }}
    - runas: {{ airflow.user }}
    - cwd: {{ airflow.home }}
    - env:
      - AIRFLOW_HOME: {{ airflow.home }}
    - creates: {{ marker }}
    - timeout: 900
    - require:
      - cmd: airflow-pip-install
      - file: airflow-config
{%- else %}

airflow-db-migrate:
  test.succeed_without_changes:
    - name: 'metastore migration runs on {{ node or "the first airflow-master" }}, not here'
{%- endif %}
