{#- Full deployment in dependency order:
      sync custom modules + refresh the mine (addresses) -> metastore (db) + broker
      + the Airflow software on every Airflow node (in parallel)
      -> `airflow db migrate` (on the one master airflow.migrate selects) -> masters
      -> workers + flower -> load balancer -> highstate of db/broker-only minions (their
      healing beacon, cleans) -> runner airflow.mark_deployed.
    airflow-sync-all also brings the custom modules AND utils (the daemon table) to every minion
    before any state.sls renders (a highstate syncs by itself, state.sls does not).
    Run: salt-run state.orchestrate orch.deploy
    Every step requires the previous one, so a failed step stops the run and the orchestration
    returns failure. Steps whose role has no minion (e.g. external database) are left out. -#}
{#- Who has which role: the master-owned role record (salt-run airflow.grant), never the
    minions' own grains (a minion claiming a role is not deployed as one). -#}
{%- if 'airflow_roles.members' not in salt %}
{{- raise('orch.deploy: the master-side module airflow_roles is not loaded (module_dirs)') }}
{%- endif %}
{%- set members = salt['airflow_roles.members']() %}
{%- set roles = {} %}
{%- set minions = {} %}
{%- for role in ['airflow-db', 'airflow-broker', 'airflow-master', 'airflow-worker', 'airflow-flower', 'airflow-lb'] %}
{%-   set found = members.get(role) or [] %}
{%-   do roles.update({role: found|length > 0}) %}
{%-   do minions.update({role: found|list}) %}
{%- endfor %}
{#- tgt(role, ...): the record's minions of those roles, a list target -#}
{%- macro tgt() -%}
{%-   set ids = [] %}{% for r in varargs %}{% for m in minions[r] if m not in ids %}{% do ids.append(m) %}{% endfor %}{% endfor -%}
{{ ids|sort|join(',') }}
{%- endmacro %}
{#- db/broker minions that no highstate step below reaches #}
{%- set highstated = minions['airflow-master'] + minions['airflow-worker'] + minions['airflow-flower'] + minions['airflow-lb'] %}
{%- set infra_only = (minions['airflow-db'] + minions['airflow-broker'])|unique|reject('in', highstated)|list %}
{%- set last = ['airflow-mine-update'] %}

# The healing layer stands still while daemons are being (re)started by the deployment.
airflow-pause-healing:
  salt.runner:
    - name: airflow.deploy_started

airflow-sync-all:
  salt.function:
    - name: saltutil.sync_all
    - tgt: '*'
    - require:
      - salt: airflow-pause-healing

airflow-mine-update:
  salt.function:
    - name: mine.update
    - tgt: '*'
    - require:
      - salt: airflow-sync-all

{%- if roles['airflow-master'] or roles['airflow-worker'] or roles['airflow-flower'] %}

# The slow part (pip install of Airflow) runs on every Airflow node at once, beside db + broker.
airflow-install-software:
  salt.state:
    - tgt: '{{ tgt('airflow-master', 'airflow-worker', 'airflow-flower') }}'
    - tgt_type: list
    - sls:
      - airflow
    - parallel: True
    - require:
      - salt: airflow-mine-update
{%-   do last.append('airflow-install-software') %}
{%- endif %}

{%- if roles['airflow-db'] %}

airflow-deploy-db:
  salt.state:
    - tgt: '{{ tgt('airflow-db') }}'
    - tgt_type: list
    - sls:
      - airflow.db
    - parallel: True
    - require:
      - salt: airflow-mine-update
{%-   do last.append('airflow-deploy-db') %}
{%- endif %}

{%- if roles['airflow-broker'] %}

airflow-deploy-broker:
  salt.state:
    - tgt: '{{ tgt('airflow-broker') }}'
    - tgt_type: list
    - sls:
      - airflow.broker
    - parallel: True
    - require:
      - salt: airflow-mine-update
{%-   if roles['airflow-db'] %}
      # db and broker often share a minion, which runs one state job at a time
      - salt: airflow-deploy-db
{%-   endif %}
{%-   do last.append('airflow-deploy-broker') %}
{%- endif %}

airflow-migrate-metastore:
  salt.state:
    - tgt: '{{ tgt('airflow-master') }}'
    - tgt_type: list
    - sls:
      - airflow.migrate
    - require:
{%- for step in last %}
      - salt: {{ step }}
{%- endfor %}

airflow-deploy-masters:
  salt.state:
    - tgt: '{{ tgt('airflow-master') }}'
    - tgt_type: list
    - highstate: True
    - require:
      - salt: airflow-migrate-metastore

{%- set last = 'airflow-deploy-masters' %}
{%- if roles['airflow-worker'] or roles['airflow-flower'] %}

airflow-deploy-workers:
  salt.state:
    - tgt: '{{ tgt('airflow-worker', 'airflow-flower') }}'
    - tgt_type: list
    - highstate: True
    - require:
      - salt: airflow-deploy-masters
{%-   set last = 'airflow-deploy-workers' %}
{%- endif %}

{%- if roles['airflow-lb'] %}

airflow-deploy-lb:
  salt.state:
    - tgt: '{{ tgt('airflow-lb') }}'
    - tgt_type: list
    - highstate: True
    - require:
      - salt: {{ last }}
{%-   set last = 'airflow-deploy-lb' %}
{%- endif %}

{%- if infra_only %}

# db/broker states ran above; the highstate adds the healing beacon and the clean SLS.
airflow-deploy-infra:
  salt.state:
    - tgt: '{{ infra_only|sort|join(',') }}'
    - tgt_type: list
    - highstate: True
    - require:
      - salt: {{ last }}
{%-   set last = 'airflow-deploy-infra' %}
{%- endif %}

airflow-mark-deployed:
  salt.runner:
    - name: airflow.mark_deployed
    - require:
      - salt: {{ last }}
