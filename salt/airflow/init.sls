# Common part of every Airflow node (masters, workers, flower): user, venv, airflow.cfg, DAGs.
include:
  - airflow.user
  - airflow.install
  - airflow.config
  - airflow.dags
