"""Trust boundary on the real lab (issue 9): a minion that edits its own grains or forges raw
beacon events gains no secret, no place in the cluster and no power over other nodes.

Both tests undo what they did in `finally`, and append to results/trust.jsonl."""
from __future__ import annotations

import json
import time

from tests.lab.helpers import (LB_NODE, SALT_NODE, active_scheduler, audit_since, haproxy_servers,
                     main_pid, salt_json, salt_run_json, sh, wait_for)

ROGUE = "worker1"


def _pillar_text(lab, node):
    """Everything the minion gets as its pillar, as it sees it (salt-call on the node)."""
    p = sh(lab, node, "salt-call --out=json pillar.items", timeout=120)
    assert p.returncode == 0, p.stderr[-500:]
    return p.stdout


def _master_only_secrets(lab):
    """Values of the secrets a worker must never hold (lab secrets file)."""
    sec = lab.secrets()
    keys = [k for k in ("admin_password", "fernet_key", "api_secret", "api_secret_key",
                        "jwt_secret", "db_password", "lb_stats_password", "lb_tls_key")
            if sec.get(k)]
    return {k: sec[k] for k in keys}


def _watch_alerts(lab, seconds):
    """Start a listener on the master's event bus for airflow/alert/roles/* (background)."""
    return lab.exec_on(SALT_NODE, ["/bin/sh", "-c",
                                   f"timeout {seconds} salt-run state.event "
                                   f"'tagmatch=airflow/alert/roles/*' count=1 --out=quiet "
                                   f"> /tmp/trust-alert.txt 2>&1 &"], check=False, timeout=30)


def test_grain_escalation_gains_no_secret_backend_or_power(lab, results_file):
    t0 = time.time()
    secrets = _master_only_secrets(lab)
    assert secrets, "lab secrets not found"
    sched_before = active_scheduler(lab)
    pid_before = main_pid(lab, sched_before, "airflow-scheduler")
    record = {"test": "grain-escalation", "ok": False}
    _watch_alerts(lab, 150)
    try:
        # root on worker1 claims the master role, as an attacker (or a typo) would
        for cmd in ("salt-call grains.append roles airflow-master",
                    "salt-call saltutil.refresh_pillar wait=True",
                    "salt-call mine.update"):
            assert sh(lab, ROGUE, cmd, timeout=120).returncode == 0, cmd
        # 1. no secret of the role in its pillar
        text = _pillar_text(lab, ROGUE)
        leaked = sorted(k for k, v in secrets.items() if v in text)
        assert leaked == [], f"{ROGUE} got {leaked} after claiming airflow-master"
        # 2. its top gives it none of the master's states, only the failing refusal
        top = salt_json(lab, ROGUE, "state.show_top").get(ROGUE) or {}
        sls = [s for env in top.values() for s in env] if isinstance(top, dict) else []
        assert "airflow.master" not in sls and "airflow.refused" in sls, sls
        # 3. never an haproxy backend: the lb state rendered now, and the reconcile after a
        #    master event (which refreshes the mine and applies airflow.lb)
        salt_run_json(lab, "airflow.reconcile_lb", "reason=trust-test", timeout=300)
        cfg = sh(lab, LB_NODE, "cat /etc/haproxy/haproxy.cfg").stdout
        assert f"server {ROGUE} " not in cfg
        assert ROGUE not in haproxy_servers(lab)
        # 4. its scheduler events (forged or not) change nothing
        sh(lab, ROGUE, "salt-call event.fire_master "
                       "'{\"daemon\": \"scheduler\", \"status\": \"dead\"}' "
                       "airflow/health/scheduler", timeout=60)
        wait_for(lambda: audit_since(lab, t0, minion=ROGUE, daemon="scheduler"), 60,
                 every=2, what="the ignored scheduler event of the rogue minion")
        assert active_scheduler(lab) == sched_before
        assert main_pid(lab, sched_before, "airflow-scheduler") == pid_before
        # 5. the claim is reported: audit record + airflow/alert event (reconcile, <= 30 s)
        _, refused = wait_for(lambda: audit_since(lab, t0, action="refused", minion=ROGUE),
                              75, every=3, what="the refused-claim audit record")
        assert refused[-1]["roles"] == ["airflow-master"]
        _, alert = wait_for(lambda: "airflow/alert/roles/claim" in
                            sh(lab, SALT_NODE, "cat /tmp/trust-alert.txt").stdout or None,
                            60, every=2, what="the airflow/alert/roles/claim event")
        record.update(ok=True, leaked=leaked, refused_after=round(refused[-1]["ts"] - t0, 1))
    finally:
        sh(lab, ROGUE, "salt-call grains.remove roles airflow-master; "
                       "salt-call saltutil.refresh_pillar wait=True; salt-call mine.update",
                       timeout=180)
        results_file("trust", record)


def test_forged_raw_beacon_events_change_nothing(lab, results_file):
    """worker1 sends the raw `events` list of event.fire_master (as a beacon does), naming
    master1's scheduler, master2's api-server and worker2's worker: nothing is restarted,
    fenced, moved or taken out of haproxy; each claim is audited as not confirmed."""
    t0 = time.time()
    sched = active_scheduler(lab)
    other = "master2" if sched == "master1" else "master1"
    pids = {(n, u): main_pid(lab, n, u) for n, u in [(sched, "airflow-scheduler"),
                                                       (other, "airflow-api-server"),
                                                       ("worker2", "airflow-worker")]}
    events = [
        {"tag": f"salt/beacon/{sched}/airflow_health/scheduler",
         "data": {"id": sched, "daemon": "scheduler", "status": "dead"}},
        {"tag": f"salt/beacon/{other}/airflow_health/api-server",
         "data": {"id": other, "daemon": "api-server", "status": "dead"}},
        {"tag": "salt/beacon/worker2/airflow_health/worker",
         "data": {"id": "worker2", "daemon": "worker", "status": "hung"}},
    ]
    record = {"test": "forged-raw-events", "ok": False}
    try:
        p = lab.exec_on(ROGUE, ["salt-call", "event.fire_master", "{}", "forged",
                                "preload=" + json.dumps({"events": events})],
                        check=False, timeout=60)
        assert p.returncode == 0, p.stderr[-400:]

        def judged():
            recs = audit_since(lab, t0)
            seen = {(r.get("minion"), r.get("daemon")) for r in recs}
            return recs if {(sched, "scheduler"), ("worker2", "worker")} <= seen and \
                any(r.get("action") == "reconcile_lb" for r in recs) else None
        took, recs = wait_for(judged, 120, every=2, what="the runner's verdicts on the claims")
        acted = [r for r in recs if r.get("action") in ("restart", "kill-restart", "failover",
                                                       "fence", "drain")]
        assert acted == [], acted
        assert {r["outcome"] for r in recs if r.get("minion") in (sched, "worker2")} == {"ignored"}
        lb = [r for r in recs if r.get("action") == "reconcile_lb"][-1]
        assert lb["health"].get(other) == "ok" and not lb.get("runtime")
        assert active_scheduler(lab) == sched
        assert {k: main_pid(lab, *k) for k in pids} == pids
        assert haproxy_servers(lab).get(other, ["?"])[0] == "UP"
        record.update(ok=True, verdicts_after=round(took, 1), audited=len(recs))
    finally:
        results_file("trust", record)
