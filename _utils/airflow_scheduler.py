"""
Scheduler placement, restart, failover and fencing (Salt utility module ``airflow_scheduler``,
master side).

In active-standby mode exactly one master runs the scheduler (``airflow:scheduler:active``,
overridden by the runtime pillar a failover writes). This module only gathers observations
and acts; every decision is a function of ``airflow_decide``:

* ``remediate``: a scheduler health event -> ``decide_scheduler`` -> wait, restart on the same
  node (damped) or ``failover``.
* ``failover``: elect a healthy standby (``elect_master``), fence the old node
  (``fencing_outcome``), wait until it is safe (``scheduler_start_verdict``, never two
  schedulers), persist the choice, start it, verify its heartbeat (``runs_scheduler``).
* ``fence_returning``: a master that comes back while another one is active gets its scheduler
  stopped and disabled (``must_fence_returning``).

Every function takes the runner's ``Context`` (``airflow_ops``) first.
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "airflow_scheduler"


def __virtual__():
    return __virtualname__


def _heartbeat(ctx, via, subject=None):
    """
    The scheduler heartbeats (None: no answer). Read where no master can colour them: on the
    db node, from the metastore itself (``metastore_heartbeat``); with an external metastore
    (no airflow-db node) through master ``via``, never through ``subject``, the master being
    judged, when another one can answer.
    """
    ops = ctx.ops
    for db in ctx.minions_running("postgresql"):
        hb = ops.one(db, "airflow_health.metastore_heartbeat")
        if isinstance(hb, dict) and hb.get("status") in ("ok", "stale", "none"):
            return hb
    if via == subject and subject is not None:
        others = [m for m in ctx.minions_running("scheduler") if m != subject]
        via = (ops.present(others) or [via])[0] if others else via
    hb = ops.one(via, "airflow_health.scheduler_heartbeat") if via else None
    return hb if isinstance(hb, dict) else None


def _fence(ctx, minion, reachable, reason=None):
    """
    Stop and disable the scheduler unit of ``minion``: fenced | failed | unreachable. With
    ``reason`` it is an action of its own (intent recorded first, then the ``fence`` record);
    without, a step of a failover whose intent is recorded.
    """
    if not (minion and reachable):
        return ctx.core.fencing_outcome(None)
    op = ctx.act("fence", minion, "scheduler", reason) if reason else None
    outcome = ctx.core.fencing_outcome(ctx.ops.one(
        minion, "airflow_health.stop", ["scheduler"], kwarg={"disable": True}, timeout=90))
    if op:
        op.done(outcome)
    return outcome


def fence_split(ctx, heartbeat, grains_cache, mode, active, why):
    """
    Fence every standby master whose scheduler heartbeats (``split_targets``); call with the
    scheduler lock held. Returns {minion: fencing outcome}.
    """
    masters = ctx.minions_running("scheduler", grains_cache)
    names = {m: ctx.core.node_names(m, grains_cache.get(m)) for m in masters}
    fenced = {}
    for minion in ctx.core.split_targets(mode, active, heartbeat, names):
        fenced[minion] = _fence(ctx, minion, True, f"{why}: a second scheduler heartbeats, "
                                                    f"active is {active}")
        ctx.ops.fire(f"airflow/healing/scheduler/fence", {"minion": minion, "active": active,
                                                          "outcome": fenced[minion]})
    return fenced


def remediate(ctx, reporter, grains_cache, claimed=None):
    """A master reported the scheduler unhealthy: re-probe, decide, act."""
    with ctx.store.lock("scheduler") as got:
        if not got:
            return {"result": "in-progress"}  # a failover, restart or fence is running
        return _remediate_locked(ctx, reporter, grains_cache, claimed)


def _remediate_locked(ctx, reporter, grains_cache, claimed):
    core = ctx.core
    extra = {"claimed": core.claimed_status(claimed)} if core.claimed_status(claimed) else {}
    mode, active = ctx.placement(grains_cache)  # re-read inside the lock
    heartbeat = _heartbeat(ctx, reporter, subject=active) if mode != "active-active" else None
    if mode != "active-active" and fence_split(ctx, heartbeat, grains_cache, mode, active,
                                               f"event from {reporter}"):
        return {"result": "fenced"}
    reachable, unit, allowed = False, None, True
    if core.needs_active_probe(mode, heartbeat) and active:
        reachable = bool(ctx.ops.present([active]))
        if reachable:
            unit = ctx.ops.one(active, "airflow_health.service", ["scheduler"])
            allowed = ctx.restart_allowed(active, "scheduler")
    action = core.decide_scheduler(mode, heartbeat, active, reachable, unit, allowed)
    hb_status = (heartbeat or {}).get("status")
    unit_status = unit.get("status") if isinstance(unit, dict) else None
    log.info("airflow healing: scheduler decision %s (active %s reachable %s unit %s hb %s)",
             action, active, reachable, unit_status, hb_status)
    if action == "ignore-active-active":
        return {"result": "ignored", "reason": "active-active"}
    if action == "unreachable":
        ctx.audit("ignored", reporter, "scheduler", "reporter did not answer the re-probe",
                  "unreachable", **extra)
        return {"result": "unreachable"}
    if action == "healthy":
        ctx.audit("ignored", reporter, "scheduler", "re-probe: heartbeat fresh", "ignored",
                  **extra)
        return {"result": "ignored", "reason": "heartbeat fresh"}
    if action == "wait":
        return {"result": action}
    # the metastore down explains a missing or unreadable heartbeat: never a failover
    dep = ctx.blocked_by(reporter, "scheduler", **extra)
    if dep:
        return {"result": "blocked", "dependency": dep}
    if action == "unknown":
        return {"result": action}
    if action == "restart":
        if ctx.conf["dry_run"]:
            ctx.audit("restart", active, "scheduler", "no heartbeat", "dry-run",
                      attempt=True, **extra)
            return {"result": "dry-run"}
        op = ctx.act("restart", active, "scheduler",
                     f"no heartbeat ({hb_status}), unit {unit_status}", attempt=True, **extra)
        # enable too: the active master's scheduler may have been fenced before
        ctx.ops.one(active, "airflow_health.restart", ["scheduler"], kwarg={"enable": True},
                    timeout=90)
        op.done("restarted", **extra)
        return {"result": "restarted"}
    if action == "failover-damped":
        ctx.damped(active, "scheduler")  # restarted too often on the same node: move it
    return _failover_locked(ctx, reason=f"no scheduler heartbeat ({hb_status}), active "
                                        f"{active} reachable={reachable} unit={unit_status}",
                            failed=active, failed_reachable=reachable)


def _wait_until_safe(ctx, fence, new, old_names):
    """Poll the new node's heartbeat view until the core says start or refuse."""
    core, clock = ctx.core, ctx.clock
    heartbeat = _heartbeat(ctx, new)
    wait_until = core.fence_wait_until(clock.now(), heartbeat)
    while True:
        verdict = core.scheduler_start_verdict(fence, heartbeat, old_names,
                                               waited_out=clock.now() > wait_until)
        if verdict != "wait":
            return verdict, heartbeat
        clock.sleep(1)
        heartbeat = _heartbeat(ctx, new)


def _verify(ctx, new, names):
    """ok when the new node's scheduler heartbeats within scheduler_start_timeout."""
    clock = ctx.clock
    deadline = clock.now() + ctx.conf["scheduler_start_timeout"]
    while clock.now() < deadline:
        if ctx.core.runs_scheduler(_heartbeat(ctx, new), names):
            return "ok"
        clock.sleep(1)
    return "unverified"


def failover(ctx, reason="manual", failed=None, failed_reachable=None):
    """Move the active scheduler (active-standby) to a healthy master, fencing the old one."""
    table = ctx.table
    if failed is not None and not table.valid_minion_id(failed):
        return {"result": "error", "reason": "invalid minion id"}
    with ctx.store.lock("scheduler") as got:
        if not got:
            return {"result": "in-progress"}
        return _failover_locked(ctx, reason, failed, failed_reachable)


def _failover_locked(ctx, reason="manual", failed=None, failed_reachable=None):
    """failover() with the scheduler lock held (placement is read here, inside it)."""
    core, ops, clock = ctx.core, ctx.ops, ctx.clock
    start = clock.now()
    cache = ctx.inventory()
    mode, active = ctx.placement(cache)
    if mode == "active-active":
        return {"result": "ignored", "reason": "active-active"}
    failed = failed or active
    masters = ctx.minions_running("scheduler", cache)
    # ping the others first (fast: all answer), the failed one only if its state is unknown
    standbys = [m for m in masters if m != failed]
    others = ops.present(standbys)
    if standbys and not others:  # a loaded node may miss the quick ping: ask once more, longer
        others = ops.present(standbys, timeout=ctx.conf["probe_timeout"])
    if failed_reachable is None:
        failed_reachable = bool(failed) and bool(ops.present([failed]))
    old_names = core.node_names(failed, cache.get(failed))
    heartbeat = _heartbeat(ctx, others[0]) if others else None
    if not core.failover_needed(heartbeat, old_names, manual=reason == "manual"):
        ctx.audit("failover", failed, "scheduler", reason, "not-needed")
        return {"result": "not-needed", "heartbeat": heartbeat}
    # damped cluster-wide: a cause that crashes every scheduler must not move it back and
    # forth forever (a manual failover is an operator's call and always proceeds)
    conf = ctx.conf
    allowed, count = core.damping(ctx.store.attempts("cluster", "failover"), clock.now(),
                                  conf["failover_max_attempts"], conf["failover_window"])
    if not allowed and reason != "manual":
        ctx.audit("alert", failed, "scheduler",
                  f"{count} failovers in {conf['failover_window']:g}s", "failover-damped")
        ops.fire("airflow/alert/scheduler/failover-damped",
                 {"failovers": count, "window": conf["failover_window"], "reason": reason})
        return {"result": "failover-damped", "failovers": count}
    # a candidate's word about itself is not enough: its api-server must also be healthy as
    # the load balancer sees it (when there is an lb view)
    seen = ctx.lb_view(others)
    candidates = {
        m: core.candidate(ops.one(m, "airflow_health.check", [],
                                  kwarg={"daemons": core.candidate_daemons()},
                                  timeout=ctx.conf["probe_timeout"]), seen.get(m))
        for m in others
    }
    new = core.elect_master(candidates, failed)
    if not new:
        ctx.audit("failover", failed, "scheduler", reason, "no-candidate",
                  candidates=candidates)
        ops.fire("airflow/alert/scheduler/no-candidate", {"reason": reason})
        return {"result": "no-candidate", "candidates": candidates}
    if ctx.conf["dry_run"]:
        ctx.audit("failover", failed, "scheduler", reason, "dry-run", new=new)
        return {"result": "dry-run", "new": new}
    op = ctx.act("failover", failed, "scheduler", reason, new=new)  # before the fence
    fence = _fence(ctx, failed, failed_reachable)
    verdict, heartbeat = _wait_until_safe(ctx, fence, new, old_names)
    if verdict != "start":
        op.done("refused-two-schedulers", fence=fence, new=new)
        ops.fire("airflow/alert/scheduler/fence-failed", {"old": failed, "new": new})
        return {"result": "refused", "fence": fence, "heartbeat": heartbeat}
    # persist (later highstates keep it), then start it right away
    ctx.store.write_runtime_pillar(core.runtime_pillar_text(ctx.table, new))
    try:
        ctx.store.record_attempt("cluster", "failover")
    except OSError as exc:  # the old one is fenced already: start the new one all the same
        ctx.audit_unwritable("attempt", "failover", "cluster", "failover", exc)
    ops.one(new, "airflow_health.start", ["scheduler"], kwarg={"enable": True}, timeout=90)
    ops.cmd_async(others, "saltutil.refresh_pillar")
    outcome = _verify(ctx, new, core.node_names(new, cache.get(new)))
    took = round(clock.now() - start, 1)
    op.done(outcome, new=new, fence=fence, seconds=took)
    ops.fire("airflow/healing/scheduler/failover",
             {"old": failed, "new": new, "fence": fence, "outcome": outcome})
    return {"result": outcome, "old": failed, "new": new, "fence": fence, "seconds": took}


def fence_returning(ctx, minion, grains_cache):
    """
    A (re)started master: if another master is the active scheduler, stop and disable this
    one's scheduler. Returns the fencing outcome, or None when there is nothing to fence.
    """
    with ctx.store.lock("scheduler") as got:
        if not got:
            return "busy"  # never wait in a reactor thread: the periodic reconcile fences it
        mode, active = ctx.placement(grains_cache)  # re-read inside the lock
        if not ctx.core.must_fence_returning(mode, active, minion):
            return None
        return _fence(ctx, minion, True, f"returning master, active is {active}")


def fence(ctx, minion):
    """
    Fence the scheduler of a standby master (periodic reconcile: it runs or is enabled
    although another master is the active one). Placement is re-read inside the lock.
    """
    with ctx.store.lock("scheduler") as got:
        if not got:
            return "busy"
        mode, active = ctx.placement()
        if not ctx.core.must_fence_returning(mode, active, minion):
            return None
        return _fence(ctx, minion, True, f"standby master, active is {active}")


def fence_split_now(ctx, via, grains_cache):
    """Read the heartbeats through master ``via`` and fence any second scheduler (locked)."""
    with ctx.store.lock("scheduler") as got:
        if not got:
            return {}
        mode, active = ctx.placement(grains_cache)
        if mode == "active-active":
            return {}
        return fence_split(ctx, _heartbeat(ctx, via), grains_cache, mode, active, "reconcile")
