"""Unit tests of the pure logic of _modules/airflow_health.py (only subprocess/socket mocked)."""
import importlib.util
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
    props = ah.parse_systemctl_show("ActiveState=active\nSubState=running\nNRestarts=2\n")
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
    assert ah.classify_service(props) == expected


def test_service_uses_fixed_argv_and_classifies():
    run = mock.Mock(return_value={"retcode": 0, "stdout": "LoadState=loaded\nActiveState=active\n"
                                  "SubState=running\nNRestarts=3\n", "stderr": ""})
    ah.__salt__ = {"cmd.run_all": run}
    res = ah.service("worker")
    assert res["status"] == "ok" and res["n_restarts"] == 3 and res["unit"] == "airflow-worker"
    argv = run.call_args[0][0]
    assert argv[:2] == ["systemctl", "show"] and argv[-1] == "airflow-worker"
    assert run.call_args[1]["python_shell"] is False


def test_service_rejects_bad_unit():
    ah.__salt__ = {"cmd.run_all": mock.Mock()}
    assert ah.service("x; rm -rf /")["status"] == "error"
    ah.__salt__["cmd.run_all"].assert_not_called()


def test_parse_haproxy_stat_filters_backend_rows():
    text = STAT + _row("airflow_api", "FRONTEND", 0, "OPEN") + _row(
        "airflow_api", "master1", 2, "UP", "10.77.0.11:8080") + _row(
        "airflow_api", "master2", 0, "DOWN") + _row("airflow_api", "BACKEND", 2, "UP") + _row(
        "stats", "FRONTEND", 0, "OPEN")
    rows = ah.parse_haproxy_stat(text)
    assert [(r["name"], r["status"], r["scur"]) for r in rows] == [
        ("master1", "UP", 2), ("master2", "DOWN", 0)]


@pytest.mark.parametrize("server", ["master1", "m-2.example", "w_3"])
@pytest.mark.parametrize("state", ["ready", "drain", "maint"])
def test_validate_haproxy_args_ok(server, state):
    assert ah.validate_haproxy_args(server, state) == f"set server airflow_api/{server} state {state}\n"


@pytest.mark.parametrize("server,state", [
    ("master1\nshutdown sessions", "ready"), ("a/b", "ready"), ("", "ready"), ("x" * 65, "ready"),
    ("master1", "up"), ("master1", "maint\nclear table"), (None, "ready"),
])
def test_validate_haproxy_args_rejects(server, state):
    with pytest.raises(ValueError):
        ah.validate_haproxy_args(server, state)


def test_haproxy_set_server_sends_exactly_one_command():
    with mock.patch.object(ah, "_haproxy_cmd", return_value="\n") as cmd:
        res = ah.haproxy_set_server("master2", "drain")
    cmd.assert_called_once_with("set server airflow_api/master2 state drain\n", ah.HAPROXY_SOCKET)
    assert res["result"] is True
    with pytest.raises(ValueError):
        ah.haproxy_set_server("master2;", "drain")


def test_summarize_heartbeats():
    res = ah.summarize_heartbeats([{"hostname": "master1", "age": 40.0},
                                   {"hostname": "master2", "age": 2.0}], 15)
    assert res["status"] == "ok" and res["fresh"] == ["master2"]
    assert res["newest"]["hostname"] == "master2"
    assert ah.summarize_heartbeats([{"hostname": "m", "age": 16}], 15)["status"] == "stale"
    assert ah.summarize_heartbeats([], 15)["status"] == "none"


def test_scheduler_heartbeat_passes_url_on_stdin(monkeypatch):
    monkeypatch.setattr(ah, "VENV_PYTHON", "/bin/true")
    monkeypatch.setattr(ah, "_cfg_value", lambda s, k: "postgresql://a:SECRET@db/airflow")
    run = mock.Mock(return_value={"retcode": 0, "stdout": '[{"hostname": "master1", "age": 3}]',
                                  "stderr": ""})
    ah.__salt__ = {"cmd.run_all": run}
    res = ah.scheduler_heartbeat(15)
    assert res["status"] == "ok" and res["fresh"] == ["master1"]
    argv, kwargs = run.call_args[0][0], run.call_args[1]
    assert not any("SECRET" in a for a in argv)
    assert "SECRET" in kwargs["stdin"]
    run.return_value = {"retcode": 1, "stdout": "", "stderr": "OperationalError: refused"}
    assert ah.scheduler_heartbeat(15)["status"] == "error"


def test_cfg_value_reads_file(tmp_path, monkeypatch):
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[celery]\nbroker_url = amqp://u:p%%x@h:5672/v\n")
    monkeypatch.delenv("AIRFLOW__CELERY__BROKER_URL", raising=False)
    assert ah._cfg_value("celery", "broker_url", str(cfg)) == "amqp://u:p%x@h:5672/v"
    with pytest.raises(KeyError):
        ah._cfg_value("celery", "nope", str(cfg))


def test_worker_ping_detects_hung(monkeypatch):
    monkeypatch.setattr(ah, "VENV_PYTHON", "/bin/true")
    monkeypatch.setattr(ah, "_cfg_value", lambda s, k: "amqp://u:SECRET@h//")
    monkeypatch.setattr(ah, "_hostname", lambda: "worker1")
    run = mock.Mock(return_value={"retcode": 0, "stdout": "[]", "stderr": ""})
    ah.__salt__ = {"cmd.run_all": run}
    assert ah.worker_ping(2)["status"] == "hung"
    assert "celery@worker1" in run.call_args[0][0]
    assert not any("SECRET" in a for a in run.call_args[0][0])
    run.return_value = {"retcode": 0, "stdout": '[{"celery@worker1": {"ok": "pong"}}]',
                        "stderr": ""}
    assert ah.worker_ping(2)["status"] == "ok"
    run.return_value = {"retcode": 1, "stdout": "", "stderr": "Traceback\nConnectionRefused"}
    assert ah.worker_ping(2)["status"] == "error"


def test_daemons_for_roles():
    assert ah.daemons_for_roles(["airflow-master", "airflow-worker"]) == [
        "api-server", "scheduler", "dag-processor", "triggerer", "worker"]
    assert ah.daemons_for_roles(["airflow-db", "airflow-broker", "airflow-lb"]) == [
        "postgresql", "rabbitmq", "haproxy"]


def test_probe_scheduler_maps_heartbeat(monkeypatch):
    monkeypatch.setattr(ah, "service", lambda n: {"status": "dead"})
    monkeypatch.setattr(ah, "scheduler_heartbeat", lambda s: {"status": "stale"})
    assert ah.probe("scheduler")["status"] == "dead"
    monkeypatch.setattr(ah, "scheduler_heartbeat", lambda s: {"status": "error"})
    assert ah.probe("scheduler")["status"] == "unknown"
    monkeypatch.setattr(ah, "scheduler_heartbeat", lambda s: {"status": "ok"})
    assert ah.probe("scheduler")["status"] == "ok"


def test_unit_uptime():
    props = {"ActiveState": "active", "ActiveEnterTimestampMonotonic": "100000000"}
    assert ah.unit_uptime(props, now_monotonic=130.0) == 30.0
    assert ah.unit_uptime({"ActiveState": "failed"}, 1.0) is None


def test_probe_worker_hung_when_unit_running_but_no_pong(monkeypatch):
    monkeypatch.setattr(ah, "service", lambda n: {"status": "ok", "uptime": 5})
    monkeypatch.setattr(ah, "worker_ping", lambda t: {"status": "hung"})
    assert ah.probe("worker")["status"] == "restarting"  # start grace
    monkeypatch.setattr(ah, "service", lambda n: {"status": "ok", "uptime": 300})
    monkeypatch.setattr(ah, "worker_ping", lambda t: {"status": "hung"})
    assert ah.probe("worker")["status"] == "hung"
    monkeypatch.setattr(ah, "service", lambda n: {"status": "restarting"})
    assert ah.probe("worker")["status"] == "restarting"


def test_kill_unit_only_airflow_units():
    ah.__salt__ = {"cmd.run_all": mock.Mock()}
    assert ah.kill_unit("postgresql")["result"] is False
    assert ah.kill_unit("sshd")["result"] is False
    ah.__salt__["cmd.run_all"].assert_not_called()
