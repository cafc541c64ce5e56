"""
haproxy follows the api-servers (Salt utility module ``airflow_lb``, master side).

* ``reconcile``: debounced by a leader (below); sets dead api-servers to maint and recovered
  ones back to ready over the admin socket (``lb_runtime_actions``); when the backends may have
  changed (a request said so, or haproxy's servers differ from the role record's masters) it
  then refreshes the mine, applies ``airflow.lb`` (a reload keeps connections) and sets the
  runtime states again.
* ``drain`` / ``undrain``: planned removal of an api-server without failed requests.

Every function takes the runner's ``Context`` (``airflow_ops``) first.

The debounce never parks a reactor thread (Salt runs runner calls from the reactor in a
small pool, ``reactor_worker_threads``; a storm of api-server events must not starve it):
every request writes its time (``lb.request``, and ``lb.first`` when it starts a burst) under
the short lock ``lb-request``, then tries the ``lb`` lock WITHOUT waiting. Whoever gets it is
the leader: it waits until the burst is quiet for ``lb_quiet`` s or ``lb_max_wait`` s passed
since ``lb.first`` (``airflow_decide.debounce_decision``), records ``lb.run`` (its start, before
it reads any state) and reconciles, again while a request newer than its run start came in
(``lb_pending``). After releasing the lock it checks once more: a request that found the lock
taken between the leader's last check and the release is served, not lost. Everyone else
returns ``coalesced`` at once. Only the leader ever waits.
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "airflow_lb"


def __virtual__():
    return __virtualname__


def _api_health(ctx, masters, present):
    """{master: ok | dead | None} as the load balancer sees them (``Context.lb_view``)."""
    return ctx.lb_view(masters)


def _set_runtime_states(ctx, lbs, health, drained, actions, recorded=False, rows=None):
    """
    The fast path: admin socket commands, no reload. Records what it did in ``actions``.
    ``recorded``: part of an action whose intent is recorded (reconcile_lb); otherwise each
    lb's commands are an action of their own (``haproxy-set``: intent first). ``rows``: the
    lbs' ``haproxy_backends`` answers when the caller has just read them.
    """
    for lb in lbs:
        backends = rows[lb] if rows and lb in rows else \
            ctx.ops.one(lb, "airflow_health.haproxy_backends")
        commands = ctx.core.lb_runtime_actions(ctx.table, backends, health, drained)
        if not commands:
            continue
        op = None if recorded else ctx.act("haproxy-set", lb, "haproxy", "api-server health",
                                           commands=commands)
        done = []
        for server, state in commands:
            res = ctx.ops.one(lb, "airflow_health.haproxy_set_server", [server, state])
            ok = bool(isinstance(res, dict) and res.get("result"))
            done.append((server, state, ok))
        actions.setdefault(lb, []).extend(done)
        if op:
            op.done("ok" if all(ok for _, _, ok in done) else "partial", runtime=done)


def _stamps(ctx):
    """(lb.request, lb.first, lb.run), read under the short lock."""
    store = ctx.store
    with store.short_lock("lb-request"):
        return store.read_ts("lb.request"), store.read_ts("lb.first"), store.read_ts("lb.run")


def _request(ctx, membership):
    """Register a reconcile request: its time in lb.request (and lb.first for a new burst);
    ``membership``: the backends themselves may have changed (lb.membership)."""
    store = ctx.store
    with store.short_lock("lb-request"):
        now = ctx.clock.now()  # taken under the lock: stamps are stored in the order taken
        store.write_ts("lb.request", now)
        if membership:
            store.write_ts("lb.membership", now)
        if ctx.core.starts_burst(store.read_ts("lb.first"), store.read_ts("lb.run")):
            store.write_ts("lb.first", now)
    return now


def _take_membership_request(ctx):
    """Was the slow path asked for since the last run? (read and cleared under the lock)"""
    store = ctx.store
    with store.short_lock("lb-request"):
        asked = store.read_ts("lb.membership") is not None
        store.clear_flag("lb.membership")
    return asked


def _start_run(ctx):
    """Record lb.run = now (under the short lock: a later request then starts a new burst)."""
    with ctx.store.short_lock("lb-request"):
        start = ctx.clock.now()
        ctx.store.write_ts("lb.run", start)
    return start


def _wait_quiet(ctx, quiet):
    """The leader's wait: until the burst is quiet or has waited lb_max_wait."""
    while True:
        request, first, run = _stamps(ctx)
        verdict, seconds = ctx.core.debounce_decision(ctx.clock.now(), request, first, run,
                                                      quiet, ctx.conf["lb_max_wait"])
        if verdict == "run":
            return
        ctx.clock.sleep(seconds)


def _pending(ctx):
    request, _, run = _stamps(ctx)
    return ctx.core.lb_pending(request, run, ctx.clock.now())


def reconcile(ctx, reason="manual", quiet=None, membership=True):
    """
    Make haproxy follow the api-servers (see the module docstring). ``membership`` False (a
    health event of an api-server that is a backend already): the runtime states only, unless
    haproxy's servers differ from the role record's masters or another request of the burst
    asked for the backends to be rebuilt.
    """
    quiet = float(ctx.conf["lb_quiet"] if quiet is None else quiet)
    _request(ctx, membership)
    result = {"result": "coalesced"}
    while True:
        with ctx.store.lock("lb") as got:  # never waits: the holder is the leader
            if not got:
                return result  # the leader covers this request
            while True:
                _wait_quiet(ctx, quiet)
                result = _run(ctx, reason, _start_run(ctx))
                if not _pending(ctx):
                    break
        if not _pending(ctx):  # a request between the last check and the release?
            return result


def _run(ctx, reason, start):
    """One reconcile; ``start`` (lb.run) was recorded before anything is read."""
    conf, store, clock, ops = ctx.conf, ctx.store, ctx.clock, ctx.ops
    cache = ctx.inventory()
    masters = ctx.minions_running("api-server", cache)
    lbs = ctx.minions_running("haproxy", cache)
    present = ops.present(masters)
    if conf["dry_run"]:
        ctx.audit("reconcile_lb", None, "api-server", reason, "dry-run")
        return {"result": "dry-run"}
    health = _api_health(ctx, masters, present)
    drained = store.drained()
    actions = {}
    # the slow path (mine + state.apply + reload) only when the backends themselves may have
    # changed: a storm of health events about existing api-servers costs socket commands only
    rows = {lb: ops.one(lb, "airflow_health.haproxy_backends") for lb in lbs}  # read once
    membership = _take_membership_request(ctx) or ctx.core.lb_members_differ(rows, masters)
    op = ctx.act("reconcile_lb", None, "api-server", reason)
    _set_runtime_states(ctx, lbs, health, drained, actions, recorded=True, rows=rows)
    outcome = "ok"
    if membership:
        # slow path: backends from the mine (new/removed masters); a reload keeps connections
        if present:
            ops.cmd(present, "mine.update", tgt_type="list", timeout=conf["ping_timeout"] + 5)
        # queue: wait for a state run already going on the lb node instead of failing
        applied = ops.cmd(lbs, "state.apply", ["airflow.lb"], tgt_type="list",
                          timeout=conf["lb_apply_timeout"], kwarg={"queue": True}) if lbs else {}
        _set_runtime_states(ctx, lbs, health, drained, actions, recorded=True)  # a reload resets them
        outcome = "ok" if ctx.core.lb_apply_ok(applied, lbs) else "partial"
    op.done(outcome, health=health, runtime=actions, backends_rebuilt=membership,
            seconds=round(clock.now() - start, 1))
    return {"result": outcome, "health": health, "runtime": actions,
            "backends_rebuilt": membership}


def drain(ctx, server, timeout=None):
    """Drain ``server`` in haproxy, wait for 0 sessions, then maint: drained | timeout."""
    if not ctx.table.valid_minion_id(server):
        return {"result": "error", "reason": "invalid server name"}
    ops, clock, store = ctx.ops, ctx.clock, ctx.store
    timeout = float(timeout or ctx.conf["drain_timeout"])
    lbs = ctx.minions_running("haproxy")
    op = ctx.act("drain", server, "api-server", "planned removal")
    store.set_drained(store.drained() | {server})
    start = clock.now()
    for lb in lbs:
        ops.one(lb, "airflow_health.haproxy_set_server", [server, "drain"])
    outcome = "timeout"
    while clock.now() - start < timeout:
        busy = sum(ctx.core.sessions_of(ops.one(lb, "airflow_health.haproxy_backends"), server)
                   for lb in lbs)
        if busy == 0:
            outcome = "drained"
            break
        clock.sleep(0.5)
    for lb in lbs:
        ops.one(lb, "airflow_health.haproxy_set_server", [server, "maint"])
    op.done(outcome, seconds=round(clock.now() - start, 1))
    return {"result": outcome, "server": server}


def undrain(ctx, server):
    """Put a drained api-server back into service (ready)."""
    if not ctx.table.valid_minion_id(server):
        return {"result": "error", "reason": "invalid server name"}
    op = ctx.act("undrain", server, "api-server", "back in service")
    ctx.store.set_drained(ctx.store.drained() - {server})
    for lb in ctx.minions_running("haproxy"):
        ctx.ops.one(lb, "airflow_health.haproxy_set_server", [server, "ready"])
    op.done("ready")
    return {"result": "ready", "server": server}


def runtime(ctx, grains_cache, present):
    """
    The lb fast path alone (periodic reconcile): haproxy's runtime server states follow the
    api-servers' health; no mine update, no state run, no reload. Returns the actions taken.
    """
    masters = ctx.minions_running("api-server", grains_cache)
    lbs = [m for m in ctx.minions_running("haproxy", grains_cache) if m in present]
    if not lbs or ctx.conf["dry_run"]:
        return {}
    health = _api_health(ctx, masters, [m for m in masters if m in present])
    actions = {}
    _set_runtime_states(ctx, lbs, health, ctx.store.drained(), actions)
    return actions
