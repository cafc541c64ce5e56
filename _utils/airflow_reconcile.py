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

The concerns are handed in (utility modules cannot import each other in Salt's loader).
Every function takes the runner's ``Context`` (``airflow_ops``) first.
"""

import logging

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
        return {"result": "acted" if done else "in-sync", "plan": plan, "done": done,
                "claims": claims, "seconds": took}
