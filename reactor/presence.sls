{#- salt/presence/change (fired by the master itself) -> runner airflow.presence_changed. -#}
{%- set ok = '^([A-Za-z0-9_.-]{1,128})$' %}
{%- set new = [] %}
{%- set lost = [] %}
{%- for m in (data.get('new') or []) if data is mapping %}{% if m is string and m|regex_match(ok) %}{% do new.append(m) %}{% endif %}{% endfor %}
{%- for m in (data.get('lost') or []) if data is mapping %}{% if m is string and m|regex_match(ok) %}{% do lost.append(m) %}{% endif %}{% endfor %}
{%- if new or lost %}
airflow-presence-changed:
  runner.airflow.presence_changed:
    - args:
      - new: {{ new|tojson }}
      - lost: {{ lost|tojson }}
{%- endif %}
