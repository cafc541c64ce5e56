{#- haproxy in front of the api-servers. Backends come from the mine (one server per airflow-master,
    named by minion id); a changed config is checked with `haproxy -c` and then reloaded. -#}
{%- from 'airflow/map.jinja' import airflow, nodes with context %}
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
    - context:
        backends: {{ nodes['airflow-master']|json }}
        api_port: {{ airflow.api_server.port }}
        lb_port: {{ airflow.lb.port }}
        stats_port: {{ airflow.lb.stats_port }}
        stats_user: {{ airflow.lb.stats_user }}
    - require:
      - pkg: haproxy-package

haproxy-service:
  service.running:
    - name: haproxy
    - enable: True
    - reload: True
    - watch:
      - file: haproxy-config
