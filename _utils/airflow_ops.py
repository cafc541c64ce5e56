"""
What the healing runner does through Salt, and the context its concerns share (Salt utility
module ``airflow_ops``, master side).

* ``SystemClock``: ``now()`` (epoch seconds) and ``sleep(seconds)``; tests hand in a fake.
* ``SaltOps(opts, conf)``: LocalClient calls to minions, master events, the master's grains
  cache and a master's compiled pillar. Every call returns data or None/{}: a minion that does
  not answer is an observation, not an exception.
* ``Context``: the one object the concern modules (``airflow_heal``, ``airflow_scheduler``,
  ``airflow_lb``) receive: settings, clock, store, ops, the daemon table and the decision
  core, plus the few steps they share (gates, damping, scheduler placement).

The runner (``_runners/airflow.py``) builds the context from ``__utils__``; the parts are
handed in, never imported, so each module is testable alone.
"""

import logging
import time
import uuid

log = logging.getLogger(__name__)

__virtualname__ = "airflow_ops"


def __virtual__():
    return __virtualname__


class SystemClock:
    """The wall clock (audit timestamps and damping windows are epoch seconds)."""

    @staticmethod
    def now():
        return time.time()

    @staticmethod
    def sleep(seconds):
        time.sleep(seconds)


def system_clock():
    """The real clock."""
    return SystemClock()


class SaltOps:
    """Salt calls of the healing runner on the master."""

    def __init__(self, opts, conf):
        self.opts = opts
        self.conf = conf

    def _client(self):
        import salt.client  # pylint: disable=import-outside-toplevel

        return salt.client.get_local_client(mopts=self.opts)

    def cmd(self, tgt, fun, arg=(), timeout=None, tgt_type="glob", kwarg=None):
        """LocalClient call; returns {minion: return} of the minions that answered."""
        try:
            return self._client().cmd(
                tgt,
                fun,
                arg=list(arg),
                timeout=timeout or self.conf["probe_timeout"],
                tgt_type=tgt_type,
                kwarg=kwarg,
                gather_job_timeout=max(2, int(self.conf["ping_timeout"])),
            ) or {}
        except Exception as exc:  # pylint: disable=broad-except
            log.error("airflow healing: %s on %s failed: %s", fun, tgt, exc)
            return {}

    def one(self, minion, fun, arg=(), timeout=None, kwarg=None):
        """Return of one minion (None if it did not answer)."""
        return self.cmd(minion, fun, arg, timeout=timeout, kwarg=kwarg).get(minion)

    def cmd_async(self, minions, fun):
        """Fire ``fun`` on a list of minions without waiting."""
        try:
            self._client().cmd_async(list(minions), fun, tgt_type="list")
        except Exception as exc:  # pylint: disable=broad-except
            log.error("airflow healing: %s failed: %s", fun, exc)

    def connected(self):
        """Ids of the minions with a live connection to the master's publisher (what
        ``salt-run manage.status`` calls connected), or None when the master cannot tell."""
        import salt.utils.minions  # pylint: disable=import-outside-toplevel

        try:
            ids = salt.utils.minions.CkMinions(self.opts).connected_ids()
        except Exception as exc:  # pylint: disable=broad-except
            log.error("airflow healing: connected minions unknown: %s", exc)
            return None
        return set(ids) or None  # empty: the presence data is off or not gathered yet

    def present(self, minions, timeout=None):
        """Minions (of a list) that answer test.ping within ``timeout`` (default: quickly).

        A minion the master holds no publisher connection for is absent without a ping: pinging
        a node that is gone costs the whole timeout + gather_job_timeout (4-7 s), which a
        failover after a lost master would wait for."""
        connected = self.connected() if minions else None
        reachable = [m for m in minions or [] if connected is None or m in connected]
        if not reachable:
            return []
        ret = self.cmd(reachable, "test.ping", timeout=timeout or self.conf["ping_timeout"],
                       tgt_type="list")
        return sorted(m for m, v in ret.items() if v is True)

    def grains_cache(self, tgt="*"):
        """The master's grains cache {minion: grains} (what the minions last reported)."""
        import salt.utils.master  # pylint: disable=import-outside-toplevel

        try:
            util = salt.utils.master.MasterPillarUtil(
                tgt, "glob", use_cached_grains=True, grains_fallback=False, opts=self.opts
            )
            return util.get_minion_grains() or {}
        except Exception as exc:  # pylint: disable=broad-except
            log.error("airflow healing: grains cache unreadable: %s", exc)
            return {}

    def cached_pillars(self, minions):
        """{minion: pillar} as the master last served it to each minion (its data cache; no
        compile): what the minion's own schedule is built from."""
        import salt.utils.master  # pylint: disable=import-outside-toplevel

        if not minions:
            return {}
        try:
            util = salt.utils.master.MasterPillarUtil(
                list(minions), "list", use_cached_grains=True, grains_fallback=False,
                use_cached_pillar=True, pillar_fallback=False, opts=self.opts)
            return util.get_minion_pillar() or {}
        except Exception as exc:  # pylint: disable=broad-except
            log.error("airflow healing: pillar cache unreadable: %s", exc)
            return {}

    def pillar(self, minion, grains):
        """The compiled pillar of ``minion`` on the master ({} if it cannot be compiled)."""
        import salt.pillar  # pylint: disable=import-outside-toplevel

        try:
            return salt.pillar.get_pillar(self.opts, grains or {}, minion,
                                          saltenv="base").compile_pillar() or {}
        except Exception as exc:  # pylint: disable=broad-except
            log.error("airflow healing: cannot compile pillar: %s", exc)
            return {}

    def fire(self, tag, data):
        """Fire an event on the master's bus (alerts and outcomes for operators)."""
        import salt.utils.event  # pylint: disable=import-outside-toplevel

        try:
            with salt.utils.event.get_master_event(
                self.opts, self.opts["sock_dir"], listen=False
            ) as event:
                event.fire_event(data, tag)
        except Exception as exc:  # pylint: disable=broad-except
            log.error("airflow healing: cannot fire %s: %s", tag, exc)


def salt_ops(opts, conf):
    """SaltOps of the master options ``opts`` and runner settings ``conf``."""
    return SaltOps(opts, conf)


class NotRecorded(Exception):
    """The intent of an action could not be audited: the action was not taken."""

    def __init__(self, action, minion, daemon, error):
        super().__init__(f"{action} {minion}/{daemon} not recorded: {error}")
        self.result = {"result": "not-recorded", "action": action, "minion": minion,
                       "daemon": daemon, "error": str(error)}


class Context:
    """Everything a healing concern needs, handed in (see the module docstring)."""

    def __init__(self, conf, clock, store, ops, table, core):
        self.conf = conf
        self.clock = clock
        self.store = store
        self.ops = ops
        self.table = table
        self.core = core
        self.started = clock.now()  # the runner job's start: an intent says how long it decided

    def audit(self, action, minion=None, daemon=None, reason=None, outcome=None, **extra):
        """A record that is not an action (ignored, blocked, skipped ...): best effort."""
        return self.store.audit(action, minion, daemon, reason, outcome, **extra)

    #: what ``act`` raises when an intent cannot be recorded (the runner catches it)
    NotRecorded = NotRecorded

    def act(self, action, minion=None, daemon=None, reason=None, attempt=False, **extra):
        """
        The one way to take an action (restart, start, stop, fence, failover, haproxy server
        state, haproxy reload, drain): call it BEFORE acting. It writes the intent (one fsynced
        audit line: action ``intent``, ``intent: <action>``, outcome ``pending``, a new ``id``)
        and, with ``attempt``, then counts the damping attempt of (minion, daemon). Returns an
        ``Action``: ``done(outcome, ...)`` writes the outcome record with the same ``id``.

        When either cannot be written (disk full, read-only, permissions) the action is not
        to be taken: fires ``airflow/alert/audit/unwritable`` and raises ``NotRecorded``,
        which the runner turns into the verb's result ``{"result": "not-recorded", ...}``.
        """
        op_id = uuid.uuid4().hex[:16]
        written = False
        try:
            self.store.audit("intent", minion, daemon, reason, "pending", strict=True,
                             durable=True, intent=action, id=op_id,
                             decided_s=round(self.clock.now() - self.started, 2), **extra)
            written = True
            if attempt:
                self.store.record_attempt(minion, daemon)
            if minion and self.table.valid_minion_id(minion):
                self.store.mark_busy(minion, op_id, action)  # scheduled enforcement waits
        except OSError as exc:
            self.audit_unwritable("intent", action, minion, daemon, exc)
            if written:  # the intent is there: say that it was not acted on (best effort)
                self.audit(action, minion, daemon, reason, "not-recorded", id=op_id,
                           error=str(exc))
            raise NotRecorded(action, minion, daemon, exc) from exc
        return Action(self, op_id, action, minion, daemon, reason, attempt)

    def audit_unwritable(self, phase, action, minion, daemon, exc):
        """Log and announce an audit record that could not be written (no secrets in it)."""
        log.error("airflow healing: cannot audit the %s of %s %s/%s: %s%s", phase, action,
                  minion, daemon, exc, ": not taken" if phase == "intent" else "")
        if self.ops is not None:
            self.ops.fire("airflow/alert/audit/unwritable",
                          {"phase": phase, "action": action, "minion": minion,
                           "daemon": daemon, "error": str(exc),
                           "taken": phase != "intent"})

    def role_of(self, daemon):
        return self.table.role_of(daemon)

    def role_record(self):
        """The master-owned role record {minion: roles}; bad entries grant nothing (logged)."""
        data, error = self.store.read_role_record()
        record, errors = self.core.parse_role_record(data, self.table)
        for message in ([error] if error else []) + errors:
            log.error("airflow healing: %s", message)
        return record

    def report_claims(self, record, grains_cache):
        """
        Minions whose ``roles`` grain claims a role the record does not grant: each new or
        changed claim gets one ``refused`` audit record and an ``airflow/alert/roles/claim``
        event. Returns {minion: refused roles} of all current claims.
        """
        claims = self.core.role_claims(record, grains_cache, self.table)

        def change(old):
            return claims, self.core.new_claims(claims, old)

        try:
            fresh = self.store.update_json(("roles", "claims"), change)
        except OSError as exc:  # an unwritable state dir is alerted by the audit path itself
            log.error("airflow healing: cannot record role claims %s: %s", claims, exc)
            return claims
        for minion, roles in sorted(fresh.items()):
            self.audit("refused", minion, None,
                       f"roles grain claims {', '.join(roles)}: not granted by the role record",
                       "refused", roles=roles)
            self.ops.fire("airflow/alert/roles/claim", {"minion": minion, "roles": roles})
        return claims

    def change_roles(self, minion, roles, grant=True):
        """
        Grant (or revoke) ``roles`` of ``minion`` in the role record, then make the minion's
        ``roles`` grain follow (the states target it) and refresh every minion's pillar (the
        membership each one renders from changed). Returns the runner verb's result.
        """
        if not self.table.valid_minion_id(minion):
            return {"result": "error", "reason": "invalid minion id"}
        roles = [roles] if isinstance(roles, str) else list(roles or [])
        roles = [r.strip() for part in roles for r in str(part).split(",") if r.strip()]
        known = set(self.table.roles())
        unknown = [r for r in roles if r not in known]
        if not roles or unknown:
            return {"result": "error",
                    "reason": f"roles must be one or more of {', '.join(sorted(known))}"
                              + (f"; unknown: {', '.join(unknown)}" if unknown else "")}
        with self.store.lock("roles", blocking=True, timeout=30) as got:
            if not got:
                return {"result": "busy", "reason": "another grant/revoke holds the record"}
            old = self.role_record()
            new = self.core.change_roles(old, minion, roles, grant)
            grain = self.core.grain_roles(self.ops.grains_cache().get(minion))
            if new == old and set(grain) == set(new.get(minion, [])):
                return {"result": "unchanged", "minion": minion, "roles": new.get(minion, [])}
            verb = "grant" if grant else "revoke"
            try:  # recorded before it is done, like every action
                op = self.act(verb, minion, None, f"{verb} {', '.join(roles)}",
                              roles=new.get(minion, []))
            except NotRecorded as exc:
                return exc.result
            self.store.write_role_record(self.core.dump_role_record(new))
        op.done("recorded", roles=new.get(minion, []))
        fun = "grains.append" if grant else "grains.remove"
        grain = [self.ops.one(minion, fun, ["roles", role]) for role in roles]
        everyone = sorted(set(self.ops.grains_cache()) | set(new) | {minion})
        self.ops.cmd(everyone, "saltutil.refresh_pillar", tgt_type="list",
                     timeout=self.conf["probe_timeout"])
        self.ops.one(minion, "mine.update")
        return {"result": "ok", "minion": minion, "roles": new.get(minion, []),
                "grain": "set" if all(g is not None for g in grain) else "unreachable"}

    def inventory(self):
        """
        {minion: grains} with ``roles`` from the role record, never from the minion's own
        grain (``airflow_decide.inventory``): what every check of the runner reads.
        """
        return self.core.inventory(self.role_record(), self.ops.grains_cache())

    def minions_running(self, daemon, grains_cache=None):
        """Minions whose role (in the role record) runs ``daemon``."""
        cache = self.inventory() if grains_cache is None else grains_cache
        return self.core.minions_with_role(cache, self.role_of(daemon))

    def dependency_health(self, daemon, grains_cache=None):
        """
        {dependency: ok | dead | None} of ``daemon``'s dependencies (table column ``needs``),
        each probed on the nodes whose role runs it (None: no such node, e.g. external).
        """
        cache = self.inventory() if grains_cache is None else grains_cache
        health = {}
        for dep in self.table.needs(daemon):
            nodes = self.minions_running(dep, cache)
            answers = self.ops.cmd(nodes, "airflow_health.probe", [dep], tgt_type="list",
                                   timeout=self.conf["ping_timeout"] + 8) if nodes else {}
            health[dep] = self.core.dependency_status(answers, nodes, self.conf["dependency_settle"])
        return health

    def lb_view(self, masters):
        """
        {master: ok | dead | None}: each api-server as the load balancer sees it (the lb node
        probes every backend server, ``airflow_health.backend_health``), never as the
        api-server reports itself. No lb node answering: None for all (no evidence).
        """
        for lb in self.minions_running("haproxy"):
            ret = self.ops.one(lb, "airflow_health.backend_health",
                               timeout=self.conf["ping_timeout"] + 8)
            if isinstance(ret, dict) and "status" not in ret:
                return self.core.api_health(ret, masters)
        return self.core.api_health({}, masters)

    def blocked_by(self, minion, daemon, action=None, **extra):
        """
        The dependency that explains ``daemon``'s failure on ``minion`` and blocks ``action``
        (audited as ``blocked``: no remediation attempt, no damping, no failover), else None.
        Which health blocks which action is the core's rule (``dependency_down``).
        """
        health = self.dependency_health(daemon)
        dep = self.core.dependency_down(self.table, daemon, health, action=action)
        if dep:
            why = (f"dependency {dep} came back less than {self.conf['dependency_settle']:g} s ago"
                   if health.get(dep) == "settling" else f"dependency {dep} is down")
            self.audit("blocked", minion, daemon, why, "blocked", dependency=dep, **extra)
        return dep

    def valid_minion(self, minion, what):
        """A minion id fit to act on; anything else is audited as ignored."""
        if self.table.valid_minion_id(minion):
            return True
        self.audit("ignored", "?", None, f"{what}: invalid minion id", "ignored")
        return False

    def gate(self, minion, daemon):
        """Maintenance / not-yet-deployed gate: a result dict to return, or None to go on."""
        why = self.core.gate(self.store.flag("maintenance"), self.store.flag("deployed"),
                             self.conf["require_deploy"])
        if why == "maintenance":
            self.audit("skipped", minion, daemon, "maintenance mode", "skipped")
        elif why:
            log.info("airflow healing: %s/%s skipped, cluster not deployed yet", minion, daemon)
        return {"result": "skipped", "reason": why} if why else None

    def restart_allowed(self, minion, daemon):
        """Flap damping of a remediation of (minion, daemon): may it run now?"""
        allowed, _ = self.core.damping(self.store.attempts(minion, daemon), self.clock.now(),
                                       self.conf["max_attempts"], self.conf["window"])
        return allowed

    def damped(self, minion, daemon):
        """Audit and announce that remediation of (minion, daemon) stopped (flap damping)."""
        _, count = self.core.damping(self.store.attempts(minion, daemon), self.clock.now(),
                                     self.conf["max_attempts"], self.conf["window"])
        self.audit("alert", minion, daemon, f"{count} remediations in {self.conf['window']:g}s",
                   "damped")
        self.ops.fire(f"airflow/alert/{minion}/{daemon}",
                      {"minion": minion, "daemon": daemon, "attempts": count,
                       "reason": "flap damping: remediation stopped"})

    def placement(self, grains_cache=None):
        """(mode, active) of the scheduler: runtime pillar, then a master's compiled pillar."""
        cache = self.inventory() if grains_cache is None else grains_cache
        runtime = self.core.parse_runtime_pillar(self.table, self.store.read_runtime_pillar())
        masters = self.minions_running("scheduler", cache)
        sched = {}
        if masters:
            pil = self.ops.pillar(masters[0], cache.get(masters[0]))
            sched = (pil.get("airflow") or {}).get("scheduler") or {}
        return self.core.scheduler_placement(runtime, sched, masters, self.conf["default_mode"],
                                             self.table)


class Action:
    """An action whose intent is recorded (``Context.act``); ``done`` records its outcome."""

    def __init__(self, ctx, op_id, action, minion, daemon, reason, attempt):
        self.ctx, self.id = ctx, op_id
        self.action, self.minion, self.daemon, self.reason = action, minion, daemon, reason
        self.attempt = attempt

    def done(self, outcome, reason=None, **extra):
        """
        The outcome record (the intent's action, minion, daemon, reason and id; ``attempt``
        marked, not counted again). The action was taken: a failed write only alerts.
        """
        if self.minion and self.ctx.table.valid_minion_id(self.minion):
            try:
                self.ctx.store.clear_busy(self.minion, self.id)
            except OSError as exc:  # a stale mark expires (airflow_drift.BUSY_MAX_AGE)
                log.warning("airflow healing: cannot clear the busy mark of %s: %s",
                            self.minion, exc)
        try:
            return self.ctx.store.audit(self.action, self.minion, self.daemon,
                                        self.reason if reason is None else reason, outcome,
                                        attempt=self.attempt, count_attempt=False,
                                        strict=True, id=self.id, **extra)
        except OSError as exc:
            self.ctx.audit_unwritable("outcome", self.action, self.minion, self.daemon, exc)
            return None


def context(conf, clock, store, ops, table, core):
    """The Context of the healing concerns (all parts handed in)."""
    return Context(conf, clock, store, ops, table, core)


def cluster_status(ctx):
    """Cluster overview for ``salt-run airflow.status`` (see the runner)."""
    cache = ctx.inventory()
    minions = sorted(cache)
    present = ctx.ops.present(minions)
    health = ctx.ops.cmd(present, "airflow_health.check", tgt_type="list",
                         timeout=ctx.conf["probe_timeout"] + 10) if present else {}
    backends = {}
    for lb in ctx.minions_running("haproxy", cache):
        if lb in present:
            backends[lb] = ctx.ops.one(lb, "airflow_health.haproxy_backends")
    mode, active = ctx.placement(cache)
    return {
        "nodes": {m: {"roles": ctx.core.grain_roles(cache[m]), "present": m in present}
                  for m in minions},
        "health": health,
        "scheduler": {"mode": mode, "active": active},
        "haproxy": backends,
        "maintenance": ctx.store.flag("maintenance"),
        "deployed": ctx.store.flag("deployed"),
        "enforcement": {"paused": ctx.store.flag("enforcement-paused"),
                        "nodes": {m: row for m, row in ctx.store.enforcement().items()
                                  if m in cache}},
        "recent": ctx.store.read_audit(10),
    }


def enforcement_report(ctx, drift, minion):
    """
    A minion says its scheduled run finished (event ``airflow/enforce/<result>``, whose id
    proves nothing): ask that minion for its summary (``airflow_enforce.last``, an answer over
    Salt's authenticated channel), check it (``drift.parse_report``) and, once per run:
    record the node's status; for drift (corrected, would change, failed) one ``drift`` audit
    record and an ``airflow/drift/<minion>`` event. State IDs and key names only, no values.
    """
    if not ctx.table.valid_minion_id(minion) or minion not in ctx.inventory():
        ctx.audit("ignored", ctx.core.safe_id(ctx.table, minion), None,
                  "enforcement report from an unknown minion", "ignored")
        return {"result": "ignored", "reason": "unknown minion"}
    raw = ctx.ops.one(minion, "airflow_enforce.last", timeout=ctx.conf["probe_timeout"])
    if raw is None:
        return {"result": "no-answer", "minion": minion}
    report, error = drift.parse_report(raw)
    if error:
        ctx.audit("ignored", minion, None, f"malformed enforcement summary: {error}", "ignored")
        return {"result": "ignored", "reason": error}
    seen = ctx.store.read_json("enforce", minion) or {}  # this node only, not the whole dir
    if seen.get("run_id") == report["run_id"]:
        return {"result": "known", "minion": minion, "run_id": report["run_id"]}
    ctx.store.write_enforcement(minion, drift.status_row(report, ctx.clock.now()))
    if drift.is_drift(report):
        fields = drift.audit_fields(report)
        outcome = {"corrected": "corrected", "drift": "reported", "failed": "failed"}[
            report["result"]]
        ctx.audit("drift", minion, None, f"scheduled {report['mode']} run: {report['result']}",
                  outcome, **fields)
        ctx.ops.fire(f"airflow/drift/{minion}", dict(fields, minion=minion))
    return {"result": report["result"], "minion": minion, "run_id": report["run_id"]}


def enforcement_watch(ctx, drift, minions):
    """
    The periodic reconcile's check that scheduled enforcement still fires on ``minions``
    (present members of the role record). A node is stale when its pillar (as the master last
    served it) holds the schedule job and neither its newest reported run nor the last pause
    that held it is within ``drift.STALE_PERIODS`` x (interval + splay)
    (``drift.stale_since``). A stale node gets ``saltutil.refresh_pillar``, which merges the
    pillar's job into its running schedule again, plus one ``enforce-stale`` audit record and
    an ``airflow/alert/enforce/stale`` event, at most once per period. Returns
    {minion: seconds overdue} of the nodes it acted on.
    """
    store, now = ctx.store, ctx.clock.now()
    flags = {"maintenance": store.flag("maintenance"),
             "enforcement_paused": store.flag("enforcement-paused"),
             "deployed": store.flag("deployed"), "require_deploy": ctx.conf["require_deploy"]}
    pillars = ctx.ops.cached_pillars(minions)
    acted = {}
    for minion in minions:
        job = ((pillars.get(minion) or {}).get("schedule") or {}).get(drift.JOB)
        watch = store.read_json("enforce-watch", minion) or {}
        paused = drift.pause_reason(busy=store.busy(minion), now=now, **flags)
        if not isinstance(job, dict) or paused or not isinstance(watch.get("since"), (int, float)):
            # off, held by a pause or first seen: it may run from now on
            store.update_json(("enforce-watch", minion), lambda old: ({"since": now}, None))
            continue
        last = (store.read_json("enforce", minion) or {}).get("recorded")
        last = last if isinstance(last, (int, float)) else None
        overdue = drift.stale_since(job, last, watch["since"], now)
        if overdue is None:
            continue
        period = int(job["seconds"]) + int(job.get("splay") or 0)  # valid: stale_since read it
        acted_at = watch.get("acted")
        if isinstance(acted_at, (int, float)) and now - acted_at < period:
            continue
        store.update_json(("enforce-watch", minion),
                          lambda old: (dict(old or {}, acted=now), None))
        refreshed = ctx.ops.one(minion, "saltutil.refresh_pillar", timeout=ctx.conf["probe_timeout"])
        ctx.audit("enforce-stale", minion, None,
                  f"no scheduled enforcement run for {round(now - max(last or 0, watch['since']))} s"
                  f" (interval + splay {period} s): pillar refreshed", "refreshed"
                  if refreshed else "no-answer", overdue=overdue)
        ctx.ops.fire("airflow/alert/enforce/stale", {"minion": minion, "overdue": overdue,
                                                     "last_run": last})
        acted[minion] = overdue
    return acted
