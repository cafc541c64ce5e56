"""Scheduled enforcement on a real master + minions (issue 10, fast tier).

The schedule job from pillar airflow:enforce (the master's ext_pillar: defaults.yaml + the site's
pillar), in the minion's running schedule; switched off, a bad value, a minion without a role; a report-mode run (test=True: nothing applied) end to end: the
minion's fresh pillar says it may run, its summary names state IDs only, the master's reactor
and runner fetch it and audit the drift; maintenance makes the next run skip without a
highstate. Nothing changes on the host: report mode is test=True.
"""
import json
import os
import time

import pytest
import yaml
from conftest import audit_records, parse_states

pytestmark = pytest.mark.timeout(300)


JOB = "airflow-enforce-highstate"


def _show(salt_cli, minion, pillar=None):
    args = ["state.show_sls", "airflow.enforce"] + ([f"pillar={json.dumps(pillar)}"] if pillar else [])
    ret = salt_cli.run(*args, minion_tgt=minion)
    return ret, parse_states(ret.data) if isinstance(ret.data, dict) else None


def _master_pillar(salt_run_cli, minion):
    """The pillar the master compiles for ``minion`` (pillar_roots + the ext_pillar)."""
    ret = salt_run_cli.run("pillar.show_pillar", minion)
    assert ret.returncode == 0 and isinstance(ret.data, dict), ret
    return ret.data


@pytest.fixture
def site_enforce(airflow_salt_paths):
    """Write airflow:enforce into the test site's pillar (airflow_site.sls); restored after."""
    path = os.path.join(airflow_salt_paths["etc"], "pillar", "airflow_site.sls")
    with open(path) as fh:
        original = fh.read()

    def write(enforce):
        site = yaml.safe_load(original) or {}
        site.setdefault("airflow", {})["enforce"] = enforce
        with open(path, "w") as fh:
            yaml.safe_dump(site, fh)

    yield write
    with open(path, "w") as fh:
        fh.write(original)


def test_schedule_job_comes_from_pillar(salt_cli, salt_run_cli, site_enforce):
    # the running schedule of the minion holds the pillar's job (merged at its pillar refresh)
    ret = salt_cli.run("schedule.list", "show_all=True", "return_yaml=False", minion_tgt="worker1")
    job = (ret.data or {}).get(JOB) or {}
    assert job.get("function") == "airflow_enforce.run" and job.get("kwargs") == {"mode": "enforce"}, ret.data
    # defaults.yaml (this test site sets no airflow:enforce)
    assert (job["seconds"], job["splay"], job["maxrunning"]) == (1800, 300, 1)
    # the state (rendered before the site pillar below turns bad) keeps only the removal of the former persisted copy
    _, states = _show(salt_cli, "worker1")
    legacy = states["airflow-enforce-legacy-schedule"]
    assert legacy["fun"] == "schedule.absent" and legacy["name"] == "airflow-enforce"
    # the site's airflow:enforce, as the master's ext_pillar derives the job
    site_enforce({"mode": "report", "interval": 3600, "splay": 600})
    job = _master_pillar(salt_run_cli, "infra")["schedule"][JOB]
    assert (job["kwargs"], job["seconds"], job["splay"]) == ({"mode": "report"}, 3600, 600)
    # switched off, or a bad value: no job (the highstate's render names the key, below)
    site_enforce({"enabled": False})
    assert JOB not in (_master_pillar(salt_run_cli, "infra").get("schedule") or {})
    site_enforce({"interval": 5})
    assert JOB not in (_master_pillar(salt_run_cli, "infra").get("schedule") or {})


def test_a_minion_without_a_role_gets_no_job(salt_run_cli, airflow_salt_paths):
    roles = yaml.safe_load(open(os.path.join(airflow_salt_paths["etc"], "roles.yaml")))
    outsider = "not-a-member"
    assert outsider not in roles
    assert JOB not in (_master_pillar(salt_run_cli, outsider).get("schedule") or {})


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


def test_the_reconcile_refreshes_the_pillar_of_a_node_whose_runs_stopped(salt_run_cli, salt_minions,
                                                                          airflow_salt_paths):
    """The watch on the real master: worker1 holds the job (its pillar as the master served it),
    and no run has come from it for far longer than 2 x (interval + splay): the periodic
    reconcile refreshes its pillar (what puts a lost pillar job back into the running schedule),
    audits `enforce-stale` and alerts; the next pass does not repeat it within the period."""
    varlib = airflow_salt_paths["varlib"]
    deployed = os.path.join(varlib, "deployed")
    watch = os.path.join(varlib, "enforce-watch", "worker1.json")
    last = os.path.join(varlib, "enforce", "worker1.json")
    os.makedirs(os.path.dirname(watch), exist_ok=True)
    with open(deployed, "w") as fh:
        fh.write("test\n")
    try:
        if os.path.exists(last):
            os.remove(last)
        with open(watch, "w") as fh:
            json.dump({"since": time.time() - 10 * (1800 + 300)}, fh)
        since = time.time() - 1
        ret = salt_run_cli.run("airflow.reconcile")
        assert ret.returncode == 0 and isinstance(ret.data, dict), ret
        if ret.data.get("result") == "in-progress":  # the master's own schedule was running it
            ret = _wait(lambda: (lambda r: r if r.data.get("result") != "in-progress" else None)(
                salt_run_cli.run("airflow.reconcile")), 120, "a reconcile pass of ours")
        stale = [r for r in audit_records(airflow_salt_paths) if r["action"] == "enforce-stale"
                 and r["minion"] == "worker1" and r["ts"] >= since]
        assert len(stale) == 1 and stale[0]["outcome"] == "refreshed", stale
        assert stale[0]["overdue"] > 0
        again = salt_run_cli.run("airflow.reconcile").data
        assert "worker1" not in (again.get("done") or {}).get("enforce-stale", {}), again
    finally:
        for path in (deployed, watch):
            if os.path.exists(path):
                os.remove(path)
