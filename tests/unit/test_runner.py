"""Unit tests of the decision functions of _runners/airflow.py (+ thin wrappers with mocks)."""
import importlib.util
import logging
import json
import pathlib
import threading
import time
from unittest import mock

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# salt's deferred log handler writes to a closed stream at exit: keep these loggers quiet
logging.getLogger("airflow_runner").disabled = True


def _load():
    spec = importlib.util.spec_from_file_location("airflow_runner", ROOT / "_runners/airflow.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rn = _load()

CACHE = {
    "master1": {"roles": ["airflow-master"], "host": "master1"},
    "master2": {"roles": ["airflow-master"], "host": "master2"},
    "worker1": {"roles": ["airflow-worker"]},
    "infra": {"roles": ["airflow-db", "airflow-broker", "airflow-lb"]},
}


# ------------------------------------------------------------------ validation / spoofing
@pytest.mark.parametrize("minion,daemon,tag,ok,why", [
    ("worker1", "worker", None, True, "ok"),
    ("worker1", "worker", "worker1", True, "ok"),
    ("worker1", "scheduler", None, False, "role"),        # spoof: worker claims scheduler down
    ("master1", "worker", None, False, "role"),
    ("worker1", "worker", "master1", False, "tag"),       # tag says another minion
    ("ghost", "worker", None, False, "cache"),            # unknown minion
    ("worker1;reboot", "worker", None, False, "invalid"),
    ("../etc", "worker", None, False, "invalid"),
    ("worker1", "sshd", None, False, "unknown daemon"),
    ("worker1", "worker && rm", None, False, "unknown daemon"),
    (None, "worker", None, False, "invalid"),
    ("infra", "haproxy", None, True, "ok"),
])
def test_validate_request(minion, daemon, tag, ok, why):
    res, reason = rn.validate_request(minion, daemon, tag, CACHE)
    assert res is ok
    assert why in reason


# ------------------------------------------------------------------ damping
def test_damping_counts_attempts_in_window_only():
    now = 10_000
    hist = [
        {"minion": "worker1", "daemon": "worker", "attempt": True, "ts": now - 700},  # old
        {"minion": "worker1", "daemon": "worker", "attempt": True, "ts": now - 500},
        {"minion": "worker1", "daemon": "worker", "attempt": True, "ts": now - 100},
        {"minion": "worker1", "daemon": "worker", "ts": now - 50},                   # not attempt
        {"minion": "worker2", "daemon": "worker", "attempt": True, "ts": now - 10},   # other node
    ]
    assert rn.damping(hist, "worker1", "worker", now, 3, 600) == (True, 2)
    hist.append({"minion": "worker1", "daemon": "worker", "attempt": True, "ts": now - 1})
    assert rn.damping(hist, "worker1", "worker", now, 3, 600) == (False, 3)
    # window slides: 400 s later only one attempt remains
    assert rn.damping(hist, "worker1", "worker", now + 400, 3, 600) == (True, 2)


# ------------------------------------------------------------------ per-daemon decisions
@pytest.mark.parametrize("status,action", [
    ("ok", "ignore"), ("hung", "kill-restart"), ("dead", "restart"),
    ("restarting", "wait"), ("unknown", "wait"), ("absent", "wait"), (None, "wait")])
def test_decide_worker(status, action):
    assert rn.decide_worker(status) == action


HB_STALE = {"status": "stale", "newest": {"hostname": "master1", "age": 120}}


@pytest.mark.parametrize("mode,hb,active,reach,unit,expected", [
    ("active-active", HB_STALE, "master1", True, "dead", "ignore-active-active"),
    ("active-standby", {"status": "ok"}, "master1", True, "ok", "healthy"),
    ("active-standby", {"status": "error"}, "master1", False, None, "unknown"),
    ("active-standby", HB_STALE, "master1", False, None, "failover"),   # node gone
    ("active-standby", HB_STALE, None, False, None, "failover"),
    ("active-standby", HB_STALE, "master1", True, "restarting", "wait"),  # systemd on it
    ("active-standby", {"status": "stale", "newest": {"age": 20}}, "master1", True, "ok", "wait"),
    ("active-standby", {"status": "none", "newest": None}, "master1", True, "ok", "wait"),
    ("active-standby", HB_STALE, "master1", True, "ok", "restart"),      # hung scheduler
    ("active-standby", HB_STALE, "master1", True, "dead", "restart"),    # failed unit
])
def test_decide_scheduler(mode, hb, active, reach, unit, expected):
    assert rn.decide_scheduler(mode, hb, active, reach, unit, 60) == expected


# ------------------------------------------------------------------ election / fencing
def test_elect_master_deterministic_and_healthy_only():
    healthy = {"present": True, "api-server": "ok", "dag-processor": "ok"}
    cands = {
        "master3": healthy,
        "master2": healthy,
        "master0": {"present": True, "api-server": "dead", "dag-processor": "ok"},
        "master1": healthy,
        "masterX": {"present": False, "api-server": "ok", "dag-processor": "ok"},
    }
    assert rn.elect_master(cands, failed="master1") == "master2"
    assert rn.elect_master(dict(reversed(list(cands.items()))), failed="master1") == "master2"
    assert rn.elect_master({"master1": healthy}, failed="master1") is None
    assert rn.elect_master({}, failed="master1") is None


@pytest.mark.parametrize("stop,disable,outcome", [
    (True, True, "fenced"), (None, None, "unreachable"), (False, True, "failed"),
    ("ERROR: ...", None, "failed")])
def test_fencing_outcome(stop, disable, outcome):
    assert rn.fencing_outcome(stop, disable) == outcome


@pytest.mark.parametrize("fence,hb,ok", [
    ("fenced", {"status": "ok", "fresh": ["master1"]}, True),
    ("unreachable", {"status": "stale", "fresh": []}, True),
    ("unreachable", {"status": "ok", "fresh": ["master1"]}, False),  # it is still alive!
    ("failed", {"status": "ok", "fresh": ["master1"]}, False),
    ("failed", {"status": "stale", "fresh": []}, True),
    ("unreachable", {"status": "error"}, False),                    # cannot verify
])
def test_may_start_new_scheduler(fence, hb, ok):
    assert rn.may_start_new_scheduler(fence, hb, {"master1"}) is ok


def test_host_matches():
    assert rn.host_matches("master1", "master1")
    assert rn.host_matches("master1.lab.local", "master1")
    assert rn.host_matches("node-a", "master1", {"host": "node-a"})
    assert not rn.host_matches("master2", "master1")
    assert not rn.host_matches(None, "master1")


# ------------------------------------------------------------------ debounce / lb
def test_debounce_decision():
    assert rn.debounce_decision(10.0, 10.0, None) == "run"
    assert rn.debounce_decision(10.0, 10.5, None) == "coalesced"   # newer request will run
    assert rn.debounce_decision(10.0, 10.0, 10.2) == "coalesced"   # a run started after us
    assert rn.debounce_decision(10.0, 10.0, 9.0) == "run"


def test_lb_runtime_actions():
    backends = [{"name": "master1", "status": "UP"}, {"name": "master2", "status": "DOWN"},
                {"name": "master3", "status": "MAINT"}, {"name": "master4", "status": "MAINT"},
                {"name": "master5", "status": "UP"}]
    health = {"master1": "ok", "master2": "dead", "master3": "ok", "master4": "ok",
              "master5": None}
    assert rn.lb_runtime_actions(backends, health, drained={"master4"}) == [
        ("master2", "maint"), ("master3", "ready")]  # master5 unanswered: haproxy's check decides
    # never maint the last healthy server, never act when salt cannot see anyone
    assert rn.lb_runtime_actions([{"name": "master1", "status": "UP"}], {"master1": "dead"}) == []
    assert rn.lb_runtime_actions(backends[:2], {"master1": None, "master2": None}) == []


def test_runtime_pillar_roundtrip():
    text = rn.runtime_pillar_text("master2")
    assert "airflow:\n  scheduler:\n    active: master2\n" in text
    assert rn.parse_runtime_pillar(text) == "master2"
    with pytest.raises(ValueError):
        rn.runtime_pillar_text("master2\nairflow: evil")


def test_settings_defaults_and_override():
    conf = rn.settings({"airflow_healing": {"max_attempts": 5, "state_dir": "/tmp/x"}})
    assert conf["max_attempts"] == 5 and conf["window"] == 600
    assert conf["runtime_pillar"] == "/tmp/x/pillar/airflow_runtime.sls"


# ------------------------------------------------------------------ thin wrappers (mocked)
@pytest.fixture
def runner(tmp_path, monkeypatch):
    mod = _load()
    mod.__opts__ = {"airflow_healing": {"state_dir": str(tmp_path), "lb_quiet": 0.3,
                                        "worker_verify_timeout": 2}}
    (tmp_path / "deployed").write_text("x")
    monkeypatch.setattr(mod, "_grains_cache", lambda tgt="*": dict(CACHE))
    monkeypatch.setattr(mod, "_fire", mock.Mock())
    monkeypatch.setattr(mod, "_client", mock.Mock())
    return mod


def _audit(tmp_path):
    p = tmp_path / "audit.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_remediate_spoofed_role_is_ignored_and_audited(runner, tmp_path, monkeypatch):
    one = mock.Mock()
    monkeypatch.setattr(runner, "_one", one)
    res = runner.remediate("worker1", "scheduler")
    assert res["result"] == "ignored"
    one.assert_not_called()
    assert _audit(tmp_path)[-1]["outcome"] == "ignored"


def test_remediate_healthy_on_reprobe_does_nothing(runner, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "_one", lambda m, f, a=(), **k: calls.append(f) or {"status": "ok"})
    assert runner.remediate("worker1", "worker")["result"] == "ignored"
    assert calls == ["airflow_health.probe"]


def test_remediate_maintenance_pauses(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_one", mock.Mock())
    runner.maintenance("on")
    assert runner.remediate("worker1", "worker")["reason"] == "maintenance"
    runner._one.assert_not_called()
    runner.maintenance("off")
    assert runner.maintenance("status") == {"maintenance": False}


def test_remediate_not_deployed_skips(runner, tmp_path, monkeypatch):
    (tmp_path / "deployed").unlink()
    monkeypatch.setattr(runner, "_one", mock.Mock())
    assert runner.remediate("worker1", "worker")["reason"] == "not deployed"
    runner.mark_deployed()
    assert (tmp_path / "deployed").exists()


def test_remediate_hung_worker_kills_restarts_and_damps(runner, tmp_path, monkeypatch):
    state = {"n": 0}
    calls = []

    def one(minion, fun, arg=(), **kw):
        calls.append((minion, fun, tuple(arg)))
        if fun == "airflow_health.probe":
            state["n"] += 1
            return {"status": "hung" if state["n"] % 2 else "ok"}
        return True

    monkeypatch.setattr(runner, "_one", one)
    for _ in range(3):
        assert runner.remediate("worker1", "worker")["result"] == "recovered"
    assert ("worker1", "airflow_health.kill_unit", ("worker",)) in calls
    assert ("worker1", "service.restart", ("airflow-worker",)) in calls
    # 4th within the window: damped, alert fired, no restart
    calls.clear()
    assert runner.remediate("worker1", "worker")["result"] == "damped"
    assert not any(c[1] == "service.restart" for c in calls)
    assert runner._fire.call_args[0][0] == "airflow/alert/worker1/worker"
    assert _audit(tmp_path)[-1]["outcome"] == "damped"


def test_reconcile_lb_burst_coalesces_to_one(runner, tmp_path, monkeypatch):
    runs = []
    monkeypatch.setattr(runner, "_present", lambda ms: list(ms))
    monkeypatch.setattr(runner, "_cmd", lambda *a, **k: runs.append(a[1]) or {"infra": {}})
    monkeypatch.setattr(runner, "_one", lambda *a, **k: [])
    results = []
    threads = [threading.Thread(target=lambda: results.append(runner.reconcile_lb("t")["result"]))
               for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert sorted(results) == ["coalesced"] * 3 + ["ok"]
    assert runs.count("state.apply") == 1


def test_failover_unreachable_old_master(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_scheduler_conf", lambda cache=None: ("active-standby", "master1"))
    monkeypatch.setattr(runner, "_present", lambda ms: [m for m in ms if m != "master1"])
    monkeypatch.setattr(runner, "_cmd", lambda *a, **k: {})
    started = {"v": False}

    def one(minion, fun, arg=(), **kw):
        assert minion != "master1"
        if fun == "airflow_health.scheduler_heartbeat":
            if started["v"]:
                return {"status": "ok", "fresh": ["master2"], "schedulers": []}
            return {"status": "stale", "fresh": [], "schedulers": [{"hostname": "master1", "age": 40}]}
        if fun == "airflow_health.check":
            return {"api-server": {"status": "ok"}, "dag-processor": {"status": "ok"}}
        if fun == "service.start":
            started["v"] = True
        return True

    monkeypatch.setattr(runner, "_one", one)
    res = runner.failover_scheduler("test", failed="master1")
    assert res["result"] == "ok" and res["new"] == "master2" and res["fence"] == "unreachable"
    text = (tmp_path / "pillar" / "airflow_runtime.sls").read_text()
    assert rn.parse_runtime_pillar(text) == "master2"
    assert _audit(tmp_path)[-1]["action"] == "failover"


def test_failover_waits_for_vanished_nodes_heartbeat_to_go_stale(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_scheduler_conf", lambda cache=None: ("active-standby", "master1"))
    monkeypatch.setattr(runner, "_present", lambda ms: [m for m in ms if m != "master1"])
    monkeypatch.setattr(runner, "_cmd", lambda *a, **k: {})
    runner.__opts__["airflow_healing"]["heartbeat_stale"] = 3
    t0 = time.time()
    order = []

    def one(minion, fun, arg=(), **kw):
        if fun == "airflow_health.scheduler_heartbeat":
            if "start" in order:
                return {"status": "ok", "fresh": ["master2"], "schedulers": []}
            if time.time() - t0 < 1.5:  # master1 heartbeated just before it vanished
                return {"status": "ok", "fresh": ["master1"],
                        "schedulers": [{"hostname": "master1", "age": 1}]}
            return {"status": "stale", "fresh": [], "schedulers": [{"hostname": "master1", "age": 16}]}
        if fun == "airflow_health.check":
            return {"api-server": {"status": "ok"}, "dag-processor": {"status": "ok"}}
        if fun == "service.start":
            order.append("start")
            assert time.time() - t0 >= 1.5, "started while the old one was still fresh"
        return True

    monkeypatch.setattr(runner, "_one", one)
    res = runner.failover_scheduler("presence", failed="master1", failed_reachable=False)
    assert res["result"] == "ok" and res["new"] == "master2"


def test_failover_refused_when_old_still_heartbeats(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_scheduler_conf", lambda cache=None: ("active-standby", "master1"))
    monkeypatch.setattr(runner, "_present", lambda ms: list(ms))
    monkeypatch.setattr(runner, "_cmd", lambda *a, **k: {})
    starts = []

    def one(minion, fun, arg=(), **kw):
        if fun == "airflow_health.scheduler_heartbeat":
            return {"status": "ok", "fresh": ["master1"],
                    "schedulers": [{"hostname": "master1", "age": 1}]}
        if fun == "airflow_health.check":
            return {"api-server": {"status": "ok"}, "dag-processor": {"status": "ok"}}
        if fun == "service.stop":
            return "ERROR: could not stop"
        if fun == "service.start":
            starts.append(minion)
        return True

    monkeypatch.setattr(runner, "_one", one)
    res = runner.failover_scheduler("manual", failed="master1")
    assert res["result"] == "refused" and not starts
    assert not (tmp_path / "pillar" / "airflow_runtime.sls").exists()


def test_failover_noop_in_active_active(runner, monkeypatch):
    monkeypatch.setattr(runner, "_scheduler_conf", lambda cache=None: ("active-active", None))
    monkeypatch.setattr(runner, "_one", mock.Mock())
    assert runner.failover_scheduler("x")["result"] == "ignored"
    runner._one.assert_not_called()


def test_presence_ignores_non_masters_and_garbage(runner, monkeypatch):
    monkeypatch.setattr(runner, "reconcile_lb", mock.Mock())
    assert runner.presence_changed(new=["worker1"], lost=["x;y"])["result"] == "ignored"
    runner.reconcile_lb.assert_not_called()


def test_key_deleted_reconciles_lb_and_rejects_garbage(runner, monkeypatch):
    monkeypatch.setattr(runner, "reconcile_lb", mock.Mock(return_value={"result": "ok"}))
    assert runner.key_deleted("master3; rm -rf /")["result"] == "ignored"
    runner.reconcile_lb.assert_not_called()
    assert runner.key_deleted("master3")["result"] == "ok"
    runner.reconcile_lb.assert_called_once_with(reason="key of master3 deleted")


def test_audit_log_limit(runner):
    for i in range(5):
        runner._audit("x", reason=str(i))
    assert [r["reason"] for r in runner.audit_log(2)] == ["3", "4"]


def test_runner_and_module_agree_on_units_and_roles():
    """The runner (master) and airflow_health (minions) are loaded by different Salt loaders and
    cannot import each other: their daemon -> unit and daemon -> role maps must stay equal."""
    spec = importlib.util.spec_from_file_location("airflow_health_mod", ROOT / "_modules/airflow_health.py")
    health = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health)
    runner = _load()
    assert runner.UNITS == health.UNITS
    assert runner.DAEMON_ROLE == {d: role for role, ds in health.ROLE_DAEMONS.items() for d in ds}
