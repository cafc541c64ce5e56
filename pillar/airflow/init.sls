# Site-neutral pillar of the formula (every site uses this pillar root). It holds no site value:
# the cluster network, the minion ids and the sizes are the site's, in airflow_site.sls in a
# pillar root of its own (e.g. /etc/airflow-salt/pillar/airflow_site.sls; the lab and the
# Vagrantfile write theirs). Defaults: salt/airflow/defaults.yaml. Secrets:
# airflow/secrets/*.sls (see *.sls.example).
#
# The address every node publishes: its address in airflow:network:cidr (required), through
# the mine function airflow_address -> airflow_health.address, so the network is set once.
mine_functions:
  airflow_address:
    mine_function: airflow_health.address
