"""Reactor event gate on a real salt-master (fast tier, shared tests/salt/conftest.py).

Proves: the master loads _modules/airflow_gate.py (module_dirs of airflow-reactor.conf) and the
minions do not; a flood of health events from one minion starts only ``rate_limit_events``
runner jobs (reactor/health.sls asks ``airflow_gate.admit`` before dispatching one), with one
``rate-limited`` audit record; a single event of another minion still gets its runner job.
"""
import json
import os
import time

import pytest
from conftest import audit_records

pytestmark = pytest.mark.timeout(180)

FLOOD = 60
FLOODER, OTHER = "master2", "infra"   # not worker1: test_healing.py sends from it


def _remediate_jobs(event_listener, master, since, minion):
    """salt/run/<jid>/new events of runner jobs airflow.remediate for ``minion`` after ``since``."""
    events = event_listener.get_events([(master.id, "salt/run/*/new")], after_time=since)
    return [e for e in events if e.data.get("fun") == "runner.airflow.remediate"
            and any(isinstance(a, dict) and a.get("minion") == minion
                    for a in e.data.get("fun_args") or [])]


def test_gate_loads_on_the_master_only(salt_run_cli, salt_cli):
    ret = salt_run_cli.run("salt.cmd", "sys.list_functions", "airflow_gate")
    assert ret.returncode == 0 and ret.data == ["airflow_gate.admit", "airflow_gate.enforce_pause"], ret
    # the minions have the file too (salt/_modules, synced at start) but do not load it
    ret = salt_cli.run("sys.list_functions", "airflow_gate", minion_tgt="worker1")
    assert ret.data == [], ret


def test_flood_starts_only_the_budget_of_runner_jobs(salt_master, salt_minions, event_listener,
                                                     airflow_salt_paths):
    paths = airflow_salt_paths
    limit = salt_master.config["airflow_healing"]["rate_limit_events"]
    assert 0 < limit < FLOOD
    rate_file = os.path.join(paths["varlib"], "rate", f"{FLOODER}.json")
    flood = os.path.join(paths["root"], "flood.jinja")
    with open(flood, "w") as fh:   # FLOOD events from one salt-call, ~ms apart
        fh.write("{%- for i in range(" + str(FLOOD) + ") %}{{ salt['event.send']("
                 "'airflow/health/worker', {'daemon': 'worker', 'status': 'hung', 'n': i})"
                 " }}{%- endfor %}")
    before, since = len(audit_records(paths)), time.time()
    try:
        ret = salt_minions[FLOODER].salt_call_cli(timeout=60).run(
            "slsutil.renderer", flood, "default_renderer=jinja")
        assert ret.returncode == 0 and "False" not in str(ret.data), ret
        # then one event of another minion: the reactor renders in event order, so once its
        # job ran, every flood event went through the gate
        ret = salt_minions[OTHER].salt_call_cli(timeout=60).run(
            "event.send", "airflow/health/worker", data={"daemon": "worker", "status": "hung"})
        assert ret.returncode == 0, ret

        def handled(minion):  # the runner audits these as ignored (role is not airflow-worker)
            return [r for r in audit_records(paths)[before:]
                    if r["minion"] == minion and r["action"] == "ignored"]

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (handled(OTHER) and
                                                   len(handled(FLOODER)) >= limit):
            time.sleep(0.5)
        time.sleep(3)  # room for jobs beyond the budget to show up (there must be none)
        assert len(handled(OTHER)) == 1
        assert len(handled(FLOODER)) == limit
        with open(rate_file) as fh:
            bucket = json.load(fh)
        # the first refusal is written to the bucket file; the rest of the full window is refused
        # from the reactor's memory (no file write per event) and counted into the next window
        assert bucket["count"] == limit + 1
        limited = [r for r in audit_records(paths)[before:] if r["action"] == "rate-limited"]
        assert [(r["minion"], r["count"]) for r in limited] == [(FLOODER, limit + 1)]
        assert len(_remediate_jobs(event_listener, salt_master, since, FLOODER)) == limit
        assert len(_remediate_jobs(event_listener, salt_master, since, OTHER)) == 1
        # all FLOOD reached the gate: the flooder's first event of the next window reports what
        # the full one dropped (and gives it its budget back)
        window = salt_master.config["airflow_healing"]["rate_limit_window"]
        deadline = time.monotonic() + window + 60
        while time.monotonic() < deadline:
            if time.time() >= bucket["start"] + window:
                ret = salt_minions[FLOODER].salt_call_cli(timeout=60).run(
                    "event.send", "airflow/health/worker", data={"daemon": "worker", "status": "hung"})
                assert ret.returncode == 0, ret
                break
            time.sleep(0.5)
        while time.monotonic() < deadline:
            with open(rate_file) as fh:
                after = json.load(fh)
            if after["start"] > bucket["start"]:
                break
            time.sleep(0.5)
        assert after["start"] > bucket["start"] and after["previous_dropped"] == FLOOD - limit, after
    finally:
        if os.path.exists(rate_file):   # give the flooder its budget back for later tests
            os.remove(rate_file)
