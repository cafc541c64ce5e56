{%- from 'airflow/map.jinja' import airflow with context %}
include:
  - airflow.user

# Values come from pillar through airflow/settings.jinja; the file holds secrets, so no diff output.
airflow-config:
  file.managed:
    - name: {{ airflow.home }}/airflow.cfg
    - source: salt://airflow/files/airflow.cfg.jinja
    - template: jinja
    - user: {{ airflow.user }}
    - group: {{ airflow.group }}
    - mode: '0640'
    - show_changes: False
    - require:
      - file: airflow-home-dir
