{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/macros.jinja' import daemon with context %}
include:
  - airflow
  - airflow.systemd
  - airflow.migrate
  - airflow.auth

{{ daemon(airflow, 'api-server', 'API server (UI, REST API, Task Execution API)',
          'api-server --host 0.0.0.0 --port ' ~ airflow.api_server.port ~ ' --workers ' ~ airflow.api_server.workers,
          migrate=True, watch_extra=[{'file': 'airflow-auth-passwords-file'}]) }}
