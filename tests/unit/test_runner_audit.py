"""Record before act (issue "trust boundary", item 5): every action of the runner writes its
intent to the audit log first (``Context.act``) and is not taken when that write fails; the
verb then returns ``not-recorded`` and ``airflow/alert/audit/unwritable`` is fired. Same fakes
as test_runner.py (no Salt, fake clock, real files in tmp_path)."""
import errno
import json

import pytest

from test_runner import MODS, STALE, _lb_handler, _runtime_active, _scheduler_handler, env  # noqa: F401
from test_runner_incidents import _reconcile_handler, _units

STORE = MODS["airflow_store"]
#: what the module's and haproxy's action functions are (anything else only looks)
ACTING = {"airflow_health.restart", "airflow_health.start", "airflow_health.stop",
          "airflow_health.haproxy_set_server", "state.apply"}
ALERT = "airflow/alert/audit/unwritable"


def _open_intents(env):
    """Ids of intent records without an outcome record yet."""
    recs = env.audit()
    closed = {r.get("id") for r in recs if r["action"] != "intent"}
    return [r["id"] for r in recs if r["action"] == "intent" and r["id"] not in closed]


def _hung_worker(env):
    state = {"restarted": False}

    def handler(minion, fun, args):
        if fun == "airflow_health.probe":
            return {"status": "ok" if state["restarted"] else "hung"}
        if fun == "airflow_health.restart":
            state["restarted"] = True
        return True

    env.ops.handler = handler


def _every_action(env):
    """Run every acting verb once (the scenarios of test_runner.py); returns their results."""
    results = {}
    _hung_worker(env)
    results["remediate"] = env.rn.remediate("worker1", "worker")
    env.ops.handler = _scheduler_handler(STALE, {"status": "ok", "starting": False})
    results["scheduler restart"] = env.rn.remediate("master2", "scheduler")
    env.ops.handler = _scheduler_handler({"status": "ok", "fresh": ["master1", "master2"],
                                          "stale_seconds": 15})
    results["fence split"] = env.rn.remediate("master1", "scheduler", status="split")
    env.ops.handler = _lb_handler([], {})
    results["minion_started"] = env.rn.minion_started("master2")
    results["presence"] = env.rn.presence_changed(new=["master2"], lost=[])
    results["key_deleted"] = env.rn.key_deleted("master3")
    env.ops.handler = _lb_handler([{"name": "master1", "status": "UP"},
                                   {"name": "master2", "status": "UP"}], {"master2": "down"})
    results["reconcile_lb"] = env.rn.reconcile_lb("test")
    env.ops.handler = lambda m, f, a: [{"name": "master2", "scur": 0}] \
        if f == "airflow_health.haproxy_backends" else {"result": True}
    results["drain"] = env.rn.drain_api_server("master2")
    results["undrain"] = env.rn.undrain_api_server("master2")
    env.ops.alive.discard("master1")
    started = []
    env.ops.handler = _scheduler_handler(
        lambda m: {"status": "ok", "fresh": ["master2"]} if started else STALE,
        extra=lambda m, f, a: started.append(m) or True if f == "airflow_health.start" else True)
    results["failover"] = env.rn.failover_scheduler("planned", failed="master1",
                                                    failed_reachable=False)
    env.ops.alive.add("master1")
    env.clock.t += 700                                   # damping windows of the above
    units = _units(master2__scheduler={"status": "ok", "enabled": True},
                   worker1__worker={"status": "dead", "enabled": True})
    env.ops.handler = _reconcile_handler(units, probe="dead", backends=[
        {"name": "master1", "status": "MAINT"}, {"name": "master2", "status": "UP"}])
    results["reconcile"] = env.rn.reconcile()
    return results


class _Watch:
    """FakeOps.one wrapped: every acting call must come while an intent is open."""

    def __init__(self, env):
        self.env, self.acted, self.orphans = env, [], []
        self.one = env.ops.one
        env.ops.one = self

    def __call__(self, minion, fun, arg=(), timeout=None, kwarg=None):
        if fun in ACTING:
            self.acted.append((minion, fun))
            if not _open_intents(self.env):
                self.orphans.append((minion, fun, tuple(arg)))
        return self.one(minion, fun, arg, timeout=timeout, kwarg=kwarg)


def test_every_action_is_taken_only_while_its_intent_is_recorded(env):
    watch = _Watch(env)
    results = _every_action(env)
    assert results["remediate"]["result"] == "recovered"
    assert results["failover"]["result"] == "ok"
    assert results["reconcile"]["result"] == "acted"
    assert {f for _, f in watch.acted} == ACTING            # every kind of action ran ...
    assert watch.orphans == []                              # ... each after its intent
    assert _open_intents(env) == []                         # ... and each got its outcome
    recs = env.audit()
    intents = [r for r in recs if r["action"] == "intent"]
    assert {r["intent"] for r in intents} == {"kill-restart", "restart", "fence", "reconcile_lb",
                                              "drain", "undrain", "failover", "haproxy-set"}
    for intent in intents:
        assert intent["outcome"] == "pending" and "attempt" not in intent
        (final,) = [r for r in recs if r.get("id") == intent["id"] and r is not intent]
        assert final["action"] == intent["intent"]
        assert (final["minion"], final["daemon"]) == (intent["minion"], intent["daemon"])
        assert recs.index(final) > recs.index(intent)
    # the attempt is counted once, with the intent; the outcome record is marked
    restarts = [r for r in recs if r["action"] == "kill-restart"]
    assert len(restarts) == 1 and restarts[0]["attempt"] is True
    assert len(env.ctx().store.attempts("worker1", "worker")) == 2   # + the reconcile's


@pytest.fixture(params=["disk-full", "read-only"])
def unwritable(request, env, monkeypatch):
    """The audit log cannot be written (ENOSPC on the write, or EROFS on the open)."""
    if request.param == "disk-full":
        def append(self, rec, durable=False):
            raise OSError(errno.ENOSPC, "No space left on device", self.audit_path())

        monkeypatch.setattr(STORE.Store, "append_audit", append)
    else:
        real_open = STORE.os.open

        def read_only(path, flags, *a):
            if flags & (STORE.os.O_WRONLY | STORE.os.O_RDWR):
                raise OSError(errno.EROFS, "Read-only file system", path)
            return real_open(path, flags, *a)

        monkeypatch.setattr(STORE.os, "open", read_only)
    return request.param


def test_no_action_is_taken_when_its_intent_cannot_be_recorded(env, unwritable):
    env.ctx().store.set_drained(set())
    drained_before = (env.tmp / "drained.json").read_text()
    results = _every_action(env)
    acted = [f for _, f, _ in env.ops.calls if f in ACTING]
    assert acted == []                                       # nothing done at all
    for verb in ("remediate", "scheduler restart", "reconcile_lb", "drain", "undrain",
                 "failover", "reconcile"):
        res = results[verb]
        assert res["result"] == "not-recorded", (verb, res)
        assert set(res) == {"result", "action", "minion", "daemon", "error"}
    assert results["remediate"]["action"] == "kill-restart"
    assert results["failover"]["action"] == "failover"
    assert results["reconcile"]["action"] in ("fence", "kill-restart", "restart")
    assert results["fence split"]["action"] == "fence"
    assert results["minion_started"]["fence"]["result"] == "not-recorded"
    assert results["minion_started"]["lb"]["result"] == "not-recorded"
    assert results["presence"]["fence"]["master2"]["result"] == "not-recorded"
    assert results["key_deleted"]["lb"]["result"] == "not-recorded"
    # nothing persisted either: no runtime pillar, drained set unchanged, no attempt counted
    assert _runtime_active(env) is None
    assert (env.tmp / "drained.json").read_text() == drained_before
    assert env.ctx().store.attempts("worker1", "worker") == []
    assert env.ctx().store.attempts("cluster", "failover") == []
    alerts = [data for tag, data in env.ops.fired if tag == ALERT]
    assert len(alerts) >= 10
    assert all(a["phase"] == "intent" and a["taken"] is False for a in alerts)
    expected = "No space left" if unwritable == "disk-full" else "Read-only"
    assert all(expected in a["error"] for a in alerts)
    assert set(alerts[0]) == {"phase", "action", "minion", "daemon", "error", "taken"}


def test_an_outcome_that_cannot_be_recorded_alerts_after_the_action(env, monkeypatch):
    real = STORE.Store.append_audit

    def only_intents(self, rec, durable=False):
        if rec["action"] != "intent":
            raise OSError(errno.ENOSPC, "No space left on device", self.audit_path())
        return real(self, rec, durable)

    monkeypatch.setattr(STORE.Store, "append_audit", only_intents)
    _hung_worker(env)
    assert env.rn.remediate("worker1", "worker") == {"result": "recovered",
                                                      "action": "kill-restart"}
    (alert,) = [data for tag, data in env.ops.fired if tag == ALERT]
    assert alert["phase"] == "outcome" and alert["taken"] is True
    assert [r["action"] for r in env.audit()] == ["intent"]


def test_an_attempt_that_cannot_be_counted_stops_the_action(env, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(STORE.Store, "record_attempt", full)
    _hung_worker(env)
    res = env.rn.remediate("worker1", "worker")
    assert res["result"] == "not-recorded" and "airflow_health.restart" not in env.ops.funs()
    intent, outcome = env.audit()
    assert (intent["action"], outcome["action"], outcome["outcome"]) == (
        "intent", "kill-restart", "not-recorded")
    assert outcome["id"] == intent["id"]
    assert env.ops.fired[-1][0] == ALERT


def test_refusals_need_no_intent_and_never_alert(env, unwritable):
    """ignored / blocked / skipped are records, not actions: best effort, no alert."""
    env.ops.handler = lambda m, f, a: {"status": "ok"}
    assert env.rn.remediate("worker1", "worker")["result"] == "ignored"
    assert env.rn.remediate("worker1", "scheduler")["result"] == "ignored"   # spoofed role
    env.ops.handler = lambda m, f, a: {"status": "dead"} if f == "airflow_health.probe" else True
    env.ops.dependency["rabbitmq"] = "dead"
    assert env.rn.remediate("worker1", "worker")["result"] == "blocked"
    assert not [t for t, _ in env.ops.fired if t == ALERT]


def test_intent_records_are_durable_and_read_back(env, monkeypatch):
    synced = []
    real_fsync = STORE.os.fsync
    monkeypatch.setattr(STORE.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    _hung_worker(env)
    env.rn.remediate("worker1", "worker")
    assert len(synced) == 1                                  # the intent, not the outcome
    log = env.rn.audit_log(2)
    assert [r["action"] for r in log] == ["intent", "kill-restart"]
    assert log[0]["id"] == log[1]["id"] and json.dumps(log)


def test_a_flood_across_rotations_resets_neither_damping_nor_failover_damping(env):
    """5,000+ ignored / blocked / rate-limited records, the log rotating many times meanwhile:
    the next remediation is still damped, the next automatic failover still failover-damped."""
    env.rn.__opts__["airflow_healing"].update(audit_max_bytes=8192, audit_keep=2)
    state = {"restarted": False}

    def handler(minion, fun, args):  # hung again after every restart (three attempts)
        if fun == "airflow_health.probe":
            healthy, state["restarted"] = state["restarted"], False
            return {"status": "ok" if healthy else "hung"}
        if fun == "airflow_health.restart":
            state["restarted"] = True
        return True

    env.ops.handler = handler
    for _ in range(3):
        assert env.rn.remediate("worker1", "worker")["result"] == "recovered"
    ctx = env.ctx()
    for _ in range(3):
        ctx.store.record_attempt("cluster", "failover")
    for i in range(5100):
        action = ("ignored", "blocked", "rate-limited")[i % 3]
        ctx.audit(action, f"worker{i % 40}", "worker", f"flood {i}", action)
    files = sorted(p.name for p in env.tmp.iterdir() if p.name.startswith("audit.jsonl"))
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]     # rotated, bounded
    assert not any(r.get("attempt") or r["action"] == "intent" for r in env.rn.audit_log(1000))
    env.ops.calls.clear()
    assert env.rn.remediate("worker1", "worker")["result"] == "damped"
    assert "airflow_health.restart" not in env.ops.funs()
    env.ops.alive.discard("master1")
    env.ops.handler = _scheduler_handler(STALE)
    res = env.rn.failover_scheduler("presence", failed="master1", failed_reachable=False)
    assert res == {"result": "failover-damped", "failovers": 3}
    assert "airflow_health.start" not in env.ops.funs()


def test_a_failover_whose_count_cannot_be_written_after_the_fence_still_starts(env, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    env.ops.alive.discard("master1")
    started = []
    env.ops.handler = _scheduler_handler(
        lambda m: {"status": "ok", "fresh": ["master2"]} if started else STALE,
        extra=lambda m, f, a: started.append(m) or True if f == "airflow_health.start" else True)
    monkeypatch.setattr(STORE.Store, "record_attempt", full)
    res = env.rn.failover_scheduler("presence", failed="master1", failed_reachable=False)
    assert res["result"] == "ok" and started == ["master2"]
    (alert,) = [data for tag, data in env.ops.fired if tag == ALERT]
    assert (alert["phase"], alert["action"], alert["taken"]) == ("attempt", "failover", True)
