{#- RabbitMQ broker from Debian: vhost, airflow user with permissions on it, no guest user.
    With airflow:broker:external this installs nothing. airflow.broker.clean takes the role away
    again (vhost + user stay unless airflow:clean:purge_data). -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow, secret with context %}
{%- from tplroot ~ '/macros.jinja' import role_marker, restart_dropin with context %}
{%- set br = airflow.broker %}
{%- if not br.external %}
include:
  - airflow.systemd

airflow-broker-package:
  pkg.installed:
    - name: rabbitmq-server
    # rabbitmq_* / airflow_rabbitmq states need rabbitmqctl: load them again after the install.
    - reload_modules: True

{#- Debian's unit has Restart=on-failure already, but the default start limit (5 in 10 s). #}
{{ restart_dropin(airflow, 'broker', 'rabbitmq', 'rabbitmq-server', 'on-failure') }}

airflow-broker-service:
  service.running:
    - name: rabbitmq-server
    - enable: True
    - require:
      - pkg: airflow-broker-package
      - module: airflow-systemd-daemon-reload
      - cmd: airflow-broker-rabbitmq-reset-failed

airflow-broker-vhost:
  rabbitmq_vhost.present:
    - name: {{ br.vhost }}
    - require:
      - service: airflow-broker-service

# The password goes to rabbitmqctl on stdin (_states/airflow_rabbitmq.py): rabbitmq_user.present
# runs `rabbitmqctl authenticate_user <user> <password>` at every highstate (visible in ps).
airflow-broker-user:
  airflow_rabbitmq.user_present:
    - name: {{ br.user }}
    - password: {{ secret('broker_password')|json }}
    - perms:
      - {{ br.vhost }}:
        - '.*'
        - '.*'
        - '.*'
    - require:
      - rabbitmq_vhost: airflow-broker-vhost

airflow-broker-guest-absent:
  rabbitmq_user.absent:
    - name: guest
    - require:
      - service: airflow-broker-service

{{ role_marker('airflow-broker') }}
{%- else %}

airflow-broker-external:
  test.succeed_without_changes:
    - name: 'external {{ br.scheme }} broker at {{ br.host or "airflow:broker:host" }}:{{ br.port }}: nothing to install'
{%- endif %}
