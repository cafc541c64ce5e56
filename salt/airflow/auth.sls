{#- SimpleAuthManager login of the admin user (masters only; workers never get this secret). #}
{%- from 'airflow/map.jinja' import airflow with context %}
include:
  - airflow.user

airflow-auth-passwords-file:
  file.managed:
    - name: {{ airflow.home }}/simple_auth_manager_passwords.json
    - source: salt://airflow/files/simple_auth_manager_passwords.json.jinja
    - template: jinja
    - user: {{ airflow.user }}
    - group: {{ airflow.group }}
    - mode: '0600'
    - show_changes: False
    - require:
      - file: airflow-home-dir
