"""
The periodic reconcile (Salt utility module ``airflow_reconcile``, master side).

Events drive the healing layer, but an event can be lost (minion disconnected), suppressed
(the beacon is silent during a state run) or coalesced. So the master's schedule
(``schedule:airflow-reconcile`` in conf/master.d/airflow-reactor.conf) runs
``salt-run airflow.reconcile`` every interval and compares what the events drive with what is
observed, at the cost of one ``airflow_health.units`` per node, one heartbeat query and one
haproxy view when nothing differs:

* a standby master's scheduler that runs or is enabled is fenced (active-standby);
* a scheduler heartbeating on a standby master is fenced (``split_targets``);
* the active master's scheduler not running goes to the scheduler concern (restart/failover);
* any other daemon that is dead goes through the normal remediation (re-probe, dependency,
  damping, audit);
* haproxy's runtime server states follow the api-servers' health (the lb fast path);
* a node whose scheduled enforcement stopped firing gets its pillar refreshed (which restores
  the pillar's schedule job) and an ``airflow/alert/enforce/stale`` event
  (``airflow_ops.enforcement_watch``);
* a minion whose ``roles`` grain claims a role the role record does not grant is reported
  (one ``refused`` audit record and an ``airflow/alert/roles/claim`` event per new claim).
* a restart systemd did on its own (``Restart=``: a crash, a watchdog timeout of a hung
  daemon, which needs no event at all) gets one ``systemd-restart`` audit record with the
  cause from the node's journal (``result: watchdog``); observed, not acted on.

The concerns are handed in (utility modules cannot import each other in Salt's loader).
Every function takes the runner's ``Context`` (``airflow_ops``) first.
"""

import logging
import re

log = logging.getLogger(__name__)

__virtualname__ = "airflow_reconcile"


def __virtual__():
    return __virtualname__


def reconcile(ctx, heal, scheduler, lb, enforce):
    """
    One reconcile pass; ``heal``, ``scheduler``, ``lb``, ``enforce``: the concern functions
    ``{remediate_service, remediate, fence_split, fence, lb_runtime, watch}`` the runner
    resolved.
    Returns ``{result, plan, done}``; audits one ``reconcile`` record only when it acted.
    """
    core, ops, clock = ctx.core, ctx.ops, ctx.clock
    with ctx.store.lock("reconcile") as got:
        if not got:
            return {"result": "in-progress"}
        start = clock.now()
        grains = ops.grains_cache()
        record = ctx.role_record()
        claims = ctx.report_claims(record, grains)
        cache = core.inventory(record, grains)  # roles from the record, never from a grain
        minions = sorted(m for m in cache if core.grain_roles(cache[m]))
        present = ops.present(minions)
        units = ops.cmd(present, "airflow_health.units", tgt_type="list",
                        timeout=ctx.conf["ping_timeout"] + 8) if present else {}
        mode, active = ctx.placement(cache)
        roles = {m: core.grain_roles(cache.get(m)) for m in units}
        plan = core.reconcile_plan(ctx.table, mode, active, units, roles)
        observed = audit_systemd_restarts(ctx, units)
        done = {}
        for minion, daemon, action in plan:
            if action == "fence":
                done[f"{minion}/{daemon}"] = scheduler["fence"](ctx, minion)
            elif action == "scheduler":
                done[f"{minion}/{daemon}"] = scheduler["remediate"](ctx, minion, cache)
            else:
                done[f"{minion}/{daemon}"] = heal["remediate_service"](ctx, minion, daemon)
        # a second scheduler that heartbeats although systemd on its node was not asked
        masters = ctx.minions_running("scheduler", cache)
        via = active if active in present else next((m for m in masters if m in present), None)
        if mode != "active-active" and via:
            split = scheduler["fence_split_now"](ctx, via, cache)
            if split:
                done["split"] = split
        runtime = lb["lb_runtime"](ctx, cache, present)
        if runtime:
            done["haproxy"] = runtime
        stale = enforce["watch"](ctx, minions=present)
        if stale:
            done["enforce-stale"] = stale
        took = round(clock.now() - start, 1)
        if done:
            ctx.audit("reconcile", None, None, "periodic reconcile", "acted", plan=plan,
                      done=done, seconds=took)
        ctx.store.write_ts("reconcile.last", start)
        out = {"result": "acted" if done else "in-sync", "plan": plan, "done": done,
               "claims": claims, "seconds": took}
        if observed:
            out["systemd_restarts"] = observed
        return out


def audit_systemd_restarts(ctx, units):
    """
    One ``systemd-restart`` audit record per daemon whose ``n_restarts`` went up since the
    last pass (``airflow_decide.systemd_restarts``), with the failure results the node's
    journal gives for it (``airflow_health.restart_causes``: asked only then). The master
    asked the node (no event carries this); it is a record, never a reason to act.
    Returns {"minion/daemon": [results]}.
    """
    core, ops = ctx.core, ctx.ops
    changes = {}

    def change(old):
        new, restarted = core.systemd_restarts(ctx.table, old, units)
        changes["restarted"] = restarted
        return new, None

    try:
        ctx.store.update_json(("restarts", "units"), change)
    except OSError as exc:
        log.error("airflow healing: cannot record systemd restarts: %s", exc)
        return {}
    out = {}
    for minion, daemon, before, now in changes.get("restarted", []):
        causes = ops.one(minion, "airflow_health.restart_causes", [daemon, now - before])
        failures = _failures(causes.get("failures") if isinstance(causes, dict) else None)
        results = [f["result"] for f in failures]
        out[f"{minion}/{daemon}"] = results
        why = ", ".join(results) if results else "unknown (journal unread)"
        ctx.audit("systemd-restart", minion, daemon,
                  f"systemd restarted {daemon} on its own ({now - before}x; result: {why})",
                  "observed", n_restarts=now, previous=before, causes=failures,
                  watchdog="watchdog" in results)
    return out


_RESULT_RE = re.compile(r"^[a-z][a-z-]{0,39}$")  # systemd's result names: watchdog, exit-code


def _failures(raw):
    """The node's answer as far as it is well-formed (a minion writes it: no free text)."""
    out = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and isinstance(item.get("result"), str) \
                and _RESULT_RE.match(item["result"]):
            at = item.get("at")
            out.append({"result": item["result"],
                        "at": at if isinstance(at, (int, float)) and not isinstance(at, bool) else None})
    return out[-10:]
