# Role targeting by the `roles` grain (docs/contracts.md). Every role gets only its own states.
base:
  'G@roles:airflow-db':
    - match: compound
    - airflow.db
  'G@roles:airflow-broker':
    - match: compound
    - airflow.broker
  'G@roles:airflow-master':
    - match: compound
    - airflow.master
    - airflow.healing
  'G@roles:airflow-worker':
    - match: compound
    - airflow.worker
    - airflow.healing
  'G@roles:airflow-lb':
    - match: compound
    - airflow.lb
  'G@roles:airflow-flower':
    - match: compound
    - airflow.flower
