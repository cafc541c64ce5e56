"""Scheduled enforcement on the deployed lab (issue 10): three hand-made drifts are corrected by
the nodes' own scheduled highstates, without a person, while a cluster_smoke run goes on.

The lab session pauses enforcement (conftest: the fault tests must not have their injected
faults corrected under them); this test resumes it for its duration.

Drifts: worker1's airflow.cfg edited by hand; the triggerer of a standby master stopped AND
disabled with systemctl; haproxy's configuration edited on the lb node. The healing beacon sees
the stopped triggerer too and may start it again (a remediation), but it never enables a unit:
the unit file state ``disabled`` is corrected only by the scheduled highstate. The two are told
apart in the audit: a remediation is a ``restart``/``start`` record of daemon ``triggerer``, the
enforcement a ``drift`` record whose states name ``airflow-triggerer-service``.
"""
import json
import time

import pytest

from tests.lab.helpers import (SALT_NODE, active_scheduler, dag_run_state, main_pid,
                               salt_json, salt_run_json, sh, trigger_dag_run, wait_for)

pytestmark = pytest.mark.timeout(900)

DAG = "cluster_smoke"
CFG = "/opt/airflow/airflow.cfg"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
HAND_EDIT = "# hand edit by test_drift"
JOB = "airflow-enforce-highstate"


def _enforce_settings(lab, node):
    """interval + splay of the node's schedule job, as its pillar put it in the running minion."""
    sched = salt_json(lab, node, "schedule.list", "show_all=True", "return_yaml=False").get(node) or {}
    job = sched.get(JOB) or {}
    assert job.get("function") == "airflow_enforce.run", f"no {JOB} schedule on {node}: {sched}"
    return float(job["seconds"]), float(job.get("splay") or 0)


def _has_job(lab, node):
    sched = salt_json(lab, node, "schedule.list", "show_all=True", "return_yaml=False").get(node)
    return isinstance(sched, dict) and (sched.get(JOB) or {}).get("function") == "airflow_enforce.run"


def _members(lab):
    """The lab's nodes with an Airflow role (the salt node has none)."""
    return sorted(n for n, info in lab.topology().items() if info.get("roles"))


def _sha(lab, node, path):
    return sh(lab, node, f"sha256sum {path} | cut -d' ' -f1", check=True).stdout.strip()


def _unit(lab, node, unit):
    out = sh(lab, node, f"systemctl is-active {unit}; systemctl is-enabled {unit}").stdout.split()
    return tuple(out[:2])


def _drift_records(lab, since, node):
    recs = salt_run_json(lab, "airflow.audit_log", "limit=300") or []
    return [r for r in recs if r.get("ts", 0) >= since and r.get("action") == "drift"
            and r.get("minion") == node]


def test_three_drifts_are_corrected_by_the_schedule(lab, airflow_api, results_file):
    worker, lb = "worker1", "infra"
    active = active_scheduler(lab)
    master = next(m for m in ("master2", "master1") if m != active)  # the standby's triggerer
    interval, splay = max(_enforce_settings(lab, n) for n in (worker, master, lb))
    before = {n: _sha(lab, n, p) for n, p in ((worker, CFG), (lb, HAPROXY_CFG))}
    # daemons the corrections must NOT restart: the master's other daemons, the db and broker
    keep = {(master, "airflow-api-server"), (master, "airflow-dag-processor"),
            (lb, "rabbitmq-server"), (lb, "haproxy")}
    pids = {k: main_pid(lab, *k) for k in keep}
    rec = {"test": "drift_corrected", "interval_s": interval, "splay_s": splay, "master": master}
    airflow_api.patch(f"/api/v2/dags/{DAG}", json={"is_paused": False})
    run_id = wait_for(lambda: trigger_dag_run(airflow_api, DAG, {"sleep_seconds": 20}), 60, 2,
                      "a cluster_smoke run")[1]
    since = time.time() - 1
    salt_run_json(lab, "airflow.enforcement", "resume")
    t0 = time.monotonic()
    try:
        # the three drifts, by hand. Each file's digest is taken in the same shell as its edit:
        # the schedule already runs, and a job firing seconds later may correct the edit before
        # a separate check (CI saw the worker's file back before the lb edit was done).
        edited = {
            worker: sh(lab, worker, f"echo '{HAND_EDIT}' >> {CFG} && sha256sum {CFG}",
                       check=True).stdout.split()[0],
            lb: sh(lab, lb, f"sed -i 's/timeout client 120s/timeout client 7s/' {HAPROXY_CFG} && "
                            f"echo '{HAND_EDIT}' >> {HAPROXY_CFG} && sha256sum {HAPROXY_CFG}",
                   check=True).stdout.split()[0]}
        sh(lab, master, "systemctl stop airflow-triggerer && systemctl disable -q airflow-triggerer",
           check=True)
        assert edited[worker] != before[worker] and edited[lb] != before[lb], (before, edited)
        # within one interval + splay (+ the run itself: a highstate takes a while on 2 cores)
        deadline = interval + splay + 180
        back = {}

        def corrected():
            if worker not in back and _sha(lab, worker, CFG) == before[worker]:
                back[worker] = round(time.monotonic() - t0, 1)
            if lb not in back and _sha(lab, lb, HAPROXY_CFG) == before[lb]:
                back[lb] = round(time.monotonic() - t0, 1)
            if master not in back and _unit(lab, master, "airflow-triggerer") == ("active", "enabled"):
                back[master] = round(time.monotonic() - t0, 1)
            return len(back) == 3

        wait_for(corrected, deadline, 3, "the three drifts corrected")
        rec.update(corrected_after_s=back)
        # the audit says what was corrected, per node (state IDs, no values)
        audits = {}
        for node, state in ((worker, "airflow-config"), (master, "airflow-triggerer-service"),
                            (lb, "airflow-lb-config")):
            _, recs = wait_for(lambda n=node, s=state: [
                r for r in _drift_records(lab, since, n)
                if any(x.startswith(s + " ") for x in r.get("states") or [])], 90, 3,
                f"a drift record of {node} naming {state}")
            audits[node] = recs[0]["states"]
            assert recs[0]["outcome"] == "corrected" and recs[0]["mode"] == "enforce", recs[0]
        rec["audited_states"] = audits
        text = json.dumps(audits)
        for secret in ("password", "secret_key", "BEGIN"):
            assert secret not in text
        # the beacon may have started the triggerer (a remediation), never enabled it
        recs = salt_run_json(lab, "airflow.audit_log", "limit=300") or []
        rec["triggerer_remediations"] = len([
            r for r in recs if r.get("ts", 0) >= since and r.get("minion") == master
            and r.get("daemon") == "triggerer" and r.get("action") in ("restart", "start")])
        # no daemon restarted beyond what the corrected change needs
        after = {k: main_pid(lab, *k) for k in keep}
        assert after == pids, {k: (pids[k], after[k]) for k in keep if pids[k] != after[k]}
        # the status shows the last enforcement per node
        status = salt_run_json(lab, "airflow.enforcement", "status") or {}
        for node in (worker, master, lb):
            row = status.get("nodes", {}).get(node) or {}
            assert row.get("result") in ("corrected", "clean") and row.get("started", 0) >= since, row
        # the DAG run was not disturbed
        _, state = wait_for(lambda: dag_run_state(airflow_api, DAG, run_id) in ("success", "failed")
                            and dag_run_state(airflow_api, DAG, run_id), 300, 3, f"dag run {run_id}")
        rec["dag_run"] = state
        assert state == "success", f"cluster_smoke run {run_id}: {state}"
    finally:
        salt_run_json(lab, "airflow.enforcement", "pause")
        # whatever the outcome, leave the lab as the next test expects it
        sh(lab, master, "systemctl enable -q --now airflow-triggerer")
        # only where the edit is still there: `sed -i` rewrites a file (a new mtime) even when
        # nothing matched, and the daemons' current-config check would then restart the worker
        sh(lab, worker, f"grep -q '^{HAND_EDIT}$' {CFG} && sed -i '/^{HAND_EDIT}$/d' {CFG}")
        sh(lab, lb, f"grep -q '^{HAND_EDIT}$' {HAPROXY_CFG} && sed -i -e '/^{HAND_EDIT}$/d' "
                    f"-e 's/timeout client 7s/timeout client 120s/' {HAPROXY_CFG} && "
                    "systemctl reload haproxy")
        results_file("drift", rec)


def test_the_schedule_job_outlives_a_salt_master_restart(lab, results_file):
    """Before the job came from pillar, three of five nodes lost it from their running schedule
    around a salt-master restart (CI rehearsal), and enforcement stopped there without a word.
    Now: every member holds the job, still after `systemctl restart salt-master`, and a hand
    `schedule.delete` cannot take it away (Salt refuses to change a pillar job). The watch for a
    node whose runs stop anyway is tests/salt/test_enforce.py (the real reconcile)."""
    nodes = _members(lab)
    assert len(nodes) == 5, nodes
    assert [n for n in nodes if not _has_job(lab, n)] == []
    rec = {"test": "schedule_job_outlives_master_restart", "nodes": nodes}
    t0 = time.monotonic()
    sh(lab, SALT_NODE, "systemctl restart salt-master", check=True, timeout=180)
    back_s, _ = wait_for(lambda: all(salt_json(lab, n, "test.ping").get(n) is True for n in nodes),
                         240, 2, "every minion answering the restarted salt-master")
    rec["minions_back_s"] = round(back_s, 1)
    wait_for(lambda: not [n for n in nodes if not _has_job(lab, n)], 60, 3,
             "the job on every node after the restart")
    node = "worker2"
    refused = salt_json(lab, node, "schedule.delete", JOB).get(node) or {}
    rec["hand_delete"] = refused.get("comment")
    assert refused.get("result") is False and _has_job(lab, node), refused
    rec["total_s"] = round(time.monotonic() - t0, 1)
    results_file("drift", rec)


@pytest.mark.extended  # two enforcement intervals (grant, then revoke): make test-lab-extended
def test_a_granted_then_revoked_role_follows_the_schedule(lab, results_file):
    """`salt-run airflow.grant worker2 airflow-flower` is the only command: worker2's next
    scheduled run installs and starts Flower; `airflow.revoke` takes it away again on the run
    after (its clean state), with no highstate typed by anyone."""
    node, role, unit = "worker2", "airflow-flower", "airflow-flower"
    interval, splay = _enforce_settings(lab, node)
    roles = salt_json(lab, node, "grains.get", "roles").get(node) or []
    rec = {"test": "role_change_by_schedule", "interval_s": interval, "splay_s": splay}
    salt_run_json(lab, "airflow.enforcement", "resume")
    try:
        t0 = time.monotonic()
        salt_run_json(lab, "airflow.grant", node, ",".join(roles + [role]))
        dt, _ = wait_for(lambda: _unit(lab, node, unit) == ("active", "enabled"),
                         interval + splay + 240, 3, f"{unit} running on {node}")
        rec["granted_running_after_s"] = round(dt, 1)
        t1 = time.monotonic()
        salt_run_json(lab, "airflow.revoke", node, role)
        dt, _ = wait_for(lambda: _unit(lab, node, unit)[0] in ("inactive", "unknown")
                         and sh(lab, node, f"test -e /etc/systemd/system/{unit}.service").returncode != 0,
                         interval + splay + 240, 3, f"{unit} cleaned from {node}")
        rec["revoked_clean_after_s"] = round(dt, 1)
        rec["total_s"] = round(time.monotonic() - t0, 1)
        assert t1 > t0
    finally:
        salt_run_json(lab, "airflow.enforcement", "pause")
        have = salt_json(lab, node, "grains.get", "roles").get(node) or []
        if role in have:
            salt_run_json(lab, "airflow.revoke", node, role)
        results_file("drift", rec)
