# Airflow master: api-server, dag-processor, triggerer, scheduler (per airflow:scheduler:mode).
include:
  - airflow
  - airflow.migrate
  - airflow.auth
  - airflow.api_server
  - airflow.dag_processor
  - airflow.triggerer
  - airflow.scheduler
