{#- salt/key (fired by the master itself) -> a deleted key drops that minion's mine data, so the
    haproxy backends are rebuilt without it. Only the id and the action are handed on. -#}
{%- set minion = data.get('id') if data is mapping else None %}
{%- set act = data.get('act') if data is mapping else None %}
{%- if act == 'delete' and minion is string and minion|regex_match('^([A-Za-z0-9_.-]{1,128})$') %}
airflow-key-deleted:
  runner.airflow.key_deleted:
    - args:
      - minion: {{ minion|tojson }}
{%- endif %}
