{#- Self-healing, node side, on every minion with a role of the daemon table (salt/top.sls):
    - the node settings file <minion config dir>/airflow_health.json (/etc/salt/airflow_health.json):
      paths, ports, haproxy names and thresholds the airflow_health module reads (no secrets);
    - the airflow_health beacon (_beacons/airflow_health.py) with the checks of this node's roles
      (the daemon table, through salt['airflow_health.daemons']) and the beacon knobs of pillar
      airflow:healing (defaults.yaml). It is applied to the running minion with beacon.present
      (no minion restart) and kept in <minion config dir>/minion.d/airflow-beacons.conf for the
      next minion start. beacon.present needs the beacon loaded in the minion daemon: the
      sync + wait states before it make sure of that on a fresh minion.
    airflow.healing.clean takes both away from a minion without such a role. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow, roles, daemons, conf_dir with context %}
{%- set healing = airflow.healing %}
{%- set checks = daemons(roles)|load_json|map(attribute='name')|list %}
{#- `enabled: True` is left out: Salt drops it from a running beacon's config, so
    beacon.present would report a change at every run. Only a switched-off beacon carries it. #}
{%- set beacon = [] if healing.enabled|to_bool else [{'enabled': False}] %}
{%- do beacon.extend([
      {'interval': healing.interval|int},
      {'disable_during_state_run': True},
      {'checks': checks},
      {'worker_ping_failures': healing.worker_ping_failures|int},
      {'scheduler_check_every': healing.scheduler_check_every|float},
      {'refire': healing.refire|float},
    ]) %}

airflow-healing-settings:
  file.serialize:
    - name: {{ conf_dir }}/airflow_health.json
    - serializer: json
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True
    - dataset:
        home: {{ airflow.home|tojson }}
        venv: {{ airflow.venv|tojson }}
        airflow_cfg: {{ (airflow.home ~ '/airflow.cfg')|tojson }}
        api_server_port: {{ airflow.api_server.port|int }}
        haproxy_socket: {{ airflow.lb.admin_socket|tojson }}
        haproxy_backend: {{ airflow.lb.backend|tojson }}
        heartbeat_stale: {{ airflow.scheduler.heartbeat_stale|float }}
        start_grace: {{ healing.start_grace|float }}
        worker_ping_timeout: {{ healing.worker_ping_timeout|float }}
        postgresql_version: {{ airflow.database.postgresql_version|int }}
        database_port: {{ airflow.database.port|int }}
        database_name: {{ airflow.database.name|tojson }}
        broker_port: {{ airflow.broker.port|int }}
        scheduler_mode: {{ airflow.scheduler.mode|tojson }}

# The beacon module on the minion, and the minion daemon's beacon loader refreshed (a highstate
# syncs before rendering, but without telling the running daemon).
airflow-healing-sync:
  saltutil.sync_beacons:
    - refresh: True

airflow-healing-beacon-loaded:
  loop.until_no_eval:
    - name: beacons.list_available
    - expected: airflow_health
    - compare_operator: contains
    - period: 0.5
    - timeout: 30
    - args: []
    - kwargs:
        return_yaml: False
    - require:
      - saltutil: airflow-healing-sync

# For the next minion start (the daemon reads minion.d at start).
airflow-healing-beacon-config:
  file.serialize:
    - name: {{ conf_dir }}/minion.d/airflow-beacons.conf
    - serializer: yaml
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True
    - dataset:
        beacons:
          airflow_health: {{ beacon|tojson }}

# The running minion, now. Same data and order as the file, so after a restart it is unchanged.
airflow-healing-beacon:
  beacon.present:
    - name: airflow_health
{%- for item in beacon %}
{%-   for key, value in item.items() %}
    - {{ key }}: {{ value|tojson }}
{%-   endfor %}
{%- endfor %}
    - require:
      - loop: airflow-healing-beacon-loaded
      - file: airflow-healing-settings
