{#- Self-healing, node side: the airflow_health beacon (_beacons/airflow_health.py).
    Writes /etc/salt/minion.d/airflow-beacons.conf from pillar airflow:healing (defaults below)
    with the checks of this node's roles, and restarts salt-minion ONLY when that file changed,
    2 s after the state run finished (systemd-run timer), so the running state is not killed.
    Pillar (all optional):
      airflow:healing:
        enabled: True
        interval: 3               # seconds between beacon checks
        worker_ping_failures: 2   # consecutive failed Celery pings -> "hung"
        worker_ping_timeout: 2
        heartbeat_stale: 15       # scheduler heartbeat age (s) -> "dead"
        scheduler_check_every: 6  # the metastore query costs a Python start: not every interval
        refire: 30                # re-fire while still unhealthy
        start_grace: 20           # a worker started less than this ago may not answer pings yet
        checks: {<role>: [daemons]}  -#}
{%- set defaults = {
      'enabled': True,
      'interval': 3,
      'worker_ping_failures': 2,
      'worker_ping_timeout': 2,
      'heartbeat_stale': 15,
      'scheduler_check_every': 6,
      'refire': 30,
      'start_grace': 20,
      'checks': {
        'airflow-master': ['api-server', 'scheduler', 'dag-processor', 'triggerer'],
        'airflow-worker': ['worker'],
        'airflow-flower': ['flower'],
        'airflow-db': ['postgresql'],
        'airflow-broker': ['rabbitmq'],
        'airflow-lb': ['haproxy'],
      },
    } %}
{%- set healing = salt['slsutil.merge'](defaults, salt['pillar.get']('airflow:healing', {}), strategy='recurse') %}
{%- set roles = grains.get('roles', []) %}
{%- if roles is string %}{% set roles = [roles] %}{% endif %}
{%- set checks = [] %}
{%- for role in roles %}
{%-   for daemon in healing.checks.get(role, []) %}
{%-     if daemon not in checks %}{% do checks.append(daemon) %}{% endif %}
{%-   endfor %}
{%- endfor %}

airflow-healing-sync:
  saltutil.sync_all:
    - refresh: True

airflow-healing-beacon-config:
  file.serialize:
    - name: /etc/salt/minion.d/airflow-beacons.conf
    - serializer: yaml
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True
    - dataset:
        beacons:
          airflow_health:
            - enabled: {{ healing.enabled|tojson }}
            - interval: {{ healing.interval|int }}
            - disable_during_state_run: True
            - checks: {{ checks|tojson }}
            - worker_ping_failures: {{ healing.worker_ping_failures|int }}
            - worker_ping_timeout: {{ healing.worker_ping_timeout|float }}
            - heartbeat_stale: {{ healing.heartbeat_stale|float }}
            - scheduler_check_every: {{ healing.scheduler_check_every|float }}
            - refire: {{ healing.refire|float }}
            - start_grace: {{ healing.start_grace|float }}
    - require:
      - saltutil: airflow-healing-sync

airflow-healing-minion-restart:
  cmd.run:
    - name: systemd-run --on-active=2 --timer-property=AccuracySec=100ms systemctl restart salt-minion
    - onchanges:
      - file: airflow-healing-beacon-config
