"""Incidents on the deployed lab (issue 8, item 7): each test injects one fault, asserts the
outcome by polling with a deadline, and appends its timings to results/incidents.jsonl (also
when it fails: the record says `"ok": false` and holds what was measured up to then).

An outage's duration is a sleep by design (it is the fault); every other wait is a poll. Each
test undoes its fault in `finally` and leaves the cluster green (`helpers.cluster_problems`:
every daemon active where it belongs, PostgreSQL answering, one scheduler heartbeating, every
api-server UP in haproxy); a test that failed also runs `helpers.restore_cluster`, and every
test starts by waiting for green, so a broken cluster fails the next test with the reason
instead of a confusing symptom.

Expected run time on the lab (2 cores, idle host): a ~1.5 min, b ~4.5, c ~3.5, d ~3.5, e ~2,
f ~1.5, g ~3; about 20 min with the module setup. 390 s of it are the outages themselves.
"""
import json
import threading
import time

import pytest

from tests.lab.helpers import (DB_NODE, SALT_NODE, SALT_PYTHON, WORKER, _json, api_server_healthy,
                               audit_since, backend_up, broker_unit, dag_run_state, db_unit, db_up,
                               disable_watchdog, enable_healing, hang_worker, haproxy_info,
                               haproxy_reloads, restore_watchdog,
                               heartbeating, hold, main_pid, masters, restore_cluster,
                               runner_setting, salt_json, scheduler_placement, sh, trigger_dag_run,
                               unhang_worker, unit_of, unit_problems, wait_for, wait_green,
                               wait_worker_judgeable, worker_ping_ok)

DAG = "cluster_smoke"
GREEN_BEFORE = 240        # s: the previous test may just have restarted something
GREEN_AFTER = 300         # s: what a test waits at most for green after its fault
RECOVERY_TARGET = 60      # s: daemons active + a cluster_smoke run green after the db/broker returns
STEADY = 10               # s: "active" counts from when all daemons stay active at least this long
DB_OUTAGE = 180           # s (issue 8)
BROKER_OUTAGE = 120
PARTITION = 90
SPLIT_BRAIN_FROM = 20     # s after the heal: from then on at most one scheduler heartbeats ...
SPLIT_BRAIN_WINDOW = 60   # ... sampled every second for this long
HEARTBEATING = 10.0       # s: a scheduler whose heartbeat is younger than this heartbeats
STORM_EVENTS = 500
STORM_SECONDS = 10        # the 500 events must leave within this (else it is no storm)
STORM_TAG = "airflow/health/api-server"
STORM_WORKER = "worker2"
AFTER_REMEDIATION = 15    # s of watching that no second remediation follows (f)
RECONCILE_SLACK = 10      # s on top of reconcile_interval: the reconcile's own run + haproxy's check


@pytest.fixture(scope="module")
def incident_lab(lab):
    """The deployed lab with healing on, damping reset (helpers.enable_healing)."""
    return enable_healing(lab)


def _record(results_file, rec, t0, ok):
    rec.update(ok=ok, test_s=round(time.monotonic() - t0, 1))
    results_file("incidents", rec)
    print("incident:", json.dumps(rec, sort_keys=True))


def _r(seconds):
    return None if seconds is None else round(seconds, 1)


# ====================================================================== a. postmaster kill -9
@pytest.mark.timeout(900)
def test_incident_a_postmaster_kill9(incident_lab, results_file):
    """kill -9 of PostgreSQL's postmaster (the main pid of postgresql@15-main on the db node).

    Proves: without a person, PostgreSQL comes back (a query answers) and the whole cluster
    turns green again (every Airflow daemon active, one fresh scheduler heartbeat, both
    api-servers UP in haproxy). Records the seconds from the kill to the db answering and to
    green. (Debian's postgresql@.service has Restart=no and postgresql.service is a wrapper
    that stays "active (exited)": nothing in a stock install brings the server back.)"""
    lab = incident_lab
    wait_green(lab, GREEN_BEFORE, what="cluster green before the incident")
    unit = db_unit()
    pid = main_pid(lab, DB_NODE, unit)
    assert pid > 0, f"{unit} on {DB_NODE} has no main pid"
    rec = {"test": "a_postmaster_kill9", "unit": unit}
    t0 = time.monotonic()
    ok = False
    try:
        sh(lab, DB_NODE, f"kill -9 {pid}", check=True)
        db_s, _ = wait_for(lambda: db_up(lab), 120, 0.5, "PostgreSQL answering a query again")
        rec["db_back_s"] = _r(db_s)
        wait_green(lab, GREEN_AFTER, what="cluster green after the postmaster came back")
        rec["green_s"] = _r(time.monotonic() - t0)
        ok = True
    finally:
        _record(results_file, rec, t0, ok)
        if not ok:
            restore_cluster(lab)


# ====================================================================== b, c. db / broker outage
def _outage_then_smoke(lab, api, results_file, name, unit, outage, back):
    """Stop `unit` on the db/broker node for `outage` s, start it again; then poll every second
    until every Airflow daemon is active (and stays so for STEADY s: a crash-looping unit passes
    through "active") and a cluster_smoke run triggered as soon as the API takes one has
    succeeded. Both must happen within RECOVERY_TARGET s of the return (measured further, up to
    300 s, so a miss records its real value).

    The unit is masked (--runtime) for the outage: it stays down for all of it whatever the
    healing layer tries (a db host that is really gone cannot be restarted either); otherwise a
    remediation of a stopped unit would end the outage after seconds and the test would not
    see what a long outage does to the Airflow daemons (crash loops past StartLimitBurst)."""
    wait_green(lab, GREEN_BEFORE, what="cluster green before the incident")
    mode, _ = scheduler_placement(lab)
    r = api.patch(f"/api/v2/dags/{DAG}", json={"is_paused": False})
    assert r.status_code == 200, r.text
    rec = {"test": name, "unit": unit, "outage_s": outage}
    t0 = time.monotonic()
    ok = down = False
    try:
        sh(lab, DB_NODE, f"systemctl stop {unit}", check=True, timeout=180)
        down = True
        t_stop = time.monotonic()
        sh(lab, DB_NODE, f"systemctl mask --runtime {unit}")
        rec["masked"] = sh(lab, DB_NODE, f"systemctl is-enabled {unit}").stdout.strip() == "masked-runtime"
        time.sleep(max(0.0, outage - 10))   # the outage itself
        rec["not_active_at_outage_end"] = unit_problems(lab, mode)
        time.sleep(max(0.0, t_stop + outage - time.monotonic()))
        sh(lab, DB_NODE, f"systemctl unmask --runtime {unit} && systemctl start {unit}", check=True, timeout=300)
        down = False
        back()
        t_back = time.monotonic()
        rec["down_s"] = _r(t_back - t_stop)
        units_s = smoke_s = run_id = None   # units_s: since when all daemons are active, without a relapse
        state = None
        deadline = t_back + 300
        while time.monotonic() < deadline:
            now = time.monotonic() - t_back
            if unit_problems(lab, mode):
                units_s = None           # a crash loop passes through "active": only a steady state counts
            elif units_s is None:
                units_s = now
            if smoke_s is not None and units_s is not None and now - units_s >= STEADY:
                break
            if run_id is None:
                run_id = trigger_dag_run(api, DAG)
                if run_id:
                    rec["run_accepted_s"] = _r(time.monotonic() - t_back)
            elif smoke_s is None:
                state = dag_run_state(api, DAG, run_id)
                if state == "success":
                    smoke_s = time.monotonic() - t_back
                elif state == "failed":
                    break
            time.sleep(1)
        rec.update(daemons_active_s=_r(units_s), smoke_green_s=_r(smoke_s), run_id=run_id, run_state=state,
                   target_s=RECOVERY_TARGET)
        assert units_s is not None, f"Airflow daemons not all active 300 s after {unit} returned: " \
                                    f"{unit_problems(lab, mode)}"
        assert smoke_s is not None, f"{DAG} run {run_id} not green 300 s after {unit} returned (state {state})"
        assert units_s <= RECOVERY_TARGET, f"daemons active {units_s:.0f} s after {unit} returned"
        assert smoke_s <= RECOVERY_TARGET, f"{DAG} green {smoke_s:.0f} s after {unit} returned"
        wait_green(lab, GREEN_AFTER, what=f"cluster green after the {unit} outage")
        rec["green_s"] = _r(time.monotonic() - t_back)
        ok = True
    finally:
        if down:
            sh(lab, DB_NODE, f"systemctl unmask --runtime {unit}; systemctl start {unit}", timeout=300)
        _record(results_file, rec, t0, ok)
        if not ok:
            restore_cluster(lab)


@pytest.mark.timeout(1200)
def test_incident_b_postgresql_outage(incident_lab, airflow_api, results_file):
    """PostgreSQL stopped for 180 s, then started.

    Proves: within 60 s of the database's return every Airflow daemon is active again and a
    cluster_smoke run (triggered as soon as the API takes it) is green, without a person: the
    daemons that crash-looped during the outage (past their StartLimitBurst) are brought back.
    Records the seconds to daemons active, to the run accepted, to the run green, to green."""
    def back():
        wait_for(lambda: db_up(incident_lab), 60, 0.5, "PostgreSQL answering after its start")
    _outage_then_smoke(incident_lab, airflow_api, results_file, "b_postgresql_outage", db_unit(), DB_OUTAGE, back)


@pytest.mark.timeout(1200)
def test_incident_c_rabbitmq_outage(incident_lab, airflow_api, results_file):
    """RabbitMQ stopped for 120 s, then started.

    Proves: within 60 s of the broker's return every Airflow daemon is active and a
    cluster_smoke run is green: the Celery workers consume again after the broker restart
    (apache/airflow#26542: alive but not consuming) and the tasks run on them. Records as b."""
    def back():  # rabbitmq-server is Type=notify: `systemctl start` returned when it was ready
        pass
    _outage_then_smoke(incident_lab, airflow_api, results_file, "c_rabbitmq_outage", broker_unit(), BROKER_OUTAGE,
                       back)


# ====================================================================== d. partitioned master
@pytest.mark.timeout(1200)
def test_incident_d_partitioned_active_master(incident_lab, results_file):
    """The master running the scheduler (master1 after a deploy; whichever
    airflow.active_scheduler names) fully partitioned for 90 s (its link down: it keeps running
    but reaches nothing and nothing reaches it), then healed.

    Proves no split brain after the heal: from 20 s after it on, at most one scheduler
    heartbeats (a running SchedulerJob whose heartbeat in the metastore is younger than 10 s),
    sampled every second for 60 s; and at the end the partitioned master's airflow-scheduler
    unit is not active if it is no longer the active scheduler. Records when the other master's
    scheduler took over during the partition, the samples, and when the old one stopped."""
    lab = incident_lab
    wait_green(lab, GREEN_BEFORE, what="cluster green before the incident")
    mode, victim = scheduler_placement(lab)
    if mode != "active-standby":
        pytest.skip(f"split brain is a question of active-standby mode (mode {mode})")
    assert victim in masters(lab), victim
    other = [m for m in masters(lab) if m != victim][0]
    sched = unit_of("scheduler")
    rec = {"test": "d_partitioned_active_master", "node": victim, "partition_s": PARTITION,
           "heartbeating_below_s": HEARTBEATING}
    t0 = time.monotonic()
    ok = False
    partitioned = False
    try:
        lab.link_down(victim)
        partitioned = True
        # the partition itself; polled only to note when the other master's scheduler took over
        takeover = None
        while time.monotonic() - t0 < PARTITION:
            if takeover is None and other in (heartbeating(lab, HEARTBEATING) or []):
                takeover = time.monotonic() - t0
            time.sleep(max(0.0, min(2.0, PARTITION - (time.monotonic() - t0))))
        lab.link_up(victim)
        partitioned = False
        t_heal = time.monotonic()
        rec["takeover_during_partition_s"] = _r(takeover)

        samples, victim_stopped = [], None
        for i in range(SPLIT_BRAIN_WINDOW):
            time.sleep(max(0.0, t_heal + SPLIT_BRAIN_FROM + i - time.monotonic()))
            samples.append(heartbeating(lab, HEARTBEATING))
            # first seen inactive (checked from SPLIT_BRAIN_FROM on: 20 means "by then")
            if victim_stopped is None and sh(lab, victim, f"systemctl is-active {sched}").stdout.strip() != "active":
                victim_stopped = time.monotonic() - t_heal
        two = [(SPLIT_BRAIN_FROM + i, s) for i, s in enumerate(samples) if s and len(s) > 1]
        unread = sum(s is None for s in samples)
        _, active = scheduler_placement(lab)
        unit_state = sh(lab, victim, f"systemctl is-active {sched}").stdout.strip()
        rec.update(samples=len(samples), samples_unread=unread, samples_two_or_more=two[:20],
                   max_heartbeating=max((len(s) for s in samples if s), default=0),
                   victim_scheduler_inactive_by_s=_r(victim_stopped), active_after=active,
                   victim_scheduler_unit=unit_state)
        assert not two, f"two schedulers heartbeating after the heal (s after heal, hosts): {two[:10]}"
        assert unread <= SPLIT_BRAIN_WINDOW // 10, f"metastore unreadable in {unread} of {len(samples)} samples"
        if active != victim:
            assert unit_state != "active", f"{victim} is not the active scheduler ({active}) but its {sched} runs"
        wait_green(lab, GREEN_AFTER, what="cluster green after the partition")
        rec["green_s"] = _r(time.monotonic() - t_heal)
        ok = True
    finally:
        if partitioned:
            lab.link_up(victim)
        _record(results_file, rec, t0, ok)
        if not ok:
            restore_cluster(lab)


# ====================================================================== e. event storm
# One python process on the master sends the events through its running minion, exactly what
# `salt-call event.send TAG daemon=... status=...` does (event.fire_master -> MinionEvent
# "fire_master"; the minion forwards them to the master, which sets the authenticated id),
# without 500 process starts or a loader per call: 500 events leave in well under 10 s.
STORM_SCRIPT = r"""
import json, sys, time
import salt.config, salt.utils.event
n, tag = int(sys.argv[1]), sys.argv[2]
opts = salt.config.minion_config("/etc/salt/minion")
evt = salt.utils.event.MinionEvent(opts, listen=False)
sent = 0
t0 = time.monotonic()
try:
    for i in range(n):
        sent += bool(evt.fire_event({"data": {"daemon": "api-server", "status": "dead", "storm": i},
                                     "tag": tag, "events": None, "pretag": None}, "fire_master"))
finally:
    evt.destroy()
print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - t0, 2)}))
"""


@pytest.mark.timeout(1200)
def test_incident_e_event_storm_with_hung_worker(incident_lab, results_file):
    """500 health events from one master within 10 s (api-server "dead", a storm of spoofed or
    flapping reports) while worker2 hangs (SIGSTOP of every process of its airflow-worker).

    Proves: the storm neither starves nor multiplies remediation: worker2 answers a Celery ping
    again within twice its quiet recovery time (the same hang without a storm, measured first in
    this test), and haproxy is reloaded at most once for the whole storm.

    Reload signal: systemd's job messages for haproxy.service in the lb node's journal (PID 1
    logs one "Reloaded"/"Started" per reload/start job, whoever asked: salt's service.running
    reload runs `systemctl reload`), counted from the storm's start to lb_max_wait + 10 s after
    its last event (or to the worker's recovery if later). Cross-checked by sampling the pid in
    haproxy's `show info` every 0.5 s (in master-worker mode, Debian's `-Ws`, each reload forks
    a new worker, which answers the socket): sampling alone could miss two reloads within one
    interval, the journal cannot; the larger count is asserted.

    The worker's systemd watchdog is off for this test (a runtime drop-in): it would restart
    the SIGSTOPped worker by itself within seconds, and this incident is about the runner path
    under a storm, the second line for hangs the keep-alive cannot see (a deadlock)."""
    lab = incident_lab
    node = STORM_WORKER
    wait_green(lab, GREEN_BEFORE, what="cluster green before the incident")
    mode, active = scheduler_placement(lab)
    sender = next((m for m in masters(lab) if m != active), masters(lab)[0])  # spare the scheduler's host
    max_wait = runner_setting(lab, "lb_max_wait", 10.0)
    rec = {"test": "e_event_storm_with_hung_worker", "worker": node, "sender": sender, "events": STORM_EVENTS}
    t0 = time.monotonic()
    ok = False
    storm = {}
    sampler_stop = threading.Event()
    threads = []
    try:
        disable_watchdog(lab, node, "worker")
        # 1. the quiet reference: the same hang, no storm
        wait_worker_judgeable(lab, node)
        hang_worker(lab, node)
        try:
            quiet_s, _ = wait_for(lambda: worker_ping_ok(lab, node), 180, 0.5, f"{node} answering (quiet)")
        finally:
            unhang_worker(lab, node)
        rec["quiet_recovery_s"] = _r(quiet_s)

        # 2. the same hang during the storm
        wait_worker_judgeable(lab, node)
        pids = []

        def sample_pids():
            while not sampler_stop.is_set():
                pid = haproxy_info(lab).get("Pid")
                if pid and (not pids or pids[-1] != pid):
                    pids.append(pid)
                sampler_stop.wait(0.5)

        def fire():
            p = lab.exec_on(sender, [SALT_PYTHON, "-c", STORM_SCRIPT, str(STORM_EVENTS), STORM_TAG],
                            check=False, timeout=120)
            storm.update(rc=p.returncode, out=p.stdout[-500:], err=p.stderr[-1000:], done=time.monotonic())

        threads = [threading.Thread(target=sample_pids, daemon=True), threading.Thread(target=fire, daemon=True)]
        t_wall = time.time()
        t_storm = time.monotonic()
        for t in threads:
            t.start()
        hang_worker(lab, node)
        storm_s, _ = wait_for(lambda: worker_ping_ok(lab, node), max(240.0, 4 * quiet_s), 0.5,
                              f"{node} answering (storm)")
        rec["storm_recovery_s"] = _r(storm_s)
        threads[1].join(150)
        sent = json.loads(storm.get("out") or "{}") if storm.get("rc") == 0 else {}
        rec["storm_sent"], rec["storm_send_s"] = sent.get("sent"), sent.get("seconds")
        assert sent.get("sent") == STORM_EVENTS and sent.get("seconds", 1e9) <= STORM_SECONDS, \
            f"no storm: {storm}"
        # the storm's reloads: until lb_max_wait + 10 s after its last event (or recovery, if later)
        time.sleep(max(0.0, storm["done"] + max_wait + 10 - time.monotonic()))
        sampler_stop.set()
        threads[0].join(30)
        journal = haproxy_reloads(lab, t_wall)
        reloads = max(journal or 0, len(pids) - 1)
        rec.update(reloads_journal=journal, haproxy_pids=pids, reloads=reloads,
                   window_s=_r(time.monotonic() - t_storm),
                   remediations=len(audit_since(lab, t_wall, limit=2000, minion=node, attempt=True)))
        assert storm_s <= 2 * quiet_s, f"{node} back after {storm_s:.0f} s in the storm, {quiet_s:.0f} s quiet"
        assert reloads <= 1, f"haproxy reloaded {reloads} times during the storm (pids {pids}, journal {journal})"
        wait_green(lab, GREEN_AFTER, what="cluster green after the storm")
        ok = True
    finally:
        sampler_stop.set()
        unhang_worker(lab, node)
        restore_watchdog(lab, node, "worker")
        for t in threads:
            t.join(150)
        _record(results_file, rec, t0, ok)
        if not ok:
            restore_cluster(lab)


# ====================================================================== f. salt-master restart
@pytest.mark.timeout(900)
def test_incident_f_salt_master_restart_during_hang(incident_lab, results_file):
    """worker1 hangs (SIGSTOP) and the salt-master is restarted right after.

    Proves: once the master is back, the hang is remediated exactly once (one audit record
    with attempt true for worker1's worker, action kill-restart; none more within 15 s after
    it: no event replayed or doubled by the restart) and worker1 answers a Celery ping.
    Records the seconds to the master answering, to worker1 answering, to the audit record.

    The worker's systemd watchdog is off for this test (a runtime drop-in): with it systemd
    restarts the hung worker by itself, master or not (test_self_healing.py
    test_hung_worker_restarted_by_its_watchdog); this incident is about the runner path."""
    lab = incident_lab
    node = WORKER
    wait_green(lab, GREEN_BEFORE, what="cluster green before the incident")
    disable_watchdog(lab, node, "worker")
    wait_worker_judgeable(lab, node)
    rec = {"test": "f_salt_master_restart_during_hang", "worker": node}
    t_wall = time.time()
    t0 = time.monotonic()
    ok = False
    try:
        hang_worker(lab, node)
        sh(lab, SALT_NODE, "systemctl restart salt-master", check=True, timeout=180)
        back_s, _ = wait_for(lambda: salt_json(lab, node, "test.ping").get(node) is True, 180, 1,
                             f"salt-master back and {node}'s minion answering")
        rec["master_back_s"] = _r(back_s)
        rec_s, _ = wait_for(lambda: worker_ping_ok(lab, node), 240, 0.5, f"{node} answering again")
        rec["worker_back_s"] = _r(rec_s)

        def remediations():
            return audit_since(lab, t_wall, limit=2000, minion=node, daemon="worker", attempt=True)
        wait_for(remediations, 90, 1, f"the remediation of {node} in the audit log")
        rec["audit_s"] = _r(time.monotonic() - t0)
        hold(lambda: len(remediations()) == 1, AFTER_REMEDIATION, 3, f"exactly one remediation of {node}")
        recs = remediations()
        rec.update(remediations=len(recs), action=recs[0].get("action"), outcome=recs[0].get("outcome"))
        assert len(recs) == 1, recs
        assert recs[0]["action"] == "kill-restart", recs
        assert worker_ping_ok(lab, node)
        wait_green(lab, GREEN_AFTER, what="cluster green after the salt-master restart")
        ok = True
    finally:
        unhang_worker(lab, node)
        restore_watchdog(lab, node, "worker")
        _record(results_file, rec, t0, ok)
        if not ok:
            restore_cluster(lab)


# ====================================================================== g. master restart + highstate
@pytest.mark.extended  # CI budget: `make test-lab-extended`
@pytest.mark.timeout(1200)
def test_incident_g_master_restart_with_highstate(incident_lab, results_file):
    """A master's node restarted (graceful poweroff, boot) and a highstate run on it while its
    api-server is starting.

    Proves: the master is UP in haproxy again within one reconcile period (the runner's
    schedule `airflow-reconcile`, 30 s, + 10 s for the reconcile's own run and haproxy's
    check) after its api-server answers its health endpoint, although the minion start, the
    api-server's health change and the highstate's own lb work race each other. The standby
    master is restarted: the api-server / haproxy path is the same on both, and restarting the
    active one would add a scheduler failover (test_self_healing's subject) and its time.
    Records the seconds to booted, minion back, api-server healthy, UP, and the highstate."""
    lab = incident_lab
    wait_green(lab, GREEN_BEFORE, what="cluster green before the incident")
    mode, active = scheduler_placement(lab)
    node = next((m for m in masters(lab) if m != active), masters(lab)[0])
    # the master's schedule runs airflow.reconcile (conf/master.d/airflow-reactor.conf)
    interval = runner_setting(lab, "schedule:airflow-reconcile:seconds", 60.0)
    limit = interval + RECONCILE_SLACK
    rec = {"test": "g_master_restart_with_highstate", "node": node, "reconcile_interval_s": interval,
           "limit_s": limit}
    t0 = time.monotonic()
    ok = False
    hs = {}
    th = None
    try:
        lab.stop_node(node, hard=False)
        lab.start_node(node)
        rec["booted_s"] = _r(time.monotonic() - t0)
        wait_for(lambda: salt_json(lab, node, "test.ping").get(node) is True, 180, 1, f"{node}'s minion back")
        rec["minion_back_s"] = _r(time.monotonic() - t0)
        rec["api_healthy_at_highstate"] = api_server_healthy(lab, node)

        def highstate():
            t = time.monotonic()
            p = lab.salt("salt", "--out=json", "--static", "--timeout=600", node, "state.apply",
                         check=False, timeout=900)
            out = _json(p.stdout, {})
            res = out.get(node) if isinstance(out, dict) else None
            if isinstance(res, dict):
                failed = [sid for sid, st in res.items() if isinstance(st, dict) and st.get("result") is False]
            else:  # no answer, or render errors (a list of strings)
                failed = [str(x)[:200] for x in (res if isinstance(res, list) else [f"no result: {res!r}"])]
            hs.update(seconds=round(time.monotonic() - t, 1), failed=failed[:10])
        th = threading.Thread(target=highstate, daemon=True)
        th.start()
        wait_for(lambda: api_server_healthy(lab, node), 300, 0.5, f"{node}'s api-server healthy")
        t_api = time.monotonic()
        rec["api_healthy_s"] = _r(t_api - t0)
        # polled past the limit so that a miss records its real value
        wait_for(lambda: backend_up(lab, node), limit + 180, 0.5, f"{node} UP in haproxy")
        up_after = time.monotonic() - t_api
        rec["up_after_api_healthy_s"] = _r(up_after)
        th.join(900)
        rec["highstate"] = dict(hs)
        assert up_after <= limit, f"{node} UP in haproxy {up_after:.0f} s after its api-server was healthy"
        wait_green(lab, GREEN_AFTER, what="cluster green after the master restart")
        ok = True
    finally:
        if th is not None:
            th.join(900)
            rec.setdefault("highstate", dict(hs))
        _record(results_file, rec, t0, ok)
        if not ok:
            restore_cluster(lab)
