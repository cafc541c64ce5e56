{#- PostgreSQL 15 metastore from Debian. With airflow:database:external (or driver mysql) this
    installs nothing: the connection alone is configured in airflow.cfg. airflow.db.clean takes
    the role away again (the data stays unless airflow:clean:purge_data). -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow, secret with context %}
{%- from tplroot ~ '/macros.jinja' import role_marker, restart_dropin with context %}
{%- set db = airflow.database %}
{%- if not db.external and db.driver == 'postgresql' %}
{%- set pgconf = '/etc/postgresql/' ~ db.postgresql_version ~ '/main' %}
{#- The server itself: `postgresql` is only a wrapper that stays "active (exited)" while the
    cluster unit below is dead (and Debian ships that one with Restart=no). #}
{%- set cluster = 'postgresql@' ~ db.postgresql_version ~ '-main' %}
include:
  - airflow.systemd

airflow-db-packages:
  pkg.installed:
    - pkgs:
      - postgresql
      - postgresql-client
    # postgres_* / airflow_postgres states need psql: load them again after the install.
    - reload_modules: True

airflow-db-config:
  file.managed:
    - name: {{ pgconf }}/conf.d/airflow.conf
    - contents: |
        # Managed by Salt (salt/airflow/db)
        listen_addresses = '*'
        password_encryption = 'scram-sha-256'
        max_connections = 200
    - user: postgres
    - group: postgres
    - mode: '0644'
    - require:
      - pkg: airflow-db-packages

# Only the cluster network may reach the airflow database, only with SCRAM passwords.
airflow-db-pg-hba:
  file.blockreplace:
    - name: {{ pgconf }}/pg_hba.conf
    - marker_start: '# BEGIN airflow (managed by Salt) --'
    - marker_end: '# END airflow (managed by Salt) --'
    - content: |
        host    {{ db.name }}    {{ db.user }}    {{ airflow.network.cidr }}    scram-sha-256
        host    {{ db.results_name }}    {{ db.results_user }}    {{ airflow.network.cidr }}    scram-sha-256
    - append_if_not_found: True
    - require:
      - pkg: airflow-db-packages

{{ restart_dropin(airflow, 'db', 'postgresql', cluster, 'on-failure') }}

# Restarting the wrapper restarts the cluster too (PartOf=postgresql.service).
airflow-db-service:
  service.running:
    - name: postgresql
    - enable: True
    - require:
      - pkg: airflow-db-packages
      - module: airflow-systemd-daemon-reload
      - cmd: airflow-db-postgresql-reset-failed
    - watch:
      - file: airflow-db-config

airflow-db-cluster-service:
  service.running:
    - name: {{ cluster }}
    - enable: True
    - require:
      - service: airflow-db-service

airflow-db-reload:
  module.run:
    - service.reload:
      - name: postgresql
    - onchanges:
      - file: airflow-db-pg-hba
    - require:
      - service: airflow-db-cluster-service

# The roles' passwords go to psql on stdin (_states/airflow_postgres.py): postgres_user.present
# would put their SCRAM verifiers on psql's command line.
airflow-db-role:
  airflow_postgres.role_present:
    - name: {{ db.user }}
    - password: {{ secret('db_password')|json }}
    - port: {{ db.port }}
    - require:
      - service: airflow-db-cluster-service

airflow-db-database:
  postgres_database.present:
    - name: {{ db.name }}
    - owner: {{ db.user }}
    - encoding: UTF8
    - template: template0
    - user: postgres
    - require:
      - airflow_postgres: airflow-db-role

# The Celery result backend: its own role and database (owner: the role, so Celery can create
# its tables), so that workers never hold the metastore password.
airflow-db-results-role:
  airflow_postgres.role_present:
    - name: {{ db.results_user }}
    - password: {{ secret('results_db_password')|json }}
    - port: {{ db.port }}
    - require:
      - service: airflow-db-cluster-service

airflow-db-results-database:
  postgres_database.present:
    - name: {{ db.results_name }}
    - owner: {{ db.results_user }}
    - encoding: UTF8
    - template: template0
    - user: postgres
    - require:
      - airflow_postgres: airflow-db-results-role

{{ role_marker('airflow-db') }}
{%- else %}

airflow-db-external:
  test.succeed_without_changes:
    - name: 'external {{ db.driver }} metastore at {{ db.host or "airflow:database:host" }}:{{ db.port }}: nothing to install'
{%- endif %}
