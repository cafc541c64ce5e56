{%- from 'airflow/map.jinja' import airflow with context %}
{%- from 'airflow/macros.jinja' import daemon with context %}
include:
  - airflow
  - airflow.systemd
  - airflow.migrate

{{ daemon(airflow, 'triggerer', 'triggerer (deferrable tasks)', 'triggerer', migrate=True) }}
