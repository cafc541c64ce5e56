{#- haproxy in front of the api-servers. Backends come from the mine (one server per airflow-master,
    named by minion id, rendered in the template so `slsutil.renderer` shows them); a changed
    config is checked with `haproxy -c` and then reloaded. HTTPS on airflow:lb:port with the
    certificate + key from the secrets lb_tls_cert / lb_tls_key (airflow:lb:tls_pem; a changed
    one reloads haproxy too: Debian's ExecReload checks the config with the new file first, so a
    bad certificate leaves the running haproxy as it was). airflow.lb.clean takes it away again. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/libtofs.jinja' import files_switch with context %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/macros.jinja' import role_marker, restart_dropin with context %}
include:
  - airflow.systemd

airflow-lb-package:
  pkg.installed:
    - name: haproxy

{#- root only: haproxy's master process (root) reads it before the workers drop to user haproxy,
    at start and at every reload. #}
airflow-lb-tls-pem:
  file.managed:
    - name: {{ airflow.lb.tls_pem }}
    - source: {{ files_switch(['haproxy-tls.pem.jinja'], lookup='airflow-lb-tls-pem') }}
    - template: jinja
    - context:
        tplroot: {{ tplroot }}
    - user: root
    - group: root
    - mode: '0600'
    - show_changes: False
    - require:
      - pkg: airflow-lb-package

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
      - file: airflow-lb-tls-pem    # `haproxy -c` loads the certificate

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
      - file: airflow-lb-tls-pem

{{ role_marker('airflow-lb') }}
