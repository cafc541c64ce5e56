{#- haproxy in front of the api-servers. Backends come from the mine (one server per airflow-master,
    named by minion id, rendered in the template so `slsutil.renderer` shows them); a changed
    config is checked with `haproxy -c` and then reloaded. airflow.lb.clean takes it away again. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/libtofs.jinja' import files_switch with context %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/macros.jinja' import role_marker, restart_dropin with context %}
include:
  - airflow.systemd

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

{#- Debian's unit has Restart=always already (RestartSec 100 ms), and the default start limit. #}
{{ restart_dropin(airflow, 'lb', 'haproxy', 'haproxy', 'always') }}

airflow-lb-service:
  service.running:
    - name: haproxy
    - enable: True
    - reload: True
    - require:
      - pkg: airflow-lb-package
      - module: airflow-systemd-daemon-reload
      - cmd: airflow-lb-haproxy-reset-failed
    - watch:
      - file: airflow-lb-config

{{ role_marker('airflow-lb') }}
