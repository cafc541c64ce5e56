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


def _heartbeat(ctx, minion):
    """A master's view of the scheduler heartbeats (None: no answer); staleness is the node's."""
    hb = ctx.ops.one(minion, "airflow_health.scheduler_heartbeat")
    return hb if isinstance(hb, dict) else None


def _fence(ctx, minion, reachable):
    """Stop and disable the scheduler unit of ``minion``: fenced | failed | unreachable."""
    if not (minion and reachable):
        return ctx.core.fencing_outcome(None, None)
    unit = ctx.table.unit_of("scheduler")
    stop = ctx.ops.one(minion, "service.stop", [unit], timeout=60)
    disable = ctx.ops.one(minion, "service.disable", [unit], timeout=30)
    return ctx.core.fencing_outcome(stop, disable)


def remediate(ctx, reporter, grains_cache, claimed=None):
    """A master reported the scheduler unhealthy: re-probe, decide, act."""
    core = ctx.core
    extra = {"claimed": core.claimed_status(claimed)} if core.claimed_status(claimed) else {}
    mode, active = ctx.placement(grains_cache)
    heartbeat = _heartbeat(ctx, reporter) if mode != "active-active" else None
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
    if action in ("wait", "unknown"):
        return {"result": action}
    if action == "restart":
        with ctx.store.lock(f"{active}-scheduler") as got:
            if not got:
                return {"result": "in-progress"}
            if ctx.conf["dry_run"]:
                ctx.audit("restart", active, "scheduler", "no heartbeat", "dry-run",
                          attempt=True, **extra)
                return {"result": "dry-run"}
            ctx.ops.one(active, "service.restart", [ctx.table.unit_of("scheduler")], timeout=90)
            ctx.audit("restart", active, "scheduler",
                      f"no heartbeat ({hb_status}), unit {unit_status}", "restarted",
                      attempt=True, **extra)
            return {"result": "restarted"}
    if action == "failover-damped":
        ctx.damped(active, "scheduler")  # restarted too often on the same node: move it
    return failover(ctx, reason=f"no scheduler heartbeat ({hb_status}), active {active} "
                                f"reachable={reachable} unit={unit_status}",
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
    core, ops, clock, table = ctx.core, ctx.ops, ctx.clock, ctx.table
    if failed is not None and not table.valid_minion_id(failed):
        return {"result": "error", "reason": "invalid minion id"}
    with ctx.store.lock("failover") as got:
        if not got:
            return {"result": "in-progress"}
        start = clock.now()
        cache = ops.grains_cache()
        mode, active = ctx.placement(cache)
        if mode == "active-active":
            return {"result": "ignored", "reason": "active-active"}
        failed = failed or active
        masters = ctx.minions_running("scheduler", cache)
        # ping the others first (fast: all answer), the failed one only if its state is unknown
        others = ops.present([m for m in masters if m != failed])
        if failed_reachable is None:
            failed_reachable = bool(failed) and bool(ops.present([failed]))
        old_names = core.node_names(failed, cache.get(failed))
        heartbeat = _heartbeat(ctx, others[0]) if others else None
        if not core.failover_needed(heartbeat, old_names, manual=reason == "manual"):
            ctx.audit("failover", failed, "scheduler", reason, "not-needed")
            return {"result": "not-needed", "heartbeat": heartbeat}
        candidates = {
            m: core.candidate(ops.one(m, "airflow_health.check", [],
                                      timeout=ctx.conf["probe_timeout"]))
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
        fence = _fence(ctx, failed, failed_reachable)
        verdict, heartbeat = _wait_until_safe(ctx, fence, new, old_names)
        if verdict != "start":
            ctx.audit("failover", failed, "scheduler", reason, "refused-two-schedulers",
                      fence=fence, new=new)
            ops.fire("airflow/alert/scheduler/fence-failed", {"old": failed, "new": new})
            return {"result": "refused", "fence": fence, "heartbeat": heartbeat}
        # persist (later highstates keep it), then start it right away
        ctx.store.write_runtime_pillar(core.runtime_pillar_text(table, new))
        unit = table.unit_of("scheduler")
        ops.one(new, "service.enable", [unit], timeout=30)
        ops.one(new, "service.start", [unit], timeout=60)
        ops.cmd_async(others, "saltutil.refresh_pillar")
        outcome = _verify(ctx, new, core.node_names(new, cache.get(new)))
        took = round(clock.now() - start, 1)
        ctx.audit("failover", failed, "scheduler", reason, outcome, new=new, fence=fence,
                  seconds=took)
        ops.fire("airflow/healing/scheduler/failover",
                 {"old": failed, "new": new, "fence": fence, "outcome": outcome})
        return {"result": outcome, "old": failed, "new": new, "fence": fence, "seconds": took}


def fence_returning(ctx, minion, grains_cache):
    """
    A (re)started master: if another master is the active scheduler, stop and disable this
    one's scheduler. Returns the fencing outcome, or None when there is nothing to fence.
    """
    mode, active = ctx.placement(grains_cache)
    if not ctx.core.must_fence_returning(mode, active, minion):
        return None
    fence = _fence(ctx, minion, True)
    ctx.audit("fence", minion, "scheduler", f"returning master, active is {active}", fence)
    return fence
