"""cluster_smoke: fan-out of 8 short tasks over the Celery workers, then a join.

Each task prints the worker's hostname, so the task logs show how the work was spread.
Trigger it by hand (no schedule).
"""
import socket
import time
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

with DAG(
    dag_id="cluster_smoke",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=5)},
    tags=["smoke"],
) as dag:

    @task
    def fan_out(index: int) -> str:
        time.sleep(1)
        host = socket.gethostname()
        print(f"task {index} ran on {host}")
        return host

    @task
    def join(hosts: list) -> list:
        hosts = sorted(set(hosts))
        print(f"fan-out ran on: {', '.join(hosts)}")
        return hosts

    join(fan_out.expand(index=list(range(8))))
