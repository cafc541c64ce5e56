{#- Health events -> runner airflow.remediate. Nothing is checked here, and nothing in the event
    is trusted: a beacon's events reach the master as the `events` list of event.fire_master,
    whose tags and data (`id` included) the sending minion writes, so any minion can name any
    other. The runner validates the ids against the minion-id rule and the daemon against the
    daemon table (_utils/airflow_daemons.py), takes roles from the master-owned role record and
    decides only on its own views: the daemon re-probed on the node it names, scheduler
    heartbeats from the metastore (db node), api-servers as the load balancer sees them.
    Malformed -> audited "ignored"; a claim the re-probe does not confirm -> audited "ignored".
    Beacon:      tag salt/beacon/<minion>/airflow_health/<daemon>, data {id, daemon, status, ...}
    event.send:  tag airflow/health/<daemon>, data: id (set by the master), data.daemon
    Handed on as JSON values (never into a shell): the id, the tag, and the daemon and status
    the event claims.
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
