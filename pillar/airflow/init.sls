# Lab defaults (systemd-nspawn lab, 10.77.0.0/24). Site overrides: airflow_site.sls in a pillar
# root (e.g. /etc/airflow-salt/pillar/), secrets: airflow/secrets/*.sls (see *.sls.example).
{%- set cidr = '10.77.0.0/24' %}
mine_functions:
  airflow_address:
    mine_function: network.ip_addrs
    cidr: {{ cidr }}

airflow:
  network:
    cidr: {{ cidr }}
  scheduler:
    mode: active-standby
    active: master1
    heartbeat_stale: 15
  worker:
    concurrency: 4
    queues:
      - default
  api_server:
    workers: 2
    port: 8080
  dag_processor:
    parsing_processes: 1
  # Scheduled enforcement (salt/airflow/defaults.yaml airflow:enforce): short in the lab, so a
  # hand edit is corrected within about two minutes (the lab tests pause it while they inject
  # faults: salt-run airflow.enforcement pause).
  enforce:
    interval: 120
    splay: 30
  # Self-healing knobs (defaults and meaning: salt/airflow/defaults.yaml airflow:healing).
  healing:
    interval: 3
    worker_ping_failures: 1
    worker_ping_timeout: 2
