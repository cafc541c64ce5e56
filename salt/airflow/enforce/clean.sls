{#- A minion without an Airflow role (salt/top.sls): its pillar holds no enforcement job (the
    ext_pillar gives it only to members of the role record); this removes the former copy that
    schedule.present kept in minion.d/_schedule.conf. -#}
airflow-enforce-clean-legacy-schedule:
  schedule.absent:
    - name: airflow-enforce
