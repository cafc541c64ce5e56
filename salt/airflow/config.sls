{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/libtofs.jinja' import files_switch with context %}
include:
  - airflow.user

# Values come from pillar through airflow/settings.jinja; the file holds secrets, so no diff output.
airflow-config:
  file.managed:
    - name: {{ airflow.home }}/airflow.cfg
    - source: {{ files_switch(['airflow.cfg.jinja'], lookup='airflow-config') }}
    - template: jinja
    - context:
        tplroot: {{ tplroot }}
    - user: {{ airflow.user }}
    - group: {{ airflow.group }}
    - mode: '0640'
    - show_changes: False
    - require:
      - file: airflow-home-dir
