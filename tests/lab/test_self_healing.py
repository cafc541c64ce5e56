"""Self-healing on the deployed lab (systemd layer + beacon/reactor/runner layer).

Every test records detection/recovery times into results/self-healing.jsonl.
Order matters only for speed; every test leaves the cluster healthy (a scheduler running on
some master, all workers answering) and none depends on master1 being the active scheduler.
"""
import pathlib
import re
import threading
import time

import pytest
import requests

from tests.lab.helpers import LB, lab_ca  # noqa: E402  https, verified against the lab CA

MASTERS = ("master1", "master2")
# how long haproxy waits for a backend's answer (its `timeout server`), read from the template
HAPROXY_SERVER_TIMEOUT_S = int(re.search(
    r"timeout server (\d+)s",
    (pathlib.Path(__file__).parents[2] / "salt/airflow/files/haproxy.cfg.jinja").read_text())[1])


# ------------------------------------------------------------------ helpers (tests/lab/helpers.py)
from tests.lab.helpers import (  # noqa: E402
    WORKER, active_for, active_scheduler, audit_since, enable_healing, formula_defaults,
    hang_worker, haproxy_servers, heartbeat, hold, main_pid, salt_json, salt_run_json, sh,
    start_grace, unhang_worker, unit_of, wait_for, wait_worker_judgeable, watchdog_sec,
    worker_ping_ok)


@pytest.fixture(scope="module")
def healing(lab):
    """Healing enabled: modules/beacons synced, deploy marked, maintenance off, damping reset."""
    return enable_healing(lab)


# ------------------------------------------------------------------ 1. crash -> systemd
@pytest.mark.timeout(240)
def test_worker_kill9_systemd_restarts(healing, results_file):
    lab = healing
    pid = main_pid(lab, WORKER, "airflow-worker")
    assert pid > 0
    t0 = time.monotonic()
    sh(lab, WORKER, f"kill -9 {pid}", check=True)
    detect, new = wait_for(lambda: (main_pid(lab, WORKER, "airflow-worker") not in (0, pid))
                           and main_pid(lab, WORKER, "airflow-worker"), 60, 0.2,
                           "systemd restarted airflow-worker")
    wait_for(lambda: worker_ping_ok(lab), 120, 1, "worker answers ping")
    recovery = time.monotonic() - t0
    results_file("self-healing", {"test": "worker_kill9", "layer": "systemd",
                                  "detection_s": round(detect, 1), "recovery_s": round(recovery, 1)})


# ------------------------------------------------------------------ 2. hang -> systemd watchdog
# A SIGSTOPped worker sends no WATCHDOG=1: systemd kills and restarts it by itself, with no
# event. The same hang through the second line (beacon -> reactor -> kill-restart, watchdog off
# by a runtime drop-in) is incident e's quiet phase and incident f (tests/lab/test_incidents.py).
@pytest.mark.timeout(300)
def test_hung_worker_restarted_by_its_watchdog(healing, results_file):
    """Proves: a SIGSTOP hang of every process of airflow-worker ends with systemd's watchdog
    (result 'watchdog' in the unit's journal), the worker answers a Celery ping again within
    WatchdogSec + RestartSec + a start, the runner takes no action of its own on it (no
    remediation with attempt), and the reconcile audits the restart (systemd-restart,
    watchdog true) within one reconcile period."""
    lab = healing
    unit = unit_of("worker")
    wdog = watchdog_sec(lab, WORKER, unit)
    assert wdog > 0, f"{unit} on {WORKER} has no WatchdogSec (airflow:worker:watchdog_sec)"
    wait_worker_judgeable(lab, WORKER)
    pid = main_pid(lab, WORKER, unit)
    t_wall = time.time()
    t0 = time.monotonic()
    try:
        hang_worker(lab, WORKER)
        killed, _ = wait_for(lambda: main_pid(lab, WORKER, unit) not in (0, pid), 60, 0.2,
                             "systemd replaced the hung worker")
        wait_for(lambda: worker_ping_ok(lab), 120, 0.5, "worker answers ping")
        recovery = time.monotonic() - t0
    finally:
        unhang_worker(lab, WORKER)  # a no-op for the new process; the old one if it was missed
    causes = salt_json(lab, WORKER, "airflow_health.restart_causes", "worker").get(WORKER) or {}
    assert any(f.get("result") == "watchdog" and f.get("at", 0) >= t_wall - 1
               for f in causes.get("failures", [])), causes
    restart_sec = float(formula_defaults()["systemd"]["restart_sec"])
    # WatchdogSec + RestartSec + a start (the bench measures it against the bare restart)
    assert recovery <= wdog + restart_sec + 30, f"back after {recovery:.1f} s"
    rec, audited = wait_for(lambda: audit_since(lab, t_wall, minion=WORKER, daemon="worker",
                                                action="systemd-restart"), 75, 2,
                            "the reconcile's systemd-restart record")
    assert audited[-1].get("watchdog") is True, audited
    assert not audit_since(lab, t_wall, limit=500, minion=WORKER, daemon="worker", attempt=True), \
        "the runner acted on a hang systemd's watchdog handled"
    results_file("self-healing", {"test": "worker_hang_watchdog", "layer": "systemd-watchdog",
                                  "watchdog_s": wdog, "detection_s": round(killed, 1),
                                  "recovery_s": round(recovery, 1), "audit_s": round(rec, 1)})


# ------------------------------------------------------------------ 3. no lost task
@pytest.mark.extended  # CI budget: `make test-lab-extended`
@pytest.mark.timeout(780)
def test_task_survives_killed_worker(healing, airflow_api, results_file):
    """Tasks sleep 40 s; worker1 is killed while one of them runs there. The scheduler fails the
    orphaned attempt after task_instance_heartbeat_timeout and retries it: the run succeeds."""
    lab = healing
    airflow_api.patch("/api/v2/dags/cluster_smoke", json={"is_paused": False})
    r = airflow_api.post("/api/v2/dags/cluster_smoke/dagRuns",
                         json={"logical_date": None, "conf": {"sleep_seconds": 40}})
    assert r.status_code in (200, 201), r.text
    run_id = r.json()["dag_run_id"]
    path = f"/api/v2/dags/cluster_smoke/dagRuns/{run_id}"

    def running_on_worker():
        tis = airflow_api.get(path + "/taskInstances").json().get("task_instances", [])
        return [t for t in tis if t.get("state") == "running"
                and (t.get("hostname") or "").split(".")[0] == WORKER]

    _, victims = wait_for(running_on_worker, 180, 0.5, f"a cluster_smoke task running on {WORKER}")
    victim = {(t["task_id"], t.get("map_index", -1)) for t in victims}
    sh(lab, WORKER, "pkill -KILL -u airflow -f celery", check=True)

    def run_finished():
        state = airflow_api.get(path).json().get("state")
        return state if state in ("success", "failed") else None

    dt, state = wait_for(run_finished, 480, 3, "cluster_smoke run finished")
    tis = airflow_api.get(path + "/taskInstances").json().get("task_instances", [])
    killed = [t for t in tis if (t["task_id"], t.get("map_index", -1)) in victim]
    results_file("self-healing", {"test": "task_survives_killed_worker", "run_state": state,
                                  "finish_after_kill_s": round(dt, 1),
                                  "killed_tasks": [[t["task_id"], t.get("map_index"), t.get("try_number"),
                                                    t.get("hostname"), t.get("state")] for t in killed]})
    assert state == "success"
    # the attempts killed with the worker were run again, and succeeded
    assert killed and all(t["state"] == "success" and (t.get("try_number") or 1) > 1 for t in killed), killed
    wait_for(lambda: worker_ping_ok(lab), 120, 2, f"{WORKER} back")


# ------------------------------------------------------------------ 4. scheduler failover
def _one_scheduler(lab, via):
    hb = heartbeat(lab, via)
    return hb.get("status") == "ok" and len(hb.get("fresh") or []) == 1 and hb


def _heartbeat_runs(airflow_api):
    r = airflow_api.get("/api/v2/dags/heartbeat/dagRuns",
                        params={"order_by": "-run_after", "limit": 1})
    runs = r.json().get("dag_runs", []) if r.status_code == 200 else []
    return runs[0]["dag_run_id"] if runs else None


@pytest.mark.timeout(600)
def test_scheduler_kill_then_node_loss_failover(healing, airflow_api, results_file):
    lab = healing
    active = active_scheduler(lab)
    assert active in MASTERS, active
    standby = [m for m in MASTERS if m != active][0]
    airflow_api.patch("/api/v2/dags/heartbeat", json={"is_paused": False})
    wait_for(lambda: _one_scheduler(lab, standby), 90, 2, "one fresh scheduler")

    # (a) kill -9 the scheduler: systemd restarts it on the same node, still one scheduler
    pid = main_pid(lab, active, "airflow-scheduler")
    t0 = time.monotonic()
    sh(lab, active, f"kill -9 {pid}", check=True)
    dt, _ = wait_for(lambda: main_pid(lab, active, "airflow-scheduler") not in (0, pid), 60, 0.5,
                     "scheduler restarted by systemd")
    rec, hb = wait_for(lambda: _one_scheduler(lab, standby), 120, 1, "scheduler heartbeating")
    assert sh(lab, standby, "systemctl is-active airflow-scheduler").stdout.strip() != "active"
    results_file("self-healing", {"test": "scheduler_kill9", "layer": "systemd",
                                  "detection_s": round(dt, 1),
                                  "recovery_s": round(time.monotonic() - t0, 1)})

    # (b) pull the plug of the active master: the standby takes over
    before_run = _heartbeat_runs(airflow_api)
    t_wall = time.time()
    t0 = time.monotonic()
    lab.stop_node(active, hard=True)
    try:
        def standby_heartbeats():
            hb = heartbeat(lab, standby)
            fresh = hb.get("fresh") or []
            return any(h.split(".")[0] == standby for h in fresh) and hb
        failover_s, hb = wait_for(standby_heartbeats, 180, 1, f"scheduler heartbeat from {standby}")
        recs = audit_since(lab, t_wall, action="failover")
        results_file("self-healing", {"test": "scheduler_failover_node_loss", "from": active,
                                      "to": standby, "recovery_s": round(failover_s, 1),
                                      "target_s": 30, "audit": recs[-1:] if recs else None})
        assert active_scheduler(lab) == standby
        # the heartbeat DAG keeps getting runs
        wait_for(lambda: (_heartbeat_runs(airflow_api) or before_run) != before_run, 150, 5,
                 "a new heartbeat DAG run")
    finally:
        t_back = time.time()
        lab.start_node(active)

    # (c) the old master returns: the minion start event makes airflow.minion_started fence it
    # (audited after it came back), and it stays standby with exactly one scheduler
    wait_for(lambda: salt_json(lab, active, "test.ping").get(active) is True, 180, 3,
             f"{active} minion back")
    fence_s, recs = wait_for(lambda: audit_since(lab, t_back, action="fence", minion=active), 120, 1,
                             f"{active} fenced after its return (audit)")
    assert recs[0]["outcome"] == "fenced", recs

    def still_one():
        state = sh(lab, active, "systemctl is-active airflow-scheduler").stdout.strip()
        return state != "active" and _one_scheduler(lab, standby) and state
    polls = hold(still_one, 20, 2, f"{active} standby, one scheduler heartbeating")
    state = sh(lab, active, "systemctl is-active airflow-scheduler").stdout.strip()
    results_file("self-healing", {"test": "returning_master_stays_standby", "node": active,
                                  "fenced_after_s": round(recs[0]["ts"] - t_back, 1),
                                  "held_polls": polls, "scheduler_unit": state})


# ------------------------------------------------------------------ 5. haproxy follows
@pytest.mark.timeout(600)
def test_haproxy_follows_api_servers(healing, results_file):
    lab = healing
    # (a) stop master2's api-server: out of the backend; start it: back
    t0 = time.monotonic()
    sh(lab, "master2", "systemctl stop airflow-api-server", check=True)
    try:
        down_s, st = wait_for(lambda: not (haproxy_servers(lab).get("master2") or ["UP"])[0]
                              .startswith("UP") and haproxy_servers(lab)["master2"], 60, 0.25,
                              "master2 DOWN/MAINT")
    finally:
        sh(lab, "master2", "systemctl start airflow-api-server", check=True)
    up_s, _ = wait_for(lambda: (haproxy_servers(lab).get("master2") or [""])[0].startswith("UP"),
                       180, 0.5, "master2 UP again")
    results_file("self-healing", {"test": "api_server_down_up", "down_detect_s": round(down_s, 1),
                                  "target_s": 5, "down_state": st[0],
                                  "back_up_s": round(up_s, 1)})

    # (b) planned removal: drain with a request loop running -> zero failed requests
    stop = threading.Event()
    stats = {"ok": 0, "failed": 0, "errors": [], "slowest_s": 0.0}
    t_loop = time.monotonic()

    def loop():
        s = requests.Session()
        while not stop.is_set():
            t_req = time.monotonic()
            try:  # verify= per request: REQUESTS_CA_BUNDLE would win over Session.verify
                # the client waits as long as haproxy does (timeout server, HAPROXY_SERVER_TIMEOUT_S):
                # a slow answer on the loaded 2-core lab is not a dropped request, haproxy's 504 is
                r = s.get(LB + "/api/v2/monitor/health", timeout=HAPROXY_SERVER_TIMEOUT_S + 5,
                          verify=lab_ca())
                if r.status_code == 200:
                    stats["ok"] += 1
                else:
                    stats["failed"] += 1
                    stats["errors"].append((r.status_code, round(t_req - t_loop, 1)))
            except requests.RequestException as exc:
                stats["failed"] += 1
                stats["errors"].append((type(exc).__name__, round(t_req - t_loop, 1)))
            stats["slowest_s"] = max(stats["slowest_s"], time.monotonic() - t_req)
    workers = [threading.Thread(target=loop) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        # drain from a steady state: requests answered, master2 plainly UP (not "UP 1/2": a
        # failed check pending, as right after it came back)
        wait_for(lambda: stats["ok"] >= 10 and (haproxy_servers(lab).get("master2") or [""])[0] == "UP", 60, 0.5,
                 "answers through haproxy with master2 steadily UP")
        t0 = time.monotonic()
        stats["drain_at_s"] = round(t0 - t_loop, 1)  # errors carry their start offset: before/after?
        res = salt_run_json(lab, "airflow.drain_api_server", "master2")
        drain_s = time.monotonic() - t0
        state = (haproxy_servers(lab).get("master2") or [""])[0]
        ok_at_drain = stats["ok"]
        # keep requesting while master2 is drained: answers must go on coming, none failing
        wait_for(lambda: stats["ok"] >= ok_at_drain + 20 or stats["failed"], 30, 0.2,
                 "20 more answers with master2 drained")
    finally:
        stop.set()
        for w in workers:
            w.join()
        salt_run_json(lab, "airflow.undrain_api_server", "master2")
    results_file("self-healing", {"test": "planned_drain", "drain_s": round(drain_s, 1),
                                  "requests_ok": stats["ok"], "requests_failed": stats["failed"],
                                  "slowest_request_s": round(stats["slowest_s"], 1),
                                  "result": res})
    assert res and res.get("result") == "drained", res
    assert state.startswith("MAINT"), state
    assert stats["failed"] == 0, (stats["errors"][:10], "drain at", stats.get("drain_at_s"))
    assert stats["ok"] > 10
    wait_for(lambda: (haproxy_servers(lab).get("master2") or [""])[0].startswith("UP"), 60, 1,
             "master2 back after undrain")


@pytest.mark.extended  # CI budget (a full Airflow install on a new node): make test-lab-extended
@pytest.mark.timeout(1200)
def test_haproxy_follows_a_new_and_a_removed_master(healing, results_file):
    lab = healing
    from lab.common import topology

    # (a) a new master joins: highstate installs Airflow, haproxy gets a backend for it
    if "master3" not in topology():
        lab.add_node("master3", ["airflow-master"], "10.77.0.13")
    t0 = time.monotonic()
    lab.salt("salt", "--timeout=900", "master3", "state.apply", check=False, timeout=1200)
    # no manual step: the reactor (minion start / presence / health events) adds the backend
    t_installed = time.monotonic()
    dt, _ = wait_for(lambda: (haproxy_servers(lab).get("master3") or [""])[0].startswith("UP"),
                     180, 2, "master3 UP in haproxy")
    results_file("self-healing", {"test": "new_master_in_haproxy",
                                  "seconds_incl_install": round(time.monotonic() - t0, 1),
                                  "up_after_highstate_s": round(time.monotonic() - t_installed, 1)})

    # (b) decommission master3 (node gone, key deleted): its backend leaves haproxy without a
    # manual step (the salt/key delete event reconciles the lb), and the
    # lab is back to its seed topology for whatever runs next
    t0 = time.monotonic()
    lab.remove_node("master3")   # stops the node and deletes its key: reactor key_change.sls
    gone_s, servers = wait_for(lambda: (lambda h: "master2" in h and "master3" not in h and h)(
        haproxy_servers(lab)), 120, 1, "master3 out of haproxy")
    results_file("self-healing", {"test": "master_removed_from_haproxy",
                                  "seconds": round(time.monotonic() - t0, 1)})
