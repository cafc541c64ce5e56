{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
airflow-group:
  group.present:
    - name: {{ airflow.group }}
    - system: True

airflow-user:
  user.present:
    - name: {{ airflow.user }}
    - gid: {{ airflow.group }}
    - home: {{ airflow.home }}
    - createhome: False
    - shell: /usr/sbin/nologin
    - system: True
    - require:
      - group: airflow-group

airflow-home-dir:
  file.directory:
    - name: {{ airflow.home }}
    - user: {{ airflow.user }}
    - group: {{ airflow.group }}
    - mode: '0750'
    - require:
      - user: airflow-user

airflow-logs-dir:
  file.directory:
    - name: {{ airflow.home }}/logs
    - user: {{ airflow.user }}
    - group: {{ airflow.group }}
    - mode: '0750'
    - require:
      - file: airflow-home-dir
