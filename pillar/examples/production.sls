# Example production site pillar: copy to /etc/airflow-salt/pillar/airflow_site.sls and adapt.
# (Secrets stay in /etc/airflow-salt/pillar/airflow/secrets/*.sls, never here.)
#
# The cluster network is required (the mine function airflow_address follows this one key).
# airflow:
#   network:
#     cidr: 10.20.0.0/16
#   # Managed PostgreSQL (e.g. Amazon RDS): nothing is installed on airflow-db nodes (give no
#   # minion that role); only the connection is configured. Password: airflow:secrets:db_password.
#   # The Celery result backend needs its own role + database there (create them yourself;
#   # password: airflow:secrets:results_db_password): workers never get the metastore password.
#   database:
#     external: True
#     driver: postgresql            # or mysql (MySQL 8; adds the mysql extra + client headers)
#     host: airflow-meta.abcdefgh1234.eu-central-1.rds.amazonaws.com
#     port: 5432
#     name: airflow
#     user: airflow
#     results_name: airflow_results
#     results_user: airflow_results
#   # Managed RabbitMQ (e.g. Amazon MQ); same idea.
#   broker:
#     external: True
#     scheme: amqps
#     host: b-1234.mq.eu-central-1.amazonaws.com
#     port: 5671
#     vhost: airflow
#     user: airflow
#   flower:
#     user: ops                      # Flower basic auth (password: airflow:secrets:flower_password)
#   lb:
#     host: airflow.example.internal   # a DNS name in front of the haproxy nodes
#     port: 8080
#   scheduler:
#     # Two or more schedulers at once (Airflow supports it with row locks on PostgreSQL/MySQL 8).
#     mode: active-active
#   api_server:
#     workers: 4
#   worker:
#     concurrency: 16
#     queues: [default, heavy]
#   # Site copies of the formula's files (TOFS, salt/airflow/libtofs.jinja): put them in a file
#   # root of your own, e.g. /etc/airflow-salt/salt/airflow/files/<minion id or os_family>/<file>,
#   # or name a source per state ID:
#   tofs:
#     source_files:
#       airflow-lb-config: ['salt://site/haproxy.cfg.jinja']
#   # Taking a role away (salt/top.sls runs airflow.<role>.clean) keeps the metastore database
#   # and the broker vhost; set this to drop them too:
#   clean:
#     purge_data: False
#   # Any airflow.cfg option: {section: {key: value}}
#   config:
#     core:
#       parallelism: 128
#     celery:
#       worker_prefetch_multiplier: 1
#
# More workers: give new machines the grain `roles: [airflow-worker]`, accept their keys and run
# `salt-run state.orchestrate orch.deploy` (or a highstate on them): no registration needed.
