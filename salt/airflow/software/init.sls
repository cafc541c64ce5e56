# The Airflow software of every Airflow node (masters, workers, flower): user, venv, airflow.cfg,
# DAGs. airflow.software.clean removes it from a minion that keeps none of those roles.
include:
  - airflow.user
  - airflow.install
  - airflow.config
  - airflow.dags
