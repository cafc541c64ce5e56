{#- salt/presence/change (fired by the master itself) -> runner airflow.presence_changed.
    The raw lists are handed on; the runner keeps only valid minion ids. -#}
{%- set event = data if data is mapping else {} %}
{%- if event.get('new') or event.get('lost') %}
airflow-presence-changed:
  runner.airflow.presence_changed:
    - args:
      - new: {{ event.get('new')|tojson }}
      - lost: {{ event.get('lost')|tojson }}
{%- endif %}
