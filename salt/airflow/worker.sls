{%- from 'airflow/map.jinja' import airflow with context %}
{%- from 'airflow/macros.jinja' import daemon with context %}
include:
  - airflow
  - airflow.systemd

{#- Warm shutdown of Celery lets running tasks finish: give it longer than the other daemons. #}
{{ daemon(airflow, 'worker', 'Celery worker',
          'celery worker --concurrency ' ~ airflow.worker.concurrency ~ ' --queues ' ~ airflow.worker.queues|join(','),
          timeout_stop_sec=120) }}
