{#- salt/minion/<id>/start -> runner airflow.minion_started (a returning master stays standby).
    The raw id is handed on; the runner validates it. -#}
{%- set event = data if data is mapping else {} %}
airflow-minion-started:
  runner.airflow.minion_started:
    - args:
      - minion: {{ event.get('id')|tojson }}
