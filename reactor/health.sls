{#- Health events -> runner airflow.remediate. Nothing is checked here: the runner validates
    the ids against the minion-id rule and the daemon against the daemon table
    (_utils/airflow_daemons.py), verifies the role from the master's grains cache and re-probes
    the node. Malformed -> audited "ignored".
    Beacon:      tag salt/beacon/<minion>/airflow_health/<daemon>, data {id, daemon, status, ...}
    event.send:  tag airflow/health/<daemon>, data: id (set by the master), data.daemon
    Handed on as JSON values (never into a shell): the master-authenticated id, the tag, and
    the daemon and status the event claims. -#}
{%- set event = data if data is mapping else {} %}
{%- set payload = event.get('data') if event.get('data') is mapping else event %}
airflow-remediate:
  runner.airflow.remediate:
    - args:
      - minion: {{ event.get('id')|tojson }}
      - tag: {{ tag|tojson }}
      - daemon: {{ payload.get('daemon')|tojson }}
      - status: {{ payload.get('status')|tojson }}
