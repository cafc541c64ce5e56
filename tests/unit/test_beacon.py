"""Unit tests of _beacons/airflow_health.py: validation, change detection, background ping."""
import importlib.util
import logging
import pathlib
import threading
from unittest import mock

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# salt's deferred log handler writes to a closed stream at exit: keep these loggers quiet
logging.getLogger("airflow_health_beacon").disabled = True


def _load(name, rel):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TABLE = _load("beacon_test_table", "_utils/airflow_daemons.py")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def bcn():
    mod = _load("airflow_health_beacon", "_beacons/airflow_health.py")
    mod.log.disabled = True
    mod._clock = Clock()
    # the beacon reaches the daemon table through the health module, like on a minion
    mod.__salt__ = {"airflow_health.daemons": TABLE.table}
    return mod


def test_validate(bcn):
    assert bcn.validate([{"interval": 5}, {"checks": ["worker", "scheduler"]}])[0]
    assert bcn.validate([{"enabled": True}, {"disable_during_state_run": True},
                         {"worker_ping_failures": 1}, {"refire": 30},
                         {"scheduler_check_every": 6}, {"_beacon_name": "airflow_health"}])[0]
    assert not bcn.validate({"checks": ["worker"]})[0]
    assert not bcn.validate([{"checks": ["worker", "sshd"]}])[0]
    assert not bcn.validate([{"checks": "worker"}])[0]
    assert not bcn.validate([{"refire": -1}])[0]
    assert not bcn.validate([{"refire": True}])[0]
    assert not bcn.validate([{"worker_ping_failures": "many"}])[0]
    ok, why = bcn.validate([{"checks": ["worker"]}, {"refires": 30}])
    assert not ok and "refires" in why                      # a typo is refused


def test_validate_tolerates_legacy_keys_for_one_release(bcn):
    legacy = [{"checks": ["worker"]}, {"heartbeat_stale": 15.0}, {"start_grace": 20.0},
              {"worker_ping_timeout": 2.0}]
    with mock.patch.object(bcn.log, "warning") as warn:
        assert bcn.validate(legacy)[0]
        assert bcn.validate(legacy)[0]
    assert warn.call_count == 1                             # validate() runs every cycle


def test_validate_without_the_health_module(bcn):
    bcn.__salt__ = {}
    ok, why = bcn.validate([{"checks": ["worker"]}])
    assert not ok and "daemon table" in why


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
    probes = []
    bcn.__salt__["airflow_health.probe"] = lambda d, **_: probes.append(d) or {"status": next(statuses)}
    conf = [{"checks": ["scheduler"]}, {"refire": 1000}, {"scheduler_check_every": 6}]
    fired = []
    for _ in range(5):
        fired.append(bcn.beacon(conf))
        bcn._clock.t += 6
    assert [len(f) for f in fired] == [0, 0, 1, 0, 1]
    ev = fired[2][0]
    assert ev == {"tag": "scheduler", "daemon": "scheduler", "status": "dead",
                  "previous": "ok", "detail": mock.ANY}
    assert fired[4][0]["status"] == "ok" and fired[4][0]["previous"] == "dead"
    assert probes == ["scheduler"] * 5          # no heartbeat_stale passed: the node's setting


def test_scheduler_check_is_throttled(bcn):
    calls = []
    bcn.__salt__["airflow_health.probe"] = lambda d, **kw: calls.append(d) or {"status": "ok"}
    resident = []
    probe = bcn.__salt__["airflow_health.probe"]
    bcn.__salt__["airflow_health.probe"] = lambda d, **kw: resident.append(kw.get("resident")) or probe(d)
    conf = [{"checks": ["scheduler"]}, {"scheduler_check_every": 60}]
    for _ in range(5):
        bcn.beacon(conf)
        bcn._clock.t += 10
    assert calls == ["scheduler"]  # one metastore query per minute, not one per interval
    bcn._clock.t += 20
    bcn.beacon(conf)
    assert calls == ["scheduler"] * 2
    assert resident == [True, True]  # through the node's long-lived probe process


def test_scheduler_check_every_interval_survives_jitter(bcn):
    calls = []
    bcn.__salt__["airflow_health.probe"] = lambda d, **kw: calls.append(d) or {"status": "ok"}
    conf = [{"checks": ["scheduler"]}, {"scheduler_check_every": 3}]
    for step in (0, 2.95, 3.02, 2.9, 3.0):  # a 3 s beacon interval, as the loop runs it
        bcn._clock.t += step
        bcn.beacon(conf)
    assert calls == ["scheduler"] * 5


def test_unknown_checks_are_skipped(bcn):
    bcn.__salt__["airflow_health.probe"] = mock.Mock()
    assert bcn.beacon([{"checks": ["sshd"]}]) == []
    bcn.__salt__["airflow_health.probe"].assert_not_called()


class Pings:
    """A worker_ping stand-in: each ping blocks until the test lets one answer."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0
        self.go = threading.Semaphore(0)

    def __call__(self, resident=False):
        assert resident, "the beacon pings through the resident probe process"
        self.calls += 1
        assert self.go.acquire(timeout=5)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def answer(self, bcn):
        self.go.release()
        bcn._PING["thread"].join(5)


def test_worker_ping_in_background_and_hung_after_failures(bcn):
    """The ping runs in a thread: the beacon does not wait for it (events, not timing)."""
    pings = Pings({"status": "hung"})
    bcn.__salt__.update({"airflow_health.service": lambda n: {"status": "ok", "starting": False},
                         "airflow_health.worker_ping": pings})
    conf = [{"checks": ["worker"]}, {"worker_ping_failures": 2}]
    try:
        assert bcn.beacon(conf) == []          # the ping is still running: unknown, silent
        assert bcn._PING["thread"].is_alive()  # ... and the beacon returned anyway
        assert bcn.beacon(conf) == []          # one ping at a time
        assert pings.calls == 1
        pings.answer(bcn)
        assert bcn.beacon(conf) == []          # one failure of two: still ok
        pings.answer(bcn)
        events = bcn.beacon(conf)
        assert events and events[0]["daemon"] == "worker" and events[0]["status"] == "hung"
        assert events[0]["previous"] == "ok" and pings.calls == 3
    finally:
        pings.go.release()


def test_worker_ok_and_ping_errors(bcn):
    pings = Pings({"status": "ok"}, {"status": "error", "detail": "no settings"})
    bcn.__salt__.update({"airflow_health.service": lambda n: {"status": "ok"},
                         "airflow_health.worker_ping": pings})
    try:
        assert bcn._worker_status(dict(bcn.DEFAULTS), {"status": "ok"})[0] == "unknown"
        pings.answer(bcn)
        assert bcn._worker_status(dict(bcn.DEFAULTS), {"status": "ok"})[0] == "ok"
        pings.answer(bcn)
        status, detail = bcn._worker_status(dict(bcn.DEFAULTS), {"status": "ok"})
        assert status == "unknown" and detail["last_ping"]["detail"] == "no settings"
    finally:
        pings.go.release()


def test_worker_ping_exception_is_an_error_not_a_crash(bcn):
    def boom():
        raise RuntimeError("broker gone")

    bcn._ping_worker(boom)
    assert bcn._PING["last"] == {"status": "error", "detail": "broker gone"}


def test_worker_dead_unit_resets_ping_failures(bcn):
    bcn.__salt__.update({"airflow_health.service": lambda n: {"status": "dead"},
                         "airflow_health.worker_ping": mock.Mock()})
    bcn._PING["failures"] = 5
    ev = bcn.beacon([{"checks": ["worker"]}])
    assert ev[0]["status"] == "dead"
    assert bcn._PING["failures"] == 0
    bcn.__salt__["airflow_health.worker_ping"].assert_not_called()


def test_probe_exception_is_not_an_event(bcn):
    def boom(*a, **k):
        raise RuntimeError("x")
    bcn.__salt__["airflow_health.probe"] = boom
    assert bcn.beacon([{"checks": ["api-server"]}]) == []


def test_worker_not_hung_during_start_grace(bcn):
    """The module says whether the unit is within its start grace (node setting)."""
    bcn.__salt__.update({"airflow_health.service": lambda n: {"status": "ok", "starting": True},
                         "airflow_health.worker_ping": lambda: {"status": "hung"}})
    bcn._PING["failures"] = 9
    assert bcn.beacon([{"checks": ["worker"]}]) == []


def test_long_detail_is_shortened(bcn):
    assert bcn._short("x" * 1000).endswith("...") and len(bcn._short("x" * 1000)) == 503


def test_memory_survives_a_module_reload(tmp_path):
    """A highstate reloads the beacon module (saltutil.sync_beacons): what it reported must not
    be forgotten, or a daemon that recovered during the state run is never reported healthy."""
    status = {"api-server": "dead"}

    def load():
        mod = _load("airflow_health_beacon", "_beacons/airflow_health.py")
        mod.log.disabled = True
        mod._clock = Clock()
        mod.__opts__ = {"cachedir": str(tmp_path)}
        mod.__salt__ = {"airflow_health.daemons": TABLE.table,
                        "airflow_health.probe": lambda d, **_: {"status": status[d]}}
        return mod

    first = load()
    assert [e["status"] for e in first.beacon([{"checks": ["api-server"]}])] == ["dead"]
    assert (tmp_path / first.STATE_FILE).exists()
    status["api-server"] = "ok"  # recovered while the beacon was silent, then reloaded
    second = load()
    events = second.beacon([{"checks": ["api-server"]}])
    assert [(e["status"], e["previous"]) for e in events] == [("ok", "dead")]
    # a blocked probe (metastore down) is no evidence: no event, the memory stays
    status["api-server"] = "blocked"
    assert second.beacon([{"checks": ["api-server"]}]) == []
    assert second._STATE["api-server"]["status"] == "ok"


def test_split_scheduler_is_unhealthy(bcn):
    assert bcn.transition("ok", "split", 0, 100, 30) == (True, "split")
    assert bcn.transition("split", "split", 0, 100, 30) == (True, "split")  # re-fire


def test_split_on_this_node_steps_down_locally(bcn):
    stopped = []
    bcn.__salt__["airflow_health.probe"] = lambda d, **_: {"status": "split", "yield": True}
    bcn.__salt__["airflow_health.stop"] = lambda d, disable=False: stopped.append(
        (d, disable)) or {"result": True}
    events = bcn.beacon([{"checks": ["scheduler"]}])
    assert stopped == [("scheduler", True)]
    assert events[0]["status"] == "split" and "yielded" in events[0]["detail"]
    # the other node (the newer scheduler) reports the split but keeps running
    other = _load("airflow_health_beacon", "_beacons/airflow_health.py")
    other.log.disabled = True
    other._clock = Clock()
    other.__salt__ = dict(bcn.__salt__, **{
        "airflow_health.probe": lambda d, **_: {"status": "split", "yield": False}})
    stopped.clear()
    assert other.beacon([{"checks": ["scheduler"]}])[0]["status"] == "split"
    assert stopped == []
