# Pillar targeting (docs/contracts.md). Secrets go only to the roles that use them:
#   masters: cluster, database, broker, admin   workers: cluster, database, broker (no admin)
#   db: database   broker: broker   lb: lb, tls
# Secrets never use ignore_missing: a missing file/key fails the run naming the key.
base:
  '*':
    # ignore_missing covers only the optional files of this block: airflow_site (site-local
    # overrides, e.g. /etc/airflow-salt/pillar/airflow_site.sls) and airflow_runtime (written by
    # the healing runner). airflow (pillar/airflow/init.sls) is always in the repo.
    # airflow.ca (airflow:tls:ca_cert, public: the CA of the lb's certificate) is optional too:
    # without it the nodes trust the system store (a certificate from a public CA).
    - ignore_missing: True
    - airflow
    - airflow.ca
    - airflow_site
    - airflow_runtime
  'G@roles:airflow-master':
    - match: compound
    - airflow.secrets.cluster
    - airflow.secrets.database
    - airflow.secrets.broker
    - airflow.secrets.admin
  'G@roles:airflow-worker':
    - match: compound
    - airflow.secrets.cluster
    - airflow.secrets.database
    - airflow.secrets.broker
  'G@roles:airflow-flower':
    - match: compound
    - airflow.secrets.cluster
    - airflow.secrets.database
    - airflow.secrets.broker
  'G@roles:airflow-db':
    - match: compound
    - airflow.secrets.database
  'G@roles:airflow-broker':
    - match: compound
    - airflow.secrets.broker
  'G@roles:airflow-lb':
    - match: compound
    - airflow.secrets.lb
    - airflow.secrets.tls
