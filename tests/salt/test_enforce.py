"""Scheduled enforcement on a real master + minions (issue 10, fast tier).

The schedule's rendering from pillar airflow:enforce (defaults.yaml + the lab pillar + overrides),
switched off, and a bad value; a report-mode run (test=True: nothing applied) end to end: the
minion's fresh pillar says it may run, its summary names state IDs only, the master's reactor
and runner fetch it and audit the drift; maintenance makes the next run skip without a
highstate. Nothing changes on the host: report mode is test=True.
"""
import json
import os
import time

import pytest
from conftest import audit_records, parse_states

pytestmark = pytest.mark.timeout(300)


def _show(salt_cli, minion, pillar=None):
    args = ["state.show_sls", "airflow.enforce"] + ([f"pillar={json.dumps(pillar)}"] if pillar else [])
    ret = salt_cli.run(*args, minion_tgt=minion)
    return ret, parse_states(ret.data) if isinstance(ret.data, dict) else None


def test_schedule_renders_from_pillar(salt_cli):
    _, states = _show(salt_cli, "worker1")
    job = states["airflow-enforce-schedule"]
    assert job["fun"] == "schedule.present" and job["name"] == "airflow-enforce"
    assert job["function"] == "airflow_enforce.run" and job["job_kwargs"] == {"mode": "enforce"}
    # defaults.yaml (this test site sets no airflow:enforce)
    assert (job["seconds"], job["splay"], job["maxrunning"]) == (1800, 300, 1)
    _, states = _show(salt_cli, "infra", {"airflow": {"enforce": {
        "mode": "report", "interval": 3600, "splay": 600}}})
    job = states["airflow-enforce-schedule"]
    assert (job["job_kwargs"], job["seconds"], job["splay"]) == ({"mode": "report"}, 3600, 600)
    _, states = _show(salt_cli, "infra", {"airflow": {"enforce": {"enabled": False}}})
    assert states["airflow-enforce-schedule"]["fun"] == "schedule.absent"


@pytest.mark.parametrize("bad, key", [({"mode": "apply"}, "airflow:enforce:mode"),
                                      ({"interval": 5}, "airflow:enforce:interval"),
                                      ({"enabled": "maybe"}, "airflow:enforce:enabled")])
def test_a_bad_enforce_value_fails_naming_the_key(salt_cli, bad, key):
    ret, _ = _show(salt_cli, "worker1", {"airflow": {"enforce": bad}})
    assert ret.returncode != 0 and key in json.dumps(ret.data), ret.data


def _wait(fn, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        res = fn()
        if res:
            return res
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def test_report_mode_end_to_end_then_maintenance_skips(salt_minions, salt_cli, airflow_salt_paths,
                                                       test_secrets):
    paths = airflow_salt_paths
    deployed = os.path.join(paths["varlib"], "deployed")
    maintenance = os.path.join(paths["varlib"], "maintenance")
    call = salt_minions["worker1"].salt_call_cli(timeout=240)
    with open(deployed, "w") as fh:
        fh.write("test\n")
    try:
        ret = call.run("airflow_enforce.run", "mode=report")
        summary = ret.data
        assert ret.returncode == 0 and isinstance(summary, dict), ret
        # a bare test minion: the worker's states would change (nothing is installed here)
        assert summary["result"] == "drift" and summary["mode"] == "report", summary
        ids = {e["id"] for e in summary["changed"]}
        assert "airflow-config-file" in ids or any(i.startswith("airflow-") for i in ids), ids
        text = json.dumps(summary)
        assert not [v for v in map(str, test_secrets.values()) if v in text]
        assert call.run("airflow_enforce.last").data == summary
        # report mode applied nothing: the Airflow home of the worker's pillar was not created
        assert not os.path.exists("/opt/airflow/airflow.cfg")
        # the master fetched the summary itself and audited the drift once
        drift = _wait(lambda: [r for r in audit_records(paths) if r["action"] == "drift"
                               and r.get("run_id") == summary["run_id"]], 60, "the drift record")
        assert len(drift) == 1 and drift[0]["minion"] == "worker1"
        assert drift[0]["outcome"] == "reported" and drift[0]["mode"] == "report"
        assert not [v for v in map(str, test_secrets.values()) if v in json.dumps(drift)]
        status = _wait(lambda: salt_cli.run("airflow_enforce.last", minion_tgt="worker1").data, 30,
                       "last()")
        assert status["run_id"] == summary["run_id"]
        # maintenance on: the next run asks the master (fresh pillar) and skips, no highstate
        with open(maintenance, "w") as fh:
            fh.write("test\n")
        skipped = call.run("airflow_enforce.run", "mode=report").data
        assert skipped["result"] == "skipped" and skipped["reason"] == "maintenance is on", skipped
        assert skipped["states"] == 0 and skipped["changed"] == []
    finally:
        for flag in (deployed, maintenance):
            if os.path.exists(flag):
                os.remove(flag)
    # without the deploy mark (orch.deploy running, or never deployed) it waits as well
    waiting = call.run("airflow_enforce.run").data
    assert waiting["result"] == "skipped" and "orchestration" in waiting["reason"], waiting
