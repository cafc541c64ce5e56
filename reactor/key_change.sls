{#- salt/key (fired by the master itself) -> a deleted key drops that minion's mine data, so the
    haproxy backends are rebuilt without it. The raw id is handed on; the runner validates it. -#}
{%- set event = data if data is mapping else {} %}
{%- if event.get('act') == 'delete' %}
airflow-key-deleted:
  runner.airflow.key_deleted:
    - args:
      - minion: {{ event.get('id')|tojson }}
{%- endif %}
