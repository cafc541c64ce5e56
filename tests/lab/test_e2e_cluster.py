"""End to end on the deployed cluster: haproxy -> 2 api-servers, a DAG on both workers,
idempotent highstate, and a worker that comes back by itself after a pulled plug."""
import csv
import io
import json
import time

import pytest
import requests

from tests.lab.helpers import LB, LB_HTTP, STATS, WORKER, argv_samples, lab_ca

STATS_CSV = STATS + "/;csv"
MASTERS = {"master1": "10.77.0.11", "master2": "10.77.0.12"}
WORKERS = ("worker1", "worker2")

pytestmark = pytest.mark.timeout(900)


def _wait(fn, timeout, every=3, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(every)
    raise AssertionError(f"timeout after {timeout}s waiting for {what}; last: {last!r}")


def test_health_through_haproxy_and_both_api_servers(lab):
    def healthy(base):
        r = requests.get(base + "/api/v2/monitor/health", timeout=10, verify=lab_ca())
        return r.status_code == 200 and r.json()["metadatabase"]["status"] == "healthy" and r.json()
    body = _wait(lambda: healthy(LB), 120, what="health via haproxy")
    print("health via haproxy:", json.dumps(body))
    for name, ip in MASTERS.items():
        _wait(lambda: healthy(f"http://{ip}:8080"), 120, what=f"health of {name}")


def test_https_with_the_lab_ca_http_redirects_and_workers_use_it(lab):
    """haproxy's certificate verifies against the lab CA for the lb's IP (what the nodes use),
    without that CA it does not; plain HTTP gets a redirect to the same URL over https; a
    worker's Task SDK client is pointed at https and at the CA file."""
    import configparser
    import socket
    import ssl
    host = LB.split("://", 1)[1]
    ctx = ssl.create_default_context(cafile=lab_ca())
    with socket.create_connection((host, 443), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3"), tls.version()
        assert ("IP Address", host) in tls.getpeercert()["subjectAltName"]
    r = requests.get(LB + "/api/v2/monitor/health", timeout=10, verify=lab_ca())
    assert r.status_code == 200, r.text
    with pytest.raises(requests.exceptions.SSLError):  # certifi alone does not know the lab CA
        requests.get(LB + "/api/v2/monitor/health", timeout=10)
    r = requests.get(LB_HTTP + "/api/v2/monitor/health?probe=1", timeout=10, allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == LB + "/api/v2/monitor/health?probe=1", \
        (r.status_code, r.headers)
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(lab.exec_on(WORKER, ["cat", "/opt/airflow/airflow.cfg"], timeout=30).stdout)
    assert cfg["core"]["execution_api_server_url"] == LB + "/execution/"
    assert cfg["api"]["ssl_ca_file"] == "/opt/airflow/ca.pem"
    on_node = lab.exec_on(WORKER, ["cat", "/opt/airflow/ca.pem"], timeout=30).stdout
    assert on_node.strip() == open(lab_ca()).read().strip()


def test_haproxy_stats_show_both_backends_up(lab):
    pw = lab.secrets()["lb_stats_password"]

    def both_up():
        r = requests.get(STATS_CSV, auth=("admin", pw), timeout=10)
        r.raise_for_status()
        rows = list(csv.DictReader(io.StringIO(r.text.lstrip("# "))))
        servers = {row["svname"]: row["status"] for row in rows if row["pxname"] == "airflow_api"}
        return all(servers.get(m, "").startswith("UP") for m in MASTERS) and servers
    print("haproxy airflow_api:", _wait(both_up, 120, what="both backends UP"))


@pytest.mark.timeout(600)
def test_dag_runs_on_both_workers(lab, airflow_api, results_file):
    dag = "cluster_smoke"
    _wait(lambda: airflow_api.get(f"/api/v2/dags/{dag}").status_code == 200, 180, what=f"DAG {dag} parsed")
    r = airflow_api.patch(f"/api/v2/dags/{dag}", json={"is_paused": False})
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    r = airflow_api.post(f"/api/v2/dags/{dag}/dagRuns", json={"logical_date": None})
    assert r.status_code in (200, 201), r.text
    run_id = r.json()["dag_run_id"]

    def finished():
        st = airflow_api.get(f"/api/v2/dags/{dag}/dagRuns/{run_id}").json()["state"]
        assert st != "failed", f"dag run {run_id} failed"
        return st == "success"
    _wait(finished, 240, every=3, what=f"dag run {run_id}")
    duration = time.monotonic() - t0
    tis = airflow_api.get(f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    ran = {}
    for ti in tis:  # fan_out is mapped: one task instance per map_index
        key = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
        ran[key] = (ti.get("hostname") or "").split(".")[0]
    print(f"dag run {run_id} took {duration:.1f}s; task -> host: {json.dumps(ran, sort_keys=True)}")
    results_file("e2e", {"what": "dag_run", "seconds": round(duration, 1), "tasks": ran})
    hosts = set(h for t, h in ran.items() if t.startswith("fan_out"))
    assert set(WORKERS) <= hosts, f"tasks did not run on both workers: {ran}"


@pytest.mark.timeout(1500)
def test_second_highstate_has_no_changes(lab, results_file):
    t0 = time.monotonic()
    expected = {"master1", "master2", "worker1", "worker2", "infra"}
    # every node's command lines are sampled meanwhile: this highstate checks every password
    # (the RabbitMQ user, the PostgreSQL roles), none may show up in argv (issue 9)
    with argv_samples(lab) as argv:
        for attempt in range(2):  # an empty reply (master busy, job not published) is retried once
            # queue=True: the healing layer may be applying airflow.lb on the lb node right now
            # (reconcile_lb after the deploy's events); wait for it instead of failing on it
            p = lab.salt("salt", "--out=json", "--static", "--timeout=300", "*", "state.apply",
                         "queue=True", check=False, timeout=1400)
            res = json.loads(p.stdout or "{}")
            if set(res) >= expected:
                break
            print(f"state.apply attempt {attempt}: rc={p.returncode} minions={sorted(res)} stderr={p.stderr[-500:]}")
    dt = time.monotonic() - t0
    results_file("secret-exposure", {"what": "argv_during_highstate", "highstate_seconds": round(dt, 1),
                                     **argv})
    assert all(n >= 5 for n in argv["samples"].values()), f"too few ps samples: {argv['samples']}"
    assert not argv["leaks"], f"secret values on command lines: {json.dumps(argv['leaks'], indent=1)}"
    changed = {}
    for minion, states in res.items():
        assert isinstance(states, dict), f"{minion}: {states}"
        for sid, st in states.items():
            assert st.get("result") is not False, f"{minion}: {sid}: {st.get('comment')}"
            if st.get("changes"):
                changed.setdefault(minion, []).append(sid)
    results_file("e2e", {"what": "highstate_idempotent", "seconds": round(dt, 1), "changed": changed})
    print(f"second highstate: {dt:.1f}s, changes: {changed}")
    assert set(res) >= expected, f"minions missing from state.apply: {sorted(expected - set(res))}"
    assert not changed, f"highstate not idempotent: {json.dumps(changed, indent=1)}"


@pytest.mark.timeout(600)
def test_worker_comes_back_after_pulled_plug(lab, results_file):
    node = "worker2"
    lab.stop_node(node, hard=True)
    assert not lab.is_running(node)
    t0 = time.monotonic()
    lab.start_node(node)

    def worker_ok():
        if lab.exec_on(node, ["systemctl", "is-active", "airflow-worker"], check=False).stdout.strip() != "active":
            return False
        # celery ping of celery@worker2 through the broker (the self-healing module's probe)
        p = lab.salt("salt", "--out=json", "--static", "--timeout=30", node, "airflow_health.worker_ping",
                     "timeout=5", check=False, timeout=90)
        res = json.loads(p.stdout or "{}").get(node)
        return isinstance(res, dict) and res.get("status") == "ok" and res
    _wait(worker_ok, 300, every=5, what=f"{node} airflow-worker back")
    dt = time.monotonic() - t0
    results_file("e2e", {"what": "worker_recovery_after_hard_stop", "node": node, "seconds": round(dt, 1)})
    print(f"{node} back in role {dt:.1f}s after boot started")
