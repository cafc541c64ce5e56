{#- Scheduled enforcement: this minion runs its highstate on a Salt schedule (airflow_enforce.run,
    _modules/airflow_enforce.py), every airflow:enforce:interval seconds plus a random splay, so
    a hand edit, a daemon stopped by hand or a role given by salt-run airflow.grant is corrected
    without a person. mode enforce applies, report runs test=True (drift reported, nothing
    applied). A run waits while the master says so (pillar airflow_pause: maintenance, the
    enforcement pause, orch.deploy, a remediation on this node) or a state run is running here.
    The schedule lives in the running minion and, persisted by Salt, in minion.d/_schedule.conf.
    enabled: false takes it away (airflow.enforce.clean does the same on a node without a role). -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- set enforce = airflow.enforce %}
{%- if enforce.enabled|to_bool %}

airflow-enforce-schedule:
  schedule.present:
    - name: airflow-enforce
    - function: airflow_enforce.run
    - job_kwargs:
        mode: {{ enforce.mode|tojson }}
    - seconds: {{ enforce.interval|int }}
    - splay: {{ enforce.splay|int }}
    - maxrunning: 1
    - return_job: False
    - run_on_start: False
{%- else %}

airflow-enforce-schedule:
  schedule.absent:
    - name: airflow-enforce
{%- endif %}
