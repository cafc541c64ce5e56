"""
Beacon ``airflow_health``: watch this node's Airflow daemons, fire on a CHANGE of health.

Configuration (written by ``salt/airflow/healing.sls`` from pillar ``airflow:healing``):

.. code-block:: yaml

    beacons:
      airflow_health:
        - interval: 5              # seconds between checks (Salt's beacon interval)
        - checks: [worker]         # daemons to watch (derived from the roles grain)
        - worker_ping_failures: 2  # consecutive failed Celery pings before "hung"
        - refire: 30               # re-fire while still unhealthy (a lost event is recovered)
        - scheduler_check_every: 3 # the metastore heartbeat query at most this often

Everything else comes from the health module ``airflow_health``: the daemon names (the daemon
table), and from the node settings file the stale-heartbeat threshold, the start grace and the
worker ping timeout. The keys ``heartbeat_stale``, ``start_grace`` and ``worker_ping_timeout``
that older releases wrote here are accepted and ignored (one release), with a warning.

Events: tag ``salt/beacon/<minion>/airflow_health/<daemon>``, data
``{'daemon': 'worker', 'status': 'ok'|'dead'|'hung', 'previous': ..., 'detail': ...}``.

The Celery ping takes seconds; it runs in a background thread so the minion's beacon loop
is never blocked (the beacon uses the result of the last finished ping).
"""

import json
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

__virtualname__ = "airflow_health"

UNHEALTHY = ("dead", "hung", "split")
#: Statuses that are no evidence about the daemon itself: never fire, keep the previous state
#: (systemd is restarting it / the probe could not tell / a dependency is down: the
#: dependency's own beacon reports that).
NO_EVIDENCE = ("restarting", "unknown", "blocked", "error")
#: The beacon's memory survives a reload of this module (``saltutil.sync_beacons`` in every
#: highstate): without it a daemon that recovered during a state run would never be reported.
STATE_FILE = "airflow_health_beacon.json"
DEFAULTS = {
    "checks": [],
    "worker_ping_failures": 2,
    "refire": 30,
    "scheduler_check_every": 3,
}
#: Slack (s) on scheduler_check_every: the beacon loop's own jitter must not make a check
#: every ``interval`` (check_every == interval) skip every other one.
CHECK_SLACK = 0.5
_NUMBERS = ("worker_ping_failures", "refire", "scheduler_check_every")
#: Salt's own beacon options (handled by the minion, not by this beacon).
_SALT_KEYS = ("enabled", "interval", "disable_during_state_run", "run_once", "beacon_module")
#: Keys of older releases, now node settings of the health module: accepted and ignored.
LEGACY_KEYS = ("heartbeat_stale", "start_grace", "worker_ping_timeout")

# beacon memory (the loader keeps the module between calls)
_STATE = {}  # daemon -> {'status': str, 'last_fire': float, 'probed': float}
_PING = {"thread": None, "failures": 0, "last": None, "lock": threading.Lock()}
_WARNED = {}
_clock = time.time  # replaced by tests


def __virtual__():
    return __virtualname__


def _to_dict(config):
    if isinstance(config, dict):
        return dict(config)
    out = {}
    for item in config or []:
        if isinstance(item, dict):
            out.update(item)
    return out


def _daemon_names():
    """Daemon names of the daemon table, through the health module."""
    return [row["name"] for row in __salt__["airflow_health.daemons"]()]


def validate(config):
    """Validate the beacon configuration (a list of one-key dicts)."""
    if not isinstance(config, list):
        return False, "Configuration for airflow_health beacon must be a list."
    conf = _to_dict(config)
    unknown = sorted(k for k in set(conf) - set(DEFAULTS) - set(_SALT_KEYS) - set(LEGACY_KEYS)
                     if not str(k).startswith("_"))  # _beacon_name & co: Salt's own
    if unknown:
        return False, f"airflow_health: unknown option(s) {', '.join(unknown)}"
    try:
        names = _daemon_names()
    except Exception as exc:  # pylint: disable=broad-except
        return False, f"airflow_health: daemon table unavailable (sync modules?): {exc}"
    checks = conf.get("checks", [])
    if not isinstance(checks, list) or any(c not in names for c in checks):
        return False, f"airflow_health: checks must be a list of {', '.join(names)}"
    for key in _NUMBERS:
        if key in conf:
            try:
                if isinstance(conf[key], bool) or float(conf[key]) <= 0:
                    raise ValueError
            except (TypeError, ValueError):
                return False, f"airflow_health: {key} must be a positive number"
    legacy = sorted(set(conf) & set(LEGACY_KEYS))
    if legacy and not _WARNED.get("legacy"):  # validate() runs every beacon cycle: warn once
        _WARNED["legacy"] = True
        log.warning("airflow_health beacon: %s ignored (now node settings of airflow_health)",
                    ", ".join(legacy))
    return True, "Valid beacon configuration"


def transition(previous, current, last_fire, now, refire):
    """
    Decide whether to fire for one daemon. Pure.

    NO_EVIDENCE statuses (restarting, unknown, blocked, error) never fire and keep the
    previous state (systemd handles a restart; an unknown probe or a down dependency is no
    evidence about the daemon). Fire on any other change, and re-fire every
    ``refire`` seconds while unhealthy. The first observation fires only if unhealthy.
    """
    if current in NO_EVIDENCE or current is None:
        return False, previous
    if previous is None:
        return current in UNHEALTHY, current
    if current != previous:
        return True, current
    if current in UNHEALTHY and now - (last_fire or 0) >= refire:
        return True, current
    return False, current


def _ping_worker(ping_fn):
    try:
        res = ping_fn()
    except Exception as exc:  # pylint: disable=broad-except
        res = {"status": "error", "detail": str(exc)}
    with _PING["lock"]:
        if res.get("status") == "ok":
            _PING["failures"] = 0
        elif res.get("status") == "hung":
            _PING["failures"] += 1
        _PING["last"] = res


def _start_ping():
    """Start a background ping unless one is running (the module's timeout applies)."""
    # look the function up BEFORE starting the thread (__salt__ is not thread-safe to load)
    worker_ping = __salt__["airflow_health.worker_ping"]
    ping_fn = lambda: worker_ping(resident=True)  # noqa: E731  one long-lived probe process
    thread = _PING["thread"]
    if thread is None or not thread.is_alive():
        _PING["thread"] = threading.Thread(target=_ping_worker, args=(ping_fn,),
                                           name="airflow-health-ping", daemon=True)
        _PING["thread"].start()


def _worker_status(conf, svc):
    """Worker health from the unit state and the last finished background ping."""
    if svc["status"] != "ok":
        with _PING["lock"]:
            _PING["failures"] = 0
        return svc["status"], svc
    _start_ping()
    with _PING["lock"]:
        failures = _PING["failures"]
        last = _PING["last"]
    if failures >= int(conf["worker_ping_failures"]):
        if svc.get("starting"):
            return "unknown", {}  # within the start grace: not answering yet is normal
        return "hung", {"ping_failures": failures, "last_ping": last}
    if last is None:
        return "unknown", {}
    if last.get("status") == "error":
        return "unknown", {"last_ping": last}
    return "ok", {"ping_failures": failures}


def _status_of(daemon, conf, probe_kind):
    if probe_kind == "ping":
        svc = __salt__["airflow_health.service"](daemon)
        return _worker_status(conf, svc)
    # the heartbeat through the node's long-lived probe process (a Python start per check is
    # the beacon's biggest cost); other kinds have no venv process to keep
    res = __salt__["airflow_health.probe"](daemon, resident=probe_kind == "heartbeat")
    return res.get("status"), res


def _short(detail):
    text = repr(detail)
    return text if len(text) <= 500 else text[:500] + "..."


def _state_path():
    """The state file in the minion's cachedir (None outside a minion, e.g. in unit tests)."""
    opts = globals().get("__opts__")
    cachedir = opts.get("cachedir") if isinstance(opts, dict) else None
    return os.path.join(cachedir, STATE_FILE) if cachedir else None


def _load_state():
    """Fill _STATE from the state file once per module load (unreadable: start empty)."""
    if _STATE or _WARNED.get("loaded"):
        return
    _WARNED["loaded"] = True
    if _state_path() is None:
        return
    try:
        with open(_state_path(), encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return
    for daemon, entry in (saved.items() if isinstance(saved, dict) else ()):
        if isinstance(entry, dict) and isinstance(entry.get("status"), str):
            _STATE[daemon] = {"status": entry["status"],
                              "last_fire": float(entry.get("last_fire") or 0.0)}


def _save_state():
    if _state_path() is None:
        return
    data = {d: {"status": e.get("status"), "last_fire": e.get("last_fire")}
            for d, e in _STATE.items()}
    tmp = _state_path() + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, _state_path())
    except OSError as exc:
        log.warning("airflow_health beacon: cannot save its state: %s", exc)


def beacon(config):
    """Check the configured daemons; return one event per health change (or re-fire)."""
    _load_state()
    changed = False
    conf = dict(DEFAULTS)
    conf.update(_to_dict(config))
    now = _clock()
    kinds = {row["name"]: row["probe"] for row in __salt__["airflow_health.daemons"]()}
    events = []
    for daemon in conf.get("checks") or []:
        if daemon not in kinds:
            continue
        entry = _STATE.setdefault(daemon, {"status": None, "last_fire": 0.0})
        if kinds[daemon] == "heartbeat":  # one metastore query per scheduler_check_every
            if now - entry.get("probed", float("-inf")) < float(conf["scheduler_check_every"]) - CHECK_SLACK:
                continue
            entry["probed"] = now
        try:
            current, detail = _status_of(daemon, conf, kinds[daemon])
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("airflow_health beacon: probe of %s failed: %s", daemon, exc)
            continue
        if current == "split" and isinstance(detail, dict) and detail.get("yield"):
            # this node's scheduler is the old one of a healed split: step down at once, on
            # the node (the master may not reach it yet); the event reports it, the runner
            # and the periodic reconcile fence (disable) it too
            detail = dict(detail, yielded=__salt__["airflow_health.stop"]("scheduler",
                                                                         disable=True))
            log.warning("airflow_health beacon: second scheduler, this one stepped down: %s",
                        detail["yielded"])
        fire, new_state = transition(entry["status"], current, entry["last_fire"], now,
                                     float(conf["refire"]))
        previous = entry["status"]
        changed = changed or new_state != previous or fire
        entry["status"] = new_state
        if fire:
            entry["last_fire"] = now
            events.append(
                {
                    "tag": daemon,
                    "daemon": daemon,
                    "status": current,
                    "previous": previous,
                    "detail": _short(detail),
                }
            )
    if changed:
        _save_state()
    return events
