"""
Scheduled enforcement of the Airflow states, node side (execution module ``airflow_enforce``).

The minion's schedule job ``airflow-enforce-highstate`` (pillar ``schedule:``, derived from
``airflow:enforce`` by the master's ext_pillar _pillar/airflow_enforce.py) calls ``run``. One run:

1. skips when a state run is already running here (an orchestration, a manual highstate), or
   when the master says to wait: pillar ``airflow_pause`` (pillar/airflow/pause.sls, computed
   on the master at each pillar compile by ``airflow_gate.enforce_pause``: maintenance, the
   enforcement-only pause, orch.deploy running, a remediation acting on this node);
2. runs the highstate: ``enforce`` applies it, ``report`` is ``test=True`` (nothing applied);
3. keeps a summary (state IDs, functions and the names of changed keys, never values:
   ``airflow_drift.summarize``) in ``<cachedir>/airflow_enforce.json`` (0600), and fires
   ``airflow/enforce/<result>``. That event only makes the master look: the runner
   (``salt-run airflow.enforcement_report``, reactor/enforce.sls) asks this minion for ``last()``
   over Salt's authenticated channel, checks it and audits the drift.

Loads only on minions (the master's module_dirs hold this directory too).
"""

import json
import logging
import os
import time
import uuid

log = logging.getLogger(__name__)

__virtualname__ = "airflow_enforce"

_LAST_FILE = "airflow_enforce.json"


def __virtual__():
    if __opts__.get("__role") != "minion":
        return (False, "airflow_enforce: the minions' scheduled highstate, not for the master")
    return __virtualname__


def _drift():
    try:
        return __utils__["airflow_drift.api"]()
    except KeyError:
        from salt.exceptions import CommandExecutionError  # pylint: disable=import-outside-toplevel

        raise CommandExecutionError(
            "airflow_drift is not synced to this minion: run saltutil.sync_all") from None


def _last_path():
    return os.path.join(__opts__["cachedir"], _LAST_FILE)


def _save(summary):
    path = _last_path()
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, sort_keys=True)
    os.replace(tmp, path)


def _pause():
    """The master's word on whether to wait (fresh pillar, not the minion's cached copy)."""
    try:  # Salt 3008 masks pillar values it returns unless asked (older ones: no masking)
        fresh = __salt__["pillar.items"](unmask=True)
    except TypeError:
        fresh = __salt__["pillar.items"]()
    pause = fresh.get("airflow_pause") if isinstance(fresh, dict) else None
    if isinstance(pause, dict):
        return pause.get("reason") or None
    return None


def run(mode="enforce", **kwargs):  # pylint: disable=unused-argument
    """
    One scheduled enforcement: the highstate (``mode=enforce``) or its dry run
    (``mode=report``, ``test=True``), unless a state run is running or the master says to wait.
    Returns the summary; keeps it for ``last()`` and fires ``airflow/enforce/<result>``.

    CLI Example:

    .. code-block:: bash

        salt-call airflow_enforce.run mode=report
    """
    drift = _drift()
    if mode not in drift.MODES:
        return {"result": "error", "reason": f"mode must be one of {', '.join(drift.MODES)}"}
    started = time.time()
    t0 = time.monotonic()
    summary = None
    paused = False
    if __salt__["saltutil.is_running"]("state.*"):
        reason = "another state run is running"
    else:
        reason = _pause()
        paused = reason is not None
    if reason is None:
        ret = __salt__["state.highstate"](test=(mode == "report"), queue=False)
        summary = drift.summarize(ret, test=(mode == "report"))
        reason = summary.pop("reason", "")
    if summary is None:
        summary = {"result": "skipped", "changed": [], "failed": [], "states": 0, "truncated": 0}
    summary.update(run_id=uuid.uuid4().hex[:16], mode=mode, reason=reason or "",
                   started=round(started, 1), seconds=round(time.monotonic() - t0, 1))
    _save(summary)
    if summary["result"] != "clean" or mode == "report":
        log.info("airflow_enforce: %s run: %s %s", mode, summary["result"], reason or "")
    # a hint only (the master asks last() itself): no summary in the event. A run the master
    # paused tells it nothing new (it knows why), so it sends none.
    if not paused:
        __salt__["event.send"](f"airflow/enforce/{summary['result']}",
                               {"run_id": summary["run_id"]})
    return summary


def last():
    """
    The summary of this node's last scheduled run (``{}`` if none ran yet).

    CLI Example:

    .. code-block:: bash

        salt '*' airflow_enforce.last
    """
    try:
        with open(_last_path(), encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        return {"result": "error", "reason": f"unreadable: {exc}"}
    return data if isinstance(data, dict) else {}
