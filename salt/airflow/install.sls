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

{#- The systemd watchdog keep-alive (files/airflow_watchdog.py): staged in the home, then put
    into the venv's site-packages with airflow_watchdog.pth, so every Python start of the venv
    imports it (it acts only in a unit's main process with WatchdogSec=). The site-packages path
    is the venv Python's own answer: its version is not known before the venv exists (and not
    with -S: without site.py a venv reports the base interpreter's site-packages); nothing is
    written outside the venv. The module first, then the .pth, each renamed into place: a Python
    starting meanwhile never imports half a file. airflow.software.clean removes both with the
    venv and the home. #}
{%- set keepalive = airflow.home ~ '/airflow_watchdog.py' %}
{%- set site = '"$(' ~ airflow.venv ~ '/bin/python -I -c \'import sysconfig; print(sysconfig.get_path("purelib"))\')"' %}
airflow-install-watchdog-module:
  file.managed:
    - name: {{ keepalive }}
    - source: {{ files_switch(['airflow_watchdog.py'], lookup='airflow-install-watchdog-module') }}
    - user: root
    - group: {{ airflow.group }}
    - mode: '0644'
    - require:
      - file: airflow-home-dir

airflow-install-watchdog-pth:
  cmd.run:
    - name: >-
        site={{ site }} && test -d "$site" && test "${site#{{ airflow.venv }}/}" != "$site" &&
        install -m 0644 {{ keepalive }} "$site/.airflow_watchdog.py.new" &&
        mv -f "$site/.airflow_watchdog.py.new" "$site/airflow_watchdog.py" &&
        printf 'import airflow_watchdog\n' > "$site/.airflow_watchdog.pth.new" &&
        mv -f "$site/.airflow_watchdog.pth.new" "$site/airflow_watchdog.pth"
    - unless: >-
        site={{ site }} &&
        cmp -s {{ keepalive }} "$site/airflow_watchdog.py" &&
        test "$(cat "$site/airflow_watchdog.pth" 2>/dev/null)" = 'import airflow_watchdog'
    - require:
      - cmd: airflow-venv-create
      - file: airflow-install-watchdog-module
