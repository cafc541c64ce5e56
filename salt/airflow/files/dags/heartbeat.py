"""heartbeat: one quick task every minute; tests use it to see that the scheduler keeps scheduling."""
import socket
from datetime import datetime

from airflow.sdk import DAG, task

with DAG(
    dag_id="heartbeat",
    schedule="* * * * *",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    max_active_runs=1,
    tags=["smoke"],
) as dag:

    @task
    def beat() -> str:
        host = socket.gethostname()
        print(f"heartbeat from {host}")
        return host

    beat()
