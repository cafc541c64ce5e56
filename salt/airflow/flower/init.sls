{#- Celery Flower (optional). airflow.flower.clean takes it away again. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/macros.jinja' import daemon, role_marker with context %}
include:
  - airflow
  - airflow.systemd

{{ daemon(airflow, 'flower', 'Celery Flower', 'celery flower --port ' ~ airflow.flower.port) }}

{{ role_marker('airflow-flower') }}
