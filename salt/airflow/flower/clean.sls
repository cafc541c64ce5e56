{#- Takes the airflow-flower role away: the flower unit stopped, disabled and removed.
    A no-op where the role never was. -#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/macros.jinja' import daemon_clean with context %}
{{ daemon_clean('airflow-flower') }}
