{#- Takes the airflow-db role away: the airflow settings of PostgreSQL (conf.d/airflow.conf, the
    pg_hba.conf block) removed and the postgresql service stopped + disabled. The data stays: the
    metastore and result-backend databases and their roles are dropped only with
    airflow:clean:purge_data: true (before the stop). The packages stay installed. Renders only where airflow.db set PostgreSQL up (its
    marker or conf.d/airflow.conf): a PostgreSQL of someone else is never stopped. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/macros.jinja' import mine_update with context %}
{%- from tplroot ~ '/map.jinja' import airflow, marker with context %}
{%- set db = airflow.database %}
{%- set pgconf = '/etc/postgresql/' ~ db.postgresql_version ~ '/main' %}
{%- set here = salt['file.file_exists'](marker('airflow-db'))
               or salt['file.file_exists'](pgconf ~ '/conf.d/airflow.conf') %}
{%- if here %}
{%-   if airflow.clean.purge_data and salt['cmd.has_exec']('psql') %}

{%-     for what, dbname, dbuser in [('', db.name, db.user), ('results-', db.results_name, db.results_user)] %}

airflow-db-clean-{{ what }}database:
  postgres_database.absent:
    - name: {{ dbname }}
    - user: postgres
    - require_in:
      - service: airflow-db-clean-service

airflow-db-clean-{{ what }}role:
  postgres_user.absent:
    - name: {{ dbuser }}
    - user: postgres
    - require:
      - postgres_database: airflow-db-clean-{{ what }}database
    - require_in:
      - service: airflow-db-clean-service
{%-     endfor %}
{%-   endif %}

airflow-db-clean-pg-hba:
  file.replace:
    - name: {{ pgconf }}/pg_hba.conf
    - pattern: '(?ms)^# BEGIN airflow \(managed by Salt\) --$.*?^# END airflow \(managed by Salt\) --$\n?'
    - repl: ''
    - ignore_if_missing: True
    - backup: False

airflow-db-clean-config:
  file.absent:
    - name: {{ pgconf }}/conf.d/airflow.conf

airflow-db-clean-service:
  service.dead:
    - name: postgresql
    - enable: False
    - require:
      - file: airflow-db-clean-pg-hba
      - file: airflow-db-clean-config

airflow-db-clean-marker:
  file.absent:
    - name: {{ marker('airflow-db') }}
    - require:
      - service: airflow-db-clean-service

{{ mine_update('airflow-db-clean-mine-update', 'airflow-db-clean-marker') }}
{%- else %}

airflow-db-clean-nothing:
  test.nop:
    - name: 'no airflow-db on this minion: nothing to clean'
{%- endif %}
