{#- haproxy in front of the api-servers. Backends come from the mine (one server per airflow-master,
    named by minion id, rendered in the template so `slsutil.renderer` shows them); a changed config is checked with `haproxy -c` and then reloaded. -#}
haproxy-package:
  pkg.installed:
    - name: haproxy

haproxy-config:
  file.managed:
    - name: /etc/haproxy/haproxy.cfg
    - source: salt://airflow/files/haproxy.cfg.jinja
    - template: jinja
    - user: root
    - group: haproxy
    - mode: '0640'
    - check_cmd: haproxy -c -f
    - show_changes: False
    - require:
      - pkg: haproxy-package

haproxy-service:
  service.running:
    - name: haproxy
    - enable: True
    - reload: True
    - watch:
      - file: haproxy-config
