{#- Takes the airflow-broker role away: rabbitmq-server stopped + disabled. The vhost and the
    airflow user (and their queues) stay; airflow:clean:purge_data: true deletes them first. The
    package stays installed. Renders only where airflow.broker set RabbitMQ up (its marker): a
    RabbitMQ of someone else is never stopped. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/macros.jinja' import mine_update with context %}
{%- from tplroot ~ '/map.jinja' import airflow, marker with context %}
{%- set br = airflow.broker %}
{%- if salt['file.file_exists'](marker('airflow-broker')) %}
{%-   if airflow.clean.purge_data and salt['cmd.has_exec']('rabbitmqctl') %}

airflow-broker-clean-user:
  rabbitmq_user.absent:
    - name: {{ br.user }}
    - require_in:
      - service: airflow-broker-clean-service

airflow-broker-clean-vhost:
  rabbitmq_vhost.absent:
    - name: {{ br.vhost }}
    - require:
      - rabbitmq_user: airflow-broker-clean-user
    - require_in:
      - service: airflow-broker-clean-service
{%-   endif %}

airflow-broker-clean-service:
  service.dead:
    - name: rabbitmq-server
    - enable: False

airflow-broker-clean-marker:
  file.absent:
    - name: {{ marker('airflow-broker') }}
    - require:
      - service: airflow-broker-clean-service

{{ mine_update('airflow-broker-clean-mine-update', 'airflow-broker-clean-marker') }}
{%- else %}

airflow-broker-clean-nothing:
  test.nop:
    - name: 'no airflow-broker on this minion: nothing to clean'
{%- endif %}
