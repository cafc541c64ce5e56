# airflow.clean: takes every part of this formula away from a minion (e.g. before it leaves the
# cluster): daemons, Airflow software, haproxy/RabbitMQ/PostgreSQL set-up (their data stays
# unless airflow:clean:purge_data: true), the healing beacon. Each part is a no-op where it never
# was. A highstate sets the minion's roles up again.
include:
  - airflow.master.clean
  - airflow.worker.clean
  - airflow.flower.clean
  - airflow.software.clean
  - airflow.lb.clean
  - airflow.broker.clean
  - airflow.db.clean
  - airflow.healing.clean
