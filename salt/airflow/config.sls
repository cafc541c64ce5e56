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

{#- The CA the Task SDK client verifies haproxy's certificate with ([api] ssl_ca_file in
    settings.jinja, same path). Public, so world-readable. Without airflow:tls:ca_cert: no file,
    the system trust store (+ certifi) decides. #}
airflow-config-ca-cert:
{%- if airflow.tls.ca_cert %}
  file.managed:
    - name: {{ airflow.home }}/ca.pem
    - contents: {{ (airflow.tls.ca_cert|trim ~ '\n')|json }}
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - file: airflow-home-dir
{%- else %}
  file.absent:
    - name: {{ airflow.home }}/ca.pem
{%- endif %}
