{#- Roles this minion's `roles` grain claims that the master's role record does not grant
    (salt/top.sls applies this SLS only then): it gets none of their states or secrets, and the
    highstate fails naming them. The master's reconcile audits and alerts on the claim too. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import roles, claimed, members with context %}
{%- set refused = claimed|select('in', members.keys()|list)|reject('in', roles)|list %}

airflow-refused-roles:
  test.fail_without_changes:
    - name: >-
        roles {{ refused|join(', ') }} claimed by the roles grain of {{ grains['id'] }} are not
        granted by the master's role record (on the master: salt-run airflow.grant
        {{ grains['id'] }} {{ refused|join(',') }}); none of their states or secrets apply
