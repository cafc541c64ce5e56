{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/macros.jinja' import daemon with context %}
include:
  - airflow
  - airflow.systemd
  - airflow.migrate

{{ daemon(airflow, 'triggerer', 'triggerer (deferrable tasks)', 'triggerer', migrate=True) }}
