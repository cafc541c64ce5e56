{#- Airflow master: api-server, dag-processor, triggerer, scheduler (per airflow:scheduler:mode).
    airflow.master.clean takes it away again. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/macros.jinja' import role_marker with context %}
include:
  - airflow
  - airflow.migrate
  - airflow.auth
  - airflow.api_server
  - airflow.dag_processor
  - airflow.triggerer
  - airflow.scheduler

{{ role_marker('airflow-master') }}
