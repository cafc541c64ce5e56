"""
Healing runner ``airflow``: the decisions behind the reactor (self-healing layer).

The reactor SLS files only hand events to these functions with the AUTHENTICATED minion id
(``data['id']``) and a sanitized daemon name. Nothing from an event is trusted:

* the minion id must match ``^[A-Za-z0-9_.-]+$`` and the daemon an allow-list;
* the minion must have the daemon's role in the master's own grains cache;
* the daemon is RE-PROBED on the node (``airflow_health.*``) before anything is done;
* no event data is ever put into a command line: remediation commands are fixed.

Decisions are pure functions (unit-tested in ``tests/unit/test_runner.py``); the public runner
functions are thin wrappers that probe, decide, act and write one audit line per action to
``<state_dir>/audit.jsonl``.

Settings: master config ``airflow_healing:`` (see ``conf/master.d/airflow-reactor.conf``).
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import time

log = logging.getLogger(__name__)

MINION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

DAEMON_ROLE = {
    "api-server": "airflow-master",
    "scheduler": "airflow-master",
    "dag-processor": "airflow-master",
    "triggerer": "airflow-master",
    "worker": "airflow-worker",
    "flower": "airflow-flower",
    "postgresql": "airflow-db",
    "rabbitmq": "airflow-broker",
    "haproxy": "airflow-lb",
}
UNITS = {
    "api-server": "airflow-api-server",
    "scheduler": "airflow-scheduler",
    "dag-processor": "airflow-dag-processor",
    "triggerer": "airflow-triggerer",
    "worker": "airflow-worker",
    "flower": "airflow-flower",
    "postgresql": "postgresql",
    "rabbitmq": "rabbitmq-server",
    "haproxy": "haproxy",
}

DEFAULTS = {
    "state_dir": "/var/lib/airflow-salt",
    "runtime_pillar": "/var/lib/airflow-salt/pillar/airflow_runtime.sls",
    "max_attempts": 3,
    "window": 600,
    "dry_run": False,
    "require_deploy": True,
    "heartbeat_stale": 15,
    "scheduler_start_grace": 60,
    "scheduler_start_timeout": 60,
    "ping_timeout": 3,
    "probe_timeout": 20,
    "worker_verify_timeout": 30,
    "lb_quiet": 2.0,
    "lb_apply_timeout": 180,
    "drain_timeout": 120,
    "default_mode": "active-standby",
}


# ====================================================================== pure logic
def settings(opts):
    """Merge ``airflow_healing`` master settings over DEFAULTS."""
    conf = dict(DEFAULTS)
    conf.update((opts or {}).get("airflow_healing") or {})
    if "runtime_pillar" not in ((opts or {}).get("airflow_healing") or {}):
        conf["runtime_pillar"] = os.path.join(conf["state_dir"], "pillar", "airflow_runtime.sls")
    return conf


def grain_roles(grains):
    """Roles list from a grains dict (``roles`` may be a string or a list)."""
    roles = (grains or {}).get("roles") or []
    return [roles] if isinstance(roles, str) else list(roles)


def validate_request(minion, daemon, tag_minion=None, grains_cache=None):
    """
    Validate a remediation request. Returns ``(ok, reason)``.

    ``grains_cache`` is the master's cache ``{minion: grains}``; the minion must be known there
    and have the role that runs ``daemon``. ``tag_minion`` (from the event tag), if given, must
    equal the authenticated ``minion``.
    """
    if not isinstance(minion, str) or not MINION_RE.match(minion):
        return False, "invalid minion id"
    if not isinstance(daemon, str) or daemon not in DAEMON_ROLE:
        return False, "unknown daemon"
    if tag_minion is not None and tag_minion != minion:
        return False, "tag minion does not match the authenticated minion id"
    grains = (grains_cache or {}).get(minion)
    if not grains:
        return False, "minion not in the master's grains cache"
    if DAEMON_ROLE[daemon] not in grain_roles(grains):
        return False, f"minion does not have role {DAEMON_ROLE[daemon]}"
    return True, "ok"


def damping(history, minion, daemon, now, max_attempts, window):
    """
    Flap damping. ``history``: audit records. Counts remediation attempts (records with
    ``attempt: True``) for (minion, daemon) within ``window`` seconds.
    Returns ``(allowed, attempts_in_window)``.
    """
    count = 0
    for rec in history or []:
        if rec.get("attempt") and rec.get("minion") == minion and rec.get("daemon") == daemon:
            if now - float(rec.get("ts", 0)) <= window:
                count += 1
    return count < int(max_attempts), count


def decide_worker(status):
    """Action for a re-probed worker status: ignore | wait | restart | kill-restart."""
    if status == "ok":
        return "ignore"
    if status in ("restarting", "unknown", "error", "absent", None):
        return "wait"  # systemd is on it / no evidence / not installed here
    if status == "hung":
        return "kill-restart"
    return "restart"  # dead / absent unit running state


def decide_simple(status):
    """Action for other daemons (restart when dead, systemd handles restarting)."""
    if status == "dead":
        return "restart"
    if status == "ok":
        return "ignore"
    return "wait"


def decide_scheduler(mode, heartbeat, active, active_reachable, active_unit, grace):
    """
    Decide what to do about the scheduler.

    heartbeat: result of ``airflow_health.scheduler_heartbeat`` (status ok|stale|none|error,
    newest {hostname, age}); active: minion id of the active scheduler; active_reachable: it
    answered; active_unit: its ``airflow-scheduler`` unit status (ok|restarting|dead|...).
    Returns one of: ignore-active-active, healthy, unknown, failover, wait, restart.
    """
    if mode == "active-active":
        return "ignore-active-active"
    status = (heartbeat or {}).get("status")
    if status == "ok":
        return "healthy"
    if status not in ("stale", "none"):
        return "unknown"
    if not active or not active_reachable:
        return "failover"
    if active_unit == "restarting":
        return "wait"  # systemd is restarting it
    if active_unit == "ok":
        newest = (heartbeat or {}).get("newest") or {}
        age = newest.get("age")
        if age is None or age < grace:
            return "wait"  # (re)starting, no heartbeat yet
        return "restart"  # running but not heartbeating: hung
    return "restart"  # dead / failed: try once on the same node (damped), then failover


def elect_master(candidates, failed=None):
    """
    Deterministic election. ``candidates``: {minion: {'present': bool, 'api-server': status,
    'dag-processor': status}}. A candidate must be present with api-server and dag-processor
    ok. Returns the first eligible minion id in sorted order, or None.
    """
    for minion in sorted(candidates or {}):
        if minion == failed:
            continue
        info = candidates[minion] or {}
        if not info.get("present"):
            continue
        if info.get("api-server") != "ok" or info.get("dag-processor") != "ok":
            continue
        return minion
    return None


def fencing_outcome(stop_ret, disable_ret):
    """
    Outcome of fencing the old scheduler from LocalClient returns (None = no answer):
    fenced | unreachable | failed.
    """
    if stop_ret is None and disable_ret is None:
        return "unreachable"
    if stop_ret is True and disable_ret is True:
        return "fenced"
    return "failed"


def may_start_new_scheduler(fence, heartbeat, old_hosts):
    """
    Never two schedulers: start a new one only if the old one is fenced, or it is unreachable
    and no fresh heartbeat comes from anyone (old_hosts = hostnames of the old node).
    """
    fresh = (heartbeat or {}).get("fresh") or []
    if (heartbeat or {}).get("status") == "error":
        return fence == "fenced"
    if fence == "fenced":
        return True
    if fence == "unreachable":
        return not fresh
    return not fresh  # the old node answered but could not be fenced: only if it is silent


def host_matches(hostname, minion, grains=None):
    """Does a SchedulerJob hostname belong to ``minion``?"""
    if not hostname:
        return False
    names = {minion}
    for key in ("host", "fqdn", "nodename", "localhost"):
        if grains and grains.get(key):
            names.add(grains[key])
    return hostname in names or hostname.split(".")[0] in {n.split(".")[0] for n in names}


def debounce_decision(my_ts, latest_request_ts, last_run_started_ts):
    """
    Trailing-edge debounce of reconcile_lb requests: run only if no newer request arrived
    during the quiet period and no reconcile started after this request.
    """
    if latest_request_ts is not None and latest_request_ts > my_ts:
        return "coalesced"
    if last_run_started_ts is not None and last_run_started_ts >= my_ts:
        return "coalesced"
    return "run"


def lb_runtime_actions(backends, api_health, drained=()):
    """
    Runtime haproxy actions. backends: [{'name', 'status'}] from show stat; api_health:
    {minion: ok|dead|None(did not answer)}. A server whose node answered "dead" -> maint, but
    never the last healthy one; healthy and in MAINT -> ready. Unanswered nodes are left to
    haproxy's own health check (a salt hiccup must not empty the backend). Servers drained on
    purpose are left alone.
    """
    actions = []
    healthy = {n for n, h in (api_health or {}).items() if h == "ok"}
    for be in backends or []:
        name = be.get("name")
        if not name or name in drained or not MINION_RE.match(name):
            continue
        status = (be.get("status") or "").upper()
        health = api_health.get(name)
        if health == "dead" and not status.startswith("MAINT") and healthy - {name}:
            actions.append((name, "maint"))
        elif health == "ok" and status.startswith("MAINT"):
            actions.append((name, "ready"))
    return actions


def runtime_pillar_text(active):
    """YAML of the runtime pillar that persists the active scheduler."""
    if not MINION_RE.match(active or ""):
        raise ValueError(f"invalid minion id {active!r}")
    return (
        "# written by the airflow healing runner (salt-run airflow.failover_scheduler)\n"
        f"airflow:\n  scheduler:\n    active: {active}\n"
    )


def parse_runtime_pillar(text):
    """Active scheduler from the runtime pillar text (None if absent)."""
    match = re.search(r"^\s+active:\s*([A-Za-z0-9_.-]+)\s*$", text or "", re.M)
    return match.group(1) if match else None


# ====================================================================== side effects
def _conf():
    return settings(__opts__)


def _path(name):
    return os.path.join(_conf()["state_dir"], name)


def _ensure_dir():
    os.makedirs(_conf()["state_dir"], mode=0o750, exist_ok=True)


@contextlib.contextmanager
def _lock(name, blocking=False, timeout=0):
    """File lock under state_dir/locks; yields True if acquired."""
    _ensure_dir()
    lockdir = _path("locks")
    os.makedirs(lockdir, exist_ok=True)
    fh = open(os.path.join(lockdir, name + ".lock"), "a+", encoding="utf-8")
    got = False
    try:
        deadline = time.time() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not blocking or time.time() >= deadline:
                    break
                time.sleep(0.2)
        yield got
    finally:
        if got:
            fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _audit(action, minion=None, daemon=None, reason=None, outcome=None, attempt=False, **extra):
    rec = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ts": round(time.time(), 3),
        "action": action,
        "minion": minion,
        "daemon": daemon,
        "reason": reason,
        "outcome": outcome,
    }
    if attempt:
        rec["attempt"] = True
    rec.update(extra)
    try:
        _ensure_dir()
        with open(_path("audit.jsonl"), "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(rec, default=str) + "\n")
            fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError as exc:
        log.error("airflow healing: cannot write audit log: %s", exc)
    log.warning("airflow healing: %s", json.dumps(rec, default=str))
    return rec


def _read_audit(limit=2000):
    try:
        with open(_path("audit.jsonl"), encoding="utf-8") as fh:
            lines = fh.readlines()[-int(limit):]
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _fire(tag, data):
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    try:
        with salt.utils.event.get_master_event(
            __opts__, __opts__["sock_dir"], listen=False
        ) as event:
            event.fire_event(data, tag)
    except Exception as exc:  # pylint: disable=broad-except
        log.error("airflow healing: cannot fire %s: %s", tag, exc)


def _client():
    import salt.client  # pylint: disable=import-outside-toplevel

    return salt.client.get_local_client(mopts=__opts__)


def _cmd(tgt, fun, arg=(), timeout=None, tgt_type="glob", kwarg=None):
    """LocalClient call; returns {minion: return} of the minions that answered."""
    conf = _conf()
    try:
        return _client().cmd(
            tgt,
            fun,
            arg=list(arg),
            timeout=timeout or conf["probe_timeout"],
            tgt_type=tgt_type,
            kwarg=kwarg,
            gather_job_timeout=max(2, int(conf["ping_timeout"])),
        ) or {}
    except Exception as exc:  # pylint: disable=broad-except
        log.error("airflow healing: %s on %s failed: %s", fun, tgt, exc)
        return {}


def _one(minion, fun, arg=(), timeout=None, kwarg=None):
    """Return of one minion (None if it did not answer)."""
    return _cmd(minion, fun, arg, timeout=timeout, kwarg=kwarg).get(minion)


def _present(minions):
    """Minions (of a list) that answer test.ping quickly."""
    if not minions:
        return []
    ret = _cmd(list(minions), "test.ping", timeout=_conf()["ping_timeout"], tgt_type="list")
    return sorted(m for m, v in ret.items() if v is True)


def _grains_cache(tgt="*"):
    import salt.utils.master  # pylint: disable=import-outside-toplevel

    try:
        util = salt.utils.master.MasterPillarUtil(
            tgt, "glob", use_cached_grains=True, grains_fallback=False, opts=__opts__
        )
        return util.get_minion_grains() or {}
    except Exception as exc:  # pylint: disable=broad-except
        log.error("airflow healing: grains cache unreadable: %s", exc)
        return {}


def _minions_with_role(role, grains_cache=None):
    cache = grains_cache if grains_cache is not None else _grains_cache()
    return sorted(m for m, g in cache.items() if role in grain_roles(g))


def _flag(name):
    return os.path.exists(_path(name))


def _scheduler_conf(grains_cache=None):
    """(mode, active) from the runtime pillar file, then the compiled pillar of a master."""
    conf = _conf()
    active = None
    try:
        with open(conf["runtime_pillar"], encoding="utf-8") as fh:
            active = parse_runtime_pillar(fh.read())
    except OSError:
        pass
    mode = conf["default_mode"]
    masters = _minions_with_role("airflow-master", grains_cache)
    if masters:
        try:
            import salt.pillar  # pylint: disable=import-outside-toplevel

            cache = grains_cache if grains_cache is not None else _grains_cache()
            pil = salt.pillar.get_pillar(
                __opts__, cache.get(masters[0], {}), masters[0], saltenv="base"
            ).compile_pillar()
            sched = (pil.get("airflow") or {}).get("scheduler") or {}
            mode = sched.get("mode", mode)
            active = active or sched.get("active")
        except Exception as exc:  # pylint: disable=broad-except
            log.error("airflow healing: cannot compile pillar: %s", exc)
    if not active and masters:
        active = masters[0]
    return mode, active


def _gate(minion, daemon):
    """Maintenance / not-yet-deployed gate. Returns a result dict to return, or None."""
    if _flag("maintenance"):
        _audit("skipped", minion, daemon, "maintenance mode", "skipped")
        return {"result": "skipped", "reason": "maintenance"}
    if _conf()["require_deploy"] and not _flag("deployed"):
        log.info("airflow healing: %s/%s skipped, cluster not deployed yet", minion, daemon)
        return {"result": "skipped", "reason": "not deployed"}
    return None


def _remediation_allowed(minion, daemon):
    conf = _conf()
    allowed, count = damping(_read_audit(), minion, daemon, time.time(),
                             conf["max_attempts"], conf["window"])
    if not allowed:
        _audit("alert", minion, daemon,
               f"{count} remediations in {conf['window']}s", "damped")
        _fire(f"airflow/alert/{minion}/{daemon}",
              {"minion": minion, "daemon": daemon, "attempts": count,
               "reason": "flap damping: remediation stopped"})
    return allowed


# ====================================================================== runner API
def remediate(minion, daemon, tag_minion=None, status=None):
    """
    Handle a health event of ``daemon`` on ``minion`` (called by reactor/health.sls).

    ``status`` is the claimed status from the event; it is only logged: the daemon is
    re-probed on the node before anything is done.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.remediate worker1 worker
    """
    cache = _grains_cache()
    ok, reason = validate_request(minion, daemon, tag_minion, cache)
    if not ok:
        safe_minion = minion if isinstance(minion, str) and MINION_RE.match(minion) else "?"
        safe_daemon = daemon if daemon in DAEMON_ROLE else "?"
        _audit("ignored", safe_minion, safe_daemon, reason, "ignored")
        return {"result": "ignored", "reason": reason}
    gate = _gate(minion, daemon)
    if gate:
        return gate
    if daemon == "scheduler":
        return _remediate_scheduler(minion, cache)
    if daemon == "api-server":
        return reconcile_lb(reason=f"api-server event from {minion}")
    with _lock(f"{minion}-{daemon}") as got:
        if not got:
            return {"result": "in-progress"}
        return _remediate_service(minion, daemon)


def _remediate_service(minion, daemon):
    conf = _conf()
    probe = _one(minion, "airflow_health.probe", [daemon],
                 kwarg={"worker_ping_timeout": conf["ping_timeout"]})
    if probe is None or not isinstance(probe, dict):
        _audit("ignored", minion, daemon, "node did not answer the re-probe", "unreachable")
        return {"result": "unreachable"}
    status = probe.get("status")
    action = decide_worker(status) if daemon == "worker" else decide_simple(status)
    if action == "ignore":
        _audit("ignored", minion, daemon, "re-probe: healthy (stale or spoofed event)", "ignored")
        return {"result": "ignored", "reason": "healthy on re-probe"}
    if action == "wait":
        return {"result": "wait", "status": status}
    if not _remediation_allowed(minion, daemon):
        return {"result": "damped"}
    if conf["dry_run"]:
        _audit(action, minion, daemon, f"status {status}", "dry-run", attempt=True)
        return {"result": "dry-run", "action": action}
    start = time.time()
    unit = UNITS[daemon]
    if action == "kill-restart":
        _one(minion, "airflow_health.kill_unit", [daemon])
    _one(minion, "service.restart", [unit], timeout=90)
    outcome = "failed"
    deadline = time.time() + float(conf["worker_verify_timeout"])
    while time.time() < deadline:
        again = _one(minion, "airflow_health.probe", [daemon],
                     kwarg={"worker_ping_timeout": conf["ping_timeout"]})
        if isinstance(again, dict) and again.get("status") == "ok":
            outcome = "recovered"
            break
        time.sleep(1)
    _audit(action, minion, daemon, f"status {status}", outcome, attempt=True,
           seconds=round(time.time() - start, 1))
    _fire(f"airflow/healing/{minion}/{daemon}", {"action": action, "outcome": outcome})
    return {"result": outcome, "action": action}


def _remediate_scheduler(reporter, cache):
    conf = _conf()
    mode, active = _scheduler_conf(cache)
    if mode == "active-active":
        return {"result": "ignored", "reason": "active-active"}
    hb = _one(reporter, "airflow_health.scheduler_heartbeat", [conf["heartbeat_stale"]])
    if not isinstance(hb, dict):
        _audit("ignored", reporter, "scheduler", "reporter did not answer the re-probe",
               "unreachable")
        return {"result": "unreachable"}
    if hb.get("status") == "ok":
        _audit("ignored", reporter, "scheduler", "re-probe: heartbeat fresh", "ignored")
        return {"result": "ignored", "reason": "heartbeat fresh"}
    reachable = bool(_present([active])) if active else False
    unit = None
    if reachable:
        svc = _one(active, "airflow_health.service", ["scheduler"])
        unit = svc.get("status") if isinstance(svc, dict) else None
    action = decide_scheduler(mode, hb, active, reachable, unit, conf["scheduler_start_grace"])
    log.info("airflow healing: scheduler decision %s (active %s reachable %s unit %s hb %s)",
             action, active, reachable, unit, hb.get("status"))
    if action in ("wait", "unknown", "healthy", "ignore-active-active"):
        return {"result": action}
    if action == "restart":
        with _lock(f"{active}-scheduler") as got:
            if not got:
                return {"result": "in-progress"}
            if _remediation_allowed(active, "scheduler"):
                if conf["dry_run"]:
                    _audit("restart", active, "scheduler", "no heartbeat", "dry-run", attempt=True)
                    return {"result": "dry-run"}
                _one(active, "service.restart", [UNITS["scheduler"]], timeout=90)
                _audit("restart", active, "scheduler",
                       f"no heartbeat ({hb.get('status')}), unit {unit}", "restarted",
                       attempt=True)
                return {"result": "restarted"}
        # damped on the same node: move it
    return failover_scheduler(reason=f"no scheduler heartbeat ({hb.get('status')}), "
                                     f"active {active} reachable={reachable} unit={unit}",
                              failed=active, failed_reachable=reachable)


def ignored(minion="?", reason="malformed event"):
    """
    Record an ignored (malformed) event in the audit log; used by the reactor.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.ignored minion=worker1 reason='malformed health event'
    """
    minion = minion if isinstance(minion, str) and MINION_RE.match(minion) else "?"
    reason = str(reason)[:200]
    _audit("ignored", minion, None, reason, "ignored")
    return {"result": "ignored", "reason": reason}


def failover_scheduler(reason="manual", failed=None, failed_reachable=None):
    """
    Move the active scheduler (active-standby mode) to a healthy master, fencing the old one.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.failover_scheduler reason='planned maintenance of master1'
    """
    conf = _conf()
    if failed is not None and not MINION_RE.match(str(failed)):
        return {"result": "error", "reason": "invalid minion id"}
    with _lock("failover") as got:
        if not got:
            return {"result": "in-progress"}
        start = time.time()
        cache = _grains_cache()
        mode, active = _scheduler_conf(cache)
        if mode == "active-active":
            return {"result": "ignored", "reason": "active-active"}
        failed = failed or active
        masters = _minions_with_role("airflow-master", cache)
        # ping the others first (fast: all answer), the failed one only if its state is unknown
        others = _present([m for m in masters if m != failed])
        if failed_reachable is None:
            failed_reachable = bool(failed) and bool(_present([failed]))
        # a fresh heartbeat from someone else? then it already moved (or was never down)
        hb = _one(others[0], "airflow_health.scheduler_heartbeat",
                  [conf["heartbeat_stale"]]) if others else None
        failed_hosts = {h for h in ((hb or {}).get("fresh") or [])
                        if host_matches(h, failed, cache.get(failed))}
        if isinstance(hb, dict) and hb.get("status") == "ok" and not failed_hosts \
                and reason != "manual":
            _audit("failover", failed, "scheduler", reason, "not-needed")
            return {"result": "not-needed", "heartbeat": hb}
        candidates = {}
        for minion in others:
            health = _one(minion, "airflow_health.check", [], timeout=conf["probe_timeout"],
                          kwarg={"heartbeat_stale": conf["heartbeat_stale"]}) or {}
            candidates[minion] = {
                "present": True,
                "api-server": (health.get("api-server") or {}).get("status"),
                "dag-processor": (health.get("dag-processor") or {}).get("status"),
            }
        new = elect_master(candidates, failed)
        if not new:
            _audit("failover", failed, "scheduler", reason, "no-candidate",
                   candidates=candidates)
            _fire("airflow/alert/scheduler/no-candidate", {"reason": reason})
            return {"result": "no-candidate", "candidates": candidates}
        if conf["dry_run"]:
            _audit("failover", failed, "scheduler", reason, "dry-run", new=new)
            return {"result": "dry-run", "new": new}
        # fence the old one
        fence = "unreachable"
        if failed and failed_reachable:
            stop = _one(failed, "service.stop", [UNITS["scheduler"]], timeout=60)
            disable = _one(failed, "service.disable", [UNITS["scheduler"]], timeout=30)
            fence = fencing_outcome(stop, disable)
        elif failed:
            fence = fencing_outcome(None, None)
        # an unreachable old node may have heartbeated just before it vanished: wait until its
        # heartbeat is stale (the ExecCondition guard would refuse the start before that anyway)
        wait_until = time.time() + float(conf["heartbeat_stale"]) + 5
        while True:
            hb = _one(new, "airflow_health.scheduler_heartbeat", [conf["heartbeat_stale"]])
            old_hosts = {h.get("hostname") for h in ((hb or {}).get("schedulers") or [])
                         if host_matches(h.get("hostname"), failed, cache.get(failed))}
            fresh = (hb or {}).get("fresh") or []
            if may_start_new_scheduler(fence, hb, old_hosts) or fence != "unreachable":
                break
            if not fresh or not all(h in old_hosts for h in fresh) or time.time() > wait_until:
                break
            time.sleep(1)
        if not may_start_new_scheduler(fence, hb, old_hosts):
            _audit("failover", failed, "scheduler", reason, "refused-two-schedulers",
                   fence=fence, new=new)
            _fire("airflow/alert/scheduler/fence-failed", {"old": failed, "new": new})
            return {"result": "refused", "fence": fence, "heartbeat": hb}
        # persist, refresh, start fast
        path = conf["runtime_pillar"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(runtime_pillar_text(new))
        os.replace(tmp, path)
        _one(new, "service.enable", [UNITS["scheduler"]], timeout=30)
        _one(new, "service.start", [UNITS["scheduler"]], timeout=60)
        try:  # for later highstates; the start above did not wait for it
            _client().cmd_async(others, "saltutil.refresh_pillar", tgt_type="list")
        except Exception as exc:  # pylint: disable=broad-except
            log.error("airflow healing: refresh_pillar failed: %s", exc)
        outcome = "unverified"
        deadline = time.time() + float(conf["scheduler_start_timeout"])
        while time.time() < deadline:
            hb = _one(new, "airflow_health.scheduler_heartbeat", [conf["heartbeat_stale"]])
            fresh = (hb or {}).get("fresh") or []
            if any(host_matches(h, new, cache.get(new)) for h in fresh):
                outcome = "ok"
                break
            time.sleep(1)
        took = round(time.time() - start, 1)
        _audit("failover", failed, "scheduler", reason, outcome, new=new, fence=fence,
               seconds=took)
        _fire("airflow/healing/scheduler/failover",
              {"old": failed, "new": new, "fence": fence, "outcome": outcome})
        return {"result": outcome, "old": failed, "new": new, "fence": fence, "seconds": took}


def active_scheduler():
    """
    The minion that runs the scheduler in active-standby mode (runtime pillar, then pillar).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.active_scheduler
    """
    mode, active = _scheduler_conf()
    return {"mode": mode, "active": active}


def _api_health(masters, present):
    health = {}
    ret = _cmd(present, "airflow_health.api_server", tgt_type="list",
               timeout=_conf()["ping_timeout"] + 3) if present else {}
    for minion in masters:
        res = ret.get(minion)
        health[minion] = (res.get("status") if isinstance(res, dict) else None)
        if health[minion] == "down":
            health[minion] = "dead"
    return health


def _drained():
    try:
        with open(_path("drained.json"), encoding="utf-8") as fh:
            return set(json.load(fh))
    except (OSError, ValueError):
        return set()


def _set_drained(names):
    _ensure_dir()
    with open(_path("drained.json"), "w", encoding="utf-8") as fh:
        json.dump(sorted(names), fh)


def reconcile_lb(reason="manual", quiet=None):
    """
    Make haproxy follow the api-servers: refresh the mine on masters, apply ``airflow.lb`` on
    the lb node(s) (reload keeps connections), set dead api-servers to maint and recovered
    ones back to ready via the admin socket. A burst of calls within ``lb_quiet`` seconds
    gives ONE reconcile (trailing-edge debounce).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.reconcile_lb
    """
    conf = _conf()
    quiet = float(conf["lb_quiet"] if quiet is None else quiet)
    _ensure_dir()
    my_ts = time.time()
    with _lock("lb-request", blocking=True, timeout=5):
        with open(_path("lb.request"), "w", encoding="utf-8") as fh:
            fh.write(repr(my_ts))
    time.sleep(quiet)
    with _lock("lb", blocking=True, timeout=conf["lb_apply_timeout"] + 30) as got:
        if not got:
            return {"result": "busy"}
        latest = _read_ts("lb.request")
        last_run = _read_ts("lb.run")
        if debounce_decision(my_ts, latest, last_run) == "coalesced":
            return {"result": "coalesced"}
        with open(_path("lb.run"), "w", encoding="utf-8") as fh:
            fh.write(repr(time.time()))
        start = time.time()
        cache = _grains_cache()
        masters = _minions_with_role("airflow-master", cache)
        lbs = _minions_with_role("airflow-lb", cache)
        present = _present(masters)
        if conf["dry_run"]:
            _audit("reconcile_lb", None, "api-server", reason, "dry-run")
            return {"result": "dry-run"}
        health = _api_health(masters, present)
        drained = _drained()
        actions = {}

        def runtime():  # fast path: admin socket, no reload
            for lb in lbs:
                backends = _one(lb, "airflow_health.haproxy_backends")
                if not isinstance(backends, list):
                    continue
                for server, state in lb_runtime_actions(backends, health, drained):
                    res = _one(lb, "airflow_health.haproxy_set_server", [server, state])
                    actions.setdefault(lb, []).append(
                        (server, state, bool(res and res.get("result"))))

        runtime()
        # slow path: backends from the mine (new/removed masters); a reload keeps connections
        if present:
            _cmd(present, "mine.update", tgt_type="list", timeout=conf["ping_timeout"] + 5)
        # queue: wait for a state run already going on the lb node instead of failing
        applied = _cmd(lbs, "state.apply", ["airflow.lb"], tgt_type="list",
                       timeout=conf["lb_apply_timeout"], kwarg={"queue": True}) if lbs else {}
        runtime()  # a reload resets runtime states
        ok = all(isinstance(v, dict) for v in applied.values()) and set(applied) == set(lbs)
        _audit("reconcile_lb", None, "api-server", reason, "ok" if ok else "partial",
               health=health, runtime=actions, seconds=round(time.time() - start, 1))
        return {"result": "ok" if ok else "partial", "health": health, "runtime": actions}


def _read_ts(name):
    try:
        with open(_path(name), encoding="utf-8") as fh:
            return float(fh.read().strip())
    except (OSError, ValueError):
        return None


def drain_api_server(server, timeout=None):
    """
    Planned removal of an api-server: drain it in haproxy, wait until its current sessions
    are 0, then put it in maint (no failed requests). Undo with ``airflow.undrain_api_server``.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.drain_api_server master2
    """
    if not isinstance(server, str) or not MINION_RE.match(server):
        return {"result": "error", "reason": "invalid server name"}
    conf = _conf()
    timeout = float(timeout or conf["drain_timeout"])
    lbs = _minions_with_role("airflow-lb")
    _set_drained(_drained() | {server})
    start = time.time()
    for lb in lbs:
        _one(lb, "airflow_health.haproxy_set_server", [server, "drain"])
    outcome = "timeout"
    while time.time() - start < timeout:
        busy = 0
        for lb in lbs:
            rows = _one(lb, "airflow_health.haproxy_backends") or []
            busy += sum(r.get("scur", 0) for r in rows if r.get("name") == server)
        if busy == 0:
            outcome = "drained"
            break
        time.sleep(0.5)
    for lb in lbs:
        _one(lb, "airflow_health.haproxy_set_server", [server, "maint"])
    _audit("drain", server, "api-server", "planned removal", outcome,
           seconds=round(time.time() - start, 1))
    return {"result": outcome, "server": server}


def undrain_api_server(server):
    """
    Put a drained api-server back into service (``ready``).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.undrain_api_server master2
    """
    if not isinstance(server, str) or not MINION_RE.match(server):
        return {"result": "error", "reason": "invalid server name"}
    _set_drained(_drained() - {server})
    for lb in _minions_with_role("airflow-lb"):
        _one(lb, "airflow_health.haproxy_set_server", [server, "ready"])
    _audit("undrain", server, "api-server", "back in service", "ready")
    return {"result": "ready", "server": server}


def maintenance(action="status"):
    """
    Maintenance switch: ``on`` pauses auto-remediation, ``off`` resumes it, ``status``.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.maintenance on
        salt-run airflow.maintenance off
    """
    _ensure_dir()
    flag = _path("maintenance")
    if action is True:  # YAML/CLI parse "on"/"off" as booleans
        action = "on"
    elif action is False:
        action = "off"
    if action == "on":
        with open(flag, "w", encoding="utf-8") as fh:
            fh.write(datetime.datetime.now(datetime.timezone.utc).isoformat() + "\n")
        _audit("maintenance", None, None, "switched on", "on")
    elif action == "off":
        with contextlib.suppress(FileNotFoundError):
            os.remove(flag)
        _audit("maintenance", None, None, "switched off", "off")
    elif action != "status":
        return {"result": "error", "reason": "action must be on, off or status"}
    return {"maintenance": os.path.exists(flag)}


def audit_log(limit=20):
    """
    The last ``limit`` audit records (one per healing action).

    CLI Example:

    .. code-block:: bash

        salt-run airflow.audit_log limit=50
    """
    return _read_audit(int(limit))


def mark_deployed():
    """
    Record a finished deployment (called at the end of orch.deploy) and enable healing.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.mark_deployed
    """
    _ensure_dir()
    with open(_path("deployed"), "w", encoding="utf-8") as fh:
        fh.write(datetime.datetime.now(datetime.timezone.utc).isoformat() + "\n")
    _audit("deploy", None, None, "orch.deploy finished", "ok")
    return {"deployed": True}


def deploy_started():
    """
    Pause automatic remediation while orch.deploy runs (it starts and restarts daemons that
    the healing layer would otherwise see as failing). mark_deployed() at its end resumes it.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.deploy_started
    """
    _ensure_dir()
    try:
        os.remove(_path("deployed"))
    except FileNotFoundError:
        pass
    _audit("deploy", None, None, "orch.deploy started: remediation paused", "started")
    return {"deployed": False}


def _valid_minion(minion, what):
    """A minion id fit to act on; anything else is audited as ignored."""
    if isinstance(minion, str) and MINION_RE.match(minion):
        return True
    _audit("ignored", "?", None, f"{what}: invalid minion id", "ignored")
    return False


def minion_started(minion):
    """
    A (re)started minion: a master that is not the active scheduler gets its scheduler
    stopped and disabled; a master also triggers an lb reconcile.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.minion_started master1
    """
    if not _valid_minion(minion, "minion_started"):
        return {"result": "ignored"}
    cache = _grains_cache()
    if "airflow-master" not in grain_roles(cache.get(minion)):
        return {"result": "ignored", "reason": "not a master"}
    gate = _gate(minion, "scheduler")
    if gate:
        return gate
    mode, active = _scheduler_conf(cache)
    result = {"result": "ok"}
    if mode != "active-active" and active and active != minion:
        stop = _one(minion, "service.stop", [UNITS["scheduler"]], timeout=60)
        disable = _one(minion, "service.disable", [UNITS["scheduler"]], timeout=30)
        fence = fencing_outcome(stop, disable)
        _audit("fence", minion, "scheduler", f"returning master, active is {active}", fence)
        result["fence"] = fence
    result["lb"] = reconcile_lb(reason=f"master {minion} started")
    return result


def key_deleted(minion):
    """
    A minion's key was deleted (decommissioned node): its mine data is gone, so haproxy's
    backends are rebuilt from the mine. Safe on a forged event: the reconcile only reads
    fresh mine data and health, and a burst coalesces into one reload.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.key_deleted master3
    """
    if not _valid_minion(minion, "key_deleted"):
        return {"result": "ignored"}
    gate = _gate(minion, "api-server")
    if gate:
        return gate
    return {"result": "ok", "lb": reconcile_lb(reason=f"key of {minion} deleted")}


def presence_changed(new=None, lost=None):
    """
    Presence change from the master: a lost active-scheduler master fails over, a lost or new
    master reconciles haproxy.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.presence_changed lost='[master1]'
    """
    new = [m for m in (new or []) if isinstance(m, str) and MINION_RE.match(m)]
    lost = [m for m in (lost or []) if isinstance(m, str) and MINION_RE.match(m)]
    cache = _grains_cache()
    masters = set(_minions_with_role("airflow-master", cache))
    touched = sorted((set(new) | set(lost)) & masters)
    if not touched:
        return {"result": "ignored"}
    gate = _gate(",".join(touched), "presence")
    if gate:
        return gate
    result = {"result": "ok"}
    mode, active = _scheduler_conf(cache)
    if mode != "active-active" and active in lost:
        # presence is TCP based: confirm the node is really gone before moving anything
        if not _present([active]):
            result["failover"] = failover_scheduler(reason=f"{active} lost (presence)",
                                                    failed=active, failed_reachable=False)
    result["lb"] = reconcile_lb(reason=f"presence new={new} lost={lost}")
    return result


def status():
    """
    Cluster health overview: nodes, roles, presence, each daemon's health, active scheduler,
    haproxy backends, maintenance flag, recent remediations.

    CLI Example:

    .. code-block:: bash

        salt-run airflow.status
    """
    conf = _conf()
    cache = _grains_cache()
    minions = sorted(cache)
    present = _present(minions)
    health = _cmd(present, "airflow_health.check", tgt_type="list",
                  timeout=conf["probe_timeout"] + 10) if present else {}
    backends = {}
    for lb in _minions_with_role("airflow-lb", cache):
        if lb in present:
            backends[lb] = _one(lb, "airflow_health.haproxy_backends")
    mode, active = _scheduler_conf(cache)
    return {
        "nodes": {m: {"roles": grain_roles(cache[m]), "present": m in present} for m in minions},
        "health": health,
        "scheduler": {"mode": mode, "active": active},
        "haproxy": backends,
        "maintenance": _flag("maintenance"),
        "deployed": _flag("deployed"),
        "recent": _read_audit(10),
    }
