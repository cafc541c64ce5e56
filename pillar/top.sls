# Pillar targeting by the master-owned role record (salt-run airflow.grant; _modules/airflow_roles.py),
# keyed by the minion id the master authenticated. A minion's `roles` grain decides nothing here:
# editing it on the minion gains no secret. Secrets go only to the roles that use them
# (README "Secrets"); a missing file/key fails the run naming the key (no ignore_missing).
{%- if 'airflow_roles.members' not in salt %}
{{- raise('pillar/top.sls: the master-side module airflow_roles is not loaded: the master needs '
          'module_dirs: [/srv/airflow/_modules] and utils_dirs: [/srv/airflow/_utils] '
          '(conf/master.d)') }}
{%- endif %}
{%- set members = salt['airflow_roles.members']() %}
{#- role -> secret files (pillar/airflow/secrets/<file>.sls): only what the role's daemons read
    (README "Secrets and who receives them"). A minion with several roles gets the union. -#}
{%- set secrets_of = {
  'airflow-master': ['fernet', 'api', 'jwt', 'database', 'results', 'broker', 'admin'],
  'airflow-worker': ['api', 'results', 'broker'],
  'airflow-flower': ['broker', 'flower_auth'],
  'airflow-db': ['database', 'results'],
  'airflow-broker': ['broker'],
  'airflow-lb': ['lb', 'tls'],
} %}
base:
  '*':
    # ignore_missing covers only the optional files of this block: airflow_site (site-local
    # overrides, e.g. /etc/airflow-salt/pillar/airflow_site.sls) and airflow_runtime (written by
    # the healing runner). airflow, airflow.members and airflow.pause are always in the repo.
    # airflow.ca (airflow:tls:ca_cert, public: the CA of the lb's certificate) is optional too:
    # without it the nodes trust the system store (a certificate from a public CA).
    - ignore_missing: True
    - airflow
    - airflow.members
    - airflow.pause
    - airflow.ca
    - airflow_site
    - airflow_runtime
{#- one entry per minion (a target may appear only once): the secret files of all its roles #}
{%- set files_of = {} %}
{%- for role, files in secrets_of|dictsort %}
{%-   for minion in members.get(role) or [] %}
{%-     do files_of.update({minion: (files_of.get(minion, []) + files)|unique|list}) %}
{%-   endfor %}
{%- endfor %}
{%- for minion, files in files_of|dictsort %}
  '{{ minion }}':
    - match: list
{%-   for file in files|sort %}
    - airflow.secrets.{{ file }}
{%-   endfor %}
{%- endfor %}
