{#- SimpleAuthManager login of the admin user (masters only; workers never get this secret). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/libtofs.jinja' import files_switch with context %}
include:
  - airflow.user

airflow-auth-passwords-file:
  file.managed:
    - name: {{ airflow.home }}/simple_auth_manager_passwords.json
    - source: {{ files_switch(['simple_auth_manager_passwords.json.jinja'], lookup='airflow-auth-passwords-file') }}
    - template: jinja
    - context:
        tplroot: {{ tplroot }}
    - user: {{ airflow.user }}
    - group: {{ airflow.group }}
    - mode: '0600'
    - show_changes: False
    - require:
      - file: airflow-home-dir
