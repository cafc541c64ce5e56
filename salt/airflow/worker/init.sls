{#- Airflow worker (Celery). airflow.worker.clean takes it away again. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/macros.jinja' import daemon, role_marker with context %}
include:
  - airflow
  - airflow.systemd

{#- Warm shutdown of Celery lets running tasks finish: give it longer than the other daemons. Its
    tasks reach the Task Execution API through haproxy over HTTPS and verify it with the CA file
    (the Task SDK client caches it per process): a new CA restarts the worker. #}
{{ daemon(airflow, 'worker', 'Celery worker',
          'celery worker --concurrency ' ~ airflow.worker.concurrency ~ ' --queues ' ~ airflow.worker.queues|join(','),
          timeout_stop_sec=120, watch_extra=[{'file': 'airflow-config-ca-cert'}]) }}

{{ role_marker('airflow-worker') }}
