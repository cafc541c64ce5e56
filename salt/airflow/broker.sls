{#- RabbitMQ broker from Debian: vhost, airflow user with permissions on it, no guest user.
    With airflow:broker:external this installs nothing. -#}
{%- from 'airflow/map.jinja' import airflow, secret with context %}
{%- set br = airflow.broker %}
{%- if not br.external %}

rabbitmq-server-package:
  pkg.installed:
    - name: rabbitmq-server
    # rabbitmq_* states need rabbitmqctl: load them again after the install.
    - reload_modules: True

rabbitmq-server-service:
  service.running:
    - name: rabbitmq-server
    - enable: True
    - require:
      - pkg: rabbitmq-server-package

rabbitmq-airflow-vhost:
  rabbitmq_vhost.present:
    - name: {{ br.vhost }}
    - require:
      - service: rabbitmq-server-service

rabbitmq-airflow-user:
  rabbitmq_user.present:
    - name: {{ br.user }}
    - password: {{ secret('broker_password')|json }}
    - perms:
      - {{ br.vhost }}:
        - '.*'
        - '.*'
        - '.*'
    - require:
      - rabbitmq_vhost: rabbitmq-airflow-vhost

rabbitmq-guest-user-absent:
  rabbitmq_user.absent:
    - name: guest
    - require:
      - service: rabbitmq-server-service
{%- else %}

airflow-broker-external:
  test.succeed_without_changes:
    - name: 'external {{ br.scheme }} broker at {{ br.host }}:{{ br.port }}: nothing to install'
{%- endif %}
