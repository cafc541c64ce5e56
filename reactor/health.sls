{#- Health events -> runner airflow.remediate (decisions live in _runners/airflow.py).
    Beacon:      tag salt/beacon/<minion>/airflow_health/<daemon>, data {id, daemon, status, ...}
    event.send:  tag airflow/health/<daemon>, data: id (set by the master), data.daemon
    Only the minion id and an allow-listed daemon name are handed on; the runner verifies the
    role from the master's grains cache and re-probes the node. Malformed -> audited "ignored". -#}
{%- set daemons = ['api-server', 'scheduler', 'dag-processor', 'triggerer', 'worker', 'flower',
                   'postgresql', 'rabbitmq', 'haproxy'] %}
{%- set minion = data.get('id') if data is mapping else None %}
{%- set payload = data.get('data') if data is mapping and data.get('data') is mapping else data %}
{%- set daemon = payload.get('daemon') if payload is mapping else None %}
{%- set parts = tag.split('/') %}
{%- set tag_minion = parts[2] if tag.startswith('salt/beacon/') and parts|length > 2 else minion %}
{%- set valid_minion = minion is string and minion|regex_match('^([A-Za-z0-9_.-]{1,128})$') %}
{%- set valid_tag_minion = tag_minion is string and tag_minion|regex_match('^([A-Za-z0-9_.-]{1,128})$') %}
{%- if valid_minion and valid_tag_minion and daemon is string and daemon in daemons %}
airflow-remediate:
  runner.airflow.remediate:
    - args:
      - minion: {{ minion|tojson }}
      - daemon: {{ daemon|tojson }}
      - tag_minion: {{ tag_minion|tojson }}
{%- else %}
airflow-ignore-malformed-health-event:
  runner.airflow.ignored:
    - args:
      - minion: {{ (minion if valid_minion else '?')|tojson }}
      - reason: malformed health event
{%- endif %}
