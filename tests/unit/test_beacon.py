"""Unit tests of _beacons/airflow_health.py: validation, change detection, background ping."""
import importlib.util
import logging
import pathlib
import time
from unittest import mock

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# salt's deferred log handler writes to a closed stream at exit: keep these loggers quiet
logging.getLogger("airflow_health_beacon").disabled = True


def _load():
    spec = importlib.util.spec_from_file_location("airflow_health_beacon",
                                                  ROOT / "_beacons/airflow_health.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bcn():
    return _load()


def test_validate(bcn):
    assert bcn.validate([{"interval": 5}, {"checks": ["worker", "scheduler"]}])[0]
    assert not bcn.validate({"checks": ["worker"]})[0]
    assert not bcn.validate([{"checks": ["worker", "sshd"]}])[0]
    assert not bcn.validate([{"checks": "worker"}])[0]
    assert not bcn.validate([{"refire": -1}])[0]


@pytest.mark.parametrize("prev,cur,last,now,fire,state", [
    (None, "ok", 0, 100, False, "ok"),          # first look, healthy: silent
    (None, "dead", 0, 100, True, "dead"),       # first look, unhealthy: fire
    ("ok", "ok", 0, 100, False, "ok"),
    ("ok", "hung", 0, 100, True, "hung"),       # transition
    ("hung", "ok", 90, 100, True, "ok"),        # recovery is a transition too
    ("dead", "dead", 90, 100, False, "dead"),   # still dead, re-fire not due
    ("dead", "dead", 60, 100, True, "dead"),    # re-fire after 30 s
    ("ok", "restarting", 0, 100, False, "ok"),  # systemd handles it
    ("ok", "unknown", 0, 100, False, "ok"),     # no evidence
])
def test_transition(bcn, prev, cur, last, now, fire, state):
    assert bcn.transition(prev, cur, last, now, 30) == (fire, state)


def test_beacon_fires_only_on_change(bcn):
    statuses = iter(["ok", "ok", "dead", "dead", "ok"])
    bcn.__salt__ = {"airflow_health.probe": lambda d, heartbeat_stale=15: {"status": next(statuses)}}
    conf = [{"checks": ["scheduler"]}, {"refire": 1000}, {"scheduler_check_every": 0.001}]
    fired = []
    for _ in range(5):
        fired.append(bcn.beacon(conf))
        time.sleep(0.002)
    assert [len(f) for f in fired] == [0, 0, 1, 0, 1]
    ev = fired[2][0]
    assert ev == {"tag": "scheduler", "daemon": "scheduler", "status": "dead",
                  "previous": "ok", "detail": mock.ANY}
    assert fired[4][0]["status"] == "ok" and fired[4][0]["previous"] == "dead"


def test_scheduler_check_is_throttled(bcn):
    calls = []
    bcn.__salt__ = {"airflow_health.probe":
                    lambda d, heartbeat_stale=15: calls.append(d) or {"status": "ok"}}
    conf = [{"checks": ["scheduler"]}, {"scheduler_check_every": 60}]
    for _ in range(5):
        bcn.beacon(conf)
    assert calls == ["scheduler"]  # one metastore query per minute, not one per interval


def test_worker_ping_in_background_and_hung_after_failures(bcn):
    calls = []

    def ping(timeout):
        calls.append(timeout)
        time.sleep(0.05)
        return {"status": "hung"}

    bcn.__salt__ = {"airflow_health.service": lambda n: {"status": "ok", "uptime": 300},
                    "airflow_health.worker_ping": ping}
    conf = [{"checks": ["worker"]}, {"worker_ping_failures": 2}, {"worker_ping_timeout": 1}]
    t0 = time.time()
    assert bcn.beacon(conf) == []          # no finished ping yet -> unknown, silent
    assert time.time() - t0 < 0.04          # the loop is not blocked by the ping
    events = []
    for _ in range(40):
        time.sleep(0.03)
        events += bcn.beacon(conf)
        if events:
            break
    assert events and events[0]["daemon"] == "worker" and events[0]["status"] == "hung"
    assert len(calls) >= 2


def test_worker_dead_unit_resets_ping_failures(bcn):
    bcn.__salt__ = {"airflow_health.service": lambda n: {"status": "dead"},
                    "airflow_health.worker_ping": mock.Mock()}
    bcn._PING["failures"] = 5
    ev = bcn.beacon([{"checks": ["worker"]}])
    assert ev[0]["status"] == "dead"
    assert bcn._PING["failures"] == 0
    bcn.__salt__["airflow_health.worker_ping"].assert_not_called()


def test_probe_exception_is_not_an_event(bcn):
    def boom(*a, **k):
        raise RuntimeError("x")
    bcn.__salt__ = {"airflow_health.probe": boom}
    assert bcn.beacon([{"checks": ["api-server"]}]) == []


def test_worker_not_hung_during_start_grace(bcn):
    bcn.__salt__ = {"airflow_health.service": lambda n: {"status": "ok", "uptime": 5},
                    "airflow_health.worker_ping": lambda t: {"status": "hung"}}
    bcn._PING["failures"] = 9
    assert bcn.beacon([{"checks": ["worker"]}]) == []
