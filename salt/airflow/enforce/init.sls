{#- Scheduled enforcement: this minion runs its highstate on a Salt schedule (airflow_enforce.run,
    _modules/airflow_enforce.py), every airflow:enforce:interval seconds plus a random splay, so
    a hand edit, a daemon stopped by hand or a role given by salt-run airflow.grant is corrected
    without a person. mode enforce applies, report runs test=True (drift reported, nothing
    applied). A run waits while the master says so (pillar airflow_pause: maintenance, the
    enforcement pause, orch.deploy, a remediation on this node) or a state run is running here.
    The job is pillar `schedule:airflow-enforce-highstate`, derived from airflow:enforce by the
    master's ext_pillar (_pillar/airflow_enforce.py): Salt merges it into the running schedule at
    every pillar refresh and minion start, so it cannot be lost for good (enabled: false, or no
    role in the role record: no job). This state only removes the job's former copy, which
    schedule.present kept in minion.d/_schedule.conf under another name; map.jinja's schema check
    fails it naming the key when airflow:enforce is bad (the ext_pillar then gives no job). -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
airflow-enforce-legacy-schedule:
  schedule.absent:
    - name: airflow-enforce
