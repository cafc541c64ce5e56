{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
include:
  - airflow.user

airflow-dags-folder:
  file.recurse:
    - name: {{ airflow.dags_folder }}
    - source: salt://airflow/files/dags
    - user: {{ airflow.user }}
    - group: {{ airflow.group }}
    - dir_mode: '0755'
    - file_mode: '0644'
    - include_pat: '*.py'
    - require:
      - file: airflow-home-dir
