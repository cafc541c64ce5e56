"""
The decisions of the healing layer, pure (Salt utility module ``airflow_decide``).

No I/O and no clock: every function gets what it decides on (observations gathered by the
runner, ``now`` as a number) and returns a decision. The side-effecting modules
(``airflow_heal``, ``airflow_scheduler``, ``airflow_lb``) gather observations, ask these
functions and act; ``tests/unit/test_core_decide.py`` covers every branch.

Functions that need the daemon table take it as ``table``: the ``airflow_daemons`` module or
anything with its API (utility modules cannot import each other inside Salt's loader, so the
runner hands the table in).

Nothing from an event or a grain is trusted: ids are checked against the minion-id rule,
daemons against the table, roles against the master-owned role record (a minion writes its
own grains: a ``roles`` grain only ever narrows what the record grants).
"""

import inspect
import types

__virtualname__ = "airflow_decide"

#: The runner's own knobs (master config ``airflow_healing:``, see
#: conf/master.d/airflow-reactor.conf, which sets each of them). Node-side knobs (stale
#: heartbeat, start grace, worker ping timeout) live in the node settings file that the
#: airflow states write; the runner uses what the health module reports.
RUNNER_DEFAULTS = {
    "state_dir": "/var/lib/airflow-salt",
    "runtime_pillar": None,  # default: <state_dir>/pillar/airflow_runtime.sls
    "roles_file": "/etc/airflow-salt/roles.yaml",  # the master-owned role record
    "max_attempts": 3,
    "window": 600,
    "dry_run": False,
    "require_deploy": True,
    "scheduler_start_timeout": 60,
    "ping_timeout": 2,
    "probe_timeout": 20,
    "worker_verify_timeout": 45,
    # A broker/metastore up for less than this (s) is still "settling": its clients reconnect
    # with back-off (a Celery worker's kombu retries grow 2, 4, ... up to 30 s), so a worker that
    # does not answer a ping then is reconnecting, not hung: no kill-restart (it would kill
    # the tasks it just took, seen in incident c).
    "dependency_settle": 30,
    "lb_quiet": 2.0,
    "lb_max_wait": 10.0,
    "lb_apply_timeout": 90,
    "drain_timeout": 120,
    "rate_limit_events": 20,
    "rate_limit_window": 10,
    "failover_max_attempts": 3,
    "failover_window": 3600,
    "default_mode": "active-standby",
    "audit_max_bytes": 10 * 1024 * 1024,  # audit.jsonl is rotated past this size ...
    "audit_keep": 5,                      # ... into audit.jsonl.1 .. .<audit_keep>
}
_BOOLEAN_KEYS = ("dry_run", "require_deploy")
_INTEGER_KEYS = ("max_attempts", "failover_max_attempts", "rate_limit_events", "audit_max_bytes",
                 "audit_keep")
#: Lower bounds beyond "not negative": a rotated audit keeps at least one old file, and a file
#: holds more than a few records before it is rotated.
_MINIMUMS = {"audit_keep": 1, "audit_max_bytes": 4096}
_NUMBER_KEYS = ("window", "failover_window", "scheduler_start_timeout", "ping_timeout",
                "probe_timeout", "worker_verify_timeout", "dependency_settle", "lb_quiet",
                "lb_max_wait", "lb_apply_timeout", "drain_timeout", "rate_limit_window")
#: Keys that moved to the node settings file; still accepted in the master config, not used.
RUNNER_RETIRED_KEYS = ("heartbeat_stale", "scheduler_start_grace")

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")

SCHEDULER_MODES = ("active-standby", "active-active")
#: Statuses a health event may claim (audited as ``claimed``; never acted on).
CLAIMABLE_STATUSES = ("ok", "dead", "hung", "restarting", "unknown", "absent", "error",
                      "blocked", "split")
#: The scheduler's healthy standby must run these to be elected.
CANDIDATE_NEEDS = ("api-server", "dag-processor")


def __virtual__():
    return __virtualname__


def api():
    """
    This module's public functions as one object. The runner resolves it once, in its own
    loader context, and hands it to the concerns (a ``__utils__`` lookup made from inside
    another utility module would find no ``__utils__``).
    """
    return types.SimpleNamespace(**{
        name: fn for name, fn in globals().items()
        if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == __name__})


# ====================================================================== settings
def parse_bool(value, key):
    """
    Strict boolean of setting ``key``: True/False, 1/0 or one of true|yes|on / false|no|off
    (any case). Anything else raises ValueError naming the key (``"false"`` is False).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return True
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return False
    raise ValueError(f"airflow_healing:{key} must be true or false, not {value!r}")


def _parse_number(value, key, kind):
    if isinstance(value, bool):
        raise ValueError(f"airflow_healing:{key} must be a number, not {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"airflow_healing:{key} must be a number, not {value!r}") from None
    if number < 0:
        raise ValueError(f"airflow_healing:{key} must not be negative, not {value!r}")
    return number


def settings(opts):
    """
    The runner's settings: master config ``airflow_healing:`` over RUNNER_DEFAULTS, booleans
    and numbers parsed strictly (ValueError naming the key for junk). Retired keys are dropped.
    """
    given = (opts or {}).get("airflow_healing") or {}
    if not isinstance(given, dict):
        raise ValueError("airflow_healing must be a mapping")
    conf = dict(RUNNER_DEFAULTS)
    conf.update(given)
    for key in RUNNER_RETIRED_KEYS:
        conf.pop(key, None)
    for key in _BOOLEAN_KEYS:
        conf[key] = parse_bool(conf[key], key)
    for key in _INTEGER_KEYS:
        conf[key] = _parse_number(conf[key], key, int)
    for key in _NUMBER_KEYS:
        conf[key] = _parse_number(conf[key], key, float)
    for key, least in _MINIMUMS.items():
        if conf[key] < least:
            raise ValueError(f"airflow_healing:{key} must be at least {least}, not {conf[key]!r}")
    if conf["default_mode"] not in SCHEDULER_MODES:
        raise ValueError(f"airflow_healing:default_mode must be one of {SCHEDULER_MODES}")
    if not conf.get("runtime_pillar"):
        conf["runtime_pillar"] = conf["state_dir"].rstrip("/") + "/pillar/airflow_runtime.sls"
    return conf


# ====================================================================== ids, roles, requests
def safe_id(table, value):
    """``value`` when it is a valid minion id, else ``"?"`` (what an audit line may show)."""
    return value if table.valid_minion_id(value) else "?"


def valid_ids(table, values):
    """The valid minion ids of ``values`` (anything not a list counts as empty)."""
    if not isinstance(values, (list, tuple)):
        return []
    return [v for v in values if table.valid_minion_id(v)]


def grain_roles(grains):
    """Roles list from a grains dict (``roles`` may be a string or a list)."""
    roles = (grains or {}).get("roles") if isinstance(grains, dict) else None
    if isinstance(roles, str):
        return [roles]
    return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []


def minions_with_role(grains_cache, role):
    """Sorted minion ids of the grains cache that have ``role``."""
    return sorted(m for m, g in (grains_cache or {}).items() if role in grain_roles(g))


# ---------------------------------------------------------------- the master-owned role record
#: Header of the role record file (``roles_file``), written by ``salt-run airflow.grant``.
ROLE_RECORD_HEADER = (
    "# Master-owned role record of the Airflow cluster: minion id -> roles. Written by\n"
    "# `salt-run airflow.grant <minion> <role>` / `airflow.revoke`. A minion's `roles` grain\n"
    "# never grants a role (its secrets, its place in the cluster) that is not listed here.\n")


def parse_role_record(data, table):
    """
    ``(record, errors)`` from the loaded record file (``data``: what YAML gave, None for an
    empty or missing file). ``record`` is {minion: sorted roles} of the valid entries; every
    bad entry grants nothing and is named in ``errors``.
    """
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return {}, ["role record must be a mapping: minion id -> list of roles"]
    known = set(table.roles())
    record, errors = {}, []
    for minion, roles in data.items():
        if not isinstance(minion, str) or not table.valid_minion_id(minion):
            errors.append(f"role record: {str(minion)[:64]!r} is not a valid minion id")
            continue
        roles = [roles] if isinstance(roles, str) else roles
        if not isinstance(roles, list):
            errors.append(f"role record: {minion}: roles must be a list")
            continue
        bad = [r for r in roles if r not in known]
        if bad:
            errors.append(f"role record: {minion}: unknown role(s) "
                          f"{', '.join(str(r)[:64] for r in bad)} (known: {', '.join(sorted(known))})")
        good = sorted({r for r in roles if r in known})
        if good:
            record[minion] = good
    return record, errors


def role_members(record, table):
    """{role: sorted minion ids} for every role of the table (empty lists included)."""
    out = {role: [] for role in sorted(set(table.roles()))}
    for minion in sorted(record or {}):
        for role in record[minion]:
            out.setdefault(role, []).append(minion)
    return out


def role_claims(record, grains_cache, table):
    """
    Roles of the table that minions claim by their ``roles`` grain but the record does not
    give them: {minion: sorted roles} (only minions with such a claim; other formulas' roles
    in the grain are none of ours).
    """
    known = set(table.roles())
    out = {}
    for minion, grains in (grains_cache or {}).items():
        extra = sorted(set(grain_roles(grains)) & known - set((record or {}).get(minion, [])))
        if extra:
            out[minion] = extra
    return out


def new_claims(claims, reported):
    """
    The claims to report now: those of ``claims`` ({minion: roles}) that differ from what was
    reported before (``reported``, same shape; junk counts as nothing reported). A claim is
    reported once, and again when it changes or comes back after it was withdrawn.
    """
    reported = reported if isinstance(reported, dict) else {}
    return {m: r for m, r in (claims or {}).items() if reported.get(m) != r}


def inventory(record, grains_cache):
    """
    The runner's view of the cluster: {minion: grains} for every minion of the record or the
    grains cache, with ``roles`` replaced by what the record grants (a minion the record does
    not know has no role, whatever its grain says). Other grains (host names) stay as cached.
    """
    out = {}
    for minion in set(record or {}) | set(grains_cache or {}):
        grains = (grains_cache or {}).get(minion)
        grains = dict(grains) if isinstance(grains, dict) else {}
        grains["roles"] = list((record or {}).get(minion, []))
        out[minion] = grains
    return out


def change_roles(record, minion, roles, grant=True):
    """A new record with ``roles`` granted to (or, ``grant=False``, revoked from) ``minion``."""
    new = {m: list(r) for m, r in (record or {}).items()}
    have = set(new.get(minion, []))
    have = have | set(roles) if grant else have - set(roles)
    if have:
        new[minion] = sorted(have)
    else:
        new.pop(minion, None)
    return new


def dump_role_record(record):
    """The record file's text: the header, then one sorted line per minion."""
    lines = [f"{m}: [{', '.join(record[m])}]" for m in sorted(record or {})]
    return ROLE_RECORD_HEADER + ("\n".join(lines) + "\n" if lines else "{}\n")


def tag_minion(tag):
    """The minion named in a beacon tag ``salt/beacon/<id>/...``; None for other tags."""
    if isinstance(tag, str) and tag.startswith("salt/beacon/"):
        parts = tag.split("/")
        return parts[2] if len(parts) > 2 else ""
    return None


def claimed_status(value):
    """The status an event claims, if it is one a probe can report; else None."""
    return value if value in CLAIMABLE_STATUSES else None


def validate_request(table, minion, daemon, tag_minion_id=None, grains_cache=None):
    """
    Validate a remediation request from an event. Returns ``(ok, reason, detail)``.

    Malformed (reason ``"malformed health event"``): the authenticated ``minion`` or the
    minion named in the tag is not a valid id, or ``daemon`` is not in the table. Spoofed: the
    tag names another minion than the authenticated one, or the master's grains cache does
    not know ``minion`` or does not give it the role that runs ``daemon``.
    """
    if not table.valid_minion_id(minion):
        return False, "malformed health event", "invalid minion id"
    if tag_minion_id is not None and not table.valid_minion_id(tag_minion_id):
        return False, "malformed health event", "invalid minion id in the tag"
    row = table.get(daemon) if isinstance(daemon, str) else None
    if row is None:
        return False, "malformed health event", "unknown daemon"
    if tag_minion_id is not None and tag_minion_id != minion:
        return False, "tag minion does not match the authenticated minion id", None
    grains = (grains_cache or {}).get(minion)
    if not grains:
        return False, "minion not in the master's grains cache", None
    if row["role"] not in grain_roles(grains):
        return False, f"minion does not have role {row['role']}", None
    return True, "ok", None


def remediation_route(table, daemon):
    """Who handles an event of ``daemon``: ``scheduler`` | ``lb`` | ``service`` (by probe kind)."""
    probe = table.get(daemon)["probe"]
    if probe == "heartbeat":
        return "scheduler"  # cluster-wide: placement, restart or failover
    if probe == "api":
        return "lb"  # an api-server is taken out of / put back into haproxy
    return "service"


def gate(maintenance, deployed, require_deploy):
    """None when remediation may run, else why not: ``maintenance`` | ``not deployed``."""
    if maintenance:
        return "maintenance"
    if require_deploy and not deployed:
        return "not deployed"
    return None


# ====================================================================== damping, services
def damping(attempts, now, max_attempts, window):
    """
    Flap damping. ``attempts``: epoch seconds of the remediation attempts of one (minion,
    daemon) (``Store.attempts``; unreadable entries skipped). Counts those within ``window``
    seconds before ``now``. Returns ``(allowed, attempts_in_window)``.
    """
    count = 0
    for ts in attempts if isinstance(attempts, (list, tuple)) else []:
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            continue
        if now - ts <= window:
            count += 1
    return count < int(max_attempts), count


def decide_service(table, daemon, probe):
    """
    Action for a re-probed daemon (``probe``: return of ``airflow_health.probe``, None when the
    node did not answer): ``unreachable`` | ``ignore`` | ``wait`` | ``restart`` |
    ``kill-restart``.
    """
    if not isinstance(probe, dict):
        return "unreachable"
    status = probe.get("status")
    if status == "ok":
        return "ignore"  # stale or spoofed event
    if status == "dead":
        return "restart"
    if status == "hung" and table.get(daemon)["probe"] == "ping":
        return "kill-restart"  # a hung (e.g. SIGSTOPped) worker ignores SIGTERM
    return "wait"  # restarting: systemd is on it; unknown/absent/error: no evidence


#: Actions a dependency that came back moments ago (``settling``) blocks: a daemon that fails its
#: ping then may only be in its client's reconnect back-off, and the kill would take its running
#: tasks (incident c). A dead daemon needs its start whatever its dependencies do.
SETTLING_BLOCKS = ("kill-restart",)


def dependency_down(table, daemon, dependency_health, action=None):
    """
    The first dependency of ``daemon`` (table column ``needs``) that blocks ``action`` (what
    ``decide_service`` chose), else None. ``dependency_health``: {dependency: ok | settling |
    dead | None}; None (nobody could tell, e.g. an external database without a db minion) is no
    evidence and does not block. ``dead`` blocks every action, ``settling`` only those in
    ``SETTLING_BLOCKS``.
    """
    blocking = ("dead", "settling") if action in SETTLING_BLOCKS else ("dead",)
    for dep in table.get(daemon)["needs"]:
        if (dependency_health or {}).get(dep) in blocking:
            return dep
    return None


def dependency_status(answers, nodes, settle=0):
    """
    Health of one dependency from the ``airflow_health.probe`` answers of the nodes that run
    it: ok when any answers ok, dead when none does (a node that does not answer cannot serve
    it either), None when no node runs it (external: no evidence). ``settling`` when the ones
    that answer ok have all been up (their unit's ``uptime``) for less than ``settle`` s; an
    uptime that is missing or not a number counts as settled (no evidence).
    """
    if not nodes:
        return None
    ok = [answers[n] for n in nodes
          if isinstance((answers or {}).get(n), dict) and answers[n].get("status") == "ok"]
    if not ok:
        return "dead"

    def settling(answer):
        unit = answer.get("unit")
        uptime = unit.get("uptime") if isinstance(unit, dict) else None
        return (isinstance(uptime, (int, float)) and not isinstance(uptime, bool)
                and 0 <= uptime < settle)
    return "settling" if all(settling(a) for a in ok) else "ok"


def probe_ok(probe):
    """Did a re-probe after a restart find the daemon healthy?"""
    return isinstance(probe, dict) and probe.get("status") == "ok"


# ====================================================================== scheduler
def scheduler_placement(runtime_active, pillar_scheduler, masters, default_mode, table):
    """
    ``(mode, active)`` of the scheduler: mode from pillar ``airflow:scheduler:mode`` (else
    ``default_mode``); active from the runtime pillar (written by a failover), then pillar
    ``airflow:scheduler:active``, then the first master by id. Invalid ids are skipped.
    """
    sched = pillar_scheduler if isinstance(pillar_scheduler, dict) else {}
    mode = sched.get("mode") if sched.get("mode") in SCHEDULER_MODES else default_mode
    for candidate in (runtime_active, sched.get("active")):
        if table.valid_minion_id(candidate):
            return mode, candidate
    return mode, (masters[0] if masters else None)


def needs_active_probe(mode, heartbeat):
    """Does the scheduler decision need the active node's state (reachable, unit)?"""
    return (mode != "active-active" and isinstance(heartbeat, dict)
            and heartbeat.get("status") in ("stale", "none"))


def decide_scheduler(mode, heartbeat, active=None, active_reachable=False, active_unit=None,
                     restart_allowed=True):
    """
    Decide about the scheduler after a health event.

    heartbeat: ``airflow_health.scheduler_heartbeat`` of the reporting master (None: it did not
    answer); active: minion id of the active scheduler; active_reachable: it answered a ping;
    active_unit: its ``airflow_health.service scheduler`` (status ok|restarting|dead|...,
    ``starting`` while within the node's start grace); restart_allowed: flap damping of a
    restart on the active node.

    Returns ignore-active-active | unreachable | healthy | unknown | failover | wait |
    restart | failover-damped.
    """
    if mode == "active-active":
        return "ignore-active-active"  # every master runs one; systemd restarts it
    if not isinstance(heartbeat, dict):
        return "unreachable"
    status = heartbeat.get("status")
    if status == "ok":
        return "healthy"
    if status not in ("stale", "none"):
        return "unknown"  # the metastore cannot be read: no evidence
    if not active or not active_reachable:
        return "failover"
    unit = active_unit if isinstance(active_unit, dict) else {}
    if unit.get("status") == "restarting":
        return "wait"  # systemd is restarting it
    if unit.get("status") == "ok" and unit.get("starting"):
        return "wait"  # started within the start grace: no heartbeat yet is normal
    # running without heartbeat (hung), failed, or no answer about the unit: restart it on
    # the same node once more, unless damped, then move it
    return "restart" if restart_allowed else "failover-damped"


def node_names(minion, grains=None):
    """Names a SchedulerJob hostname of ``minion`` may carry (id, host, fqdn, nodename)."""
    names = {minion} if minion else set()
    for key in ("host", "fqdn", "nodename", "localhost"):
        value = (grains or {}).get(key) if isinstance(grains, dict) else None
        if isinstance(value, str) and value:
            names.add(value)
    return names


def host_matches(hostname, names):
    """Is ``hostname`` (from the metastore) one of ``names`` (short names compared too)?"""
    if not hostname or not isinstance(hostname, str):
        return False
    return hostname in names or hostname.split(".")[0] in {n.split(".")[0] for n in names}


def fresh_hosts(heartbeat):
    """Hostnames with a fresh scheduler heartbeat (empty when the probe failed)."""
    fresh = heartbeat.get("fresh") if isinstance(heartbeat, dict) else None
    return [h for h in fresh if isinstance(h, str)] if isinstance(fresh, list) else []


def failover_needed(heartbeat, failed_names, manual):
    """
    False when a fresh heartbeat comes from a node other than the failed one: the scheduler
    already moved (or was never down). A manual failover always proceeds.
    """
    if manual:
        return True
    if not isinstance(heartbeat, dict) or heartbeat.get("status") != "ok":
        return True
    return any(host_matches(h, failed_names) for h in fresh_hosts(heartbeat))


def candidate_daemons():
    """The daemons a failover candidate is judged by (what its health check needs to probe)."""
    return list(CANDIDATE_NEEDS)


def candidate(check, seen=None):
    """
    A master's eligibility facts from its ``airflow_health.check`` (None: no answer). Its
    word about itself is not enough: ``seen`` is its api-server as the load balancer sees it
    (``api_health``: ok | dead | None), and a ``dead`` there overrides what it says.
    """
    check = check if isinstance(check, dict) else {}
    facts = {"present": True}
    for daemon in CANDIDATE_NEEDS:
        entry = check.get(daemon)
        facts[daemon] = entry.get("status") if isinstance(entry, dict) else None
    if seen == "dead":
        facts["api-server"] = "dead"
    return facts


def elect_master(candidates, failed=None):
    """
    Deterministic election. ``candidates``: {minion: {'present': bool, <daemon>: status}}.
    A candidate must be present with every CANDIDATE_NEEDS daemon ok. Returns the first
    eligible minion id in sorted order, or None.
    """
    for minion in sorted(candidates or {}):
        if minion == failed:
            continue
        info = candidates[minion] or {}
        if info.get("present") and all(info.get(d) == "ok" for d in CANDIDATE_NEEDS):
            return minion
    return None


def fencing_outcome(stop_ret):
    """
    Outcome of fencing a scheduler from the LocalClient return of ``airflow_health.stop
    scheduler disable=True`` (None = no answer): fenced | unreachable | failed (the node
    answered that systemctl failed).
    """
    if not isinstance(stop_ret, dict):
        return "unreachable"  # no answer, or Salt's "did not return" text instead of ours
    return "fenced" if stop_ret.get("result") is True else "failed"


def fence_wait_until(now, heartbeat):
    """
    How long a failover may wait for the old node's last heartbeat to go stale: its age
    limit (``stale_seconds``, reported by the health module) plus 5 s; no wait without it.
    """
    stale = heartbeat.get("stale_seconds") if isinstance(heartbeat, dict) else None
    if isinstance(stale, bool) or not isinstance(stale, (int, float)):
        return now
    return now + float(stale) + 5


def scheduler_start_verdict(fence, heartbeat, old_names, waited_out):
    """
    Never two schedulers: may the new scheduler start? ``start`` | ``wait`` | ``refuse``.

    fence: fencing outcome of the old node; heartbeat: the new node's view of the metastore;
    old_names: the names of the old node (``node_names``); waited_out: the wait deadline
    (``fence_wait_until``) has passed.

    * fenced: the old scheduler is stopped and disabled: start.
    * the heartbeats cannot be read: only a fenced old node is safe: refuse.
    * nobody heartbeats: start.
    * only the old node heartbeats and it is unreachable: it may have heartbeated just before
      it vanished; wait until that goes stale (the guard would refuse the start before that).
    * anything else (another node heartbeats, or the old one answered but could not be
      fenced and still heartbeats): refuse.
    """
    if fence == "fenced":
        return "start"
    if not isinstance(heartbeat, dict) or heartbeat.get("status") not in ("ok", "stale", "none"):
        return "refuse"
    fresh = fresh_hosts(heartbeat)
    if not fresh:
        return "start"
    only_old = all(host_matches(h, old_names) for h in fresh)
    if fence == "unreachable" and only_old and not waited_out:
        return "wait"
    return "refuse"


def runs_scheduler(heartbeat, names):
    """Does the heartbeat show a fresh scheduler of the node with ``names``?"""
    return any(host_matches(h, names) for h in fresh_hosts(heartbeat))


def must_fence_returning(mode, active, minion):
    """A (re)started master that is not the active scheduler gets its scheduler fenced."""
    return mode != "active-active" and bool(active) and active != minion


def split_targets(mode, active, heartbeat, names_by_master):
    """
    Masters to fence because their scheduler heartbeats although another master is the
    active one (active-standby; e.g. a partition healed with the old scheduler still running).
    ``names_by_master``: {minion: node_names}. Sorted; empty in active-active mode.
    """
    if mode == "active-active" or not active:
        return []
    fresh = fresh_hosts(heartbeat)
    return sorted(m for m, names in (names_by_master or {}).items()
                  if m != active and any(host_matches(h, names) for h in fresh))


def reconcile_plan(table, mode, active, units_by_minion, roles_by_minion):
    """
    The periodic reconcile (level-triggered: what the events drive, compared with what is
    observed). ``units_by_minion``: {minion: ``airflow_health.units``} of the nodes that
    answered; ``roles_by_minion``: {minion: roles} from the master's grains cache.

    Returns sorted ``[(minion, daemon, action)]``:
    * ``fence``: a standby master's scheduler runs or is enabled (active-standby);
    * ``scheduler``: the active master's scheduler is not running (the scheduler concern
      decides: restart there, or fail over);
    * ``remediate``: any other daemon of the node's roles is dead (failed or stopped).
    Units systemd is handling (restarting) and unanswered nodes are left alone.
    """
    plan = []
    for minion, units in sorted((units_by_minion or {}).items()):
        if not isinstance(units, dict) or not table.valid_minion_id(minion):
            continue
        mine = set(table.daemons_for_roles((roles_by_minion or {}).get(minion) or []))
        for daemon, unit in sorted(units.items()):
            if daemon not in mine or not isinstance(unit, dict):
                continue
            status = unit.get("status")
            if daemon == "scheduler" and mode != "active-active":
                if minion != active:
                    if status in ("ok", "restarting") or unit.get("enabled"):
                        plan.append((minion, daemon, "fence"))
                elif status == "dead":
                    plan.append((minion, daemon, "scheduler"))
                continue
            if status == "dead":
                plan.append((minion, daemon, "remediate"))
    return plan


def systemd_restarts(table, seen, units_by_minion):
    """
    Restarts systemd did on its own (``Restart=``, e.g. after a watchdog timeout), seen in
    the ``n_restarts`` of ``airflow_health.units``. ``seen``: {"minion/daemon": count} of the
    last pass (None: nothing yet). A count that went up is a restart to audit; one that went
    down was reset by a manual start (the runner's, Salt's, an operator's): nothing to say.
    A unit that reports no count (an older module) is left out.
    Returns (new seen, sorted [(minion, daemon, previous, now)]).
    """
    seen = seen if isinstance(seen, dict) else {}
    new, restarted = dict(seen), []
    for minion, units in sorted((units_by_minion or {}).items()):
        if not isinstance(units, dict) or not table.valid_minion_id(minion):
            continue
        for daemon, unit in sorted(units.items()):
            count = unit.get("n_restarts") if isinstance(unit, dict) else None
            if daemon not in table.names() or isinstance(count, bool) or \
                    not isinstance(count, int) or count < 0:
                continue
            key = f"{minion}/{daemon}"
            before = seen.get(key)
            before = before if isinstance(before, int) and not isinstance(before, bool) else 0
            if count > before:
                restarted.append((minion, daemon, before, count))
            new[key] = count
    return new, restarted


def presence_failover(mode, active, lost):
    """Does a presence change that lost ``lost`` call for a failover check of ``active``?"""
    return mode != "active-active" and bool(active) and active in (lost or [])


def runtime_pillar_text(table, active):
    """YAML of the runtime pillar that persists the active scheduler."""
    if not table.valid_minion_id(active):
        raise ValueError(f"invalid minion id {active!r}")
    return (
        "# written by the airflow healing runner (salt-run airflow.failover_scheduler)\n"
        f"airflow:\n  scheduler:\n    active: {active}\n"
    )


def parse_runtime_pillar(table, text):
    """Active scheduler from the runtime pillar text (None if absent or not a valid id)."""
    for line in (text or "").splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key == "active" and line[:1].isspace():
            value = value.strip()
            return value if table.valid_minion_id(value) else None
    return None


# ====================================================================== load balancer
def starts_burst(first_pending_ts, last_run_started_ts):
    """Does a new reconcile request start a new burst (nothing pending since the last run)?"""
    if first_pending_ts is None:
        return True
    return last_run_started_ts is not None and first_pending_ts <= last_run_started_ts


def debounce_decision(now, latest_request_ts, first_pending_ts, last_run_started_ts, quiet,
                      max_wait):
    """
    The lb leader's wait (trailing-edge debounce with a maximum wait): ``("run", 0.0)`` or
    ``("wait", seconds)``.

    Run once no request came for ``quiet`` seconds, or once the burst has waited ``max_wait``
    seconds since its first request (a steady stream of events must not starve haproxy of
    every update). A first request from before the last run belongs to a burst that run
    covered: no deadline from it. ``max_wait`` 0: no deadline.
    """
    if latest_request_ts is None:
        return "run", 0.0
    # a stamp from the future (the clock went back) counts as now: the wait stays bounded
    run_at = min(latest_request_ts, now) + quiet
    if (max_wait and first_pending_ts is not None
            and (last_run_started_ts is None or first_pending_ts > last_run_started_ts)):
        run_at = min(run_at, min(first_pending_ts, now) + max_wait)
    if now >= run_at:
        return "run", 0.0
    return "wait", run_at - now


def api_health(results, masters):
    """
    {master: ok | dead | None} from ``airflow_health.api_server`` returns (``results``: the
    answers of the masters that answered). None: no answer or no evidence.
    """
    health = {}
    for minion in masters or []:
        res = (results or {}).get(minion)
        status = res.get("status") if isinstance(res, dict) else None
        health[minion] = {"ok": "ok", "down": "dead"}.get(status)
    return health


def lb_runtime_actions(table, backends, api_health_map, drained=()):
    """
    Runtime haproxy actions ``[(server, maint|ready)]``. backends: [{'name', 'status'}] from
    show stat; api_health_map: {minion: ok|dead|None}. A server whose node answered "dead"
    -> maint, but never the last healthy one; healthy and in MAINT -> ready. Unanswered nodes
    are left to haproxy's own health check (a salt hiccup must not empty the backend).
    Servers drained on purpose are left alone.
    """
    health = api_health_map or {}
    actions = []
    healthy = {n for n, h in health.items() if h == "ok"}
    for be in backends if isinstance(backends, list) else []:
        name = be.get("name") if isinstance(be, dict) else None
        if not table.valid_minion_id(name) or name in drained:
            continue
        status = str(be.get("status") or "").upper()
        state = health.get(name)
        if state == "dead" and not status.startswith("MAINT") and healthy - {name}:
            actions.append((name, "maint"))
        elif state == "ok" and status.startswith("MAINT"):
            actions.append((name, "ready"))
    return actions


def lb_members_differ(backends_by_lb, masters):
    """
    Must the haproxy backends be rebuilt? True when any lb's servers (``haproxy_backends``
    rows) are not exactly ``masters`` (the role record's api-server hosts), or when an lb did
    not answer with rows (no evidence: rebuild rather than guess).
    """
    want = set(masters or [])
    for rows in (backends_by_lb or {}).values():
        if not isinstance(rows, list):
            return True
        names = {row.get("name") for row in rows if isinstance(row, dict)}
        if names != want:
            return True
    return False


def sessions_of(rows, server):
    """Current sessions of ``server`` in ``haproxy_backends`` rows (anything else: 0)."""
    total = 0
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and row.get("name") == server:
            try:
                total += int(row.get("scur") or 0)
            except (TypeError, ValueError):
                continue
    return total


def lb_apply_ok(applied, lbs):
    """Did every lb node answer its ``state.apply airflow.lb`` with a state result?"""
    return set(applied or {}) == set(lbs or []) and all(
        isinstance(v, dict) for v in (applied or {}).values())


# ====================================================================== rate limiting
def lb_pending(latest_request_ts, last_run_started_ts, now):
    """
    Is a reconcile request waiting that no run covers (it came after the last run started)?
    The lb leader loops on it, and checks it once more after releasing the lock. A run start
    in the future (the clock went back) covers nothing.
    """
    if latest_request_ts is None:
        return False
    if last_run_started_ts is None or last_run_started_ts > now:
        return True
    return latest_request_ts > last_run_started_ts


def _stamp(value):
    """A stored number (epoch seconds, a count), or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def rate_limit(bucket, now, limit, window):
    """
    Fixed-window event budget of one minion (``bucket``: its stored dict; None or junk: empty).
    Returns ``(new_bucket, verdict)``, verdict ``allow`` | ``audit`` | ``drop``.

    At most ``limit`` events per ``window`` seconds are let through. The first event over the
    limit in a window gets ``audit`` (the caller writes ONE summary record, the bucket's
    ``count`` so far and ``previous_dropped``: what the previous limited window dropped), the
    rest ``drop``. ``limit`` or ``window`` 0: no limit. A clock that went back starts a new
    window.
    """
    old = bucket if isinstance(bucket, dict) else {}
    if limit <= 0 or window <= 0:
        return old, "allow"
    start, count = _stamp(old.get("start")), _stamp(old.get("count"))
    if start is None or count is None or not start <= now < start + window:
        dropped = max(0, int(count or 0) - int(limit)) if start is not None else 0
        new = {"start": now, "count": 1, "previous_dropped": dropped}
    else:
        new = dict(old, count=int(count) + 1)
        new["previous_dropped"] = int(_stamp(old.get("previous_dropped")) or 0)
    if new["count"] <= limit:
        return new, "allow"
    return new, "audit" if new["count"] == int(limit) + 1 else "drop"
