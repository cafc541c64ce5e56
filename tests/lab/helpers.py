"""Helpers of the lab tests: salt calls with JSON output, polling with a deadline, probes of the
cluster read straight from the nodes (systemd, the metastore, haproxy's admin socket) and the
"is the cluster green" check the incident tests start and end with.

The first block is copied from test_self_healing.py (same names, same behaviour) so that the
other lab test files can import them from here. Names of units, the metastore database, the
haproxy backend and thresholds come from the one place they are defined (the daemon table
`_utils/airflow_daemons.py`, `salt/airflow/defaults.yaml`), not from copies.
"""
from __future__ import annotations

import configparser
import contextlib
import functools
import importlib.util
import json
import re
import shlex
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKER = "worker1"
DB_NODE = "infra"          # airflow-db, airflow-broker and airflow-lb in the lab
LB_NODE = "infra"
SALT_NODE = "salt"
SALT_PYTHON = "/opt/saltstack/bin/python3"   # Salt's venv in every node (lab/image.py)
LB = "https://10.77.0.30"          # haproxy: HTTPS, its certificate from the lab CA (lab_ca())
LB_HTTP = "http://10.77.0.30"      # plain HTTP (airflow:lb:http_port 80): only redirects to LB
STATS = "http://10.77.0.30:1936"   # the stats listener stays plain HTTP


def lab_ca() -> str:
    """Path of the lab CA (made once by the lab driver) that haproxy's certificate verifies against:
    requests' verify=, curl --cacert, ssl.create_default_context(cafile=)."""
    from lab.saltsetup import CA_CERT
    return str(CA_CERT)


# ====================================================================== copied from test_self_healing.py
def sh(lab, node, cmd, check=False, timeout=120):
    return lab.exec_on(node, ["/bin/sh", "-c", cmd], check=check, timeout=timeout)


def _json(text, default):
    """First JSON document in text (salt may print warnings around it)."""
    text = text or ""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return default
    try:
        return json.JSONDecoder().raw_decode(text[min(starts):])[0]
    except ValueError:
        return default


def salt_json(lab, *argv, timeout=120):
    p = lab.salt("salt", "--out=json", "--static", "--timeout=30", *argv, check=False,
                 timeout=timeout)
    res = _json(p.stdout, {})
    return res if isinstance(res, dict) else {}


def salt_run_json(lab, *argv, timeout=300):
    p = lab.salt("salt-run", "--out=json", *argv, check=False, timeout=timeout)
    return _json(p.stdout, None)


def wait_for(fn, timeout, every=0.5, what="condition"):
    """Poll fn until it returns something truthy; (seconds waited, that value). Fails at the deadline."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        last = fn()
        if last:
            return time.monotonic() - t0, last
        time.sleep(every)
    raise AssertionError(f"timeout {timeout}s waiting for {what} (last: {last!r})")


def hold(fn, seconds, every=1.0, what="condition"):
    """fn must stay truthy at every poll for `seconds` (an observation window, not a sleep:
    it fails at the first poll that breaks the condition). Returns the polls made."""
    deadline = time.monotonic() + seconds
    polls = 0
    while True:
        res = fn()
        polls += 1
        assert res, f"{what} broke after {polls} polls ({res!r})"
        if time.monotonic() >= deadline:
            return polls
        time.sleep(every)


def worker_ping_ok(lab, node=WORKER):
    res = salt_json(lab, node, "airflow_health.worker_ping", "timeout=2").get(node)
    return isinstance(res, dict) and res.get("status") == "ok"


def main_pid(lab, node, unit):
    out = sh(lab, node, f"systemctl show -p MainPID --value {unit}").stdout.strip()
    return int(out or 0)


def active_for(lab, node, unit):
    """Seconds unit has been active in node (0 if it is not). The nodes share the host's
    CLOCK_MONOTONIC, which systemd's *TimestampMonotonic values are on."""
    out = sh(lab, node, f"systemctl show -p ActiveState,ActiveEnterTimestampMonotonic {unit}").stdout
    props = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)
    if props.get("ActiveState") != "active" or not props.get("ActiveEnterTimestampMonotonic", "0").isdigit():
        return 0.0
    return max(0.0, time.monotonic() - int(props["ActiveEnterTimestampMonotonic"]) / 1e6)


def start_grace(lab, node=WORKER):
    """The healing layer's start grace (a daemon younger than this is not judged), from the
    node's pillar; 20 s (the default) when it is not set there."""
    res = salt_json(lab, node, "pillar.get", "airflow:healing:start_grace").get(node)
    try:
        return float(res) if res not in (None, "") else 20.0
    except (TypeError, ValueError):
        return 20.0


def heartbeat(lab, via):
    res = salt_json(lab, via, "airflow_health.scheduler_heartbeat", "stale_seconds=15").get(via)
    return res if isinstance(res, dict) else {}


def audit_since(lab, t_wall, limit=200, **match):
    recs = salt_run_json(lab, "airflow.audit_log", f"limit={limit}") or []
    return [r for r in recs if r.get("ts", 0) >= t_wall
            and all(r.get(k) == v for k, v in match.items())]


def haproxy_servers(lab):
    """{server: (status, scur)} of the api-servers' backend from the runtime socket on the lb."""
    backend = formula_defaults()["lb"]["backend"]
    rows = _haproxy_csv(lab, "show stat")
    return {r["svname"]: [r["status"], r["scur"]] for r in rows
            if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")}


def active_scheduler(lab):
    res = salt_run_json(lab, "airflow.active_scheduler") or {}
    return res.get("active")


def enable_healing(lab, worker=WORKER):
    """Healing enabled (the `healing` fixture of test_self_healing.py): modules/beacons synced,
    deploy marked, maintenance off, damping reset (the audit log moved aside: earlier runs'
    remediations must not damp this run's, max 3 per 10 min)."""
    lab.salt("salt", "*", "saltutil.sync_all", check=False, timeout=300)
    salt_run_json(lab, "airflow.maintenance", "off")
    status = salt_run_json(lab, "airflow.status", timeout=300) or {}
    if not status.get("deployed"):
        salt_run_json(lab, "airflow.mark_deployed")
    # damping counters (attempts/) and rate-limit windows (rate/) live apart from the audit log
    sh(lab, "salt", "cd /var/lib/airflow-salt && rm -rf attempts rate && "
       "{ test -f audit.jsonl && mv audit.jsonl audit.jsonl.$(date +%s) || true; }")
    beacons = salt_json(lab, worker, "beacons.list", "return_yaml=False").get(worker)
    assert "airflow_health" in json.dumps(beacons), f"beacon not configured on {worker}: {beacons}"
    wait_for(lambda: worker_ping_ok(lab, worker), 120, every=3, what=f"{worker} answering")
    return lab


# ====================================================================== single sources
@functools.lru_cache(maxsize=None)
def formula_defaults():
    """`airflow:` of salt/airflow/defaults.yaml (the lab deploys with the formula's defaults)."""
    return yaml.safe_load((REPO / "salt/airflow/defaults.yaml").read_text())["airflow"]


@functools.lru_cache(maxsize=None)
def daemon_table():
    """The daemon table [{name, unit, role, probe, needs}] of _utils/airflow_daemons.py, units
    filled in with the formula's defaults (postgresql@<version>-main)."""
    spec = importlib.util.spec_from_file_location("lab_helpers_daemons", REPO / "_utils/airflow_daemons.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    version = formula_defaults()["database"]["postgresql_version"]
    return [dict(r, unit=mod.unit_of(r["name"], postgresql_version=version)) for r in mod.table()]


def unit_of(daemon):
    return next(r["unit"] for r in daemon_table() if r["name"] == daemon)


def db_unit():
    """The PostgreSQL server's unit (the table's; Debian's `postgresql.service` is a oneshot
    wrapper that stays "active (exited)" while the server is dead)."""
    return unit_of("postgresql")


def broker_unit():
    return unit_of("rabbitmq")


def nodes_with_role(lab, role):
    return sorted(n for n, info in lab.topology().items() if role in info.get("roles", []))


def masters(lab):
    return nodes_with_role(lab, "airflow-master")


def workers(lab):
    return nodes_with_role(lab, "airflow-worker")


def runner_setting(lab, key, default):
    """A setting of the master config (`airflow_healing:<key>`, or any `a:b:c` path), or default."""
    path = key if ":" in key else f"airflow_healing:{key}"
    p = lab.salt("salt-run", "--out=json", "config.get", path, check=False, timeout=60)
    lines = [ln for ln in (p.stdout or "").splitlines() if ln.strip()]
    try:  # a scalar: the last line (salt may print warnings before it)
        res = json.loads(lines[-1]) if lines else None
    except ValueError:
        res = None
    if res in (None, "", {}, []):
        return default
    try:
        return type(default)(res)
    except (TypeError, ValueError):
        return default


# ====================================================================== the metastore
def psql(lab, sql, db="postgres", timeout=20):
    """(returncode, stdout) of one SQL command as the postgres superuser on the db node."""
    p = lab.exec_on(DB_NODE, ["runuser", "-u", "postgres", "--", "psql", "-XAt", "-v", "ON_ERROR_STOP=1",
                              "-d", db, "-c", sql], check=False, timeout=timeout)
    return p.returncode, p.stdout


def db_up(lab):
    """Does PostgreSQL answer a query?"""
    try:
        rc, out = psql(lab, "select 1", timeout=10)
    except Exception:  # noqa: BLE001 - a hung psql is "not up"
        return False
    return rc == 0 and out.strip() == "1"


_METASTORE = {}


def metastore_db(lab):
    """Name of the metastore database: from a master's airflow.cfg (what is deployed), else the
    formula default."""
    if "name" not in _METASTORE:
        d = formula_defaults()
        name = d["database"]["name"]
        for m in masters(lab):
            p = lab.exec_on(m, ["cat", f"{d['home']}/airflow.cfg"], check=False, timeout=20)
            cfg = configparser.ConfigParser(interpolation=None)
            try:
                cfg.read_string(p.stdout or "")
                name = urlsplit(cfg.get("database", "sql_alchemy_conn")).path.lstrip("/") or name
                break
            except configparser.Error:
                continue
        _METASTORE["name"] = name
    return _METASTORE["name"]


def scheduler_heartbeats(lab):
    """[(short hostname, heartbeat age s)] of the running SchedulerJobs, read from the metastore
    on the db node; None when the metastore cannot be read."""
    rc, out = psql(lab, "select hostname, extract(epoch from now() - latest_heartbeat) from job "
                        "where job_type = 'SchedulerJob' and state = 'running' "
                        "and latest_heartbeat is not null order by latest_heartbeat desc",
                   db=metastore_db(lab))
    if rc != 0:
        return None
    rows = []
    for ln in out.splitlines():
        host, _, age = ln.partition("|")
        try:
            rows.append((host.split(".")[0], float(age)))
        except ValueError:
            continue
    return rows


def heartbeating(lab, younger_than):
    """Short hostnames whose scheduler heartbeat is younger than `younger_than` s (None: no metastore)."""
    rows = scheduler_heartbeats(lab)
    return None if rows is None else sorted({h for h, age in rows if age < younger_than})


# ====================================================================== haproxy
def _haproxy_cmd(lab, cmd):
    """Answer of haproxy's admin socket to one command (text; '' when it does not answer)."""
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX);s.settimeout(5);s.connect(sys.argv[1])\n"
        "s.sendall(sys.argv[2].encode()+b'\\n');d=b''\n"
        "while True:\n  c=s.recv(65536)\n  if not c: break\n  d+=c\n"
        "sys.stdout.write(d.decode())\n"
    )
    p = lab.exec_on(LB_NODE, ["python3", "-c", script, formula_defaults()["lb"]["admin_socket"], cmd],
                    check=False, timeout=20)
    return p.stdout if p.returncode == 0 else ""


def _haproxy_csv(lab, cmd):
    import csv
    import io
    return list(csv.DictReader(io.StringIO(_haproxy_cmd(lab, cmd).lstrip("# "))))


def haproxy_info(lab):
    """`show info` of the haproxy process answering the admin socket: {field: value}."""
    return dict(ln.split(": ", 1) for ln in _haproxy_cmd(lab, "show info").splitlines() if ": " in ln)


def haproxy_reloads(lab, since_wall):
    """Reloads (and (re)starts) of haproxy.service since `since_wall` (epoch s), counted from
    systemd's own job messages in the lb node's journal: PID 1 logs one "Reloaded"/"Started"
    line per reload/start job of the unit, whoever asked for it (salt's service.running
    reload=True runs `systemctl reload haproxy`). None when the journal cannot be read."""
    p = lab.exec_on(LB_NODE, ["journalctl", "-u", "haproxy.service", "-o", "json", "--no-pager",
                              "--since", f"@{int(since_wall) - 1}"], check=False, timeout=30)
    if p.returncode != 0:
        return None
    n = 0
    for ln in p.stdout.splitlines():
        try:
            e = json.loads(ln)
        except ValueError:
            continue
        if e.get("_PID") != "1" or int(e.get("__REALTIME_TIMESTAMP", 0)) < since_wall * 1e6:
            continue
        if "JOB_TYPE" in e:
            n += e.get("JOB_TYPE") in ("reload", "start", "restart") and e.get("JOB_RESULT") == "done"
        else:
            n += str(e.get("MESSAGE", "")).startswith(("Reloaded ", "Started "))
    return n


def backend_up(lab, server):
    return (haproxy_servers(lab).get(server) or [""])[0].startswith("UP")


def api_server_healthy(lab, node):
    """Does node's api-server answer its health endpoint with 200 (haproxy's check), asked
    directly, not through haproxy?"""
    import requests
    s = requests.Session()
    s.trust_env = False  # never through a proxy of the host
    try:
        r = s.get(f"http://{lab.node_ip(node)}:{formula_defaults()['api_server']['port']}/api/v2/monitor/health",
                  timeout=5)
        return r.status_code == 200
    except requests.RequestException:
        return False


# ====================================================================== systemd units
def unit_states(lab, node, units):
    """{unit: ActiveState} in node (one `systemctl is-active` for all of them)."""
    p = lab.exec_on(node, ["systemctl", "is-active", *units], check=False, timeout=30)
    states = p.stdout.split()
    return {u: (states[i] if i < len(states) else "?") for i, u in enumerate(units)}


def expected_units(lab, mode, active):
    """{node: [units that must be active]}: the daemon table's units of each node's roles; the
    scheduler only on the active master in active-standby mode."""
    out = {}
    for node, info in lab.topology().items():
        units = []
        for row in daemon_table():
            if row["role"] not in info.get("roles", []):
                continue
            if row["name"] == "scheduler" and mode == "active-standby" and node != active:
                continue
            units.append(row["unit"])
        if units:
            out[node] = units
    return out


def scheduler_placement(lab):
    """(mode, active master) from the healing runner (salt-run airflow.active_scheduler)."""
    res = salt_run_json(lab, "airflow.active_scheduler", timeout=60) or {}
    return res.get("mode") or "active-standby", res.get("active")


def unit_problems(lab, mode="active-standby", active=None):
    """What is not active of what must be: ['node: {unit: state}']. Without `active` (no salt
    call: fast enough to poll every second) the active-standby scheduler must run on exactly
    one master, whichever it is."""
    out = []
    for node, units in expected_units(lab, mode, active).items():
        bad = {u: s for u, s in unit_states(lab, node, units).items() if s != "active"}
        if bad:
            out.append(f"{node}: {bad}")
    if mode == "active-standby" and active is None:
        running = [m for m in masters(lab) if unit_states(lab, m, [unit_of("scheduler")])[unit_of("scheduler")]
                   == "active"]
        if len(running) != 1:
            out.append(f"{unit_of('scheduler')} active on {running}, expected one master")
    return out


def cluster_problems(lab):
    """Everything that keeps the cluster from being green, [] when it is: every Airflow daemon
    (and the db, broker, lb) active where it belongs, PostgreSQL answering, exactly one
    scheduler heartbeating (the active master's, in active-standby mode; fresh = younger than
    airflow:scheduler:heartbeat_stale), every api-server UP in haproxy."""
    problems = []
    mode, active = scheduler_placement(lab)
    ms = masters(lab)
    if mode == "active-standby" and active not in ms:
        problems.append(f"no active scheduler from airflow.active_scheduler ({mode}, {active!r})")
    problems += unit_problems(lab, mode, active)
    if not db_up(lab):
        problems.append("PostgreSQL does not answer")
    else:
        fresh = heartbeating(lab, formula_defaults()["scheduler"]["heartbeat_stale"])
        if mode == "active-standby" and fresh != [active]:
            problems.append(f"scheduler heartbeats: fresh {fresh}, expected [{active}]")
        elif not fresh:
            problems.append("no fresh scheduler heartbeat")
    servers = haproxy_servers(lab)
    down = {m: servers.get(m) for m in ms if not (servers.get(m) or [""])[0].startswith("UP")}
    if down:
        problems.append(f"haproxy: not UP {down}")
    return problems


def wait_green(lab, timeout, every=2.0, what="cluster green"):
    """Poll cluster_problems until there are none; seconds waited. Fails at the deadline with
    the last problems."""
    t0 = time.monotonic()
    problems = ["not checked"]
    while time.monotonic() - t0 < timeout:
        problems = cluster_problems(lab)
        if not problems:
            return time.monotonic() - t0
        time.sleep(every)
    raise AssertionError(f"timeout {timeout}s waiting for {what}: {problems}")


# ====================================================================== faults
def hang_worker(lab, node):
    """SIGSTOP every process of the node's Celery worker unit: alive for systemd, deaf to pings."""
    sh(lab, node, f"systemctl kill --signal=SIGSTOP --kill-who=all {unit_of('worker')}", check=True)


def unhang_worker(lab, node):
    sh(lab, node, f"systemctl kill --signal=SIGCONT --kill-who=all {unit_of('worker')}")


#: A runtime drop-in (under /run: no state manages it, a reboot drops it) that takes the
#: systemd watchdog away from one unit, so a SIGSTOP hang reaches the second line (beacon ->
#: reactor -> runner) as a deadlock the keep-alive cannot see would.
NO_WATCHDOG_DROPIN = "/run/systemd/system/{unit}.service.d/zz-lab-no-watchdog.conf"


_TIMESPAN = {"h": 3600.0, "min": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def watchdog_sec(lab, node, unit):
    """The unit's WatchdogSec in seconds (0: none), as systemd has it ("3s", "1min 30s", "0")."""
    out = sh(lab, node, f"systemctl show -p WatchdogUSec --value {unit}").stdout.strip()
    parts = re.findall(r"([0-9.]+)\s*(h|min|ms|us|s)?", out)
    if not parts or out in ("infinity", ""):
        return 0.0
    return sum(float(n) * _TIMESPAN.get(u or "us", 1e-6) for n, u in parts)


def _restart_unit(lab, node, unit):
    sh(lab, node, f"systemctl daemon-reload && systemctl restart {unit}", check=True, timeout=180)


def disable_watchdog(lab, node, daemon):
    """The daemon's unit on ``node`` without its systemd watchdog until restore_watchdog
    (restarted: a running process keeps the watchdog it was started with)."""
    unit = unit_of(daemon)
    path = NO_WATCHDOG_DROPIN.format(unit=unit)
    sh(lab, node, f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])} && "
       f"printf '[Service]\\nWatchdogSec=0\\n' > {shlex.quote(path)}", check=True)
    _restart_unit(lab, node, unit)
    assert watchdog_sec(lab, node, unit) == 0, f"{unit} on {node} still has a watchdog"


def restore_watchdog(lab, node, daemon):
    """Remove disable_watchdog's drop-in (if any) and restart the unit with its watchdog."""
    unit = unit_of(daemon)
    path = NO_WATCHDOG_DROPIN.format(unit=unit)
    if sh(lab, node, f"test -e {shlex.quote(path)}").returncode == 0:
        sh(lab, node, f"rm -f {shlex.quote(path)}", check=True)
        _restart_unit(lab, node, unit)


def wait_worker_judgeable(lab, node, timeout=150):
    """Wait until node's worker is older than the start grace (a younger one is not judged: its
    hang would only be seen later) and answers a ping; seconds waited."""
    grace = start_grace(lab, node) + 1
    dt, _ = wait_for(lambda: active_for(lab, node, unit_of("worker")) >= grace and worker_ping_ok(lab, node),
                     timeout, 0.5, f"{unit_of('worker')} on {node} active for {grace:.0f} s and answering")
    return dt


def restore_cluster(lab):
    """Best effort, for the finally block of a test that failed: undo every fault these tests
    inject (links down, masked or stopped db/broker/lb, SIGSTOPped workers) and start what must
    run but does not (reset-failed first: a unit past its StartLimitBurst refuses to start).
    Never raises; the next test's precondition (wait_green) says whether it worked."""
    def attempt(fn, *a):
        try:
            fn(*a)
        except Exception as exc:  # noqa: BLE001 - best effort
            print(f"restore_cluster: {getattr(fn, '__name__', fn)}{a}: {exc}")

    for node in lab.topology():
        if lab.is_running(node) and not lab.link_is_up(node):
            attempt(lab.link_up, node)
    for node in lab.topology():
        if not lab.is_running(node):
            attempt(lab.start_node, node)
    infra_units = [db_unit(), broker_unit(), unit_of("haproxy")]
    attempt(sh, lab, DB_NODE, "for u in " + " ".join(infra_units) + "; do systemctl unmask --runtime $u; "
            "systemctl is-active -q $u || { systemctl reset-failed $u; systemctl start $u; }; done", False, 180)
    for w in workers(lab):
        attempt(unhang_worker, lab, w)
        attempt(restore_watchdog, lab, w, "worker")
    try:
        mode, active = scheduler_placement(lab)
    except Exception:  # noqa: BLE001
        mode, active = "active-standby", None
    for node, units in expected_units(lab, mode, active).items():
        todo = " ".join(shlex.quote(u) for u in units if u not in infra_units)
        if todo:
            attempt(sh, lab, node, f"for u in {todo}; do systemctl is-active -q $u || "
                    "{ systemctl reset-failed $u; systemctl start --no-block $u; }; done", False, 60)


# ====================================================================== Airflow REST API
def trigger_dag_run(api, dag, conf=None):
    """One attempt to trigger a run of dag through haproxy: its run id, or None (API not ready)."""
    import requests
    try:
        r = api.request("POST", f"/api/v2/dags/{dag}/dagRuns", tries=1,
                        json={"logical_date": None, **({"conf": conf} if conf else {})})
    except requests.RequestException:
        return None
    try:
        return r.json().get("dag_run_id") if r is not None and r.status_code in (200, 201) else None
    except ValueError:
        return None


def dag_run_state(api, dag, run_id):
    """State of a DAG run (None when the API does not answer)."""
    import requests
    try:
        r = api.request("GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}", tries=1)
    except requests.RequestException:
        return None
    try:
        return r.json().get("state") if r is not None and r.status_code == 200 else None
    except ValueError:
        return None


# ====================================================================== secrets on command lines
ARGV_STOP_FILE = "/run/secret-exposure.stop"
ARGV_SAMPLE_EVERY = 0.2
ARGV_MAX_SECONDS = 600

# The loop runs inside the node; `sort -u` keeps one copy of each distinct command line.
_ARGV_SAMPLER = f"""
rm -f {ARGV_STOP_FILE}
end=$(( $(date +%s) + {ARGV_MAX_SECONDS} ))
n=0
{{ while [ ! -e {ARGV_STOP_FILE} ] && [ $(date +%s) -lt $end ]; do
     ps -ww -eo args= 2>/dev/null; n=$((n+1)); echo "@@sample $n"; sleep {ARGV_SAMPLE_EVERY}
   done; }} | sort -u
"""


def secret_values(lab):
    """Every secret value of the lab (admin_user is a login name, not a secret)."""
    sec = lab.secrets()
    return sorted({str(v) for k, v in sec.items() if k != "admin_user" and v and len(str(v)) >= 8})


def lab_nodes(lab):
    from lab.common import topology
    return [n for n in topology() if lab.is_running(n)]


@contextlib.contextmanager
def argv_samples(lab):
    """
    Sample `ps -ww -eo args` every 0.2 s on every node while the block runs. Yields a dict that
    gets, after the block, ``samples`` {node: count} and ``leaks`` {node: [redacted lines]}: the
    command lines that held a secret value of the lab.
    """
    import concurrent.futures
    values = secret_values(lab)
    assert len(values) >= 9, "lab secrets missing"
    nodes = lab_nodes(lab)
    out = {}

    def sample(node):
        p = lab.exec_on(node, ["/bin/sh", "-c", _ARGV_SAMPLER], check=False,
                        timeout=ARGV_MAX_SECONDS + 60)
        lines = (p.stdout or "").splitlines()
        return node, sum(1 for ln in lines if ln.startswith("@@sample ")), \
            [ln for ln in lines if not ln.startswith("@@sample ")]

    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        futures = [pool.submit(sample, node) for node in nodes]
        time.sleep(1.0)  # the samplers are running
        try:
            yield out
        finally:
            time.sleep(1.0)  # a last sample after the block
            for node in nodes:
                sh(lab, node, f"touch {ARGV_STOP_FILE}")
            results = [f.result() for f in futures]
            for node in nodes:
                sh(lab, node, f"rm -f {ARGV_STOP_FILE}")

    def redact(line):
        for v in values:
            line = line.replace(v, "<" + v[:3] + "...>")
        return line
    out["samples"] = {node: n for node, n, _ in results}
    out["leaks"] = {node: [redact(ln) for ln in lines if any(v in ln for v in values)]
                    for node, _, lines in results if any(v in ln for ln in lines for v in values)}
