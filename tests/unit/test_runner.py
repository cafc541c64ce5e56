"""
Unit tests of the healing runner _runners/airflow.py and its concerns (_utils/airflow_*.py).

The runner is loaded like Salt does it: ``__utils__`` holds the real utility modules, except
that ``airflow_ops.system_clock`` and ``airflow_ops.salt_ops`` hand out a FakeClock and a
FakeOps (no minions, no wall clock: every wait advances the fake clock). The audit log, locks
and state files are real, in tmp_path.
"""
import importlib.util
import json
import logging
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
UTILS = ("airflow_daemons", "airflow_decide", "airflow_store", "airflow_ops", "airflow_heal",
         "airflow_scheduler", "airflow_lb", "airflow_reconcile", "airflow_drift")


def _load(rel, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # salt's deferred log handler writes to a closed stream at exit: keep these loggers quiet
    logging.getLogger(name).disabled = True
    return mod


MODS = {name: _load(f"_utils/{name}.py", f"runner_test_{name}") for name in UTILS}
for _mod in MODS.values():
    if hasattr(_mod, "log"):
        _mod.log.disabled = True


def _utils_dict():
    """What Salt's utils loader gives the runner: {'<virtualname>.<function>': function}."""
    out = {}
    for mod in MODS.values():
        for attr, value in vars(mod).items():
            if callable(value) and not attr.startswith("_") and not isinstance(value, type):
                out[f"{mod.__virtualname__}.{attr}"] = value
    return out


CACHE = {
    "master1": {"roles": ["airflow-master"], "host": "master1"},
    "master2": {"roles": ["airflow-master"], "host": "master2"},
    "worker1": {"roles": ["airflow-worker"]},
    "infra": {"roles": ["airflow-db", "airflow-broker", "airflow-lb"]},
}
PUBLIC_VERBS = {
    "status", "maintenance", "audit_log", "failover_scheduler", "drain_api_server",
    "undrain_api_server", "reconcile_lb", "active_scheduler", "mark_deployed", "deploy_started",
    "remediate", "minion_started", "presence_changed", "key_deleted", "ignored", "reconcile",
    "grant", "revoke", "roles", "enforcement", "enforcement_report",
}
HEALTHY_MASTER = {"api-server": {"status": "ok"}, "dag-processor": {"status": "ok"}}


class FakeClock:
    """now() and sleep(): sleeping advances time; ``on_sleep`` lets a test act meanwhile."""

    def __init__(self, start=1_700_000_000.0):
        self.t = start
        self.sleeps = []
        self.on_sleep = None

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds
        if self.on_sleep:
            self.on_sleep(seconds)


ACTIONS = ("airflow_health.restart", "airflow_health.start", "airflow_health.stop")


class FakeOps:
    """SaltOps without Salt: ``handler(minion, fun, args)`` answers every minion call."""

    def __init__(self, cache):
        self.cache = {m: dict(g) for m, g in cache.items()}  # tests may change it
        self.alive = set(cache)
        self.pillar_data = {"airflow": {"scheduler": {"mode": "active-standby",
                                                      "active": "master1"}}}
        self.handler = lambda minion, fun, args: True
        # the dependency probes (Context.dependency_health: cmd on the db/broker nodes)
        self.dependency = {"postgresql": "ok", "rabbitmq": "ok"}
        self.dependency_uptime = {}  # dependency -> its unit's uptime (s); absent: long up
        self.calls = []
        self.kw_calls = []
        self.fired = []
        self.async_calls = []

    def grains_cache(self, tgt="*"):
        return {m: dict(g) for m, g in self.cache.items()}

    def present(self, minions, timeout=None):
        self.calls.append((tuple(minions or ()), "test.ping", (timeout,)))
        slow = getattr(self, "slow", set()) if timeout is None else set()
        return sorted(m for m in minions or [] if m in self.alive and m not in slow)

    def one(self, minion, fun, arg=(), timeout=None, kwarg=None):
        self.calls.append((minion, fun, tuple(arg)))
        self.kw_calls.append((minion, fun, tuple(arg), dict(kwarg or {})))
        if minion not in self.alive:
            return None
        ret = self.handler(minion, fun, tuple(arg))
        if fun in ACTIONS and not isinstance(ret, dict):  # the module's action functions
            return {"result": ret is True, "detail": "" if ret is True else str(ret)}
        return ret

    def cmd(self, tgt, fun, arg=(), timeout=None, tgt_type="glob", kwarg=None):
        targets = tgt if isinstance(tgt, list) else [tgt]
        if fun == "airflow_health.probe" and tgt_type == "list" and arg and \
                arg[0] in self.dependency:
            self.calls.append((tuple(targets), fun, tuple(arg)))
            unit = {"uptime": self.dependency_uptime.get(arg[0], 86400.0)}
            return {m: {"status": self.dependency[arg[0]], "unit": unit}
                    for m in targets if m in self.alive}
        out = {}
        for minion in targets:
            ret = self.one(minion, fun, arg)
            if ret is not None:
                out[minion] = ret
        return out

    def cmd_async(self, minions, fun):
        self.async_calls.append((tuple(minions), fun))

    def pillar(self, minion, grains):
        return self.pillar_data

    def cached_pillars(self, minions):
        return {m: p for m, p in getattr(self, "cached", {}).items() if m in minions}

    def fire(self, tag, data):
        self.fired.append((tag, data))

    def funs(self, minion=None):
        return [f for m, f, _ in self.calls if minion is None or m == minion]


@pytest.fixture
def env(tmp_path):
    """A loaded runner with fakes; env.rn is the runner, env.ops / env.clock the fakes."""
    rn = _load("_runners/airflow.py", "airflow_runner")

    class Env:
        pass

    e = Env()
    e.rn, e.tmp = rn, tmp_path
    e.clock = FakeClock()
    e.ops = FakeOps(CACHE)
    utils = _utils_dict()
    utils["airflow_ops.system_clock"] = lambda: e.clock
    utils["airflow_ops.salt_ops"] = lambda opts, conf: e.ops
    rn.__utils__ = utils
    # the master-owned role record grants what CACHE's grains claim (tests of refused
    # claims change the grains or the record on their own)
    e.roles_file = tmp_path / "roles.yaml"
    e.roles_file.write_text(json.dumps({m: g["roles"] for m, g in CACHE.items()}))
    rn.__opts__ = {"airflow_healing": {"state_dir": str(tmp_path), "lb_quiet": 0.5,
                                       "worker_verify_timeout": 5,
                                       "roles_file": str(e.roles_file)}}
    (tmp_path / "deployed").write_text("x")
    e.audit = lambda: [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()] \
        if (tmp_path / "audit.jsonl").exists() else []
    # the records without the intents written before each action (Context.act)
    e.outcomes = lambda: [r for r in e.audit() if r["action"] != "intent"]
    e.ctx = rn._context
    return e


def _runtime_active(env):
    path = env.tmp / "pillar" / "airflow_runtime.sls"
    return MODS["airflow_decide"].parse_runtime_pillar(MODS["airflow_daemons"], path.read_text()) \
        if path.exists() else None


# ------------------------------------------------------------------ public surface
def test_public_surface_is_the_operator_verbs_and_entry_points():
    rn = _load("_runners/airflow.py", "airflow_runner_surface")
    public = {n for n, v in vars(rn).items()
              if callable(v) and not n.startswith("_") and not isinstance(v, type)}
    assert public == PUBLIC_VERBS
    for name in PUBLIC_VERBS:
        doc = getattr(rn, name).__doc__ or ""
        assert "CLI Example" in doc and f"salt-run airflow.{name}" in doc, name
    assert rn.__virtual__() == "airflow"


@pytest.mark.parametrize("name", UTILS)
def test_every_utility_module_has_virtual(name):
    assert MODS[name].__virtual__() == name


def test_missing_utility_is_a_clear_error(env):
    del env.rn.__utils__["airflow_decide.api"]
    with pytest.raises(RuntimeError, match="airflow_decide.api not loaded"):
        env.rn.audit_log()


def test_junk_boolean_setting_fails_clearly(env):
    env.rn.__opts__["airflow_healing"]["dry_run"] = "perhaps"
    with pytest.raises(ValueError, match="airflow_healing:dry_run"):
        env.rn.maintenance("status")


# ------------------------------------------------------------------ remediate: validation
def test_remediate_spoofed_role_is_ignored_and_audited(env):
    res = env.rn.remediate("worker1", "scheduler", status="dead")
    assert res == {"result": "ignored", "reason": "minion does not have role airflow-master"}
    assert env.ops.calls == []
    rec = env.audit()[-1]
    assert (rec["action"], rec["outcome"], rec["minion"], rec["claimed"]) == (
        "ignored", "ignored", "worker1", "dead")


def test_remediate_beacon_tag_naming_another_minion_is_ignored(env):
    res = env.rn.remediate("worker1", "scheduler",
                           tag="salt/beacon/master1/airflow_health/scheduler")
    assert "does not match" in res["reason"]
    assert env.audit()[-1]["minion"] == "worker1"


@pytest.mark.parametrize("minion,daemon,tag,shown", [
    ("worker1", "worker; reboot", "airflow/health/worker", ("worker1", "?")),
    (None, "worker", "airflow/health/worker", ("?", "worker")),
    ({"id": "x"}, ["worker"], None, ("?", "?")),
    ("worker1", "worker", "salt/beacon/../x/airflow_health/worker", ("worker1", "worker")),
])
def test_remediate_malformed_is_ignored(env, minion, daemon, tag, shown):
    res = env.rn.remediate(minion, daemon, tag=tag, status="hung; rm -rf /")
    assert res == {"result": "ignored", "reason": "malformed health event"}
    rec = env.audit()[-1]
    assert (rec["minion"], rec["daemon"]) == shown and "claimed" not in rec
    assert env.ops.calls == []


def test_remediate_old_reactor_tag_minion_still_works(env):
    env.ops.handler = lambda m, f, a: {"status": "ok"}
    assert env.rn.remediate("worker1", "worker", tag_minion="worker1")["result"] == "ignored"
    assert env.rn.remediate("worker1", "worker", tag_minion="master1")["reason"].startswith("tag")


# ------------------------------------------------------------------ remediate: gates
def test_remediate_maintenance_pauses(env):
    env.rn.maintenance("on")
    assert env.rn.remediate("worker1", "worker")["reason"] == "maintenance"
    assert env.ops.calls == []
    assert env.audit()[-1]["action"] == "skipped"
    env.rn.maintenance(False)
    assert env.rn.maintenance("status") == {"maintenance": False}
    assert env.rn.maintenance(True) == {"maintenance": True}
    assert env.rn.maintenance("off") == {"maintenance": False}
    assert env.rn.maintenance("sideways")["result"] == "error"


def test_remediate_not_deployed_skips(env):
    env.rn.deploy_started()
    assert not (env.tmp / "deployed").exists()
    assert env.rn.remediate("worker1", "worker")["reason"] == "not deployed"
    assert env.ops.calls == []
    env.rn.mark_deployed()
    assert (env.tmp / "deployed").exists()
    assert [r["outcome"] for r in env.audit()] == ["started", "ok"]


def test_remediate_when_not_required_to_be_deployed(env):
    (env.tmp / "deployed").unlink()
    env.rn.__opts__["airflow_healing"]["require_deploy"] = "false"   # a string: strictly false
    env.ops.handler = lambda m, f, a: {"status": "ok"}
    assert env.rn.remediate("worker1", "worker")["result"] == "ignored"


# ------------------------------------------------------------------ remediate: services
def test_remediate_healthy_on_reprobe_does_nothing(env):
    env.ops.handler = lambda m, f, a: {"status": "ok"}
    assert env.rn.remediate("worker1", "worker", status="hung")["result"] == "ignored"
    assert env.ops.funs() == ["airflow_health.probe"]
    assert env.audit()[-1]["claimed"] == "hung"


def test_remediate_unreachable_and_wait(env):
    env.ops.alive.discard("worker1")
    assert env.rn.remediate("worker1", "worker")["result"] == "unreachable"
    assert env.audit()[-1]["outcome"] == "unreachable"
    env.ops.alive.add("worker1")
    env.ops.handler = lambda m, f, a: {"status": "restarting"}
    assert env.rn.remediate("worker1", "worker") == {"result": "wait", "status": "restarting"}


def test_remediate_hung_worker_kills_restarts_and_damps(env):
    state = {"restarted": False}

    def handler(minion, fun, args):  # hung until restarted, then ok once
        if fun == "airflow_health.probe":
            healthy, state["restarted"] = state["restarted"], False
            return {"status": "ok" if healthy else "hung"}
        if fun == "airflow_health.restart":
            state["restarted"] = True
        return True

    env.ops.handler = handler
    for _ in range(3):
        assert env.rn.remediate("worker1", "worker") == {"result": "recovered",
                                                          "action": "kill-restart"}
    assert ("worker1", "airflow_health.restart", ("worker",), {"kill": True}) in env.ops.kw_calls
    assert ("worker1", "airflow_health.restart", ("worker",)) in env.ops.calls
    recs = [r for r in env.audit() if r["action"] == "kill-restart"]
    assert len(recs) == 3 and all(r["attempt"] and r["outcome"] == "recovered" for r in recs)
    # 4th within the window: damped, alert fired, no restart
    env.ops.calls.clear()
    assert env.rn.remediate("worker1", "worker")["result"] == "damped"
    assert "airflow_health.restart" not in env.ops.funs()
    assert env.ops.fired[-1][0] == "airflow/alert/worker1/worker"
    assert env.audit()[-1]["outcome"] == "damped"
    assert env.audit()[-1]["reason"] == "3 remediations in 600s"
    # the window slides on the (fake) clock: 10 minutes later it may act again
    env.clock.t += 601
    assert env.rn.remediate("worker1", "worker")["result"] == "recovered"


def test_a_worker_that_fails_its_ping_while_the_broker_settles_is_not_killed(env):
    # incident c: right after the broker returns, the workers are still in kombu's reconnect
    # back-off; a kill-restart then killed the tasks they had just taken
    env.ops.handler = lambda m, f, a: {"status": "hung"} if f == "airflow_health.probe" else True
    env.ops.dependency_uptime["rabbitmq"] = 4.0
    assert env.rn.remediate("worker1", "worker") == {"result": "blocked", "dependency": "rabbitmq"}
    assert "airflow_health.restart" not in env.ops.funs()
    rec = env.audit()[-1]
    assert (rec["action"], rec["dependency"]) == ("blocked", "rabbitmq")
    assert rec["reason"] == "dependency rabbitmq came back less than 30 s ago"
    # a dead worker is started at once, settling broker or not
    env.ops.handler = lambda m, f, a: {"status": "dead"} if f == "airflow_health.probe" else True
    assert env.rn.remediate("worker1", "worker")["action"] == "restart"
    # once the broker has been up for the settle time, a hung worker is a hung worker
    env.ops.handler = lambda m, f, a: {"status": "hung"} if f == "airflow_health.probe" else True
    env.ops.dependency_uptime["rabbitmq"] = 31.0
    assert env.rn.remediate("worker1", "worker")["action"] == "kill-restart"


def test_remediate_dead_service_that_does_not_come_back(env):
    env.ops.handler = lambda m, f, a: {"status": "dead"} if f == "airflow_health.probe" else True
    res = env.rn.remediate("infra", "postgresql")
    assert res == {"result": "failed", "action": "restart"}
    assert ("infra", "airflow_health.restart", ("postgresql",)) in env.ops.calls
    assert ("infra", "airflow_health.restart", ("postgresql",), {"kill": False}) in env.ops.kw_calls
    assert env.audit()[-1]["seconds"] == 5.0          # worker_verify_timeout, on the fake clock


def test_remediate_dry_run(env):
    env.rn.__opts__["airflow_healing"]["dry_run"] = "true"
    env.ops.handler = lambda m, f, a: {"status": "dead"}
    assert env.rn.remediate("worker1", "worker") == {"result": "dry-run", "action": "restart"}
    assert "airflow_health.restart" not in env.ops.funs()
    assert env.audit()[-1]["outcome"] == "dry-run"


def test_remediate_in_progress_when_locked(env):
    ctx = env.ctx()
    with ctx.store.lock("worker1-worker") as got:
        assert got
        assert env.rn.remediate("worker1", "worker") == {"result": "in-progress"}


def test_remediate_api_server_reconciles_lb(env):
    env.ops.handler = lambda m, f, a: {"status": "ok"} if f == "airflow_health.api_server" \
        else ([] if f == "airflow_health.haproxy_backends" else {"x": {}})
    res = env.rn.remediate("master1", "api-server")
    assert res["result"] == "ok"
    assert env.audit()[-1]["reason"] == "api-server event from master1"


# ------------------------------------------------------------------ remediate: scheduler
def _scheduler_handler(hb, unit=None, extra=None):
    def handler(minion, fun, args):
        if fun == "airflow_health.scheduler_heartbeat":
            return hb(minion) if callable(hb) else hb
        if fun == "airflow_health.service":
            return unit
        if fun == "airflow_health.check":
            return HEALTHY_MASTER
        if extra:
            return extra(minion, fun, args)
        return True
    return handler


STALE = {"status": "stale", "fresh": [], "stale_seconds": 15,
         "schedulers": [{"hostname": "master1", "age": 40}]}


def test_scheduler_event_heartbeat_fresh_is_ignored(env):
    env.ops.handler = _scheduler_handler({"status": "ok", "fresh": ["master1"]})
    res = env.rn.remediate("master2", "scheduler", status="dead")
    assert res == {"result": "ignored", "reason": "heartbeat fresh"}
    assert env.audit()[-1]["claimed"] == "dead"
    assert "test.ping" not in env.ops.funs()


def test_scheduler_event_reporter_silent(env):
    env.ops.handler = _scheduler_handler(None)
    assert env.rn.remediate("master2", "scheduler")["result"] == "unreachable"
    assert env.audit()[-1]["outcome"] == "unreachable"


def test_scheduler_event_active_active_and_unknown(env):
    env.ops.pillar_data = {"airflow": {"scheduler": {"mode": "active-active"}}}
    assert env.rn.remediate("master2", "scheduler")["reason"] == "active-active"
    assert env.ops.calls == []
    env.ops.pillar_data = {}
    env.ops.handler = _scheduler_handler({"status": "error", "detail": "db down"})
    assert env.rn.remediate("master2", "scheduler") == {"result": "unknown"}


def test_scheduler_event_waits_within_start_grace(env):
    env.ops.handler = _scheduler_handler(STALE, {"status": "ok", "starting": True})
    assert env.rn.remediate("master2", "scheduler") == {"result": "wait"}
    assert "airflow_health.restart" not in env.ops.funs()


def test_scheduler_event_restarts_hung_scheduler_then_damped_failover(env):
    env.ops.handler = _scheduler_handler(STALE, {"status": "ok", "starting": False})
    for _ in range(3):
        assert env.rn.remediate("master2", "scheduler") == {"result": "restarted"}
    assert env.ops.calls.count(("master1", "airflow_health.restart", ("scheduler",))) == 3
    # the 4th: restarts damped on master1 -> the scheduler moves to master2
    started = []

    def hb(minion):
        return {"status": "ok", "fresh": ["master2"]} if started else STALE

    env.ops.handler = _scheduler_handler(
        hb, {"status": "ok", "starting": False},
        extra=lambda m, f, a: started.append(m) or True if f == "airflow_health.start" else True)
    res = env.rn.remediate("master2", "scheduler")
    assert res["result"] == "ok" and res["new"] == "master2" and res["fence"] == "fenced"
    assert [r["outcome"] for r in env.outcomes()[-2:]] == ["damped", "ok"]
    assert _runtime_active(env) == "master2"


def test_scheduler_event_restart_dry_run_and_locked(env):
    env.ops.handler = _scheduler_handler(STALE, {"status": "dead"})
    ctx = env.ctx()
    with ctx.store.lock("scheduler"):
        assert env.rn.remediate("master2", "scheduler") == {"result": "in-progress"}
    env.rn.__opts__["airflow_healing"]["dry_run"] = True
    assert env.rn.remediate("master2", "scheduler") == {"result": "dry-run"}
    assert "airflow_health.restart" not in env.ops.funs()


def test_scheduler_event_active_gone_fails_over(env):
    env.ops.alive.discard("master1")
    started = []

    def hb(minion):
        return {"status": "ok", "fresh": ["master2"]} if started else STALE

    env.ops.handler = _scheduler_handler(
        hb, extra=lambda m, f, a: started.append(m) or True if f == "airflow_health.start" else True)
    res = env.rn.remediate("master2", "scheduler")
    assert res["result"] == "ok" and res["fence"] == "unreachable"


# ------------------------------------------------------------------ failover
def test_failover_unreachable_old_master(env):
    env.ops.alive.discard("master1")
    started = []

    def hb(minion):
        assert minion != "master1"
        return {"status": "ok", "fresh": ["master2"]} if started else STALE

    env.ops.handler = _scheduler_handler(
        hb, extra=lambda m, f, a: started.append(m) or True if f == "airflow_health.start" else True)
    res = env.rn.failover_scheduler("test", failed="master1")
    assert res["result"] == "ok" and res["new"] == "master2" and res["fence"] == "unreachable"
    assert _runtime_active(env) == "master2"
    assert env.audit()[-1]["action"] == "failover"
    assert ("master2", "airflow_health.start", ("scheduler",), {"enable": True}) in env.ops.kw_calls
    assert env.ops.async_calls == [(("master2",), "saltutil.refresh_pillar")]
    assert env.rn.active_scheduler() == {"mode": "active-standby", "active": "master2"}


def test_failover_waits_for_vanished_nodes_heartbeat_to_go_stale(env):
    env.ops.alive.discard("master1")
    t0 = env.clock.now()
    started = []

    def hb(minion):
        if started:
            return {"status": "ok", "fresh": ["master2"], "stale_seconds": 3}
        if env.clock.now() - t0 < 2.5:  # master1 heartbeated just before it vanished
            return {"status": "ok", "fresh": ["master1"], "stale_seconds": 3,
                    "schedulers": [{"hostname": "master1", "age": 1}]}
        return dict(STALE, stale_seconds=3)

    def extra(minion, fun, args):
        if fun == "airflow_health.start":
            assert env.clock.now() - t0 >= 2.5, "started while the old one was still fresh"
            started.append(minion)
        return True

    env.ops.handler = _scheduler_handler(hb, extra=extra)
    res = env.rn.failover_scheduler("presence", failed="master1", failed_reachable=False)
    assert res["result"] == "ok" and res["new"] == "master2" and started == ["master2"]


def test_failover_refused_when_vanished_node_keeps_heartbeating(env):
    env.ops.alive.discard("master1")
    env.ops.handler = _scheduler_handler(
        lambda m: {"status": "ok", "fresh": ["master1"], "stale_seconds": 3}
        if m == "master2" and env.ops.funs().count("airflow_health.scheduler_heartbeat") > 1
        else STALE)
    res = env.rn.failover_scheduler("presence", failed="master1", failed_reachable=False)
    assert res["result"] == "refused"
    assert sum(env.clock.sleeps) == 9          # stale_seconds + 5, then it gave up
    assert "airflow_health.start" not in env.ops.funs()


def test_failover_refused_when_old_still_heartbeats(env):
    env.ops.handler = _scheduler_handler(
        {"status": "ok", "fresh": ["master1"], "schedulers": [{"hostname": "master1", "age": 1}]},
        extra=lambda m, f, a: "ERROR: could not stop" if f == "airflow_health.stop" else True)
    res = env.rn.failover_scheduler("manual", failed="master1")
    assert res["result"] == "refused" and res["fence"] == "failed"
    assert "airflow_health.start" not in env.ops.funs()
    assert _runtime_active(env) is None
    assert env.ops.fired[-1][0] == "airflow/alert/scheduler/fence-failed"
    assert env.audit()[-1]["outcome"] == "refused-two-schedulers"


def test_failover_not_needed_when_someone_else_heartbeats(env):
    env.ops.handler = _scheduler_handler({"status": "ok", "fresh": ["master2"]})
    res = env.rn.failover_scheduler("beacon", failed="master1")
    assert res["result"] == "not-needed"
    assert env.audit()[-1]["outcome"] == "not-needed"


def test_failover_no_candidate(env):
    def extra(minion, fun, args):
        return True

    env.ops.handler = _scheduler_handler(STALE, extra=extra)
    env.ops.handler = (lambda base: lambda m, f, a: {"api-server": {"status": "dead"}}
                       if f == "airflow_health.check" else base(m, f, a))(env.ops.handler)
    res = env.rn.failover_scheduler("manual")
    assert res["result"] == "no-candidate"
    assert env.ops.fired[-1][0] == "airflow/alert/scheduler/no-candidate"
    assert env.audit()[-1]["outcome"] == "no-candidate"


def test_failover_unverified_when_new_scheduler_stays_silent(env):
    env.ops.handler = _scheduler_handler(STALE)
    res = env.rn.failover_scheduler("manual")
    assert res["result"] == "unverified" and res["fence"] == "fenced"
    assert res["seconds"] == 60.0                     # scheduler_start_timeout, fake clock


def test_failover_guards(env):
    assert env.rn.failover_scheduler("x", failed="a;b")["reason"] == "invalid minion id"
    env.rn.__opts__["airflow_healing"]["dry_run"] = True
    env.ops.handler = _scheduler_handler(STALE)
    assert env.rn.failover_scheduler("manual") == {"result": "dry-run", "new": "master2"}
    with env.ctx().store.lock("scheduler"):
        assert env.rn.failover_scheduler("manual") == {"result": "in-progress"}


def test_failover_noop_in_active_active(env):
    env.ops.pillar_data = {"airflow": {"scheduler": {"mode": "active-active"}}}
    assert env.rn.failover_scheduler("x")["result"] == "ignored"
    assert env.ops.calls == []


# ------------------------------------------------------------------ minion start / presence / key
def test_minion_started_fences_a_returning_standby(env):
    env.ops.handler = _lb_handler([], {})
    res = env.rn.minion_started("master2")
    assert res["fence"] == "fenced" and res["lb"]["result"] == "ok"
    assert ("master2", "airflow_health.stop", ("scheduler",)) in env.ops.calls
    fence = [r for r in env.audit() if r["action"] == "fence"][-1]
    assert fence["reason"] == "returning master, active is master1"


def test_minion_started_active_master_is_not_fenced(env):
    res = env.rn.minion_started("master1")
    assert "fence" not in res and "airflow_health.stop" not in env.ops.funs()


def test_minion_started_guards(env):
    assert env.rn.minion_started("worker1") == {"result": "ignored", "reason": "not a master"}
    assert env.rn.minion_started(None) == {"result": "ignored"}
    assert env.audit()[-1]["reason"] == "minion_started: invalid minion id"
    env.rn.maintenance("on")
    assert env.rn.minion_started("master2")["result"] == "skipped"


def test_presence_ignores_non_masters_and_garbage(env):
    assert env.rn.presence_changed(new=["worker1"], lost=["x;y"])["result"] == "ignored"
    assert env.rn.presence_changed(new="master1", lost=None)["result"] == "ignored"
    assert env.ops.calls == []


def test_presence_lost_active_master_fails_over_and_reconciles(env):
    env.ops.alive.discard("master1")
    started = []

    def hb(minion):
        return {"status": "ok", "fresh": ["master2"]} if started else STALE

    env.ops.handler = _scheduler_handler(
        hb, extra=lambda m, f, a: started.append(m) or True if f == "airflow_health.start"
        else ([] if f == "airflow_health.haproxy_backends" else True))
    res = env.rn.presence_changed(new=[], lost=["master1"])
    assert res["failover"]["result"] == "ok" and res["lb"]["result"] in ("ok", "partial")


def test_presence_lost_but_still_answering_does_not_fail_over(env):
    res = env.rn.presence_changed(lost=["master1"])
    assert "failover" not in res
    env.rn.maintenance("on")
    assert env.rn.presence_changed(lost=["master1"])["result"] == "skipped"


def test_key_deleted_reconciles_lb_and_rejects_garbage(env):
    assert env.rn.key_deleted("master3; rm -rf /")["result"] == "ignored"
    assert env.ops.calls == []
    res = env.rn.key_deleted("master3")
    assert res["result"] == "ok"
    assert env.audit()[-1]["reason"] == "key of master3 deleted"
    env.rn.maintenance("on")
    assert env.rn.key_deleted("master3")["result"] == "skipped"


# ------------------------------------------------------------------ load balancer
def _lb_handler(backends, api, self_report=None):
    """``api``: each api-server's health as the lb node sees it (backend_health);
    ``self_report``: what the api-servers say of themselves (default: the same)."""
    def handler(minion, fun, args):
        if fun == "airflow_health.backend_health":
            return {b["name"]: {"status": api.get(b["name"], "ok")} for b in backends}
        if fun == "airflow_health.api_server":
            return {"status": (self_report if self_report is not None else api).get(minion, "ok")}
        if fun == "airflow_health.haproxy_backends":
            return backends
        if fun == "airflow_health.haproxy_set_server":
            return {"result": True}
        if fun == "state.apply":
            return {"haproxy": {"result": True}}
        return True
    return handler


def test_reconcile_sets_dead_api_server_to_maint(env):
    env.ops.handler = _lb_handler([{"name": "master1", "status": "UP"},
                                   {"name": "master2", "status": "UP"}], {"master2": "down"})
    res = env.rn.reconcile_lb("test")
    assert res["result"] == "ok" and res["health"] == {"master1": "ok", "master2": "dead"}
    assert res["runtime"] == {"infra": [("master2", "maint", True)] * 2}  # before+after reload
    assert env.clock.sleeps[0] == 0.5                                      # lb_quiet
    assert env.audit()[-1]["action"] == "reconcile_lb"


def test_a_health_event_sets_runtime_states_without_rebuilding_the_backends(env):
    # haproxy already has exactly the record's masters: a storm of api-server claims costs
    # socket commands, no mine update, no state.apply, no reload
    env.ops.handler = _lb_handler([{"name": "master1", "status": "UP"},
                                   {"name": "master2", "status": "UP"}], {"master2": "down"})
    res = env.rn.remediate("master2", "api-server")
    assert res["backends_rebuilt"] is False and res["runtime"] == {"infra": [("master2", "maint", True)]}
    assert "state.apply" not in env.ops.funs() and "mine.update" not in env.ops.funs()
    # a master missing from haproxy (granted, not yet a backend): rebuilt, even from an event
    env.clock.t += 5
    env.ops.handler = _lb_handler([{"name": "master1", "status": "UP"}], {})
    assert env.rn.remediate("master2", "api-server")["backends_rebuilt"] is True
    assert "state.apply" in env.ops.funs()


def test_membership_events_rebuild_the_backends(env):
    env.ops.handler = _lb_handler([{"name": "master1", "status": "UP"},
                                   {"name": "master2", "status": "UP"}], {})
    assert env.rn.reconcile_lb("test")["backends_rebuilt"] is True   # an operator's reconcile
    assert env.rn.key_deleted("master3")["lb"]["backends_rebuilt"] is True


def test_lb_members_differ():
    D = MODS["airflow_decide"]
    rows = [{"name": "master1"}, {"name": "master2"}]
    assert D.lb_members_differ({"infra": rows}, ["master1", "master2"]) is False
    assert D.lb_members_differ({"infra": rows[:1]}, ["master1", "master2"]) is True
    assert D.lb_members_differ({"infra": rows}, ["master1"]) is True
    assert D.lb_members_differ({"infra": {"status": "error"}}, ["master1"]) is True  # no evidence
    assert D.lb_members_differ({}, ["master1"]) is False  # no lb: nothing to rebuild


def test_api_server_health_is_the_load_balancers_view_not_its_own(env):
    # master2 says it is fine; the lb node cannot get a healthy answer from it: out it goes.
    # master1 says it is down (a lie, or a forged event): the lb view keeps it in.
    env.ops.handler = _lb_handler([{"name": "master1", "status": "UP"},
                                   {"name": "master2", "status": "UP"}],
                                  {"master2": "down"}, self_report={"master1": "down"})
    res = env.rn.reconcile_lb("test")
    assert res["health"] == {"master1": "ok", "master2": "dead"}
    assert "airflow_health.api_server" not in env.ops.funs()


def test_reconcile_partial_and_dry_run(env):
    env.ops.handler = lambda m, f, a: "ERROR" if f == "state.apply" else []
    assert env.rn.reconcile_lb("t")["result"] == "partial"
    env.clock.t += 1  # a request after that run started
    env.rn.__opts__["airflow_healing"]["dry_run"] = True
    assert env.rn.reconcile_lb("t") == {"result": "dry-run"}


def test_reconcile_burst_coalesces_to_one(env):
    """Four requests while the first waits out its quiet period: the last one runs."""
    env.ops.handler = _lb_handler([], {})
    results = []
    nested = {"n": 0}

    def another_request(seconds):
        if nested["n"] < 3:
            nested["n"] += 1
            results.append(env.rn.reconcile_lb("t")["result"])

    env.clock.on_sleep = another_request
    results.append(env.rn.reconcile_lb("t")["result"])
    assert sorted(results) == ["coalesced"] * 3 + ["ok"]
    assert env.ops.funs().count("state.apply") == 1


def _count_state_apply(env):
    return env.ops.funs().count("state.apply")


def test_reconcile_second_request_returns_at_once_and_the_leader_waits_for_it(env):
    """Two requests: the second never sleeps; the leader runs quiet seconds after it."""
    env.ops.handler = _lb_handler([], {})
    t0 = env.clock.now()
    second = {}

    def another_request(seconds):
        if not second:
            env.clock.t += 0.2                      # the second event comes a little later
            sleeps_before = len(env.clock.sleeps)
            second["res"] = env.rn.reconcile_lb("t2")
            second["slept"] = len(env.clock.sleeps) - sleeps_before
            second["at"] = env.clock.now()

    env.clock.on_sleep = another_request
    res = env.rn.reconcile_lb("t1")
    assert res["result"] == "ok"
    assert second == {"res": {"result": "coalesced"}, "slept": 0, "at": second["at"]}
    assert _count_state_apply(env) == 1
    # the run started one quiet period (0.5 s) after the LAST request, not the first
    assert env.ctx().store.read_ts("lb.run") == pytest.approx(second["at"] + 0.5)
    assert env.ctx().store.read_ts("lb.run") > t0 + 0.5


def test_reconcile_request_during_the_run_gets_a_second_run(env):
    base = _lb_handler([], {})
    during = []

    def handler(minion, fun, args):
        if fun == "state.apply" and not during:
            env.clock.t += 1
            during.append(env.rn.reconcile_lb("during the run")["result"])
        return base(minion, fun, args)

    env.ops.handler = handler
    assert env.rn.reconcile_lb("t")["result"] == "ok"
    assert during == ["coalesced"]
    assert _count_state_apply(env) == 2            # the leader looped for it
    assert [r["action"] for r in env.outcomes()] == ["reconcile_lb"] * 2


class _RaceStore:
    """A Store whose ``lb`` lock runs ``hook`` after the leader's last check, before release."""

    def __init__(self, store, hook):
        self._store, self._hook = store, hook

    def __getattr__(self, name):
        return getattr(self._store, name)

    def lock(self, name, blocking=False, timeout=0):
        import contextlib

        inner = self._store.lock(name, blocking=blocking, timeout=timeout)

        @contextlib.contextmanager
        def wrapped():
            with inner as got:
                yield got
                if name == "lb" and got:
                    self._hook()
        return wrapped()


def test_reconcile_request_in_the_release_race_window_is_not_lost(env):
    env.ops.handler = _lb_handler([], {})
    real_store = env.rn.__utils__["airflow_store.store"]
    late = []

    def hook():
        if not late:  # the leader checked, found nothing, and has not released the lock yet
            env.clock.t += 1
            late.append(env.rn.reconcile_lb("late")["result"])

    env.rn.__utils__["airflow_store.store"] = lambda conf, clock: _RaceStore(
        real_store(conf, clock), hook)
    assert env.rn.reconcile_lb("t")["result"] == "ok"
    assert late == ["coalesced"]                   # it found the lock taken and went away
    assert _count_state_apply(env) == 2            # ... and the leader served it after release
    assert env.ctx().store.read_ts("lb.run") > env.ctx().store.read_ts("lb.request") - 1e-9


def test_reconcile_storm_only_the_leader_waits(env):
    """500 events within 3 s: one thread waits, every other returns at once; few runs."""
    env.ops.handler = _lb_handler([], {})
    results, sleeps_by_others = [], []
    t0 = env.clock.now()

    def storm(seconds):
        while len(results) < 500:                  # all of them during the leader's first wait
            before = len(env.clock.sleeps)
            results.append(env.rn.reconcile_lb("storm")["result"])
            sleeps_by_others.append(len(env.clock.sleeps) - before)
            env.clock.t += 3 / 500
    env.clock.on_sleep = storm
    assert env.rn.reconcile_lb("first")["result"] == "ok"
    assert len(results) == 500 and set(results) == {"coalesced"}
    assert sum(sleeps_by_others) == 0
    assert _count_state_apply(env) == 1
    # the leader ran one quiet period (0.5 s) after the last event, 4 s after the first
    store = env.ctx().store
    assert store.read_ts("lb.run") == pytest.approx(store.read_ts("lb.request") + 0.5)
    assert store.read_ts("lb.run") - t0 == pytest.approx(0.5 + 499 * 3 / 500 + 0.5, abs=1e-3)


def test_reconcile_steady_stream_runs_after_max_wait(env):
    """A request every 0.8 s (lb_quiet 0.5 is never reached): the run comes at lb_max_wait."""
    env.ops.handler = _lb_handler([], {})
    t0 = env.clock.now()
    results = []

    def stream(seconds):
        env.clock.t += 0.3
        results.append(env.rn.reconcile_lb("stream")["result"])

    env.clock.on_sleep = stream
    assert env.rn.reconcile_lb("t")["result"] == "ok"
    assert _count_state_apply(env) == 1 and len(results) > 10
    assert set(results) == {"coalesced"}
    assert 10 <= env.ctx().store.read_ts("lb.run") - t0 < 11     # lb_max_wait 10


def test_reconcile_coalesces_while_another_leads(env):
    with env.ctx().store.lock("lb"):
        assert env.rn.reconcile_lb("t", quiet=0) == {"result": "coalesced"}
    assert env.clock.sleeps == [] and env.ops.calls == []
    # ... and the leader sees the request it left behind
    assert env.ctx().store.read_ts("lb.request") == env.clock.now()


def test_drain_waits_for_zero_sessions_then_maint(env):
    sessions = iter([4, 2, 0])

    def handler(minion, fun, args):
        if fun == "airflow_health.haproxy_backends":
            return [{"name": "master2", "scur": next(sessions)}]
        return {"result": True}

    env.ops.handler = handler
    assert env.rn.drain_api_server("master2") == {"result": "drained", "server": "master2"}
    sets = [a for m, f, a in env.ops.calls if f == "airflow_health.haproxy_set_server"]
    assert sets == [("master2", "drain"), ("master2", "maint")]
    assert env.ctx().store.drained() == {"master2"}
    assert env.audit()[-1]["seconds"] == 1.0
    assert env.rn.undrain_api_server("master2") == {"result": "ready", "server": "master2"}
    assert env.ctx().store.drained() == set()


def test_drain_timeout_and_bad_names(env):
    env.ops.handler = lambda m, f, a: [{"name": "master2", "scur": 1}] \
        if f == "airflow_health.haproxy_backends" else {"result": True}
    assert env.rn.drain_api_server("master2", timeout=3)["result"] == "timeout"
    assert env.rn.drain_api_server("a/b")["result"] == "error"
    assert env.rn.undrain_api_server("a\nb")["result"] == "error"


# ------------------------------------------------------------------ operator verbs
def test_status_overview(env):
    env.ops.handler = lambda m, f, a: [] if f == "airflow_health.haproxy_backends" else {"x": 1}
    st = env.rn.status()
    assert st["nodes"]["infra"] == {"roles": ["airflow-broker", "airflow-db", "airflow-lb"],
                                    "present": True}
    assert st["scheduler"] == {"mode": "active-standby", "active": "master1"}
    assert st["haproxy"] == {"infra": []} and st["deployed"] and not st["maintenance"]


def test_ignored_and_audit_log_limit(env):
    assert env.rn.ignored("worker 1", "x" * 300)["reason"] == "x" * 200
    assert env.audit()[-1]["minion"] == "?"
    for i in range(5):
        env.ctx().audit("x", reason=str(i))
    assert [r["reason"] for r in env.rn.audit_log(2)] == ["3", "4"]
    assert env.audit()[-1]["ts"] == env.clock.now()


def test_store_tolerates_junk_files(env):
    ctx = env.ctx()
    (env.tmp / "audit.jsonl").write_text('{"action": "a"}\nnot json\n')
    assert ctx.store.read_audit() == [{"action": "a"}]
    (env.tmp / "drained.json").write_text('{"not": "a list"}')
    assert ctx.store.drained() == set()
    (env.tmp / "lb.run").write_text("soon")
    assert ctx.store.read_ts("lb.run") is None


def test_real_clock_and_ops_factories(monkeypatch):
    ops_mod = MODS["airflow_ops"]
    slept = []
    monkeypatch.setattr(ops_mod.time, "time", lambda: 42.0)
    monkeypatch.setattr(ops_mod.time, "sleep", slept.append)
    clock = ops_mod.system_clock()
    assert clock.now() == 42.0
    clock.sleep(3)
    assert slept == [3]
    ops = ops_mod.salt_ops({"sock_dir": "/nonexistent"}, {"ping_timeout": 2, "probe_timeout": 20})
    assert ops.present([]) == []


def test_present_does_not_ping_a_minion_with_no_connection(monkeypatch):
    # a lost node: the master holds no publisher connection for it, so no ping waits out its
    # timeout + gather_job_timeout; with no presence data (None) every minion is pinged
    ops = MODS["airflow_ops"].salt_ops({"sock_dir": "/nonexistent"},
                                       {"ping_timeout": 2, "probe_timeout": 20})
    pinged = []

    def cmd(tgt, fun, arg=(), timeout=None, tgt_type="glob", kwarg=None):
        pinged.append(list(tgt))
        return {m: True for m in tgt}

    monkeypatch.setattr(ops, "cmd", cmd)
    monkeypatch.setattr(ops, "connected", lambda: {"master2", "worker1"})
    assert ops.present(["master1", "master2"]) == ["master2"]
    assert ops.present(["master1"]) == []
    assert pinged == [["master2"]]
    monkeypatch.setattr(ops, "connected", lambda: None)
    assert ops.present(["master1", "master2"]) == ["master1", "master2"]
    assert pinged[-1] == ["master1", "master2"]


# ------------------------------------------------------------------ rate limiting (event storms)
def test_remediate_does_not_count_events_a_second_time(env):
    # the reactor's gate (_modules/airflow_gate.py, tests/unit/test_gate.py) counted each event
    # before the runner job was started: remediate must not count it again
    env.ops.handler = lambda m, f, a: {"status": "ok"}
    results = [env.rn.remediate("worker1", "worker")["result"] for _ in range(30)]
    assert results == ["ignored"] * 30                  # more than rate_limit_events 20
    assert len(env.ops.calls) == 30                     # each one re-probed
    assert not (env.tmp / "rate").exists()
    assert not any(r["action"] == "rate-limited" for r in env.audit())


def test_damping_survives_a_flood_of_other_audit_records(env):
    state = {"restarted": False}

    def handler(minion, fun, args):
        if fun == "airflow_health.probe":
            healthy, state["restarted"] = state["restarted"], False
            return {"status": "ok" if healthy else "dead"}
        if fun == "airflow_health.restart":
            state["restarted"] = True
        return True

    env.ops.handler = handler
    for _ in range(3):
        assert env.rn.remediate("worker1", "worker")["result"] == "recovered"
    ctx = env.ctx()
    for i in range(5000):                     # e.g. ignored/spoofed events, other minions
        ctx.audit("ignored", "worker9", "worker", f"flood {i}", "ignored")
    assert len(ctx.store.read_audit()) == 2000     # the attempts fell out of that view
    env.clock.t += 11                              # a fresh rate-limit window
    assert env.rn.remediate("worker1", "worker")["result"] == "damped"
    assert len(ctx.store.attempts("worker1", "worker")) == 3


# ------------------------------------------------------------------ enforcement watch
ENFORCE_JOB = {"function": "airflow_enforce.run", "seconds": 120, "splay": 30}


def _stale_setup(env):
    env.ops.cached = {"worker1": {"schedule": {"airflow-enforce-highstate": dict(ENFORCE_JOB)}}}
    refreshed = []

    def handler(minion, fun, args):
        if fun == "saltutil.refresh_pillar":
            refreshed.append(minion)
        return True
    env.ops.handler = handler
    return refreshed


def _stale_records(env):
    return [r for r in env.audit() if r["action"] == "enforce-stale"]


def test_a_node_whose_schedule_stopped_firing_gets_its_pillar_refreshed_and_an_alert(env):
    refreshed = _stale_setup(env)
    env.rn.reconcile()  # first sight: worker1 may run from now on
    env.clock.t += 2 * 150 - 1
    env.rn.reconcile()
    assert refreshed == [] and _stale_records(env) == []
    env.clock.t += 2  # 2 x (interval + splay) without a run
    done = env.rn.reconcile()["done"]
    assert refreshed == ["worker1"] and list(done["enforce-stale"]) == ["worker1"]
    [rec] = _stale_records(env)
    assert rec["minion"] == "worker1" and rec["outcome"] == "refreshed"
    assert [t for t, _ in env.ops.fired if t == "airflow/alert/enforce/stale"] == [
        "airflow/alert/enforce/stale"]
    # once per period, not every pass
    env.clock.t += 30
    env.rn.reconcile()
    assert refreshed == ["worker1"]
    # a run reported since: in time again
    env.ops.handler = lambda minion, fun, args: True
    env.tmp.joinpath("enforce").mkdir(exist_ok=True)
    env.tmp.joinpath("enforce", "worker1.json").write_text(json.dumps({"recorded": env.clock.now()}))
    env.clock.t += 200
    env.rn.reconcile()
    assert len(_stale_records(env)) == 1


def test_a_paused_node_or_one_without_the_job_is_never_stale(env):
    refreshed = _stale_setup(env)
    env.rn.reconcile()
    (env.tmp / "enforcement-paused").write_text("x")
    for _ in range(3):
        env.clock.t += 400
        env.rn.reconcile()
    (env.tmp / "enforcement-paused").unlink()
    env.clock.t += 299  # the pause held it until the last pass: not overdue yet
    env.rn.reconcile()
    env.ops.cached = {}  # enforcement off there: no job in its pillar
    env.clock.t += 1000
    env.rn.reconcile()
    assert refreshed == [] and _stale_records(env) == []
