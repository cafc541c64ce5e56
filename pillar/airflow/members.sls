# Cluster membership from the master-owned role record, for every minion: {role: [minion ids]}.
# The states read it (salt/airflow/map.jinja, hosts.jinja): haproxy backends, database/broker/lb
# hosts and the scheduler placement follow the record, never a minion's own `roles` grain.
airflow_members: {{ salt['airflow_roles.members']()|tojson }}
