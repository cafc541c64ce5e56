{%- from 'airflow/map.jinja' import airflow with context %}
{%- from 'airflow/macros.jinja' import daemon with context %}
include:
  - airflow
  - airflow.systemd
  - airflow.migrate

{{ daemon(airflow, 'dag-processor', 'DAG processor', 'dag-processor', migrate=True) }}
