"""Recovery benchmark of the healing layer on the deployed lab (`make bench`; issue 12).

Each fault of bench.report.FAULTS is injected BENCH_RUNS times (default 5) for real (kill -9,
SIGSTOP, systemctl stop/restart, a node's plug pulled, an event storm) and the time until the
same probe the lab tests use says healthy again is measured. Beside every run, in the same
session, its floor: the bare restart of the same daemon with nothing to detect (systemctl stop,
start, healthy by the same probe). Where the time went comes from the audit records of the run
(``intent`` carries ``decided_s``: how long the runner job took to decide, re-probe included):

    detect  fault injected -> the runner job started (beacon, event, reactor)
    decide  runner job start -> intent recorded (validation, re-probe)
    act     intent -> outcome recorded (kill, restart, wait for the unit)
    verify  outcome -> the probe says healthy

Samples go to results/bench-samples.jsonl; bench.report turns them into results/bench.json,
results/bench.png and the README table. Enforcement is paused for the bench (it would correct
the faults itself) and resumed at the end; healing is on, damping counters reset between runs.

    make lab && make bench          # BENCH_RUNS=3 make bench  for a quicker pass
    BENCH_FAULTS=worker_hang,worker_kill9 make bench
"""
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from tests.lab import helpers as H  # noqa: E402  the lab tests' probes and faults

# BENCH_SAMPLES: another file, e.g. to run some faults more often than others and concatenate
SAMPLES = Path(os.environ.get("BENCH_SAMPLES") or REPO / "results" / "bench-samples.jsonl")
HEALTHY_WITHIN = 240      # s: a fault not recovered by then is a failed run
SETTLE = 150              # s: what the cluster gets to be green again between runs
STORM_EVENTS = 500


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ probes
def _worker_ok(lab, node):
    return H.worker_ping_ok(lab, node)


def _fresh_heartbeat(lab, since_mono, exclude=()):
    """A scheduler heartbeat written after ``since_mono`` (younger than the time since), on a
    host not in ``exclude``."""
    rows = H.scheduler_heartbeats(lab) or []
    age_limit = time.monotonic() - since_mono
    return [h for h, age in rows if age < age_limit and h not in exclude]


def _backend_state(lab, server):
    return (H.haproxy_servers(lab).get(server) or [""])[0]


def _wait(fn, timeout, every=0.25):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if fn():
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - a probe that fails to answer is not healthy yet
            pass
        time.sleep(every)
    return None


def _wait_from(t0, fn, timeout, every=0.25):
    """Seconds from ``t0`` (monotonic) until ``fn()`` is true, or None after ``timeout``."""
    return None if _wait(fn, timeout, every) is None else time.monotonic() - t0


def _signal_all(lab, node, daemon, signal):
    """Send ``signal`` to every process of the daemon's unit (SIGSTOP: a hang systemd cannot see)."""
    H.sh(lab, node, f"systemctl kill --signal={signal} --kill-who=all {H.unit_of(daemon)}",
         check=signal != "SIGCONT")


def _kill9_main(lab, node, daemon):
    H.sh(lab, node, f"kill -9 {H.main_pid(lab, node, H.unit_of(daemon))}", check=True)


# ------------------------------------------------------------------ faults
class Fault:
    """One fault, timed from just before ``inject`` to the first healthy probe.

    ``prepare(lab, node)`` runs before the clock starts (e.g. wait until the worker is one the
    beacon can judge) and returns the context ``healthy`` gets: by default the unit's main PID,
    so that a daemon is healthy again only as a new process. Without that, a probe taken before
    the fault had taken effect (haproxy still saying UP a moment after a stop) counted as a
    recovery of a few milliseconds. ``probe_from`` is when probes may start: after ``inject``
    returns (a blocking ``systemctl restart``), so one answered by the old process never counts.
    """

    name = ""
    unit_daemon = ""   # the daemon of the daemon table it hits (audit records)

    def node(self, lab):
        raise NotImplementedError

    def prepare(self, lab, node):
        return {"pid": H.main_pid(lab, node, H.unit_of(self.unit_daemon))}

    def inject(self, lab, node):
        raise NotImplementedError

    def healthy(self, lab, node, t0, ctx):
        raise NotImplementedError

    def cleanup(self, lab, node):
        pass

    def new_process(self, lab, node, ctx):
        pid = H.main_pid(lab, node, H.unit_of(self.unit_daemon))
        return bool(pid) and pid != ctx.get("pid")

    def floor_healthy(self, lab, node, t0, ctx):
        """The probe that ends the floor: by default the fault's own."""
        return self.healthy(lab, node, t0, ctx)

    def restart_floor(self, lab, node):
        """Bare stop + start of the daemon's unit, timed from before the stop, then the same probe."""
        unit = H.unit_of(self.unit_daemon)
        ctx = self.prepare(lab, node)
        t0 = time.monotonic()
        H.sh(lab, node, f"systemctl stop {unit} && systemctl start {unit}", check=True)
        t_probe = time.monotonic()
        return _wait_from(t0, lambda: self.floor_healthy(lab, node, t_probe, ctx), HEALTHY_WITHIN)


class WorkerKill(Fault):
    name, unit_daemon = "worker_kill9", "worker"

    def node(self, lab):
        return "worker1"

    def inject(self, lab, node):
        _kill9_main(lab, node, "worker")

    def healthy(self, lab, node, t0, ctx):
        return self.new_process(lab, node, ctx) and _worker_ok(lab, node)


class WorkerHang(WorkerKill):
    name = "worker_hang"

    def prepare(self, lab, node):
        H.wait_worker_judgeable(lab, node)
        return super().prepare(lab, node)

    def inject(self, lab, node):
        H.hang_worker(lab, node)

    def cleanup(self, lab, node):
        H.unhang_worker(lab, node)


class SchedulerKill(Fault):
    name, unit_daemon = "scheduler_kill9", "scheduler"

    def node(self, lab):
        return H.active_scheduler(lab) or "master1"

    def inject(self, lab, node):
        _kill9_main(lab, node, "scheduler")

    def healthy(self, lab, node, t0, ctx):
        return bool(_fresh_heartbeat(lab, t0))


class SchedulerHang(SchedulerKill):
    name = "scheduler_hang"

    def inject(self, lab, node):
        _signal_all(lab, node, "scheduler", "SIGSTOP")

    def cleanup(self, lab, node):
        _signal_all(lab, node, "scheduler", "SIGCONT")


class ApiServerStop(Fault):
    name, unit_daemon = "api_server_stop", "api-server"

    def node(self, lab):
        return "master2"

    def inject(self, lab, node):
        H.sh(lab, node, f"systemctl stop {H.unit_of('api-server')}", check=True)

    def healthy(self, lab, node, t0, ctx):
        return self.new_process(lab, node, ctx) and _backend_state(lab, node) == "UP"


class ApiServerHang(ApiServerStop):
    """Recovery is the time until haproxy sends it nothing (its target)."""
    name = "api_server_hang"

    def inject(self, lab, node):
        _signal_all(lab, node, "api-server", "SIGSTOP")

    def healthy(self, lab, node, t0, ctx):
        return not _backend_state(lab, node).startswith("UP")

    def cleanup(self, lab, node):
        _signal_all(lab, node, "api-server", "SIGCONT")

    def restart_floor(self, lab, node):
        """haproxy's own view of a stopped server: stop -> out of the backend."""
        unit = H.unit_of(self.unit_daemon)
        t0 = time.monotonic()
        H.sh(lab, node, f"systemctl stop {unit}", check=True)
        out = _wait_from(t0, lambda: self.healthy(lab, node, t0, {}), 60)
        H.sh(lab, node, f"systemctl start {unit}", check=True)
        _wait(lambda: _backend_state(lab, node) == "UP", HEALTHY_WITHIN)
        return out


class MasterNodeLoss(SchedulerKill):
    """Recovery: a heartbeat from another master; floor: the bare restart of the scheduler
    (stop, start, a fresh heartbeat from any master)."""
    name = "master_node_loss"

    def inject(self, lab, node):
        lab.stop_node(node)

    def healthy(self, lab, node, t0, ctx):
        return bool(_fresh_heartbeat(lab, t0, exclude=(node,)))

    def cleanup(self, lab, node):
        if not lab.is_running(node):
            lab.start_node(node)

    def floor_healthy(self, lab, node, t0, ctx):
        return SchedulerKill.healthy(self, lab, node, t0, ctx)  # any master: the restarted one


class MetastoreRestart(Fault):
    """Recovery: a scheduler heartbeat written after the restart (the cluster works again);
    floor: PostgreSQL answering after a bare restart (both timed from before the restart)."""
    name, unit_daemon = "metastore_restart", "postgresql"

    def node(self, lab):
        return H.DB_NODE

    def prepare(self, lab, node):
        return {}

    def inject(self, lab, node):
        H.sh(lab, node, f"systemctl restart {H.db_unit()}", check=True)

    def healthy(self, lab, node, t0, ctx):
        return bool(_fresh_heartbeat(lab, t0))

    def restart_floor(self, lab, node):
        t0 = time.monotonic()
        H.sh(lab, node, f"systemctl restart {H.db_unit()}", check=True)
        return _wait_from(t0, lambda: H.db_up(lab), HEALTHY_WITHIN)


class BrokerRestart(Fault):
    """Recovery: every worker answers a ping through the restarted broker; floor: the broker
    answering again after a bare restart (both timed from before the restart)."""
    name, unit_daemon = "broker_restart", "rabbitmq"

    def node(self, lab):
        return H.DB_NODE

    def prepare(self, lab, node):
        return {}

    def inject(self, lab, node):
        H.sh(lab, node, f"systemctl restart {H.broker_unit()}", check=True)

    def healthy(self, lab, node, t0, ctx):
        return all(_worker_ok(lab, w) for w in H.workers(lab))

    def restart_floor(self, lab, node):
        t0 = time.monotonic()
        H.sh(lab, node, f"systemctl restart {H.broker_unit()}", check=True)
        return _wait_from(t0, lambda: H.sh(lab, node, "rabbitmq-diagnostics -q ping").returncode == 0,
                          HEALTHY_WITHIN)


class HangDuringStorm(WorkerHang):
    """worker2 hangs while a master sends 500 health events (incident e's storm)."""
    name = "hang_during_storm"

    def node(self, lab):
        return "worker2"

    def prepare(self, lab, node):
        from tests.lab.test_incidents import SALT_PYTHON, STORM_SCRIPT, STORM_TAG
        ctx = super().prepare(lab, node)
        active = H.active_scheduler(lab)
        sender = next(m for m in H.masters(lab) if m != active)
        threading.Thread(target=lambda: lab.exec_on(
            sender, [SALT_PYTHON, "-c", STORM_SCRIPT, str(STORM_EVENTS), STORM_TAG],
            check=False, timeout=120), daemon=True).start()
        return ctx


ALL = {f.name: f for f in (WorkerKill(), WorkerHang(), SchedulerKill(), SchedulerHang(),
                           ApiServerStop(), ApiServerHang(), MasterNodeLoss(), MetastoreRestart(),
                           BrokerRestart(), HangDuringStorm())}
assert list(ALL) == list(report.FAULTS), "bench.report.FAULTS and the drivers must name the same faults"


# ------------------------------------------------------------------ phases from the audit
def phases(lab, t_wall, t_healthy_wall, fault):
    """detect / decide / act / verify of the runner's first action on the fault's daemon after
    ``t_wall`` (none: systemd alone repaired it, e.g. a killed worker)."""
    recs = H.salt_run_json(lab, "airflow.audit_log", "limit=300") or []
    daemons = {fault.unit_daemon, "haproxy"} if fault.unit_daemon == "api-server" else {fault.unit_daemon}
    intents = [r for r in recs if r.get("ts", 0) >= t_wall and r.get("action") == "intent"
               and r.get("daemon") in daemons]
    if not intents:
        return {}
    first = intents[0]
    out = [r for r in recs if r.get("id") == first.get("id") and r.get("action") != "intent"]
    decided = float(first.get("decided_s") or 0)
    result = {"detect_s": round(first["ts"] - decided - t_wall, 2), "decide_s": round(decided, 2)}
    if out:
        # the runner records its outcome after its own verification, which can end after our
        # probe already said healthy: then act ends at healthy and verify is 0 (never negative)
        done = min(out[0]["ts"], t_healthy_wall)
        result["act_s"] = round(max(0.0, done - first["ts"]), 2)
        result["verify_s"] = round(max(0.0, t_healthy_wall - out[0]["ts"]), 2)
        if out[0]["ts"] > t_healthy_wall:
            result["outcome_after_healthy_s"] = round(out[0]["ts"] - t_healthy_wall, 2)
        result["action"] = first.get("intent")
    return result


# ------------------------------------------------------------------ one run
def settle(lab):
    H.restore_cluster(lab)
    H.wait_green(lab, SETTLE, what="cluster green between bench runs")
    H.sh(lab, "salt", "cd /var/lib/airflow-salt && rm -rf attempts rate")  # no damping across runs


def run_fault(lab, fault, run):
    node = fault.node(lab)
    settle(lab)
    floor = fault.restart_floor(lab, node)
    settle(lab)
    ctx = fault.prepare(lab, node)
    try:
        t_inject_wall, t_inject = time.time(), time.monotonic()
        fault.inject(lab, node)
        t_probe = time.monotonic()
        took = _wait_from(t_inject, lambda: fault.healthy(lab, node, t_probe, ctx), HEALTHY_WITHIN)
        t_healthy_wall = time.time()
    finally:
        fault.cleanup(lab, node)
    sample = {"kind": "sample", "fault": fault.name, "run": run, "node": node,
              "recovery_s": round(took, 2) if took is not None else None,
              "load_1m": os.getloadavg()[0]}
    if took is None:
        sample["error"] = f"not healthy within {HEALTHY_WITHIN}s"
    else:
        # the runner writes its outcome after its own verification, which may end after ours
        deadline = time.monotonic() + 30
        sample["phases"] = phases(lab, t_inject_wall, t_healthy_wall, fault)
        while sample["phases"] and "act_s" not in sample["phases"] and time.monotonic() < deadline:
            time.sleep(1)
            sample["phases"] = phases(lab, t_inject_wall, t_healthy_wall, fault)
    return sample, {"kind": "floor", "fault": fault.name, "run": run,
                    "floor_s": round(floor, 2) if floor is not None else None}


def beacon_cpu_per_minute(lab, node="worker1", seconds=60):
    """CPU seconds the node's salt-minion (beacon included) uses per minute, idle cluster."""
    # systemd's CPUUsageNSec stays unset in the nspawn nodes (no cpu controller delegated):
    # read the unit's cgroup v2 cpu.stat instead (the hybrid layout's "unified" tree, or a
    # pure v2 host), which counts the exited job processes too
    cmd = ("cg=$(systemctl show -p ControlGroup --value salt-minion); "
           "for f in /sys/fs/cgroup/unified$cg/cpu.stat /sys/fs/cgroup$cg/cpu.stat; do "
           "[ -r $f ] && awk '$1 == \"usage_usec\" {print $2}' $f && break; done")

    def usage():
        out = H.sh(lab, node, cmd).stdout.strip()
        return int(out) / 1e6 if out.isdigit() else None
    a = usage()
    time.sleep(seconds)
    b = usage()
    return round((b - a) * 60 / seconds, 2) if a is not None and b is not None else None


def main():
    from lab import api as lab
    if not all(lab.is_running(n) for n in lab.topology()) or not any(
            H.api_server_healthy(lab, m) for m in ("master1", "master2")):
        print("make bench needs the deployed lab: run `make lab` first", file=sys.stderr)
        return 2
    runs = int(os.environ.get("BENCH_RUNS", "5"))
    wanted = [f for f in os.environ.get("BENCH_FAULTS", ",".join(ALL)).split(",") if f]
    unknown = [f for f in wanted if f not in ALL]
    if unknown:
        print(f"BENCH_FAULTS: unknown fault(s) {', '.join(unknown)}; known: {', '.join(ALL)}",
              file=sys.stderr)
        return 2
    SAMPLES.parent.mkdir(exist_ok=True)
    H.enable_healing(lab)
    H.salt_run_json(lab, "airflow.enforcement", "pause")
    try:
        nodes = ["worker1", *H.masters(lab)]
        log(f"beacon cost: salt-minion CPU over 60 s on {', '.join(nodes)} (at once)")
        cpu = {}
        threads = [threading.Thread(target=lambda n=n: cpu.update({n: beacon_cpu_per_minute(lab, n)}))
                   for n in nodes]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        meta = {"kind": "meta", "runs": runs, "ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "host_load": os.getloadavg()[0], "beacon_cpu_s_per_min": cpu.get("worker1"),
                "beacon_cpu_s_per_min_by_node": {n: cpu.get(n) for n in nodes}}
        SAMPLES.write_text(json.dumps(meta) + "\n")
        for name in wanted:
            for run in range(1, runs + 1):
                log(f"{name}: run {run}/{runs}")
                sample, floor = run_fault(lab, ALL[name], run)
                log(f"{name}: run {run}: recovery {sample['recovery_s']} s, floor {floor['floor_s']} s"
                    f" {sample.get('phases') or sample.get('error') or ''}")
                for rec in (sample, floor):
                    with SAMPLES.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
    finally:
        H.salt_run_json(lab, "airflow.enforcement", "resume")
    log(f"samples: {SAMPLES} (next: python3 -m bench.report {SAMPLES})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
