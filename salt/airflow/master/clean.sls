{#- Takes the airflow-master role away: every master daemon of the daemon table stopped,
    disabled and its unit removed, the scheduler guard and the admin login file removed
    (airflow.cfg loses the admin login by itself: config.sls renders it per role). The venv stays
    while the minion keeps another Airflow role. A no-op where the role never was. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/macros.jinja' import daemon_clean with context %}
{{ daemon_clean('airflow-master', extra_files=[airflow.home ~ '/scheduler-guard.py',
                                               airflow.home ~ '/simple_auth_manager_passwords.json']) }}
