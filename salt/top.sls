# Role targeting by the `roles` grain (docs/contracts.md). A role's SLS goes to the minions with
# the role; its clean SLS to every other minion, so taking a role away cleans it up on the next
# highstate. A clean SLS renders to a no-op where this formula never set the role up (zero
# changes). The cleans come first: a minion moving from one role to another stops the old
# daemons before the new ones start.
base:
  '* and not G@roles:airflow-master':
    - match: compound
    - airflow.master.clean
  '* and not G@roles:airflow-worker':
    - match: compound
    - airflow.worker.clean
  '* and not G@roles:airflow-flower':
    - match: compound
    - airflow.flower.clean
  # The Airflow software (venv, /opt/airflow, user) goes only with the last role that uses it.
  '* and not ( G@roles:airflow-master or G@roles:airflow-worker or G@roles:airflow-flower )':
    - match: compound
    - airflow.software.clean
  '* and not G@roles:airflow-lb':
    - match: compound
    - airflow.lb.clean
  '* and not G@roles:airflow-broker':
    - match: compound
    - airflow.broker.clean
  '* and not G@roles:airflow-db':
    - match: compound
    - airflow.db.clean
  # The healing beacon + node settings go with the last role (every role is an airflow-* role).
  '* and not G@roles:airflow-*':
    - match: compound
    - airflow.healing.clean
  'G@roles:airflow-db':
    - match: compound
    - airflow.db
  'G@roles:airflow-broker':
    - match: compound
    - airflow.broker
  'G@roles:airflow-master':
    - match: compound
    - airflow.master
  'G@roles:airflow-worker':
    - match: compound
    - airflow.worker
  'G@roles:airflow-flower':
    - match: compound
    - airflow.flower
  'G@roles:airflow-lb':
    - match: compound
    - airflow.lb
  # Every role: the beacon checks the daemons (daemon table) of the minion's roles.
  'G@roles:airflow-*':
    - match: compound
    - airflow.healing
