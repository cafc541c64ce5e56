"""Plain-Jinja2 rendering of the formula's file templates (no Salt needed)."""
import configparser
import os
import shutil
import subprocess
import sys

import jinja2
import pytest

SALT = os.path.join(os.path.dirname(__file__), "..", "..", "salt")


@pytest.fixture(scope="module")
def env():
    return jinja2.Environment(loader=jinja2.FileSystemLoader(SALT), extensions=["jinja2.ext.do"],
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


UNIT_CONTEXT = dict(name="worker", description="Celery worker", command="celery worker --concurrency 4",
                    home="/opt/airflow", venv="/opt/airflow/venv", user="airflow", group="airflow",
                    exec_condition="", wait_for_deps="", dependency_wait=60,
                    restart_sec=2, timeout_stop_sec=120)


def _sections(text):
    sections, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif line and not line.startswith("#") and current is not None:
            current.append(line)
    return sections


def test_unit_restart_policy_and_start_limit_in_unit_section(env):
    text = env.get_template("airflow/files/airflow-daemon.service.jinja").render(**UNIT_CONTEXT)
    s = _sections(text)
    # no start-limit state ever (tests/salt/test_unit_policy.py covers the dependency wait)
    assert "StartLimitIntervalSec=0" in s["Unit"]
    assert not any(line.startswith("StartLimit") for line in s["Service"])
    assert not any(line.startswith("ExecStartPre") for line in s["Service"])
    for line in ["User=airflow", "Environment=AIRFLOW_HOME=/opt/airflow",
                 "ExecStart=/opt/airflow/venv/bin/airflow celery worker --concurrency 4",
                 "Restart=on-failure", "RestartSec=2", "KillMode=mixed", "TimeoutStopSec=120"]:
        assert line in s["Service"], line
    assert not any(line.startswith("ExecCondition") for line in s["Service"])
    assert s["Install"] == ["WantedBy=multi-user.target"]


def test_unit_exec_condition(env):
    ctx = dict(UNIT_CONTEXT, exec_condition="/opt/airflow/venv/bin/python /opt/airflow/scheduler-guard.py")
    s = _sections(env.get_template("airflow/files/airflow-daemon.service.jinja").render(**ctx))
    assert "ExecCondition=/opt/airflow/venv/bin/python /opt/airflow/scheduler-guard.py" in s["Service"]


WATCHDOG_LINES = ("WatchdogSec", "WatchdogSignal", "NotifyAccess")


def test_unit_watchdog(env):
    template = env.get_template("airflow/files/airflow-daemon.service.jinja")
    s = _sections(template.render(**dict(UNIT_CONTEXT, watchdog_sec=3)))
    # SIGKILL: a SIGSTOPped main process cannot act on SIGABRT; main: only it feeds the watchdog
    for line in ["WatchdogSec=3", "WatchdogSignal=SIGKILL", "NotifyAccess=main",
                 "Restart=on-failure"]:
        assert line in s["Service"], line
    assert not any(line.startswith(WATCHDOG_LINES) for line in s["Unit"])
    # off (0), and a TOFS override's context without the key: no watchdog at all
    for ctx in (dict(UNIT_CONTEXT, watchdog_sec=0), UNIT_CONTEXT):
        s = _sections(template.render(**ctx))
        assert not any(line.startswith(WATCHDOG_LINES) for line in s["Service"])


def test_airflow_cfg_escapes_percent(env):
    settings = {"database": {"sql_alchemy_conn": "postgresql+psycopg2://a:p%25w@h:5432/d"},
                "core": {"executor": "CeleryExecutor", "load_examples": "False"},
                "logging": {"log_format": "%(asctime)s %(message)s"}}
    text = env.get_template("airflow/files/airflow.cfg.jinja").render(settings=settings)
    assert "sql_alchemy_conn = postgresql+psycopg2://a:p%%25w@h:5432/d" in text
    parser = configparser.ConfigParser()  # Airflow's parser interpolates like this
    parser.read_string(text)
    assert parser["database"]["sql_alchemy_conn"] == "postgresql+psycopg2://a:p%25w@h:5432/d"
    assert parser["logging"]["log_format"] == "%(asctime)s %(message)s"
    assert parser["core"]["executor"] == "CeleryExecutor"


HAPROXY_CONTEXT = dict(backends=[["master1", "10.77.0.11"], ["master2", "10.77.0.12"]], api_port=8080,
                       lb_port=443, http_port=80, tls_pem="/etc/haproxy/airflow.pem", stats_port=1936,
                       stats_user="admin", stats_password="pw", admin_socket="/run/haproxy/admin.sock",
                       backend="airflow_api",
                       check={"inter_ms": 1000, "fastinter_ms": 200, "timeout_ms": 700, "fall": 2, "rise": 1})


def _frontend(text):
    return text.split("frontend airflow_api_in", 1)[1].split("\nbackend ", 1)[0]


def test_haproxy_cfg(env):
    text = env.get_template("airflow/files/haproxy.cfg.jinja").render(**HAPROXY_CONTEXT)
    assert "server master1 10.77.0.11:8080 check" in text
    assert "server master2 10.77.0.12:8080 check" in text
    backend = text.split("backend airflow_api", 1)[1].split("listen stats", 1)[0]
    assert "option httpchk GET /api/v2/monitor/health" in backend
    assert "http-check expect status 200" in backend
    assert "default-server inter 1000ms fastinter 200ms fall 2 rise 1" in backend
    assert "timeout check 700ms" in backend
    assert "stats socket /run/haproxy/admin.sock mode 660 level admin" in text
    assert "stats auth admin:pw" in text
    assert "default_backend airflow_api" in text


def test_haproxy_cfg_socket_and_backend_names_from_context(env):
    text = env.get_template("airflow/files/haproxy.cfg.jinja").render(
        **dict(HAPROXY_CONTEXT, backends=[["master1", "10.77.0.11"]], admin_socket="/run/hap/api.sock",
               backend="af"))
    assert "stats socket /run/hap/api.sock mode 660 level admin" in text
    assert "default_backend af\n" in text and "backend af\n" in text


def test_haproxy_cfg_https_frontend_and_redirect(env):
    text = env.get_template("airflow/files/haproxy.cfg.jinja").render(**HAPROXY_CONTEXT)
    front = _frontend(text).splitlines()
    assert "    bind :443 ssl crt /etc/haproxy/airflow.pem alpn h2,http/1.1" in front
    assert "    bind :80" in front  # plain HTTP: nothing but the redirect
    assert "    http-request redirect scheme https code 301 unless { ssl_fc }" in front
    assert "    http-request set-header X-Forwarded-Proto https if { ssl_fc }" in front
    assert front.index("    http-request redirect scheme https code 301 unless { ssl_fc }") < \
        front.index("    default_backend airflow_api")
    glob = text.split("defaults", 1)[0]
    assert "ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets" in glob
    assert "ssl-default-bind-ciphers ECDHE-" in glob and "ssl-default-bind-ciphersuites TLS_AES_" in glob
    # backends stay plain HTTP on the cluster network; the stats listener is unchanged
    assert "server master1 10.77.0.11:8080 check\n" in text
    assert "listen stats\n    bind :1936\n" in text
    # another https port: the redirect names it (the Host header's port, if any, dropped)
    other = _frontend(env.get_template("airflow/files/haproxy.cfg.jinja").render(
        **dict(HAPROXY_CONTEXT, lb_port=8443, http_port=8080)))
    assert "bind :8443 ssl crt /etc/haproxy/airflow.pem alpn h2,http/1.1" in other and "bind :8080\n" in other
    assert "http-request redirect location https://%[req.hdr(host),regsub(:[0-9]+$,)]:8443%[capture.req.uri] " \
           "code 301 unless { ssl_fc }" in other


def _self_signed(tmp_path):
    """A throwaway certificate + key (one PEM file, as haproxy's crt wants it)."""
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=lb",
                    "-addext", "subjectAltName=IP:10.77.0.30"], check=True, capture_output=True)
    pem = tmp_path / "airflow.pem"
    pem.write_text(crt.read_text() + key.read_text())
    return pem


@pytest.mark.skipif(not (shutil.which("haproxy") and shutil.which("openssl")),
                    reason="needs haproxy and openssl (tools/host-deps.sh installs haproxy)")
@pytest.mark.parametrize("ports", [(443, 80), (8443, 8080)])
def test_haproxy_cfg_passes_haproxy_check(env, tmp_path, ports):
    """The rendered config (with a real certificate) passes `haproxy -c`, the state's check_cmd."""
    import grp
    import pwd
    try:
        pwd.getpwnam("haproxy"), grp.getgrnam("haproxy")
    except KeyError:
        pytest.skip("no haproxy user/group on this host")
    text = env.get_template("airflow/files/haproxy.cfg.jinja").render(
        **dict(HAPROXY_CONTEXT, lb_port=ports[0], http_port=ports[1], tls_pem=str(_self_signed(tmp_path)),
               admin_socket=str(tmp_path / "admin.sock")))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    p = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_scheduler_guard_template_compiles(env):
    for mode in ["active-standby", "active-active"]:
        src = env.get_template("airflow/files/scheduler-guard.py.jinja").render(
            mode=mode, stale_seconds=15, home="/opt/airflow")
        compile(src, "scheduler-guard.py", "exec")
        assert f'MODE = "{mode}"' in src


def _guard(env, tmp_path, mode="active-standby"):
    src = env.get_template("airflow/files/scheduler-guard.py.jinja").render(
        mode=mode, stale_seconds=15, home=str(tmp_path / "home"))
    path = tmp_path / "scheduler-guard.py"
    path.write_text(src)
    return path


def test_scheduler_guard_reads_airflow_config_env(env, tmp_path):
    """AIRFLOW_CONFIG (Airflow's own variable) names the airflow.cfg, else <home>/airflow.cfg."""
    (tmp_path / "home").mkdir()
    # the managed file: a metastore the guard would try to reach
    (tmp_path / "home" / "airflow.cfg").write_text(
        "[database]\nsql_alchemy_conn = postgresql+psycopg2://u:p@192.0.2.1:1/x\n")
    scratch = tmp_path / "scratch.cfg"
    scratch.write_text("[core]\nexecutor = CeleryExecutor\n")  # no connection at all
    guard = _guard(env, tmp_path)
    envvars = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONFIG"}
    ret = subprocess.run([sys.executable, str(guard)], env=dict(envvars, AIRFLOW_CONFIG=str(scratch)),
                         capture_output=True, text=True, timeout=60)
    assert ret.returncode == 0 and "no sql_alchemy_conn, allowing start" in ret.stdout, ret
    ret = subprocess.run([sys.executable, str(guard)], env=envvars, capture_output=True, text=True,
                         timeout=60)
    assert "no sql_alchemy_conn" not in ret.stdout  # it read <home>/airflow.cfg instead


def test_scheduler_guard_active_active_always_allows(env, tmp_path):
    guard = _guard(env, tmp_path, mode="active-active")
    ret = subprocess.run([sys.executable, str(guard)], capture_output=True, text=True, timeout=60)
    assert ret.returncode == 0
