# May this minion's scheduled highstate (salt/airflow/enforce) run now? Computed on the master at
# each pillar compile, for the minion id the master authenticated (opts.id): {reason: ''} = yes,
# else why it waits (maintenance, enforcement paused, orch.deploy running, a remediation on it).
# airflow_enforce.run reads it from a fresh pillar (pillar.items), never from a cached copy.
{%- if 'airflow_gate.enforce_pause' in salt %}
airflow_pause: {{ salt['airflow_gate.enforce_pause'](opts.id)|tojson }}
{%- else %}
airflow_pause: {"reason": "the master-side module airflow_gate is not loaded (module_dirs)"}
{%- endif %}
