"""Unit tests of the pure logic of _modules/airflow_health.py (only subprocess/socket mocked)."""
import importlib.util
import json
import logging
import pathlib
from unittest import mock

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# salt's deferred log handler writes to a closed stream at exit: keep these loggers quiet
logging.getLogger("airflow_health_mod").disabled = True


def _load(name, rel):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ah = _load("airflow_health_mod", "_modules/airflow_health.py")
table = _load("airflow_health_table", "_utils/airflow_daemons.py")
# what Salt's loader packs: the daemon table's functions as __utils__
ah.__utils__ = {f"airflow_daemons.{n}": f for n, f in vars(table).items()
                if callable(f) and not n.startswith("_")}

NODE = {"home": "/opt/airflow", "venv": "/opt/airflow/venv", "airflow_cfg": "/opt/airflow/airflow.cfg",
        "api_server_port": 8081, "haproxy_socket": "/run/haproxy/admin.sock",
        "haproxy_backend": "airflow_api", "heartbeat_stale": 15, "start_grace": 20,
        "worker_ping_timeout": 2, "postgresql_version": 15, "database_port": 5432, "database_name": "airflow",
        "broker_port": 5672, "scheduler_mode": "active-standby"}


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A node settings file (what the airflow states write); returns a writer for variants."""
    path = tmp_path / "airflow_health.json"
    monkeypatch.setattr(ah, "SETTINGS_FILE", str(path))

    def write(**changes):
        data = dict(NODE, **changes)
        path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
        return data

    write()
    return write


@pytest.fixture
def no_node(tmp_path, monkeypatch):
    monkeypatch.setattr(ah, "SETTINGS_FILE", str(tmp_path / "missing.json"))

STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,"
    "lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,"
    "hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,"
    "cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,"
    "ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,"
    "check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,"
    "conn_rate_max,conn_tot,intercepted,dcon,dses,\n"
)


def _row(px, sv, scur, status, addr=""):
    cols = STAT[2:].strip().rstrip(",").split(",")
    vals = {c: "" for c in cols}
    vals.update(pxname=px, svname=sv, scur=str(scur), status=status, weight="1", addr=addr,
                check_status="L7OK")
    return ",".join(vals[c] for c in cols) + ",\n"


def test_parse_systemctl_show():
    props = ah._parse_systemctl_show("ActiveState=active\nSubState=running\nNRestarts=2\n")
    assert props == {"ActiveState": "active", "SubState": "running", "NRestarts": "2"}


@pytest.mark.parametrize(
    "props,expected",
    [
        ({"ActiveState": "active", "SubState": "running"}, "ok"),
        ({"ActiveState": "activating", "SubState": "auto-restart"}, "restarting"),
        ({"ActiveState": "activating", "SubState": "start"}, "restarting"),
        ({"ActiveState": "failed", "SubState": "failed"}, "dead"),
        ({"ActiveState": "inactive", "SubState": "dead"}, "dead"),
        ({"LoadState": "not-found", "ActiveState": "inactive"}, "absent"),
    ],
)
def test_classify_service(props, expected):
    assert ah._classify_service(props) == expected


def _run(stdout="", retcode=0, stderr=""):
    return mock.Mock(return_value={"retcode": retcode, "stdout": stdout, "stderr": stderr})


SHOW_RUNNING = ("LoadState=loaded\nActiveState=active\nSubState=running\nNRestarts=3\n"
                "ActiveEnterTimestampMonotonic=1000000\n")


def test_service_uses_fixed_argv_and_classifies(node, monkeypatch):
    run = _run(SHOW_RUNNING)
    ah.__salt__ = {"cmd.run_all": run}
    monkeypatch.setattr(ah, "_unit_uptime", lambda props: 300.0)
    res = ah.service("worker")
    assert res["status"] == "ok" and res["n_restarts"] == 3 and res["unit"] == "airflow-worker"
    assert res["starting"] is False
    argv = run.call_args[0][0]
    assert argv[:2] == ["systemctl", "show"] and argv[-1] == "airflow-worker"
    assert run.call_args[1]["python_shell"] is False


def test_service_start_grace_from_node_settings(node, no_node, monkeypatch):
    ah.__salt__ = {"cmd.run_all": _run(SHOW_RUNNING)}
    monkeypatch.setattr(ah, "_unit_uptime", lambda props: 5.0)
    assert ah.service("scheduler")["starting"] is None        # no node settings: unknown
    assert ah.service("scheduler", start_grace=3)["starting"] is False


def test_service_starting_within_grace(node, monkeypatch):
    node(start_grace=30)
    ah.__salt__ = {"cmd.run_all": _run(SHOW_RUNNING)}
    monkeypatch.setattr(ah, "_unit_uptime", lambda props: 29.0)
    assert ah.service("airflow-scheduler")["starting"] is True
    monkeypatch.setattr(ah, "_unit_uptime", lambda props: None)  # not active
    assert ah.service("airflow-scheduler")["starting"] is False


def test_service_rejects_bad_unit_and_reports_errors():
    ah.__salt__ = {"cmd.run_all": mock.Mock()}
    assert ah.service("x; rm -rf /")["status"] == "error"
    ah.__salt__["cmd.run_all"].assert_not_called()
    ah.__salt__ = {"cmd.run_all": _run("", 1, "Failed to connect to bus")}
    assert ah.service("worker") == {"unit": "airflow-worker", "status": "error",
                                    "detail": "Failed to connect to bus"}


def test_parse_haproxy_stat_filters_backend_rows():
    text = STAT + _row("airflow_api", "FRONTEND", 0, "OPEN") + _row(
        "airflow_api", "master1", 2, "UP", "10.77.0.11:8080") + _row(
        "airflow_api", "master2", 0, "DOWN") + _row("airflow_api", "BACKEND", 2, "UP") + _row(
        "stats", "FRONTEND", 0, "OPEN")
    rows = ah._parse_haproxy_stat(text, "airflow_api")
    assert [(r["name"], r["status"], r["scur"]) for r in rows] == [
        ("master1", "UP", 2), ("master2", "DOWN", 0)]


@pytest.mark.parametrize("server", ["master1", "m-2.example", "w_3"])
@pytest.mark.parametrize("state", ["ready", "drain", "maint"])
def test_haproxy_command_ok(server, state):
    assert ah._haproxy_command(server, state, "airflow_api") == \
        f"set server airflow_api/{server} state {state}\n"


@pytest.mark.parametrize("server,state,backend", [
    ("master1\nshutdown sessions", "ready", "airflow_api"), ("a/b", "ready", "airflow_api"),
    ("", "ready", "airflow_api"), ("x" * 129, "ready", "airflow_api"),
    ("master1", "up", "airflow_api"), ("master1", "maint\nclear table", "airflow_api"),
    (None, "ready", "airflow_api"), ("master1", "ready", "api/x"), ("master1", "ready", None),
])
def test_haproxy_command_rejects(server, state, backend):
    with pytest.raises(ValueError):
        ah._haproxy_command(server, state, backend)


def test_haproxy_set_server_sends_exactly_one_command(node):
    node(haproxy_backend="api_pool", haproxy_socket="/run/hx.sock")
    with mock.patch.object(ah, "_haproxy_cmd", return_value="\n") as cmd:
        res = ah.haproxy_set_server("master2", "drain")
    cmd.assert_called_once_with("set server api_pool/master2 state drain\n", "/run/hx.sock")
    assert res["result"] is True
    with pytest.raises(ValueError):
        ah.haproxy_set_server("master2;", "drain")


def test_haproxy_backends_reads_the_configured_backend(node):
    node(haproxy_backend="api_pool")
    text = STAT + _row("api_pool", "master1", 1, "UP") + _row("airflow_api", "master9", 0, "UP")
    with mock.patch.object(ah, "_haproxy_cmd", return_value=text) as cmd:
        rows = ah.haproxy_backends()
    assert [r["name"] for r in rows] == ["master1"]
    assert cmd.call_args[0] == ("show stat\n", NODE["haproxy_socket"])


def test_summarize_heartbeats():
    res = ah._summarize_heartbeats([{"hostname": "master1", "age": 40.0},
                                    {"hostname": "master2", "age": 2.0}], 15)
    assert res["status"] == "ok" and res["fresh"] == ["master2"]
    assert res["newest"]["hostname"] == "master2" and res["stale_seconds"] == 15
    assert ah._summarize_heartbeats([{"hostname": "m", "age": 16}], 15)["status"] == "stale"
    assert ah._summarize_heartbeats([], 15)["status"] == "none"


def test_scheduler_heartbeat_passes_url_on_stdin(node, tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    node(venv=str(venv), heartbeat_stale=30)
    monkeypatch.setattr(ah, "_cfg_value", lambda s, k, p: "postgresql://a:SECRET@db/airflow")
    run = _run('[{"hostname": "master1", "age": 20}]')
    ah.__salt__ = {"cmd.run_all": run}
    res = ah.scheduler_heartbeat()
    assert res["status"] == "ok" and res["fresh"] == ["master1"] and res["stale_seconds"] == 30
    assert ah.scheduler_heartbeat(15)["status"] == "stale"
    argv, kwargs = run.call_args[0][0], run.call_args[1]
    assert argv[0] == str(venv / "bin" / "python")
    assert not any("SECRET" in a for a in argv)
    assert "SECRET" in kwargs["stdin"] and kwargs["env"] == {"HOME": NODE["home"]}
    run.return_value = {"retcode": 1, "stdout": "", "stderr": "OperationalError: refused"}
    assert ah.scheduler_heartbeat()["detail"] == "OperationalError: refused"
    run.return_value = {"retcode": 0, "stdout": "garbage", "stderr": ""}
    assert ah.scheduler_heartbeat()["detail"] == "unparsable probe output"


def test_scheduler_heartbeat_config_errors(node, tmp_path):
    node(airflow_cfg=str(tmp_path / "nope.cfg"))
    assert ah.scheduler_heartbeat()["status"] == "error"
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[database]\nsql_alchemy_conn = sqlite://\n")
    node(airflow_cfg=str(cfg), venv=str(tmp_path / "novenv"))
    res = ah.scheduler_heartbeat()
    assert res["status"] == "error" and "missing" in res["detail"]


def test_cfg_value_reads_file(tmp_path, monkeypatch):
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[celery]\nbroker_url = amqp://u:p%%x@h:5672/v\n")
    monkeypatch.delenv("AIRFLOW__CELERY__BROKER_URL", raising=False)
    assert ah._cfg_value("celery", "broker_url", str(cfg)) == "amqp://u:p%x@h:5672/v"
    with pytest.raises(KeyError):
        ah._cfg_value("celery", "nope", str(cfg))
    monkeypatch.setenv("AIRFLOW__CELERY__NOPE", "from-env")
    assert ah._cfg_value("celery", "nope", str(cfg)) == "from-env"


def test_worker_ping_detects_hung(node, monkeypatch):
    monkeypatch.setattr(ah, "_cfg_value", lambda s, k, p: "amqp://u:SECRET@h//")
    monkeypatch.setattr(ah, "_hostname", lambda: "worker1")
    monkeypatch.setattr(ah.os.path, "exists", lambda p: True)
    run = _run("[]")
    ah.__salt__ = {"cmd.run_all": run}
    assert ah.worker_ping()["status"] == "hung"
    argv = run.call_args[0][0]
    assert "celery@worker1" in argv and argv[-1] == "2.0"          # node worker_ping_timeout
    assert not any("SECRET" in a for a in argv)
    ah.worker_ping(5)
    assert run.call_args[0][0][-1] == "5.0"
    run.return_value = {"retcode": 0, "stdout": '[{"celery@worker1": {"ok": "pong"}}]',
                        "stderr": ""}
    assert ah.worker_ping(2)["status"] == "ok"
    run.return_value = {"retcode": 1, "stdout": "", "stderr": "Traceback\nConnectionRefused"}
    assert ah.worker_ping(2)["detail"] == "ConnectionRefused"
    run.return_value = {"retcode": 0, "stdout": "", "stderr": ""}
    assert ah.worker_ping(2)["detail"] == "unparsable probe output"
    assert ah.worker_ping(2, hostname="a;b")["detail"] == "invalid hostname"


def test_worker_ping_config_error(node, tmp_path, monkeypatch):
    monkeypatch.setattr(ah, "_hostname", lambda: "worker1")
    node(airflow_cfg=str(tmp_path / "missing.cfg"))
    res = ah.worker_ping()
    assert res["status"] == "error" and res["destination"] == "celery@worker1"


def test_settings_file_is_the_contract():
    assert ah.SETTINGS_FILE == "/etc/salt/airflow_health.json"
    assert set(ah.SETTINGS_KEYS) == {"home", "venv", "airflow_cfg", "api_server_port",
                                     "haproxy_socket", "haproxy_backend", "heartbeat_stale",
                                     "start_grace", "worker_ping_timeout", "postgresql_version",
                                     "database_port", "database_name", "broker_port", "scheduler_mode"}


def test_probes_without_node_settings_say_so(no_node, monkeypatch):
    MISSING = {"status": "error",  # noqa: N806
               "detail": f"node settings {ah.SETTINGS_FILE} missing (apply the airflow states)"}
    monkeypatch.setattr(ah, "_hostname", lambda: "worker1")
    assert ah.settings() == MISSING
    assert ah.scheduler_heartbeat() == MISSING
    assert ah.api_server() == MISSING
    assert ah.haproxy_backends() == MISSING
    assert ah.worker_ping() == dict(MISSING, destination="celery@worker1")
    res = ah.haproxy_set_server("master1", "ready")
    assert res["result"] is False and res["detail"] == MISSING["detail"]


@pytest.mark.parametrize("change,what", [
    ({"api_server_port": "http"}, "api_server_port"), ({"home": ""}, "home"),
    ({"heartbeat_stale": None}, "heartbeat_stale"), ({"start_grace": True}, "start_grace"),
    ({"haproxy_backend": "a/b"}, "haproxy_backend")])
def test_node_settings_validated(node, change, what):
    node(**change)
    res = ah.settings()
    assert res["status"] == "error" and what in res["detail"]


def test_node_settings_unreadable(node, tmp_path):
    (tmp_path / "airflow_health.json").write_text("{not json")
    assert "unreadable" in ah.settings()["detail"]
    (tmp_path / "airflow_health.json").write_text("[1]")
    assert "not a JSON object" in ah.settings()["detail"]


def test_node_settings_ok(node):
    assert ah.settings() == dict(NODE, heartbeat_stale=15.0, start_grace=20.0,
                                 worker_ping_timeout=2.0)


def test_api_server_uses_the_configured_port(node):
    import requests

    resp = mock.Mock(status_code=200)
    resp.json.return_value = {"metadatabase": {"status": "healthy"}}
    with mock.patch.object(requests, "get", return_value=resp) as get:
        assert ah.api_server()["status"] == "ok"
    assert get.call_args[0][0] == "http://127.0.0.1:8081/api/v2/monitor/health"
    resp.json.return_value = {"metadatabase": {"status": "unhealthy"}}
    with mock.patch.object(requests, "get", return_value=resp):
        res = ah.api_server(url="http://x/")
        assert res["status"] == "blocked" and res["dependency"] == "postgresql"
    resp.json.side_effect = ValueError
    resp.text = "<html>"
    with mock.patch.object(requests, "get", return_value=resp):
        assert ah.api_server()["detail"] == "<html>"
    with mock.patch.object(requests, "get", side_effect=requests.ConnectionError):
        assert ah.api_server() == {"status": "down", "http_status": None,
                                   "detail": "ConnectionError"}


def test_daemons_and_check_follow_the_table(monkeypatch):
    assert [r["name"] for r in ah.daemons()] == table.names()
    assert [r["unit"] for r in ah.daemons(["airflow-worker"])] == ["airflow-worker"]
    ah.__grains__ = {"roles": "airflow-master"}
    assert ah.roles() == ["airflow-master"]
    seen = []
    monkeypatch.setattr(ah, "probe", lambda d, t, h: seen.append(d) or {"status": "ok"})
    assert list(ah.check()) == ["api-server", "scheduler", "dag-processor", "triggerer"]
    ah.__grains__ = {"roles": ["airflow-db", "airflow-broker", "airflow-lb"]}
    assert list(ah.check()) == ["postgresql", "rabbitmq", "haproxy"]


def test_probe_scheduler_maps_heartbeat(monkeypatch):
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "dead"})
    monkeypatch.setattr(ah, "scheduler_heartbeat", lambda s, **_: {"status": "stale"})
    assert ah.probe("scheduler")["status"] == "dead"
    monkeypatch.setattr(ah, "scheduler_heartbeat", lambda s, **_: {"status": "error"})
    assert ah.probe("scheduler")["status"] == "unknown"
    monkeypatch.setattr(ah, "scheduler_heartbeat", lambda s, **_: {"status": "ok"})
    assert ah.probe("scheduler")["status"] == "ok"
    assert ah.probe("sshd") == {"status": "unknown", "detail": "unknown daemon"}
    assert ah.probe(["worker"])["status"] == "unknown"


def test_probe_api_server_and_plain_units(monkeypatch):
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok"})
    for api, status in (("ok", "ok"), ("down", "dead"), ("error", "unknown"),
                        ("blocked", "blocked")):
        monkeypatch.setattr(ah, "api_server", lambda api=api: {"status": api})
        assert ah.probe("api-server")["status"] == status
    assert ah.probe("flower")["status"] == "ok"
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "dead"})
    assert ah.probe("api-server")["status"] == "dead"


def test_unit_uptime():
    props = {"ActiveState": "active", "ActiveEnterTimestampMonotonic": "100000000"}
    assert ah._unit_uptime(props, now_monotonic=130.0) == 30.0
    assert ah._unit_uptime({"ActiveState": "failed"}, 1.0) is None
    assert ah._unit_uptime({"ActiveEnterTimestampMonotonic": "x"}, 1.0) is None


def test_probe_worker_hung_when_unit_running_but_no_pong(monkeypatch):
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok", "starting": True})
    monkeypatch.setattr(ah, "worker_ping", lambda t: {"status": "hung"})
    assert ah.probe("worker")["status"] == "restarting"  # start grace (the node's)
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok", "starting": False})
    assert ah.probe("worker")["status"] == "hung"
    monkeypatch.setattr(ah, "worker_ping", lambda t: {"status": "error"})
    assert ah.probe("worker")["status"] == "unknown"
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "restarting"})
    assert ah.probe("worker")["status"] == "restarting"


def test_kill_unit_only_airflow_units_of_the_table():
    ah.__salt__ = {"cmd.run_all": mock.Mock()}
    for name in ("postgresql", "rabbitmq", "sshd", "airflow-evil", "worker; reboot"):
        assert ah.kill_unit(name)["result"] is False, name
    ah.__salt__["cmd.run_all"].assert_not_called()


def test_kill_unit_lets_systemd_kill_the_whole_unit():
    run = _run()
    ah.__salt__ = {"cmd.run_all": run}
    assert ah.kill_unit("worker") == {"result": True, "unit": "airflow-worker", "detail": ""}
    assert run.call_args[0][0] == ["systemctl", "kill", "--signal=SIGKILL", "--kill-who=all",
                                   "airflow-worker"]
    assert run.call_args[1]["python_shell"] is False
    run.return_value = {"retcode": 1, "stdout": "", "stderr": "Failed to kill unit"}
    assert ah.kill_unit("airflow-worker")["result"] is False


def test_missing_daemon_table_says_how_to_fix(monkeypatch):
    from salt.exceptions import CommandExecutionError

    monkeypatch.setattr(ah, "__utils__", {}, raising=False)
    with pytest.raises(CommandExecutionError, match="saltutil.sync_all"):
        ah.daemons()


# ---------------------------------------------------------------- stateful tier, split, actions
def test_stateful_probes_by_kind(node, monkeypatch):
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok", "starting": False})
    calls = []
    ah.__salt__ = {"cmd.run_all": lambda argv, **kw: calls.append(argv) or
                   {"retcode": 0, "stdout": "1\n", "stderr": ""}}
    assert ah.probe("postgresql")["status"] == "ok"
    assert calls[-1][:4] == ["runuser", "-u", "postgres", "--"] and "5432" in calls[-1]
    ah.__salt__ = {"cmd.run_all": lambda argv, **kw: {"retcode": 2, "stdout": "",
                                                       "stderr": "connection refused"}}
    res = ah.probe("postgresql")
    assert res["status"] == "dead" and "refused" in res["sql"]["detail"]
    monkeypatch.setattr(ah, "_amqp_handshake", lambda h, p, t: (h, p) == ("127.0.0.1", 5672))
    assert ah.probe("rabbitmq")["status"] == "ok"
    monkeypatch.setattr(ah, "_amqp_handshake", mock.Mock(side_effect=ConnectionRefusedError()))
    assert ah.probe("rabbitmq")["status"] == "dead"
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok", "starting": True})
    assert ah.probe("rabbitmq")["status"] == "restarting"  # still opening its port
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok", "starting": False})
    monkeypatch.setattr(ah, "_haproxy_cmd", lambda c, p, timeout=3: "Name: HAProxy\nPid: 7\n")
    assert ah.probe("haproxy")["status"] == "ok"
    monkeypatch.setattr(ah, "_haproxy_cmd", mock.Mock(side_effect=FileNotFoundError()))
    assert ah.probe("haproxy")["status"] == "dead"


def test_amqp_handshake_reads_connection_start():
    import socket as s
    server = s.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    import threading

    def serve(reply):
        conn, _ = server.accept()
        assert conn.recv(8) == b"AMQP\x00\x00\x09\x01"
        conn.sendall(reply)
        conn.close()

    for reply, ok in ((b"\x01\x00\x00\x00\x00\x01\xc8\x00\x0a\x00\x0a", True),
                      (b"AMQP\x00\x00\x09\x01", False)):
        t = threading.Thread(target=serve, args=(reply,))
        t.start()
        assert ah._amqp_handshake("127.0.0.1", port, 3) is ok
        t.join()
    server.close()


def test_postgresql_unit_from_node_settings(node, no_node=None):
    node(postgresql_version=16)
    assert ah._unit("postgresql") == "postgresql@16-main"
    assert ah._unit("worker") == "airflow-worker" and ah._unit("ssh") == "ssh"


def test_postgresql_unit_without_settings(no_node):
    assert ah._unit("postgresql") is None
    assert ah.service("postgresql")["status"] == "error"


def test_split_heartbeat_only_in_active_standby(node, monkeypatch):
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok"})
    hb = {"status": "ok", "fresh": ["master1.lab", "master2"]}
    monkeypatch.setattr(ah, "scheduler_heartbeat", lambda s=None, **_: hb)
    assert ah.probe("scheduler")["status"] == "split"
    hb["fresh"] = ["master1", "master1.lab"]  # one host, two names
    assert ah.probe("scheduler")["status"] == "ok"
    node(scheduler_mode="active-active")
    hb["fresh"] = ["master1", "master2"]
    assert ah.probe("scheduler")["status"] == "ok"


def test_restart_resets_failed_first_and_kills_when_asked(node):
    calls = []
    ah.__salt__ = {"cmd.run_all": lambda argv, **kw: calls.append(argv) or
                   {"retcode": 0, "stdout": "", "stderr": ""}}
    assert ah.restart("worker", kill=True)["result"] is True
    assert calls == [["systemctl", "reset-failed", "airflow-worker"],
                     ["systemctl", "kill", "--signal=SIGKILL", "--kill-who=all", "airflow-worker"],
                     ["systemctl", "restart", "airflow-worker"]]
    calls.clear()
    assert ah.restart("postgresql")["unit"] == "postgresql@15-main"
    assert calls[0] == ["systemctl", "reset-failed", "postgresql@15-main"]
    calls.clear()
    assert ah.start("scheduler", enable=True)["result"] is True
    assert [c[1] for c in calls] == ["enable", "reset-failed", "start"]
    calls.clear()
    assert ah.stop("scheduler", disable=True)["result"] is True
    assert [c[1] for c in calls] == ["stop", "disable"]
    calls.clear()
    for fn in (ah.restart, ah.start, ah.stop):
        assert fn("sshd")["result"] is False and fn("../x")["result"] is False
    assert calls == []  # nothing outside the table reaches systemctl


def test_units_reports_enabled(node, monkeypatch):
    ah.__grains__ = {"roles": ["airflow-db"]}
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "dead", "unit": "u",
                                                          "active_state": "failed"})
    ah.__salt__ = {"cmd.run_all": lambda argv, **kw: {"retcode": 0, "stdout": "enabled\n"}}
    assert ah.units() == {"postgresql": {"status": "dead", "active_state": "failed",
                                         "sub_state": None, "starting": None, "enabled": True,
                                         "n_restarts": None, "result": None}}


def test_units_report_systemds_own_restarts_and_result(node, monkeypatch):
    ah.__grains__ = {"roles": ["airflow-worker"]}
    show = SHOW_RUNNING + "Result=success\n"
    ah.__salt__ = {"cmd.run_all": lambda argv, **kw: {
        "retcode": 0, "stdout": show if argv[1] == "show" else "enabled\n"}}
    monkeypatch.setattr(ah, "_unit_uptime", lambda props: 300.0)
    unit = ah.units()["worker"]
    assert unit["n_restarts"] == 3 and unit["result"] == "success" and unit["status"] == "ok"


def test_restart_causes_reads_the_unit_failure_records_of_the_journal(node):
    lines = "\n".join([
        '{"__REALTIME_TIMESTAMP": "1764633600000000", "UNIT_RESULT": "watchdog"}',
        'not json',
        '{"__REALTIME_TIMESTAMP": "1764633700500000", "UNIT_RESULT": "signal"}',
        '{"__REALTIME_TIMESTAMP": "1764633800000000"}'])
    run = _run(lines)
    ah.__salt__ = {"cmd.run_all": run}
    res = ah.restart_causes("worker", limit=3)
    assert res == {"unit": "airflow-worker", "failures": [
        {"at": 1764633600.0, "result": "watchdog"}, {"at": 1764633700.5, "result": "signal"}]}
    argv = run.call_args[0][0]
    assert argv[0] == "journalctl" and "-u" in argv and argv[argv.index("-u") + 1] == "airflow-worker"
    assert "MESSAGE_ID=" + ah.UNIT_FAILURE_MESSAGE_ID in argv and run.call_args[1]["python_shell"] is False
    assert argv[argv.index("-n") + 1] == "3"
    assert ah.restart_causes("sshd")["result"] is False  # only daemons of the table


def test_must_yield_only_the_older_of_two_fresh_schedulers():
    hb = {"stale_seconds": 15, "schedulers": [
        {"hostname": "master1.lab", "age": 2, "started": 3600},   # the old one: healed partition
        {"hostname": "master2", "age": 1, "started": 60}]}        # started during the partition
    assert ah._must_yield(hb, "master1") is True
    assert ah._must_yield(hb, "master2") is False
    hb["schedulers"][1]["age"] = 40                                # the new one is stale: no split
    assert ah._must_yield(hb, "master1") is False
    hb["schedulers"][1]["age"] = 1
    hb["schedulers"][0]["age"] = 95                                # right after the heal: mine is
    assert ah._must_yield(hb, "master1") is True                   # stale, but superseded
    hb["schedulers"][0]["age"] = 2
    hb["schedulers"][1].update(age=1, started=None)                # unknown start: never yield
    assert ah._must_yield(hb, "master1") is False
    assert ah._must_yield({"schedulers": hb["schedulers"]}, "master1") is False  # no threshold


def test_probe_marks_split_and_whether_to_yield(node, monkeypatch):
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok"})
    monkeypatch.setattr(ah, "_hostname", lambda: "master1")
    hb = {"status": "ok", "fresh": ["master1", "master2"], "stale_seconds": 15, "schedulers": [
        {"hostname": "master1", "age": 2, "started": 900},
        {"hostname": "master2", "age": 2, "started": 30}]}
    monkeypatch.setattr(ah, "scheduler_heartbeat", lambda s=None, **_: hb)
    res = ah.probe("scheduler")
    assert res["status"] == "split" and res["yield"] is True


def test_probe_superseded_scheduler_yields_before_it_heartbeats(node, monkeypatch):
    monkeypatch.setattr(ah, "_hostname", lambda: "master1")
    hb = {"status": "ok", "fresh": ["master2"], "stale_seconds": 15, "schedulers": [
        {"hostname": "master2", "age": 1, "started": 60},
        {"hostname": "master1", "age": 95, "started": 4000}]}
    monkeypatch.setattr(ah, "scheduler_heartbeat", lambda s=None, **_: hb)
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok"})
    res = ah.probe("scheduler")
    assert res["status"] == "split" and res["yield"] is True
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "dead"})  # a standby
    assert ah.probe("scheduler")["status"] == "ok"
    monkeypatch.setattr(ah, "_hostname", lambda: "master2")                     # the new one
    monkeypatch.setattr(ah, "service", lambda n, g=None: {"status": "ok"})
    assert ah.probe("scheduler")["status"] == "ok"
    node(scheduler_mode="active-active")
    monkeypatch.setattr(ah, "_hostname", lambda: "master1")
    assert ah.probe("scheduler")["status"] == "ok"


def test_address_follows_the_one_network_key(monkeypatch):
    """The mine function airflow_address: this node's addresses in airflow:network:cidr."""
    calls = []
    monkeypatch.setattr(ah, "__salt__", {
        "network.ip_addrs": lambda cidr, include_loopback: calls.append((cidr, include_loopback)) or ["10.20.3.4"],
        "network.ip_addrs6": lambda cidr, include_loopback: ["fd00::4"]}, raising=False)
    monkeypatch.setattr(ah, "__pillar__", {"airflow": {"network": {"cidr": "10.20.0.0/16"}}}, raising=False)
    assert ah.address() == ["10.20.3.4"] and calls == [("10.20.0.0/16", False)]
    assert ah.address(cidr="127.0.0.0/8") == ["10.20.3.4"] and calls[-1] == ("127.0.0.0/8", True)
    assert ah.address(cidr="fd00::/64") == ["fd00::4"]
    monkeypatch.setattr(ah, "__pillar__", {"airflow": {}}, raising=False)
    assert ah.address() == []                        # no network: no address (map.jinja names the key)
    assert ah.address(cidr="10.20.0.5/16") == []     # not a network


# ------------------------------------------------------------------ the beacon's resident ping
FAKE_CELERY = '''
import os
class _Control:
    def ping(self, destination, timeout):
        if os.path.exists(os.path.join(os.path.dirname(__file__), "fail")):
            raise ConnectionResetError("broker went away")
        return [{destination[0]: {"ok": "pong"}}]
class Celery:
    def __init__(self, broker):
        with open(os.path.join(os.path.dirname(__file__), "broker"), "w") as fh:
            fh.write(broker)
        self.conf = type("Conf", (), {})()
        self.control = _Control()
    def close(self):
        pass
'''


@pytest.fixture
def resident(tmp_path):
    """A venv whose python is the real one with a stand-in celery module (the real script runs)."""
    import sys
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "celery.py").write_text(FAKE_CELERY)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    conf = dict(NODE, venv=str(venv), home=str(tmp_path))
    yield conf, fake
    with ah._RESIDENT["lock"]:
        for kind in list(ah._RESIDENT["procs"]):
            ah._stop_resident(kind)


def test_resident_ping_reuses_one_process_and_keeps_the_url_off_argv(resident):
    conf, fake = resident
    url = "amqp://airflow:s3cret@infra:5672/airflow"
    assert ah._resident_ping(conf, url, "celery@w1", 2.0) == [{"celery@w1": {"ok": "pong"}}]
    pid = ah._RESIDENT["procs"]["ping"][0].pid
    assert ah._resident_ping(conf, url, "celery@w1", 2.0) == [{"celery@w1": {"ok": "pong"}}]
    assert ah._RESIDENT["procs"]["ping"][0].pid == pid, "a second ping started a second process"
    assert (fake / "broker").read_text() == url                       # the url came on stdin
    assert b"s3cret" not in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()


def test_resident_ping_error_ends_the_process_and_the_next_ping_starts_anew(resident):
    conf, fake = resident
    url = "amqp://u:p@infra/airflow"
    ah._resident_ping(conf, url, "celery@w1", 2.0)
    first = ah._RESIDENT["procs"]["ping"][0]
    (fake / "fail").write_text("")
    with pytest.raises(ValueError, match="broker went away"):
        ah._resident_ping(conf, url, "celery@w1", 2.0)
    assert "ping" not in ah._RESIDENT["procs"] and first.poll() is not None
    (fake / "fail").unlink()
    assert ah._resident_ping(conf, url, "celery@w1", 2.0) == [{"celery@w1": {"ok": "pong"}}]
    assert ah._RESIDENT["procs"]["ping"][0].pid != first.pid


def test_resident_ping_new_url_replaces_the_process(resident):
    conf, fake = resident
    ah._resident_ping(conf, "amqp://u:old@infra/airflow", "celery@w1", 2.0)
    old = ah._RESIDENT["procs"]["ping"][0]
    ah._resident_ping(conf, "amqp://u:rotated@infra/airflow", "celery@w1", 2.0)
    assert old.poll() is not None and (fake / "broker").read_text().endswith("rotated@infra/airflow")


def test_resident_ping_exits_when_nobody_asks(resident, monkeypatch):
    conf, _ = resident
    monkeypatch.setattr(ah, "RESIDENT_IDLE", 0.5)
    ah._resident_ping(conf, "amqp://u:p@infra/airflow", "celery@w1", 2.0)
    proc = ah._RESIDENT["procs"]["ping"][0]
    proc.wait(timeout=10)          # an orphan (minion reloaded or gone) does not linger
    assert proc.returncode == 0


def test_worker_ping_resident_answers_like_the_fresh_probe(resident, node, monkeypatch):
    conf, _ = resident
    monkeypatch.setattr(ah, "_settings", lambda: conf)
    monkeypatch.setattr(ah, "_cfg_value", lambda *a: "amqp://u:p@infra/airflow")
    monkeypatch.setattr(ah, "_hostname", lambda: "worker1")
    res = ah.worker_ping(resident=True)
    assert res["status"] == "ok" and res["destination"] == "celery@worker1"


def test_resident_heartbeat_reads_the_rows_over_one_engine(tmp_path):
    """The real resident heartbeat script over SQLite (same SQL as the metastore's job table)."""
    pytest.importorskip("sqlalchemy")
    import sqlite3
    import sys
    db = tmp_path / "meta.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE job (hostname TEXT, latest_heartbeat TIMESTAMP, start_date TIMESTAMP, "
                "job_type TEXT, state TEXT)")
    con.execute("INSERT INTO job VALUES ('master1', datetime('now', '-3 seconds'), "
                "datetime('now', '-60 seconds'), 'SchedulerJob', 'running')")
    con.commit()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (venv / "bin" / "python").chmod(0o755)
    conf = dict(NODE, venv=str(venv), home=str(tmp_path))
    try:
        rows = ah._resident_call("heartbeat", conf, f"sqlite:///{db}", ("rows",), 10)
        pid = ah._RESIDENT["procs"]["heartbeat"][0].pid
        assert [r["hostname"] for r in rows] == ["master1"] and 2 <= rows[0]["age"] <= 10
        con.execute("INSERT INTO job VALUES ('master2', datetime('now'), datetime('now'), "
                    "'SchedulerJob', 'running')")
        con.commit()
        rows = ah._resident_call("heartbeat", conf, f"sqlite:///{db}", ("rows",), 10)
        assert sorted(r["hostname"] for r in rows) == ["master1", "master2"]
        assert ah._RESIDENT["procs"]["heartbeat"][0].pid == pid
    finally:
        with ah._RESIDENT["lock"]:
            ah._stop_resident("heartbeat")


def test_check_probes_only_the_daemons_asked_for(monkeypatch):
    monkeypatch.setattr(ah, "roles", lambda: ["airflow-master"])
    probed = []
    monkeypatch.setattr(ah, "probe", lambda d, *a, **k: probed.append(d) or {"status": "ok"})
    assert set(ah.check(daemons=["api-server", "dag-processor"])) == {"api-server", "dag-processor"}
    assert probed == ["api-server", "dag-processor"]      # no scheduler heartbeat read
    probed.clear()
    assert "scheduler" in ah.check() and "scheduler" in probed
