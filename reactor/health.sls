{#- Health events -> runner airflow.remediate. Nothing is checked here: the runner validates
    the ids against the minion-id rule and the daemon against the daemon table
    (_utils/airflow_daemons.py), verifies the role from the master's grains cache and re-probes
    the node. Malformed -> audited "ignored".
    Beacon:      tag salt/beacon/<minion>/airflow_health/<daemon>, data {id, daemon, status, ...}
    event.send:  tag airflow/health/<daemon>, data: id (set by the master), data.daemon
    Handed on as JSON values (never into a shell): the master-authenticated id, the tag, and
    the daemon and status the event claims.
    Per-minion rate limit first, in the reactor itself (master module _modules/airflow_gate.py):
    a refused event renders nothing, so a flood starts no runner jobs. A master without the
    module (module_dirs) still heals: the gate is skipped, never a render error. -#}
{%- set event = data if data is mapping else {} %}
{%- set payload = event.get('data') if event.get('data') is mapping else event %}
{%- if 'airflow_gate.admit' not in salt or salt['airflow_gate.admit'](event.get('id')) %}
airflow-remediate:
  runner.airflow.remediate:
    - args:
      - minion: {{ event.get('id')|tojson }}
      - tag: {{ tag|tojson }}
      - daemon: {{ payload.get('daemon')|tojson }}
      - status: {{ payload.get('status')|tojson }}
{%- endif %}
