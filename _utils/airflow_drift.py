"""
Scheduled enforcement of the states and its drift reports, pure (Salt utility module
``airflow_drift``).

Every minion runs its highstate on a Salt schedule (salt/airflow/enforce, function
``airflow_enforce.run``). These functions decide, without I/O and without a clock:

* ``pause_reason``  may a scheduled run go on now? (maintenance, enforcement paused, an
  orchestration running, a remediation acting on the node)
* ``summarize``     a highstate's return -> the drift it corrected (or, ``test=True``, would
  correct): state IDs, state functions and the NAMES of the changed keys, never their values
  (a file diff or a command's output may hold a secret)
* ``parse_report``  the runner's check of a summary as a minion returned it (the minion wrote
  it: every field bounded and typed, anything else is refused with a reason)
* ``audit_fields``  what goes into the audit record and the ``airflow/drift`` event
* ``schedule_job``  the merged ``airflow:enforce`` settings -> the minion's schedule job, as the
  master's ext_pillar (_pillar/airflow_enforce.py) gives it in pillar ``schedule:``
* ``stale_since``   the periodic reconcile's check that a node's schedule still fires

``tests/unit/test_drift.py`` covers every branch.
"""

import inspect
import re
import types

__virtualname__ = "airflow_drift"

MODES = ("enforce", "report")
#: result of one scheduled run: nothing to do | drift corrected | drift seen, not applied
#: (report mode) | a state failed | the run did not start (pause_reason, or a state run busy)
RESULTS = ("clean", "corrected", "drift", "failed", "skipped")
#: results that are drift (audited, ``airflow/drift`` event)
DRIFT_RESULTS = ("corrected", "drift", "failed")
#: a summary lists at most this many states (a run that changes more says how many it cut)
MAX_STATES = 50
#: a remediation's busy marker older than this no longer pauses enforcement (a runner job
#: that died mid-action must not stop enforcement on the node for good)
BUSY_MAX_AGE = 900
#: state functions that cannot dry-run: under ``test=True`` they always answer result None
#: ("would have been run") whatever the node looks like, so their None is no drift
NO_DRY_RUN = ("saltutil.", "loop.")
#: the minion's schedule job of scheduled enforcement. It comes from pillar (``schedule:``,
#: _pillar/airflow_enforce.py), so every pillar refresh and every minion start restores it.
JOB = "airflow-enforce-highstate"
#: the job's former name: kept in minion.d/_schedule.conf by schedule.present; the minion's
#: running copy was seen lost after a salt-master restart (salt/airflow/enforce removes it)
LEGACY_JOB = "airflow-enforce"
#: a node whose newest scheduled run is older than this many (interval + splay) is stale
STALE_PERIODS = 2
_STATE_ID_RE = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,200}$")
_FUN_RE = re.compile(r"^[a-z0-9_]{1,40}\.[a-z0-9_]{1,40}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/@+ -]{1,120}$")
_RUN_ID_RE = re.compile(r"^[0-9a-f]{8,32}$")
_REASON_RE = re.compile(r"^[A-Za-z0-9_.:/@+,()' -]{0,200}$")


def __virtual__():
    return __virtualname__


def api():
    """This module's public functions and constants (MODES, ...) as one object (see
    airflow_decide.api)."""
    return types.SimpleNamespace(**{
        name: value for name, value in globals().items()
        if (inspect.isfunction(value) and not name.startswith("_")
            and value.__module__ == __name__) or (name.isupper() and not name.startswith("_"))})


# ====================================================================== may it run?
def pause_reason(maintenance, enforcement_paused, deployed, require_deploy, busy, now):
    """
    Why a scheduled run on a node must not go on now (None: it may).

    maintenance           the healing layer's maintenance switch (salt-run airflow.maintenance)
    enforcement_paused    the enforcement-only switch (salt-run airflow.enforcement pause)
    deployed / require_deploy
                          orch.deploy marks its start (deployed False) and its end
    busy                  {action, since} of a remediation acting on this node, or None
    """
    if maintenance:
        return "maintenance is on"
    if enforcement_paused:
        return "enforcement is paused"
    if require_deploy and not deployed:
        return "an orchestration is running (or the cluster was never deployed)"
    if isinstance(busy, dict):
        since = busy.get("since")
        if isinstance(since, (int, float)) and not isinstance(since, bool) \
                and 0 <= now - since <= BUSY_MAX_AGE:
            return f"a remediation is acting on this node ({busy.get('action') or '?'})"
    return None


# ====================================================================== the schedule
def schedule_job(enforce):
    """
    The schedule job (Salt's minion schedule format) of the merged ``airflow:enforce``
    settings ``{enabled, mode, interval, splay}``, or None when enforcement is off. The values
    are checked by the schema (_utils/airflow_schema.py) first; a value that is still not
    usable here gives None (no schedule rather than a wrong one) and the highstate's render
    names the key.
    """
    if not isinstance(enforce, dict) or enforce.get("enabled") is not True:
        return None
    interval, splay, mode = enforce.get("interval"), enforce.get("splay"), enforce.get("mode")
    if mode not in MODES or not all(isinstance(v, int) and not isinstance(v, bool)
                                    for v in (interval, splay)) or interval < 60 or splay < 0:
        return None
    return {"function": "airflow_enforce.run", "kwargs": {"mode": mode},
            "seconds": interval, "splay": splay, "maxrunning": 1,
            "return_job": False, "run_on_start": False}


def stale_since(job, last_run, watched_since, now):
    """
    How many seconds a node's scheduled enforcement is overdue (None: it is not).
    ``job``           the node's schedule job as its pillar holds it (``schedule_job``; None:
                      enforcement is off there, never stale)
    ``last_run``      time of its newest reported run (None: none yet)
    ``watched_since`` since when it may run: the latest of the runner's first sight of the
                      node and the last time a pause held it (a paused node does not run)
    A node is stale when neither happened within STALE_PERIODS x (interval + splay).
    """
    if not isinstance(job, dict):
        return None
    try:
        period = int(job["seconds"]) + int(job.get("splay") or 0)
    except (KeyError, TypeError, ValueError):
        return None
    newest = max(t for t in (last_run, watched_since, 0) if isinstance(t, (int, float)))
    overdue = now - newest - STALE_PERIODS * period
    return round(overdue, 1) if overdue > 0 else None


# ====================================================================== what did it change?
def _split_key(key):
    """'file_|-airflow-config_|-/opt/airflow/airflow.cfg_|-managed' -> (id, 'file.managed')."""
    parts = str(key).split("_|-")
    if len(parts) != 4:
        return str(key), "?"
    return parts[1], f"{parts[0]}.{parts[3]}"


def summarize(ret, test):
    """
    Summary of a highstate's return (``state.highstate`` / ``state.apply``): result, the
    states that changed (``test``: would change; result None) or failed, each as
    {id, fun, changes: [names of the changed keys]}. No values: a diff, a command's output or
    a comment may hold a secret. A return that is not a state dict (a list of render errors,
    "another state run is running") is ``failed`` with no states, or ``skipped`` when it says
    a state run is already running.
    """
    if isinstance(ret, list) or not isinstance(ret, dict):
        text = " ".join(str(x) for x in ret) if isinstance(ret, list) else str(ret)
        if "is running as PID" in text or "already running" in text:
            return {"result": "skipped", "reason": "another state run is running",
                    "changed": [], "failed": [], "states": 0, "truncated": 0}
        return {"result": "failed", "reason": "the highstate did not render (see the minion log)",
                "changed": [], "failed": [], "states": 0, "truncated": 0}
    changed, failed = [], []
    for key, row in sorted(ret.items(), key=lambda kv: (kv[1] or {}).get("__run_num__", 0)
                           if isinstance(kv[1], dict) else 0):
        if not isinstance(row, dict):
            continue
        state_id, fun = _split_key(key)
        state_id = row.get("__id__") or state_id
        entry = {"id": str(state_id), "fun": fun,
                 "changes": sorted(str(k) for k in (row.get("changes") or {}))[:10]}
        if row.get("result") is False:
            failed.append(entry)
        elif row.get("changes") or (test and row.get("result") is None
                                    and not fun.startswith(NO_DRY_RUN)):
            changed.append(entry)
    if failed:
        result = "failed"
    elif changed:
        result = "drift" if test else "corrected"
    else:
        result = "clean"
    cut = max(0, len(changed) - MAX_STATES) + max(0, len(failed) - MAX_STATES)
    return {"result": result, "changed": changed[:MAX_STATES], "failed": failed[:MAX_STATES],
            "states": len(ret), "truncated": cut}


# ====================================================================== the runner's check
def _entries(value, field):
    if not isinstance(value, list) or len(value) > MAX_STATES:
        raise ValueError(f"{field} must be a list of at most {MAX_STATES} states")
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise ValueError(f"{field}: every entry must be a mapping")
        sid, fun, keys = item.get("id"), item.get("fun"), item.get("changes", [])
        if not (isinstance(sid, str) and _STATE_ID_RE.match(sid)):
            raise ValueError(f"{field}: bad state id {str(sid)[:40]!r}")
        if not (isinstance(fun, str) and (fun == "?" or _FUN_RE.match(fun))):
            raise ValueError(f"{field}: bad state function {str(fun)[:40]!r}")
        if not isinstance(keys, list) or len(keys) > 10 or not all(
                isinstance(k, str) and _KEY_RE.match(k) for k in keys):
            raise ValueError(f"{field}: changes must be at most 10 key names")
        out.append({"id": sid, "fun": fun, "changes": list(keys)})
    return out


def parse_report(data):
    """
    A run summary as the minion returned it (``airflow_enforce.last``) -> (report, None) or
    (None, reason). The minion wrote every byte: types, lengths and character sets are
    checked, numbers bounded; nothing else is kept.
    """
    if not isinstance(data, dict):
        return None, "not a mapping"
    try:
        run_id, mode, result = data.get("run_id"), data.get("mode"), data.get("result")
        if not (isinstance(run_id, str) and _RUN_ID_RE.match(run_id)):
            raise ValueError("bad run_id")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if result not in RESULTS:
            raise ValueError(f"result must be one of {', '.join(RESULTS)}")
        numbers = {}
        for key, top in (("started", 1e11), ("seconds", 86400), ("states", 100000),
                         ("truncated", 100000)):
            value = data.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= top:
                raise ValueError(f"{key} must be a number in [0, {top:g}]")
            numbers[key] = value
        reason = data.get("reason") or ""
        if not (isinstance(reason, str) and _REASON_RE.match(reason)):
            raise ValueError("bad reason")
        report = {"run_id": run_id, "mode": mode, "result": result, "reason": reason,
                  "changed": _entries(data.get("changed", []), "changed"),
                  "failed": _entries(data.get("failed", []), "failed"),
                  "started": numbers["started"], "seconds": round(float(numbers["seconds"]), 1),
                  "states": int(numbers["states"]), "truncated": int(numbers["truncated"])}
    except ValueError as exc:
        return None, str(exc)
    return report, None


def is_drift(report):
    return report["result"] in DRIFT_RESULTS


def audit_fields(report):
    """Extra fields of the ``drift`` audit record / the ``airflow/drift`` event (no values)."""
    return {"mode": report["mode"], "result": report["result"],
            "states": [f"{e['id']} ({e['fun']}: {', '.join(e['changes']) or 'changed'})"
                       for e in report["changed"]],
            "failed_states": [f"{e['id']} ({e['fun']})" for e in report["failed"]],
            "truncated": report["truncated"], "seconds": report["seconds"],
            "run_id": report["run_id"]}


def status_row(report, recorded_at):
    """One node's row of ``salt-run airflow.status`` enforcement."""
    return {"run_id": report["run_id"], "mode": report["mode"], "result": report["result"],
            "reason": report["reason"], "started": report["started"],
            "seconds": report["seconds"], "changed": len(report["changed"]),
            "failed": len(report["failed"]), "recorded": recorded_at}
