{#- airflow/enforce/<result> (airflow_enforce.run, a minion's scheduled highstate) -> runner
    airflow.enforcement_report. The event is a hint, nothing in it is used but the id: the
    runner asks that minion for its summary itself and validates it. Same per-minion gate as the
    health events (_modules/airflow_gate.py): a flood starts no runner jobs. -#}
{%- set event = data if data is mapping else {} %}
{%- if 'airflow_gate.admit' not in salt or salt['airflow_gate.admit'](event.get('id')) %}
airflow-enforcement-report:
  runner.airflow.enforcement_report:
    - args:
      - minion: {{ event.get('id')|tojson }}
{%- endif %}
