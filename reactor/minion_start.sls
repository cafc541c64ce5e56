{#- salt/minion/<id>/start -> runner airflow.minion_started (a returning master stays standby). -#}
{%- set minion = data.get('id') if data is mapping else None %}
{%- if minion is string and minion|regex_match('^([A-Za-z0-9_.-]{1,128})$') %}
airflow-minion-started:
  runner.airflow.minion_started:
    - args:
      - minion: {{ minion|tojson }}
{%- endif %}
