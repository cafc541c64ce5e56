# Pillar targeting (docs/contracts.md). Secrets go only to the roles whose daemons use them:
#   masters: fernet, api, jwt, database, results, broker, admin
#   workers: api, results, broker        flower: broker, flower
#   db: database, results   broker: broker   lb: lb
# A minion with several roles gets the union (a file listed twice is read once).
# Secrets never use ignore_missing: a missing file/key fails the run naming the key.
base:
  '*':
    # ignore_missing covers only the optional files of this block: airflow_site (site-local
    # overrides, e.g. /etc/airflow-salt/pillar/airflow_site.sls) and airflow_runtime (written by
    # the healing runner). airflow (pillar/airflow/init.sls) is always in the repo.
    - ignore_missing: True
    - airflow
    - airflow_site
    - airflow_runtime
  'G@roles:airflow-master':
    - match: compound
    - airflow.secrets.fernet
    - airflow.secrets.api
    - airflow.secrets.jwt
    - airflow.secrets.database
    - airflow.secrets.results
    - airflow.secrets.broker
    - airflow.secrets.admin
  'G@roles:airflow-worker':
    - match: compound
    - airflow.secrets.api
    - airflow.secrets.results
    - airflow.secrets.broker
  'G@roles:airflow-flower':
    - match: compound
    - airflow.secrets.broker
    - airflow.secrets.flower
  'G@roles:airflow-db':
    - match: compound
    - airflow.secrets.database
    - airflow.secrets.results
  'G@roles:airflow-broker':
    - match: compound
    - airflow.secrets.broker
  'G@roles:airflow-lb':
    - match: compound
    - airflow.secrets.lb
