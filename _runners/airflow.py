"""
Healing runner ``airflow``: the operator verbs and the reactor's entry points.

Operators: ``grant``, ``revoke``, ``roles`` (the master-owned role record), ``status``,
``maintenance``, ``audit_log``, ``active_scheduler``,
``failover_scheduler``, ``drain_api_server``, ``undrain_api_server``, ``reconcile_lb``,
``mark_deployed``, ``deploy_started`` (orch.deploy). Reactor (``reactor/*.sls``):
``remediate``, ``minion_started``, ``presence_changed``, ``key_deleted``, ``ignored``.
The master's schedule: ``reconcile`` (periodic, level-triggered).

This file is only the public surface. The work lives in Salt utility modules (``_utils/``,
loaded through ``__utils__``), each handed what it needs:

* ``airflow_daemons``   the daemon table and the minion-id rule
* ``airflow_decide``    every decision, pure (settings, validation, damping, scheduler,
                        fencing, election, debounce, lb actions)
* ``airflow_store``     audit log, locks, flags, runtime pillar under ``state_dir``
* ``airflow_ops``       Salt calls (LocalClient, events, grains cache, pillar), the clock,
                        and the Context the concerns share
* ``airflow_heal``      health events -> validated request -> service remediation
* ``airflow_scheduler`` scheduler restart, failover and fencing
* ``airflow_lb``        haproxy reconcile, drain, undrain
* ``airflow_reconcile`` the periodic reconcile (what events drive vs. what is observed)

Nothing from an event is trusted: the reactor hands raw values over, ``airflow_decide``
checks the minion id, the daemon (table) and the role (the master-owned role record), the daemon is
re-probed on its node, and no event data ever reaches a command line.

Settings: master config ``airflow_healing:`` (conf/master.d/airflow-reactor.conf).
"""

import functools
import logging

log = logging.getLogger(__name__)

__virtualname__ = "airflow"


def __virtual__():
    return __virtualname__


def _util(name):
    """A function of a utility module (``_utils/``), or a clear error when it is not loaded."""
    try:
        return __utils__[name]
    except KeyError:
        raise RuntimeError(
            f"{name} not loaded: the master's utils_dirs must include the repo's _utils"
        ) from None


def _concern(name):
    """
    A concern function of ``_utils/`` (the Context first) that may act. An action whose intent
    cannot be audited is not taken (``Context.act`` raises NotRecorded, after firing
    ``airflow/alert/audit/unwritable``): the call then returns ``{"result": "not-recorded",
    "action", "minion", "daemon", "error"}`` instead. The concerns handed to the periodic
    reconcile are not wrapped: the first unrecordable action ends the whole pass.
    """
    fun = _util(name)

    def call(ctx, *args, **kwargs):
        try:
            return fun(ctx, *args, **kwargs)
        except ctx.NotRecorded as exc:
            return exc.result

    return call


def _context():
    # resolved here, in the runner's loader context: code running inside a utility module
    # cannot look anything up in __utils__
    core = _util("airflow_decide.api")()
    conf = core.settings(__opts__)
    clock = _util("airflow_ops.system_clock")()
    return _util("airflow_ops.context")(
        conf=conf,
        clock=clock,
        store=_util("airflow_store.store")(conf, clock),
        ops=_util("airflow_ops.salt_ops")(__opts__, conf),
        table=_util("airflow_daemons.api")(),
        core=core,
    )


# ====================================================================== the role record
def grant(minion, roles):
    """
    Onboard a node (or give it more roles): write ``roles`` (comma-separated) of ``minion``
    into the master-owned role record (``airflow_healing:roles_file``), set the minion's
    ``roles`` grain to match, refresh every minion's pillar. A role's secrets, its place in
    haproxy and in the healing runner's checks come from this record only, never from a
    grain. Then ``salt <minion> state.apply`` (or the next scheduled run) sets the role up.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.grant worker3 airflow-worker
        salt-run airflow.grant infra airflow-db,airflow-broker,airflow-lb
    """
    return _context().change_roles(minion, roles, grant=True)


def revoke(minion, roles):
    """
    Take ``roles`` (comma-separated) of ``minion`` out of the role record and its grain; the
    next highstate runs the role's clean state there.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.revoke worker3 airflow-worker
    """
    return _context().change_roles(minion, roles, grant=False)


def roles():
    """
    The role record (minion -> roles), the membership it gives each role, and the minions
    whose ``roles`` grain claims more than the record grants (refused, reported).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.roles
    """
    ctx = _context()
    record = ctx.role_record()
    return {"record": record, "members": ctx.core.role_members(record, ctx.table),
            "refused": ctx.core.role_claims(record, ctx.ops.grains_cache(), ctx.table)}


# ====================================================================== reactor entry points
def remediate(minion, daemon, tag_minion=None, status=None, tag=None):
    """
    Handle a health event of ``daemon`` on ``minion`` (called by reactor/health.sls).

    ``minion`` is the event's ``id``, ``tag`` its tag (a beacon tag names a minion, which must
    be that id), ``status`` the status the event claims: it is audited as ``claimed`` but never
    acted on. None of them is proof of anything: beacon events reach the master as the
    ``events`` list of ``event.fire_master``, which the sending minion writes whole. So the
    role comes from the role record, and the decision from the runner's own views: the daemon
    re-probed on the minion it names, heartbeats from the metastore, api-servers as the load
    balancer sees them.
    Malformed or spoofed requests are audited as ``ignored``. No rate limiting here: the
    reactor counts each event once, before any runner job (``airflow_gate.admit``).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.remediate worker1 worker
    """
    ctx = _context()
    cache, rejected = _util("airflow_heal.check_request")(
        ctx, minion, daemon, tag=tag, tag_minion=tag_minion, claimed=status)
    if rejected:
        return rejected
    gate = ctx.gate(minion, daemon)
    if gate:
        return gate
    route = ctx.core.remediation_route(ctx.table, daemon)
    if route == "scheduler":
        return _concern("airflow_scheduler.remediate")(ctx, minion, cache, claimed=status)
    if route == "lb":
        # a health claim about an api-server: its runtime state; the backends stay (unless
        # haproxy's servers differ from the role record's masters)
        return _concern("airflow_lb.reconcile")(ctx, reason=f"{daemon} event from {minion}",
                                                membership=False)
    return _concern("airflow_heal.remediate_service")(ctx, minion, daemon, claimed=status)


def ignored(minion="?", reason="malformed event"):
    """
    Record an ignored (malformed) event in the audit log.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.ignored minion=worker1 reason='malformed health event'
    """
    ctx = _context()
    reason = str(reason)[:200]
    ctx.audit("ignored", ctx.core.safe_id(ctx.table, minion), None, reason, "ignored")
    return {"result": "ignored", "reason": reason}


def minion_started(minion):
    """
    A (re)started minion (reactor/minion_start.sls): a master that is not the active
    scheduler gets its scheduler stopped and disabled; a master also triggers an lb reconcile.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.minion_started master1
    """
    ctx = _context()
    if not ctx.valid_minion(minion, "minion_started"):
        return {"result": "ignored"}
    cache = ctx.inventory()
    if minion not in ctx.minions_running("scheduler", cache):
        return {"result": "ignored", "reason": "not a master"}
    gate = ctx.gate(minion, "scheduler")
    if gate:
        return gate
    result = {"result": "ok"}
    fence = _concern("airflow_scheduler.fence_returning")(ctx, minion, cache)
    if fence:
        result["fence"] = fence
    result["lb"] = _concern("airflow_lb.reconcile")(ctx, reason=f"master {minion} started")
    return result


def key_deleted(minion):
    """
    A minion's key was deleted (reactor/key_change.sls; decommissioned node): its mine data is
    gone, so haproxy's backends are rebuilt from the mine. Safe on a forged event: the
    reconcile only reads fresh mine data and health, and a burst coalesces into one reload.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.key_deleted master3
    """
    ctx = _context()
    if not ctx.valid_minion(minion, "key_deleted"):
        return {"result": "ignored"}
    gate = ctx.gate(minion, "api-server")
    if gate:
        return gate
    return {"result": "ok",
            "lb": _concern("airflow_lb.reconcile")(ctx, reason=f"key of {minion} deleted")}


def presence_changed(new=None, lost=None):
    """
    Presence change from the master (reactor/presence.sls): a lost active-scheduler master
    fails over, a lost or new master reconciles haproxy. Invalid ids are dropped.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.presence_changed lost='[master1]'
    """
    ctx = _context()
    core = ctx.core
    new, lost = core.valid_ids(ctx.table, new), core.valid_ids(ctx.table, lost)
    cache = ctx.inventory()
    masters = set(ctx.minions_running("scheduler", cache))
    touched = sorted((set(new) | set(lost)) & masters)
    if not touched:
        return {"result": "ignored"}
    gate = ctx.gate(",".join(touched), "presence")
    if gate:
        return gate
    result = {"result": "ok"}
    mode, active = ctx.placement(cache)
    # a master that reconnects (e.g. a healed partition: no minion start event) while another
    # one is active gets its scheduler fenced
    fenced = {m: _concern("airflow_scheduler.fence_returning")(ctx, m, cache)
              for m in new if m in masters and ctx.core.must_fence_returning(mode, active, m)}
    if fenced:
        result["fence"] = fenced
    # presence is TCP based: confirm the node is really gone before moving anything
    if core.presence_failover(mode, active, lost) and not ctx.ops.present([active]):
        result["failover"] = _concern("airflow_scheduler.failover")(
            ctx, reason=f"{active} lost (presence)", failed=active, failed_reachable=False)
    result["lb"] = _concern("airflow_lb.reconcile")(
        ctx, reason=f"presence new={new} lost={lost}")
    return result


def reconcile():
    """
    Periodic reconcile (the master's schedule ``airflow-reconcile`` runs it every interval):
    compare what events drive with what is observed (scheduler placement and fencing, dead
    or failed daemons, haproxy runtime states) and correct it through the same audited,
    damped paths; a lost or suppressed event then costs at most one interval.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.reconcile
    """
    ctx = _context()
    # no audit record when paused: this runs every interval
    why = ctx.core.gate(ctx.store.flag("maintenance"), ctx.store.flag("deployed"),
                        ctx.conf["require_deploy"])
    if why:
        return {"result": "skipped", "reason": why}
    return _concern("airflow_reconcile.reconcile")(
        ctx,
        heal={"remediate_service": _util("airflow_heal.remediate_service")},
        scheduler={"remediate": _util("airflow_scheduler.remediate"),
                   "fence": _util("airflow_scheduler.fence"),
                   "fence_split_now": _util("airflow_scheduler.fence_split_now")},
        lb={"lb_runtime": _util("airflow_lb.runtime")},
        enforce={"watch": functools.partial(_util("airflow_ops.enforcement_watch"),
                                            drift=_util("airflow_drift.api")())},
    )


# ====================================================================== operator verbs
def status():
    """
    Cluster health overview: nodes, roles, presence, each daemon's health, active scheduler,
    haproxy backends, maintenance flag, recent remediations.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.status
    """
    return _util("airflow_ops.cluster_status")(_context())


def active_scheduler():
    """
    The minion that runs the scheduler in active-standby mode (runtime pillar, then pillar).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.active_scheduler
    """
    mode, active = _context().placement()
    return {"mode": mode, "active": active}


def failover_scheduler(reason="manual", failed=None, failed_reachable=None):
    """
    Move the active scheduler (active-standby mode) to a healthy master, fencing the old one.
    Never starts a second scheduler: refused while the old one cannot be fenced and still
    heartbeats.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.failover_scheduler reason='planned maintenance of master1'
    """
    return _concern("airflow_scheduler.failover")(_context(), reason=reason, failed=failed,
                                                   failed_reachable=failed_reachable)


def reconcile_lb(reason="manual", quiet=None):
    """
    Make haproxy follow the api-servers: set dead api-servers to maint and recovered ones back
    to ready via the admin socket, refresh the mine on masters and apply ``airflow.lb`` on the
    lb node(s) (reload keeps connections). A burst of calls within ``lb_quiet`` seconds gives
    ONE reconcile (trailing-edge debounce, at most ``lb_max_wait`` seconds late).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.reconcile_lb
    """
    return _concern("airflow_lb.reconcile")(_context(), reason=reason, quiet=quiet)


def drain_api_server(server, timeout=None):
    """
    Planned removal of an api-server: drain it in haproxy, wait until its current sessions
    are 0, then put it in maint (no failed requests). Undo with ``airflow.undrain_api_server``.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.drain_api_server master2
    """
    return _concern("airflow_lb.drain")(_context(), server, timeout=timeout)


def undrain_api_server(server):
    """
    Put a drained api-server back into service (``ready``).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.undrain_api_server master2
    """
    return _concern("airflow_lb.undrain")(_context(), server)


def maintenance(action="status"):
    """
    Maintenance switch: ``on`` pauses auto-remediation, ``off`` resumes it, ``status``.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.maintenance on
        salt-run airflow.maintenance off
    """
    ctx = _context()
    if action is True:  # YAML/CLI parse "on"/"off" as booleans
        action = "on"
    elif action is False:
        action = "off"
    if action == "on":
        ctx.store.set_flag("maintenance")
        ctx.audit("maintenance", None, None, "switched on", "on")
    elif action == "off":
        ctx.store.clear_flag("maintenance")
        ctx.audit("maintenance", None, None, "switched off", "off")
    elif action != "status":
        return {"result": "error", "reason": "action must be on, off or status"}
    return {"maintenance": ctx.store.flag("maintenance")}


def audit_log(limit=20):
    """
    The last ``limit`` audit records (one per healing action).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.audit_log limit=50
    """
    return _context().store.read_audit(int(limit))


def enforcement_report(minion):
    """
    A scheduled enforcement run finished on ``minion`` (reactor/enforce.sls): fetch its summary
    from the minion itself, record the node's last run and audit any drift (``drift`` record +
    ``airflow/drift/<minion>`` event).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.enforcement_report worker1
    """
    return _util("airflow_ops.enforcement_report")(_context(), _util("airflow_drift.api")(),
                                                   minion)


def enforcement(action="status"):
    """
    Scheduled enforcement (every minion's highstate on its schedule, salt/airflow/enforce):
    ``pause`` makes every scheduled run skip until ``resume``; ``status`` shows the switch and
    each node's last run (time, mode, result). Maintenance (``airflow.maintenance on``) pauses
    it as well.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.enforcement pause
        salt-run airflow.enforcement resume
        salt-run airflow.enforcement status
    """
    ctx = _context()
    if action == "pause":
        ctx.store.set_flag("enforcement-paused")
        ctx.audit("enforcement", None, None, "scheduled enforcement paused by an operator", "paused")
    elif action == "resume":
        ctx.store.clear_flag("enforcement-paused")
        ctx.audit("enforcement", None, None, "scheduled enforcement resumed", "resumed")
    elif action != "status":
        return {"result": "error", "reason": f"unknown action {str(action)[:40]!r}: "
                                              "pause, resume or status"}
    return {"paused": ctx.store.flag("enforcement-paused"),
            "maintenance": ctx.store.flag("maintenance"),
            "nodes": ctx.store.enforcement()}


def mark_deployed():
    """
    Record a finished deployment (called at the end of orch.deploy) and enable healing.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.mark_deployed
    """
    ctx = _context()
    ctx.store.set_flag("deployed")
    ctx.audit("deploy", None, None, "orch.deploy finished", "ok")
    return {"deployed": True}


def deploy_started():
    """
    Pause automatic remediation while orch.deploy runs (it starts and restarts daemons that
    the healing layer would otherwise see as failing). mark_deployed() at its end resumes it.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.deploy_started
    """
    ctx = _context()
    ctx.store.clear_flag("deployed")
    ctx.audit("deploy", None, None, "orch.deploy started: remediation paused", "started")
    return {"deployed": False}
