{#- Takes the airflow-worker role away (salt/top.sls applies it to every minion without the
    role): the worker unit stopped, disabled and removed. The venv stays while the minion keeps
    another Airflow role (airflow.software.clean removes it otherwise). A no-op where the role
    never was. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/macros.jinja' import daemon_clean with context %}
{{ daemon_clean('airflow-worker') }}
