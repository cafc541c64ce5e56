# `airflow`: the common part of every Airflow node (masters, workers, flower), see
# airflow.software. Roles: airflow.master, .worker, .flower, .db, .broker, .lb, .healing; each
# has a .clean SLS, and airflow.clean cleans everything (salt/top.sls).
include:
  - airflow.software
