{#- Takes the healing layer away from a minion without any role of the daemon table (salt/top.sls):
    the airflow_health beacon removed from the running minion and from minion.d, the node settings
    file removed. No minion restart. Renders only where airflow.healing left its files. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import conf_dir with context %}
{%- set files = [conf_dir ~ '/minion.d/airflow-beacons.conf', conf_dir ~ '/airflow_health.json'] %}
{%- if salt['file.file_exists'](files[0]) or salt['file.file_exists'](files[1]) %}

airflow-healing-clean-beacon:
  beacon.absent:
    - name: airflow_health

airflow-healing-clean-beacon-config:
  file.absent:
    - name: {{ files[0] }}
    - require:
      - beacon: airflow-healing-clean-beacon

airflow-healing-clean-settings:
  file.absent:
    - name: {{ files[1] }}
    - require:
      - beacon: airflow-healing-clean-beacon
{%- else %}

airflow-healing-clean-nothing:
  test.nop:
    - name: 'no airflow healing on this minion: nothing to clean'
{%- endif %}
