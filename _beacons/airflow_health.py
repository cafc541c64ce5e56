"""
Beacon ``airflow_health``: watch this node's Airflow daemons, fire on a CHANGE of health.

Configuration (written by ``salt/airflow/healing.sls`` from pillar ``airflow:healing``):

.. code-block:: yaml

    beacons:
      airflow_health:
        - interval: 5              # seconds between checks (Salt's beacon interval)
        - checks: [worker]         # daemons to watch (derived from the roles grain)
        - worker_ping_failures: 2  # consecutive failed Celery pings before "hung"
        - worker_ping_timeout: 3
        - heartbeat_stale: 15      # scheduler heartbeat age (s) that counts as dead
        - refire: 30               # re-fire while still unhealthy (a lost event is recovered)

Events: tag ``salt/beacon/<minion>/airflow_health/<daemon>``, data
``{'daemon': 'worker', 'status': 'ok'|'dead'|'hung', 'previous': ..., 'detail': ...}``.

The Celery ping takes seconds; it runs in a background thread so the minion's beacon loop
is never blocked (the beacon uses the result of the last finished ping).
"""

import logging
import threading
import time

log = logging.getLogger(__name__)

__virtualname__ = "airflow_health"

DAEMONS = ("api-server", "scheduler", "dag-processor", "triggerer", "worker", "flower",
           "postgresql", "rabbitmq", "haproxy")
UNHEALTHY = ("dead", "hung")
DEFAULTS = {
    "checks": [],
    "worker_ping_failures": 2,
    "worker_ping_timeout": 3,
    "heartbeat_stale": 15,
    "refire": 30,
    "start_grace": 20,
    # the scheduler check starts a Python with SQLAlchemy (~1 s of CPU): at most this often
    "scheduler_check_every": 6,
}

# beacon memory (the loader keeps the module between calls)
_STATE = {}  # daemon -> {'status': str, 'last_fire': float}
_PING = {"thread": None, "failures": 0, "last": None, "lock": threading.Lock()}


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


def validate(config):
    """Validate the beacon configuration (a list of one-key dicts)."""
    if not isinstance(config, list):
        return False, "Configuration for airflow_health beacon must be a list."
    conf = _to_dict(config)
    checks = conf.get("checks", [])
    if not isinstance(checks, list) or any(c not in DAEMONS for c in checks):
        return False, f"airflow_health: checks must be a list of {', '.join(DAEMONS)}"
    for key in ("worker_ping_failures", "worker_ping_timeout", "heartbeat_stale", "refire",
                "start_grace", "scheduler_check_every"):
        if key in conf:
            try:
                if float(conf[key]) <= 0:
                    raise ValueError
            except (TypeError, ValueError):
                return False, f"airflow_health: {key} must be a positive number"
    return True, "Valid beacon configuration"


def transition(previous, current, last_fire, now, refire):
    """
    Decide whether to fire for one daemon. Pure.

    ``restarting``/``unknown`` never fire and keep the previous state (systemd handles a
    restart; an unknown probe is not evidence). Fire on any other change, and re-fire every
    ``refire`` seconds while unhealthy. The first observation fires only if unhealthy.
    """
    if current in ("restarting", "unknown", None):
        return False, previous
    if previous is None:
        return current in UNHEALTHY, current
    if current != previous:
        return True, current
    if current in UNHEALTHY and now - (last_fire or 0) >= refire:
        return True, current
    return False, current


def _ping_worker(ping_fn, timeout):
    try:
        res = ping_fn(timeout)
    except Exception as exc:  # pylint: disable=broad-except
        res = {"status": "error", "detail": str(exc)}
    with _PING["lock"]:
        if res.get("status") == "ok":
            _PING["failures"] = 0
        elif res.get("status") == "hung":
            _PING["failures"] += 1
        _PING["last"] = res


def _worker_status(conf, svc):
    """Worker health from the unit state and the last finished background ping."""
    if svc["status"] != "ok":
        with _PING["lock"]:
            _PING["failures"] = 0
        return svc["status"], svc
    # look the function up BEFORE starting the thread (__salt__ is not thread-safe to load)
    ping_fn = __salt__["airflow_health.worker_ping"]
    thread = _PING["thread"]
    if thread is None or not thread.is_alive():
        _PING["thread"] = threading.Thread(
            target=_ping_worker,
            args=(ping_fn, float(conf["worker_ping_timeout"])),
            name="airflow-health-ping",
            daemon=True,
        )
        _PING["thread"].start()
    with _PING["lock"]:
        failures = _PING["failures"]
        last = _PING["last"]
    if failures >= int(conf["worker_ping_failures"]):
        if (svc.get("uptime") or 0) < float(conf["start_grace"]):
            return "unknown", {}  # (re)starting worker: not answering yet is normal
        return "hung", {"ping_failures": failures, "last_ping": last}
    if last is None:
        return "unknown", {}
    if last.get("status") == "error":
        return "unknown", {"last_ping": last}
    return "ok", {"ping_failures": failures}


def _status_of(daemon, conf):
    if daemon == "worker":
        svc = __salt__["airflow_health.service"]("worker")
        return _worker_status(conf, svc)
    res = __salt__["airflow_health.probe"](daemon, heartbeat_stale=conf["heartbeat_stale"])
    return res.get("status"), res


def _short(detail):
    text = repr(detail)
    return text if len(text) <= 500 else text[:500] + "..."


def beacon(config):
    """Check the configured daemons; return one event per health change (or re-fire)."""
    conf = dict(DEFAULTS)
    conf.update(_to_dict(config))
    now = time.time()
    events = []
    for daemon in conf.get("checks") or []:
        if daemon not in DAEMONS:
            continue
        entry = _STATE.setdefault(daemon, {"status": None, "last_fire": 0.0})
        if daemon == "scheduler":
            if now - entry.get("probed", 0.0) < float(conf["scheduler_check_every"]):
                continue
            entry["probed"] = now
        try:
            current, detail = _status_of(daemon, conf)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("airflow_health beacon: probe of %s failed: %s", daemon, exc)
            continue
        fire, new_state = transition(entry["status"], current, entry["last_fire"], now,
                                     float(conf["refire"]))
        previous = entry["status"]
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
    return events
