{#- haproxy in front of the api-servers. Backends come from the mine (one server per airflow-master,
    named by minion id, rendered in the template so `slsutil.renderer` shows them); a changed
    config is checked with `haproxy -c` and then reloaded. airflow.lb.clean takes it away again. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/libtofs.jinja' import files_switch with context %}
{%- from tplroot ~ '/macros.jinja' import role_marker with context %}

airflow-lb-package:
  pkg.installed:
    - name: haproxy

airflow-lb-config:
  file.managed:
    - name: /etc/haproxy/haproxy.cfg
    - source: {{ files_switch(['haproxy.cfg.jinja'], lookup='airflow-lb-config') }}
    - template: jinja
    - context:
        tplroot: {{ tplroot }}
    - user: root
    - group: haproxy
    - mode: '0640'
    - check_cmd: haproxy -c -f
    - show_changes: False
    - require:
      - pkg: airflow-lb-package

airflow-lb-service:
  service.running:
    - name: haproxy
    - enable: True
    - reload: True
    - watch:
      - file: airflow-lb-config

{{ role_marker('airflow-lb') }}
