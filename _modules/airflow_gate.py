"""
Master-side event gate of the healing layer (execution module ``airflow_gate``).

reactor/health.sls asks ``admit(minion)`` before it dispatches a runner job: the Reactor
renders reaction SLS with the loader of a ``salt.minion.MasterMinion``, so execution modules
in the master's ``module_dirs`` (conf/master.d/airflow-reactor.conf) are ``salt[...]`` there.
A flood from one minion then costs one small file update per event in the reactor's own loop,
not a runner job in its thread pool.

This is the one place that counts events: a per-minion fixed window
(``airflow_decide.rate_limit``, settings ``rate_limit_events`` / ``rate_limit_window`` of
``airflow_healing:``), kept in ``<state_dir>/rate/<minion>.json`` (``airflow_store``); the first
refused event of a window writes ONE ``rate-limited`` audit record. The runner does not count
again (``salt-run airflow.remediate`` by hand is not rate limited).

Loads only on the master (``__role``); minions get the file by saltutil.sync_all (salt/_modules)
and skip it.
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "airflow_gate"


def __virtual__():
    if __opts__.get("__role") != "master":
        return (False, "airflow_gate: the salt-master's reactor gate, not for minions")
    return __virtualname__


def _util(name):
    """A function of a utility module (``_utils/``), or a clear error when it is not loaded."""
    try:
        return __utils__[name]
    except KeyError:
        raise RuntimeError(
            f"{name} not loaded: the master's utils_dirs must include the repo's _utils"
        ) from None


def _context():
    # built like the runner's _context() (same settings, store and audit), without Salt ops:
    # the gate only touches files under state_dir
    core = _util("airflow_decide.api")()
    conf = core.settings(__opts__)
    clock = _util("airflow_ops.system_clock")()
    return _util("airflow_ops.context")(
        conf=conf,
        clock=clock,
        store=_util("airflow_store.store")(conf, clock),
        ops=None,
        table=_util("airflow_daemons.api")(),
        core=core,
    )


#: {bucket key: [window start, window end, events refused since the bucket file was written]}
#: of the buckets that are over their budget. The reactor renders every event in one process:
#: the rest of a full window is refused from memory, without a file update per event (a storm
#: of 500 events would otherwise cost 500 locked read-modify-writes ahead of the next event).
_FULL = {}


def _count(ctx, minion):
    """Count one event of ``minion`` in its bucket; True: let it through."""
    conf, core = ctx.conf, ctx.core
    key = core.safe_id(ctx.table, minion)  # invalid ids share one bucket "?"
    limit, window = conf["rate_limit_events"], conf["rate_limit_window"]
    now = ctx.clock.now()
    full = _FULL.get(key)
    if full and full[0] <= now < full[1]:
        full[2] += 1
        return False
    refused_in_memory = full[2] if full else 0
    _FULL.pop(key, None)

    def change(old):
        if refused_in_memory and isinstance(old, dict) and isinstance(old.get("count"), int):
            old = dict(old, count=old["count"] + refused_in_memory)  # what memory refused counts
        bucket, verdict = core.rate_limit(old, now, limit, window)
        return bucket, (bucket, verdict)

    bucket, verdict = ctx.store.update_json(("rate", key), change)
    if verdict == "allow":
        return True
    _FULL[key] = [bucket["start"], bucket["start"] + window, 0]
    if verdict == "audit":
        extra = {"previous_dropped": bucket["previous_dropped"]} \
            if bucket.get("previous_dropped") else {}
        ctx.audit("rate-limited", key, None,
                  f"more than {limit} events in {window:g}s: the rest of this window is dropped",
                  "rate-limited", count=bucket["count"], **extra)
    return False


def admit(minion):
    """
    May a health event that names ``minion`` go on to the runner (the id is the event's claim:
    a beacon's events list carries the id its minion wrote)?
    False for events over ``rate_limit_events`` within ``rate_limit_window`` seconds (one
    ``rate-limited`` audit record per minion and window). Every call counts one event.

    Never raises: called inside the reactor, any error admits the event (and is logged), so a
    broken gate never blocks healing; the runner validates everything anyway.

    CLI Example:

    .. code-block:: bash

        salt-run salt.cmd airflow_gate.admit worker1   # on the master, as its reactor does
    """
    try:
        return _count(_context(), minion)
    except Exception:  # pylint: disable=broad-except
        log.exception("airflow healing: event gate failed for %r; event admitted", minion)
        return True


def enforce_pause(minion):
    """
    Why the scheduled highstate of ``minion`` (the id the master authenticated for this pillar
    compile) must wait now, as pillar ``airflow_pause`` (pillar/airflow/pause.sls):
    ``{"reason": "..."}``, or ``{"reason": ""}`` when it may run. The decision is
    ``airflow_drift.pause_reason``: maintenance, the enforcement-only pause
    (``salt-run airflow.enforcement pause``), orch.deploy running, a remediation acting on
    the node. An error pauses (and is logged): enforcement must not run blind.

    CLI Example:

    .. code-block:: bash

        salt-run salt.cmd airflow_gate.enforce_pause worker1
    """
    try:
        ctx = _context()
        if not ctx.table.valid_minion_id(minion):
            return {"reason": "invalid minion id"}
        store = ctx.store
        reason = _util("airflow_drift.api")().pause_reason(
            maintenance=store.flag("maintenance"),
            enforcement_paused=store.flag("enforcement-paused"),
            deployed=store.flag("deployed"),
            require_deploy=ctx.conf["require_deploy"],
            busy=store.busy(minion),
            now=ctx.clock.now())
        return {"reason": reason or ""}
    except Exception:  # pylint: disable=broad-except
        log.exception("airflow healing: enforcement pause of %r failed; paused", minion)
        return {"reason": "the master could not decide (see its log)"}
