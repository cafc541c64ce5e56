{#- Takes the scheduled enforcement away from a minion without an Airflow role (salt/top.sls). -#}
airflow-enforce-clean-schedule:
  schedule.absent:
    - name: airflow-enforce
