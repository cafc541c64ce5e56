"""
Health events and service remediation (Salt utility module ``airflow_heal``, master side).

``check_request`` turns the raw values the reactor hands on (the event's minion id,
event tag, claimed daemon and status) into a validated request or an audited ``ignored``.
``remediate_service`` re-probes a daemon on its node, decides (``airflow_decide``), and
restarts it (SIGKILL first for a hung worker), damped and audited (its intent recorded
first, ``Context.act``), unless one of its
dependencies (the metastore, the broker) is down: that is audited as ``blocked`` and costs
no attempt (``Context.blocked_by``). The scheduler and the
api-server have their own concerns (``airflow_scheduler``, ``airflow_lb``).

Every function takes the runner's ``Context`` (``airflow_ops``) first.
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "airflow_heal"


def __virtual__():
    return __virtualname__


def check_request(ctx, minion, daemon, tag=None, tag_minion=None, claimed=None):
    """
    Validate a health event. Returns ``(grains_cache, None)`` when it may be acted on, else
    ``(None, result)`` with the ``ignored`` result (audited).

    ``tag`` is the event tag: a beacon tag names the minion it claims to come from, which must
    be the authenticated one. ``tag_minion`` is that name given directly (older reactor SLS).
    """
    core, table = ctx.core, ctx.table
    named = core.tag_minion(tag) if tag is not None else tag_minion
    cache = ctx.inventory()
    ok, reason, detail = core.validate_request(table, minion, daemon, named, cache)
    if ok:
        return cache, None
    extra = {"detail": detail} if detail else {}
    status = core.claimed_status(claimed)
    if status:
        extra["claimed"] = status
    safe_daemon = daemon if isinstance(daemon, str) and table.get(daemon) else "?"
    ctx.audit("ignored", core.safe_id(table, minion), safe_daemon, reason, "ignored", **extra)
    return None, {"result": "ignored", "reason": reason}


def remediate_service(ctx, minion, daemon, claimed=None):
    """
    Re-probe ``daemon`` on ``minion`` and restart it if it is dead or hung (one at a time per
    (minion, daemon), flap-damped). Outcome ``recovered`` when a re-probe finds it ok within
    ``worker_verify_timeout``, else ``failed``.
    """
    core, conf, clock = ctx.core, ctx.conf, ctx.clock
    extra = {"claimed": core.claimed_status(claimed)} if core.claimed_status(claimed) else {}
    with ctx.store.lock(f"{minion}-{daemon}") as got:
        if not got:
            return {"result": "in-progress"}
        probe = ctx.ops.one(minion, "airflow_health.probe", [daemon])
        action = core.decide_service(ctx.table, daemon, probe)
        if action == "unreachable":
            ctx.audit("ignored", minion, daemon, "node did not answer the re-probe",
                      "unreachable", **extra)
            return {"result": "unreachable"}
        status = probe.get("status")
        if action == "ignore":
            if extra.get("claimed") == "ok":
                return {"result": "ok"}  # a recovery the beacon reports: nothing to do or say
            ctx.audit("ignored", minion, daemon, "re-probe: healthy (stale or spoofed event)",
                      "ignored", **extra)
            return {"result": "ignored", "reason": "healthy on re-probe"}
        if action == "wait":
            return {"result": "wait", "status": status}
        dep = ctx.blocked_by(minion, daemon, action=action, **extra)
        if dep:
            return {"result": "blocked", "dependency": dep}
        if not ctx.restart_allowed(minion, daemon):
            ctx.damped(minion, daemon)
            return {"result": "damped"}
        if conf["dry_run"]:
            ctx.audit(action, minion, daemon, f"status {status}", "dry-run", attempt=True,
                      **extra)
            return {"result": "dry-run", "action": action}
        start = clock.now()
        op = ctx.act(action, minion, daemon, f"status {status}", attempt=True, **extra)
        # reset-failed first (a unit in start-limit state refuses to start), SIGKILL first
        # for a hung daemon (it ignores SIGTERM)
        ctx.ops.one(minion, "airflow_health.restart", [daemon],
                    kwarg={"kill": action == "kill-restart"}, timeout=90)
        outcome = "failed"
        deadline = clock.now() + conf["worker_verify_timeout"]
        while clock.now() < deadline:
            if core.probe_ok(ctx.ops.one(minion, "airflow_health.probe", [daemon])):
                outcome = "recovered"
                break
            clock.sleep(1)
        op.done(outcome, seconds=round(clock.now() - start, 1), **extra)
        ctx.ops.fire(f"airflow/healing/{minion}/{daemon}", {"action": action, "outcome": outcome})
        return {"result": outcome, "action": action}
