{#- Takes the airflow-lb role away: haproxy stopped + disabled, this formula's haproxy.cfg and
    certificate + key file removed (they hold the stats password and the TLS key). The package
    stays installed. Renders only where airflow.lb set haproxy up (its marker, or a haproxy.cfg
    rendered from this formula): a haproxy of someone else is never stopped. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/macros.jinja' import mine_update with context %}
{%- from tplroot ~ '/map.jinja' import airflow, marker with context %}
{%- set cfg = '/etc/haproxy/haproxy.cfg' %}
{%- set here = salt['file.file_exists'](marker('airflow-lb'))
               or salt['file.contains'](cfg, 'Managed by Salt (salt://airflow/files/haproxy.cfg.jinja)') %}
{%- if here %}

airflow-lb-clean-service:
  service.dead:
    - name: haproxy
    - enable: False

airflow-lb-clean-config:
  file.absent:
    - name: {{ cfg }}
    - require:
      - service: airflow-lb-clean-service

airflow-lb-clean-tls-pem:
  file.absent:
    - name: {{ airflow.lb.tls_pem }}
    - require:
      - service: airflow-lb-clean-service

airflow-lb-clean-marker:
  file.absent:
    - name: {{ marker('airflow-lb') }}
    - require:
      - file: airflow-lb-clean-config
      - file: airflow-lb-clean-tls-pem

{{ mine_update('airflow-lb-clean-mine-update', 'airflow-lb-clean-marker') }}
{%- else %}

airflow-lb-clean-nothing:
  test.nop:
    - name: 'no airflow-lb on this minion: nothing to clean'
{%- endif %}
