{%- from 'airflow/map.jinja' import airflow with context %}
{%- from 'airflow/macros.jinja' import daemon with context %}
include:
  - airflow
  - airflow.systemd

{{ daemon(airflow, 'flower', 'Celery Flower', 'celery flower --port ' ~ airflow.flower.port) }}
