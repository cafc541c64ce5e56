# Role targeting by the `roles` grain (docs/contracts.md), AND the master-owned role record
# (pillar airflow_members, salt-run airflow.grant): a grain is written by the minion, so a role it
# claims without the record's grant gets neither the role's states nor its secrets, only
# airflow.refused (a failing state naming it; the master's reconcile reports it too).
# A role's SLS goes to the minions with
# the role; its clean SLS to every other minion, so taking a role away cleans it up on the next
# highstate. A clean SLS renders to a no-op where this formula never set the role up (zero
# changes). The cleans come first: a minion moving from one role to another stops the old
# daemons before the new ones start.
{%- set me = grains['id'] %}
{%- macro has(role) %}( G@roles:{{ role }} and I@airflow_members:{{ role }}:{{ me }} ){% endmacro %}
base:
  '* and not {{ has('airflow-master') }}':
    - match: compound
    - airflow.master.clean
  '* and not {{ has('airflow-worker') }}':
    - match: compound
    - airflow.worker.clean
  '* and not {{ has('airflow-flower') }}':
    - match: compound
    - airflow.flower.clean
  # The Airflow software (venv, /opt/airflow, user) goes only with the last role that uses it.
  '* and not ( {{ has('airflow-master') }} or {{ has('airflow-worker') }} or {{ has('airflow-flower') }} )':
    - match: compound
    - airflow.software.clean
  '* and not {{ has('airflow-lb') }}':
    - match: compound
    - airflow.lb.clean
  '* and not {{ has('airflow-broker') }}':
    - match: compound
    - airflow.broker.clean
  '* and not {{ has('airflow-db') }}':
    - match: compound
    - airflow.db.clean
  # The healing beacon + node settings go with the last role (every role is an airflow-* role).
  '* and not G@roles:airflow-*':
    - match: compound
    - airflow.healing.clean
    - airflow.enforce.clean
  '{{ has('airflow-db') }}':
    - match: compound
    - airflow.db
  '{{ has('airflow-broker') }}':
    - match: compound
    - airflow.broker
  '{{ has('airflow-master') }}':
    - match: compound
    - airflow.master
  '{{ has('airflow-worker') }}':
    - match: compound
    - airflow.worker
  '{{ has('airflow-flower') }}':
    - match: compound
    - airflow.flower
  '{{ has('airflow-lb') }}':
    - match: compound
    - airflow.lb
  # Every role: the beacon checks the daemons (daemon table) of the minion's roles.
  # Every role: scheduled enforcement of this very highstate (interval from pillar airflow:enforce).
  'G@roles:airflow-*':
    - match: compound
    - airflow.healing
    - airflow.enforce
{#- A role the grain claims but the record does not grant: one failing state that names it. #}
{%- set claimed = grains.get('roles', []) %}
{%- set members = pillar.get('airflow_members', {}) %}
{%- set refused = [] %}
{%- for role in ([claimed] if claimed is string else claimed) if role in members and me not in members[role] %}
{%-   do refused.append(role) %}
{%- endfor %}
{%- if refused %}
  '{{ me }}':
    - match: list
    - airflow.refused
{%- endif %}
