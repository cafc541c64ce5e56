"""Scheduled enforcement (issue 10): the pure core (_utils/airflow_drift.py), the busy marks
that make a scheduled run wait for a remediation, and the runner's record of a run
(airflow.enforcement_report / airflow.enforcement), with the fakes of test_runner.py."""
import json

import pytest

from test_runner import MODS, _load, env  # noqa: F401

D = MODS["airflow_drift"]
NOW = 1_700_000_000.0


def _key(fun, sid, name):
    mod, f = fun.split(".")
    return f"{mod}_|-{sid}_|-{name}_|-{f}"


HIGHSTATE = {
    _key("file.managed", "airflow-config-file", "/opt/airflow/airflow.cfg"): {
        "__id__": "airflow-config-file", "__run_num__": 3, "result": True,
        "changes": {"diff": "-secret_key = hunter2\n+secret_key = other"}, "comment": "updated"},
    _key("service.running", "airflow-triggerer-service", "airflow-triggerer"): {
        "__id__": "airflow-triggerer-service", "__run_num__": 7, "result": True,
        "changes": {"airflow-triggerer": True}, "comment": "Service started"},
    _key("pkg.installed", "airflow-software-packages", "python3"): {
        "__id__": "airflow-software-packages", "__run_num__": 1, "result": True,
        "changes": {}, "comment": "already installed"},
}


# ------------------------------------------------------------------ pause_reason
@pytest.mark.parametrize("flags, busy, expected", [
    ({}, None, None),
    ({"maintenance": True}, None, "maintenance is on"),
    ({"enforcement_paused": True}, None, "enforcement is paused"),
    ({"deployed": False}, None, "an orchestration is running"),
    ({}, {"action": "restart", "since": NOW - 5}, "a remediation is acting on this node (restart)"),
    ({}, {"action": "restart", "since": NOW - D.BUSY_MAX_AGE - 1}, None),  # a stale mark
    ({}, {"action": "restart", "since": "junk"}, None),
])
def test_pause_reason(flags, busy, expected):
    args = dict(maintenance=False, enforcement_paused=False, deployed=True, require_deploy=True,
                busy=busy, now=NOW)
    args.update(flags)
    reason = D.pause_reason(**args)
    assert (reason is None) if expected is None else reason.startswith(expected), reason


def test_deploy_does_not_pause_when_the_site_does_not_require_it():
    assert D.pause_reason(False, False, False, False, None, NOW) is None


# ------------------------------------------------------------------ summarize
def test_summary_names_states_and_changed_keys_never_values():
    s = D.summarize(HIGHSTATE, test=False)
    assert s["result"] == "corrected"
    assert [e["id"] for e in s["changed"]] == ["airflow-config-file", "airflow-triggerer-service"]
    assert s["changed"][0] == {"id": "airflow-config-file", "fun": "file.managed", "changes": ["diff"]}
    assert "hunter2" not in json.dumps(s) and "updated" not in json.dumps(s)
    assert s["states"] == 3 and s["failed"] == []


def test_report_mode_counts_would_change_as_drift():
    ret = {_key("service.running", "airflow-triggerer-service", "airflow-triggerer"): {
        "__id__": "airflow-triggerer-service", "result": None, "changes": {},
        "comment": "Service airflow-triggerer is set to start"}}
    assert D.summarize(ret, test=True)["result"] == "drift"
    assert D.summarize({}, test=True)["result"] == "clean"


def test_states_that_cannot_dry_run_are_no_drift_in_report_mode():
    ret = {_key("saltutil.sync_beacons", "airflow-healing-sync", "x"): {
               "result": None, "changes": {}, "comment": "would have been run"},
           _key("loop.until_no_eval", "airflow-healing-beacon-loaded", "beacons.list_available"): {
               "result": None, "changes": {}, "comment": "Would have waited"}}
    assert D.summarize(ret, test=True)["result"] == "clean"


def test_a_failed_state_makes_the_run_failed():
    ret = dict(HIGHSTATE)
    ret[_key("cmd.run", "airflow-migrate", "airflow db migrate")] = {
        "__id__": "airflow-migrate", "result": False, "changes": {}, "comment": "boom"}
    s = D.summarize(ret, test=False)
    assert s["result"] == "failed" and s["failed"] == [
        {"id": "airflow-migrate", "fun": "cmd.run", "changes": []}]


def test_render_errors_and_a_busy_state_system():
    assert D.summarize(["Rendering SLS 'base:airflow' failed: password=x"], False) == {
        "result": "failed", "reason": "the highstate did not render (see the minion log)",
        "changed": [], "failed": [], "states": 0, "truncated": 0}
    busy = D.summarize(['The function "state.highstate" is running as PID 42'], False)
    assert busy["result"] == "skipped"


def test_a_huge_run_is_cut_and_says_so():
    ret = {_key("file.managed", f"f{i}", f"/f{i}"): {"__id__": f"f{i}", "__run_num__": i,
                                                     "result": True, "changes": {"diff": "x"}}
           for i in range(D.MAX_STATES + 7)}
    s = D.summarize(ret, test=False)
    assert len(s["changed"]) == D.MAX_STATES and s["truncated"] == 7


# ------------------------------------------------------------------ parse_report
def _report(**over):
    s = D.summarize(HIGHSTATE, test=False)
    s.update(run_id="0123456789abcdef", mode="enforce", reason="", started=NOW, seconds=12.3)
    s.update(over)
    return s


def test_a_real_summary_parses():
    report, error = D.parse_report(_report())
    assert error is None and report["result"] == "corrected" and len(report["changed"]) == 2


@pytest.mark.parametrize("over, words", [
    ({"run_id": "../etc"}, "run_id"),
    ({"mode": "apply"}, "mode"),
    ({"result": "pwned"}, "result"),
    ({"seconds": -1}, "seconds"),
    ({"seconds": True}, "seconds"),
    ({"changed": [{"id": "x; rm -rf /", "fun": "file.managed", "changes": []}]}, "state id"),
    ({"changed": [{"id": "x", "fun": "os.system", "changes": ["a" * 500]}]}, "changes"),
    ({"changed": "x"}, "changed must be a list"),
    ({"reason": "\x1b[31m"}, "reason"),
])
def test_a_forged_or_broken_summary_is_refused(over, words):
    report, error = D.parse_report(_report(**over))
    assert report is None and words in error


def test_audit_fields_carry_ids_and_key_names_only():
    report, _ = D.parse_report(_report())
    fields = D.audit_fields(report)
    assert fields["states"] == ["airflow-config-file (file.managed: diff)",
                                "airflow-triggerer-service (service.running: airflow-triggerer)"]
    assert "hunter2" not in json.dumps(fields)


# ------------------------------------------------------------------ busy marks (Context.act)
def test_an_action_marks_its_node_busy_until_done(env):
    ctx = env.ctx()
    op = ctx.act("restart", "worker1", "worker", "test")
    busy = ctx.store.busy("worker1")
    assert busy["action"] == "restart" and busy["since"] == env.clock.now()
    assert ctx.store.busy("worker2") is None
    op.done("ok")
    assert ctx.store.busy("worker1") is None


# ------------------------------------------------------------------ runner verbs
def _last_handler(summary):
    def handler(minion, fun, args):
        return summary if fun == "airflow_enforce.last" else True
    return handler


def test_a_corrected_run_is_audited_once_with_an_event(env):
    env.ops.handler = _last_handler(_report())
    res = env.rn.enforcement_report("worker1")
    assert res["result"] == "corrected"
    drift = [r for r in env.audit() if r["action"] == "drift"]
    assert len(drift) == 1 and drift[0]["minion"] == "worker1"
    assert drift[0]["outcome"] == "corrected" and "hunter2" not in json.dumps(drift)
    assert [t for t, _ in env.ops.fired] == ["airflow/drift/worker1"]
    # the same run reported again (a repeated or forged hint): nothing new
    assert env.rn.enforcement_report("worker1")["result"] == "known"
    assert len([r for r in env.audit() if r["action"] == "drift"]) == 1
    status = env.rn.enforcement("status")["nodes"]["worker1"]
    assert status["result"] == "corrected" and status["changed"] == 2


def test_a_clean_run_updates_the_status_without_an_audit_record(env):
    clean = _report(result="clean", changed=[], failed=[])
    env.ops.handler = _last_handler(clean)
    assert env.rn.enforcement_report("master2")["result"] == "clean"
    assert [r for r in env.audit() if r["action"] == "drift"] == [] and env.ops.fired == []
    assert env.rn.enforcement("status")["nodes"]["master2"]["result"] == "clean"


def test_a_malformed_summary_or_an_unknown_minion_is_audited_and_ignored(env):
    env.ops.handler = _last_handler({"run_id": "x", "result": "corrected"})
    assert env.rn.enforcement_report("worker1")["result"] == "ignored"
    assert env.rn.enforcement_report("rogue9")["result"] == "ignored"
    assert env.rn.enforcement_report("bad id!")["result"] == "ignored"
    ignored = [r for r in env.audit() if r["action"] == "ignored"]
    assert len(ignored) == 3 and env.ops.fired == []


def test_pause_and_resume_are_audited_and_reach_the_pillar_gate(env, tmp_path):
    assert env.rn.enforcement("pause")["paused"] is True
    gate = _load("_modules/airflow_gate.py", "gate_for_drift")
    gate.__opts__ = env.rn.__opts__
    gate.__utils__ = env.rn.__utils__
    assert gate.enforce_pause("worker1") == {"reason": "enforcement is paused"}
    assert env.rn.enforcement("resume")["paused"] is False
    assert gate.enforce_pause("worker1") == {"reason": ""}
    assert gate.enforce_pause("bad id!") == {"reason": "invalid minion id"}
    ctx = env.ctx()
    op = ctx.act("restart", "worker1", "worker", "test")
    assert gate.enforce_pause("worker1")["reason"].startswith("a remediation is acting")
    op.done("ok")
    env.rn.maintenance("on")
    assert gate.enforce_pause("worker2") == {"reason": "maintenance is on"}
    assert [r["outcome"] for r in env.audit() if r["action"] == "enforcement"] == ["paused", "resumed"]
    assert env.rn.enforcement("junk")["result"] == "error"


# ------------------------------------------------------------------ the schedule job and its watch
def test_schedule_job_of_the_merged_settings():
    job = D.schedule_job({"enabled": True, "mode": "report", "interval": 600, "splay": 60})
    assert job == {"function": "airflow_enforce.run", "kwargs": {"mode": "report"},
                   "seconds": 600, "splay": 60, "maxrunning": 1, "return_job": False,
                   "run_on_start": False}
    for bad in ({"enabled": False, "mode": "enforce", "interval": 600, "splay": 0},
                {"enabled": "yes", "mode": "enforce", "interval": 600, "splay": 0},
                {"enabled": True, "mode": "apply", "interval": 600, "splay": 0},
                {"enabled": True, "mode": "enforce", "interval": 59, "splay": 0},
                {"enabled": True, "mode": "enforce", "interval": 600, "splay": -1},
                {"enabled": True, "mode": "enforce", "interval": True, "splay": 0},
                None):
        assert D.schedule_job(bad) is None, bad


def test_stale_since_counts_from_the_newest_of_run_and_watch():
    job = {"seconds": 120, "splay": 30}
    assert D.stale_since(job, last_run=1000, watched_since=0, now=1300) is None
    assert D.stale_since(job, last_run=1000, watched_since=0, now=1310.5) == 10.5
    assert D.stale_since(job, last_run=None, watched_since=1200, now=1400) is None
    assert D.stale_since(job, last_run=100, watched_since=1200, now=1600) == 100
    assert D.stale_since(None, last_run=None, watched_since=0, now=10 ** 9) is None
    assert D.stale_since({"seconds": "x"}, last_run=None, watched_since=0, now=10 ** 9) is None
