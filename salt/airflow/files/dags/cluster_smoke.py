"""cluster_smoke: fan-out of 8 short tasks over the Celery workers, then a join.

Each task prints the worker's hostname, so the task logs show how the work was spread.
Trigger it by hand (no schedule). `{"sleep_seconds": N}` in the run's conf makes each task run
longer (the lab's fault-injection tests kill a worker while its tasks run).
"""
import socket
import time
from datetime import datetime, timedelta

from airflow.sdk import DAG, get_current_context, task

with DAG(
    dag_id="cluster_smoke",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=5)},
    params={"sleep_seconds": 1},
    tags=["smoke"],
) as dag:

    @task
    def fan_out(index: int) -> str:
        time.sleep(float(get_current_context()["params"]["sleep_seconds"]))
        host = socket.gethostname()
        print(f"task {index} ran on {host}")
        return host

    @task
    def join(hosts: list) -> list:
        hosts = sorted(set(hosts))
        print(f"fan-out ran on: {', '.join(hosts)}")
        return hosts

    join(fan_out.expand(index=list(range(8))))
