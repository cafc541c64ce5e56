"""Runner behaviour in incidents (issue 8): dependency attribution, split schedulers, the
periodic reconcile, fencing on reconnect. Same fakes as test_runner.py (no Salt, fake clock)."""
import pytest

from test_runner import CACHE, STALE, _lb_handler, _runtime_active, _scheduler_handler, env  # noqa: F401


def test_worker_failing_because_the_broker_is_down_is_blocked_not_restarted(env):
    env.ops.handler = lambda m, f, a: {"status": "dead"} if f == "airflow_health.probe" else True
    env.ops.dependency["rabbitmq"] = "dead"
    for _ in range(5):  # re-fired events: never an attempt, never damped
        assert env.rn.remediate("worker1", "worker") == {"result": "blocked",
                                                          "dependency": "rabbitmq"}
    assert "airflow_health.restart" not in env.ops.funs()
    recs = env.audit()
    assert [r["action"] for r in recs] == ["blocked"] * 5
    assert all(r["dependency"] == "rabbitmq" and not r.get("attempt") for r in recs)
    # the broker is back: the worker is restarted, with a full damping budget
    env.ops.dependency["rabbitmq"] = "ok"
    assert env.rn.remediate("worker1", "worker")["action"] == "restart"
    assert env.audit()[-1]["attempt"] is True


def test_dependency_node_that_does_not_answer_counts_as_down(env):
    env.ops.handler = lambda m, f, a: {"status": "dead"} if f == "airflow_health.probe" else True
    env.ops.alive.discard("infra")
    assert env.rn.remediate("master1", "triggerer")["dependency"] == "postgresql"


def test_scheduler_without_metastore_never_fails_over(env):
    env.ops.handler = _scheduler_handler(STALE, {"status": "dead"})
    env.ops.dependency["postgresql"] = "dead"
    for _ in range(5):
        assert env.rn.remediate("master2", "scheduler") == {"result": "blocked",
                                                             "dependency": "postgresql"}
    assert "airflow_health.restart" not in env.ops.funs()
    assert "airflow_health.stop" not in env.ops.funs() and _runtime_active(env) is None
    assert {r["action"] for r in env.audit()} == {"blocked"}


def test_second_scheduler_is_fenced_on_an_event(env):
    # master1 is active; master2's scheduler heartbeats too (partition healed)
    hb = {"status": "ok", "fresh": ["master1", "master2"], "stale_seconds": 15}
    env.ops.handler = _scheduler_handler(hb)
    assert env.rn.remediate("master1", "scheduler", status="split") == {"result": "fenced"}
    assert ("master2", "airflow_health.stop", ("scheduler",), {"disable": True}) in \
        env.ops.kw_calls
    assert "master1" not in [m for m, f, _ in env.ops.calls if f == "airflow_health.stop"]
    fence = env.audit()[-1]
    assert fence["action"] == "fence" and fence["minion"] == "master2"
    assert fence["outcome"] == "fenced"


def test_scheduler_actions_are_serialized(env):
    env.ops.handler = _scheduler_handler(STALE, {"status": "dead"})
    with env.ctx().store.lock("scheduler"):
        assert env.rn.remediate("master2", "scheduler") == {"result": "in-progress"}
        assert env.rn.failover_scheduler("manual") == {"result": "in-progress"}
        assert env.rn.minion_started("master2")["fence"] == "busy"
    assert "airflow_health.stop" not in env.ops.funs()


def test_presence_new_standby_master_is_fenced(env):
    env.ops.handler = _lb_handler([], {})
    res = env.rn.presence_changed(new=["master2"], lost=[])
    assert res["fence"] == {"master2": "fenced"}
    assert env.rn.presence_changed(new=["master1"], lost=[]).get("fence") is None  # the active


def _units(**over):
    ok = {"status": "ok", "enabled": True}
    units = {
        "master1": {"api-server": ok, "scheduler": ok, "dag-processor": ok, "triggerer": ok},
        "master2": {"api-server": ok, "scheduler": {"status": "dead", "enabled": False},
                    "dag-processor": ok, "triggerer": ok},
        "worker1": {"worker": ok},
        "infra": {"postgresql": ok, "rabbitmq": ok, "haproxy": ok},
    }
    for key, value in over.items():
        minion, daemon = key.split("__")
        units[minion][daemon.replace("_", "-")] = value
    return units


def _reconcile_handler(units, hb=None, probe="ok", backends=None, api=None):
    hb = hb or {"status": "ok", "fresh": ["master1"], "stale_seconds": 15}
    lb = _lb_handler(backends or [{"name": "master1", "status": "UP"},
                                  {"name": "master2", "status": "UP"}], api or {})

    def handler(minion, fun, args):
        if fun == "airflow_health.units":
            return units.get(minion)
        if fun == "airflow_health.scheduler_heartbeat":
            return hb
        if fun == "airflow_health.probe":
            return {"status": probe(minion, args) if callable(probe) else probe}
        if fun == "airflow_health.check":
            return {"api-server": {"status": "ok"}, "dag-processor": {"status": "ok"}}
        return lb(minion, fun, args)
    return handler


def test_reconcile_in_sync_is_cheap_and_silent(env):
    env.ops.handler = _reconcile_handler(_units())
    res = env.rn.reconcile()
    assert res["result"] == "in-sync" and res["plan"] == []
    assert env.audit() == []  # nothing to say: no audit record every interval
    acting = {"airflow_health.restart", "airflow_health.stop", "airflow_health.start",
              "state.apply", "airflow_health.haproxy_set_server"}
    assert not acting & set(env.ops.funs())


def test_reconcile_fences_a_running_standby_and_restarts_dead_daemons(env):
    units = _units(master2__scheduler={"status": "ok", "enabled": True},
                   worker1__worker={"status": "dead", "enabled": True})
    state = {"restarted": False}

    def probe(minion, args):
        return "ok" if state["restarted"] or minion != "worker1" else "dead"

    handler = _reconcile_handler(units, probe=probe)

    def wrapped(minion, fun, args):
        if fun == "airflow_health.restart":
            state["restarted"] = True
        return handler(minion, fun, args)

    env.ops.handler = wrapped
    res = env.rn.reconcile()
    assert res["result"] == "acted"
    assert res["done"]["master2/scheduler"] == "fenced"
    assert res["done"]["worker1/worker"]["result"] == "recovered"
    assert env.audit()[-1]["action"] == "reconcile"


def test_reconcile_puts_a_healthy_api_server_back_from_maint(env):
    # the lost "healthy again" event (incident 5): master1 stays in MAINT although healthy
    env.ops.handler = _reconcile_handler(_units(), backends=[
        {"name": "master1", "status": "MAINT"}, {"name": "master2", "status": "UP"}])
    res = env.rn.reconcile()
    assert res["done"]["haproxy"] == {"infra": [("master1", "ready", True)]}
    assert "state.apply" not in env.ops.funs()  # the fast path only: no reload


def test_reconcile_fences_a_split_brain_scheduler(env):
    hb = {"status": "ok", "fresh": ["master2", "master1"], "stale_seconds": 15}
    env.ops.handler = _reconcile_handler(_units(), hb=hb)
    res = env.rn.reconcile()
    assert res["done"]["split"] == {"master2": "fenced"}


def test_reconcile_paused_and_serialized(env):
    env.ops.handler = _reconcile_handler(_units())
    env.rn.maintenance("on")
    n = len(env.audit())
    assert env.rn.reconcile() == {"result": "skipped", "reason": "maintenance"}
    assert len(env.audit()) == n
    env.rn.maintenance("off")
    with env.ctx().store.lock("reconcile"):
        assert env.rn.reconcile() == {"result": "in-progress"}


@pytest.mark.parametrize("mode", ["active-active"])
def test_reconcile_active_active_has_no_fencing(env, mode):
    env.ops.pillar_data = {"airflow": {"scheduler": {"mode": mode}}}
    units = _units(master2__scheduler={"status": "ok", "enabled": True})
    env.ops.handler = _reconcile_handler(units, hb={"status": "ok",
                                                    "fresh": ["master1", "master2"]})
    assert env.rn.reconcile()["result"] == "in-sync"


def test_failover_is_damped_cluster_wide(env):
    env.ops.alive.discard("master1")
    ctx = env.ctx()
    for _ in range(3):  # three automatic failovers within the hour already
        ctx.store.record_attempt("cluster", "failover")
    env.ops.handler = _scheduler_handler(STALE)
    res = env.rn.failover_scheduler("presence", failed="master1", failed_reachable=False)
    assert res == {"result": "failover-damped", "failovers": 3}
    assert env.ops.fired[-1][0] == "airflow/alert/scheduler/failover-damped"
    assert env.audit()[-1]["outcome"] == "failover-damped"
    assert "airflow_health.start" not in env.ops.funs() and _runtime_active(env) is None
    # an operator's manual failover is not damped; the window slides
    assert env.rn.failover_scheduler("manual")["result"] in ("ok", "unverified")
    env.clock.t += 3601
    assert env.rn.failover_scheduler("presence", failed="master2",
                                     failed_reachable=False)["result"] != "failover-damped"


def test_failover_asks_a_slow_standby_again_before_giving_up(env):
    env.ops.alive.discard("master1")
    env.ops.slow = {"master2"}  # misses the quick ping (a loaded node), answers a longer one
    env.ops.handler = _scheduler_handler(STALE)
    res = env.rn.failover_scheduler("presence", failed="master1", failed_reachable=False)
    assert res["result"] != "no-candidate" and res.get("new") == "master2"


def test_reconcile_audits_a_restart_systemd_did_on_its_own(env):
    # the watchdog killed and restarted a hung worker: no event, no runner job; the reconcile
    # sees NRestarts go up, reads the cause from the node's journal, and audits it (only)
    units = _units(worker1__worker={"status": "ok", "enabled": True, "n_restarts": 0})
    handler = _reconcile_handler(units)
    asked = []

    def wrapped(minion, fun, args):
        if fun == "airflow_health.restart_causes":
            asked.append((minion, args))
            return {"unit": "airflow-worker", "failures": [
                {"at": 1764633600.0, "result": "watchdog"}, {"at": 1, "result": "evil; rm -rf /"}]}
        return handler(minion, fun, args)

    env.ops.handler = wrapped
    assert env.rn.reconcile()["result"] == "in-sync" and asked == []   # the baseline
    units["worker1"]["worker"]["n_restarts"] = 1
    res = env.rn.reconcile()
    assert res["result"] == "in-sync"                                 # observed, not acted on
    assert res["systemd_restarts"] == {"worker1/worker": ["watchdog"]}
    assert asked == [("worker1", ("worker", 1))]
    rec = env.audit()[-1]
    assert rec["action"] == "systemd-restart" and rec["outcome"] == "observed"
    assert rec["minion"] == "worker1" and rec["daemon"] == "worker" and rec["watchdog"] is True
    assert rec["n_restarts"] == 1 and rec["previous"] == 0
    assert rec["causes"] == [{"result": "watchdog", "at": 1764633600.0}]  # no free text
    acting = {"airflow_health.restart", "airflow_health.stop", "airflow_health.start",
              "airflow_health.kill_unit", "state.apply"}
    assert not acting & set(env.ops.funs())
    count = len(env.audit())
    env.rn.reconcile()                                                # the same count: silent
    assert len(env.audit()) == count
