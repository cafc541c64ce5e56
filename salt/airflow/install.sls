{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import airflow with context %}
{%- from tplroot ~ '/libtofs.jinja' import files_switch with context %}
{%- set spec = 'apache-airflow[' ~ airflow.extras|join(',') ~ ']==' ~ airflow.version %}
{%- set constraints = airflow.home ~ '/' ~ airflow.constraints %}
{%- set marker = airflow.venv ~ '/.airflow-install-spec' %}
{#- The marker holds the install spec + constraints file name: a new version or extra reinstalls. #}
{%- set marker_text = spec ~ ' --constraint ' ~ airflow.constraints %}
include:
  - airflow.user

airflow-install-os-packages:
  pkg.installed:
    - pkgs:
      - python3-venv
{%- if 'mysql' in airflow.extras %}
      - build-essential
      - python3-dev
      - pkg-config
      - default-libmysqlclient-dev
{%- endif %}

airflow-constraints-file:
  file.managed:
    - name: {{ constraints }}
    - source: {{ files_switch([airflow.constraints], lookup='airflow-constraints-file') }}
    - user: root
    - group: {{ airflow.group }}
    - mode: '0644'
    - require:
      - file: airflow-home-dir

airflow-venv-create:
  cmd.run:
    - name: python3 -m venv {{ airflow.venv }}
    - runas: {{ airflow.user }}
    - creates: {{ airflow.venv }}/bin/python
    - require:
      - pkg: airflow-install-os-packages
      - file: airflow-home-dir

airflow-pip-install:
  cmd.run:
    - name: >-
        {{ airflow.venv }}/bin/pip install --no-input --disable-pip-version-check
        "{{ spec }}" --constraint {{ constraints }}
        && printf '%s\n' '{{ marker_text }}' > {{ marker }}
    - runas: {{ airflow.user }}
    - cwd: {{ airflow.home }}
    - unless: test "$(cat {{ marker }} 2>/dev/null)" = '{{ marker_text }}'
    - timeout: 1800
    - require:
      - cmd: airflow-venv-create
      - file: airflow-constraints-file
