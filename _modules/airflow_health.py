"""
Health probes of the Airflow daemons on this node (execution module ``airflow_health``).

Used by the ``airflow_health`` beacon (on every minion) and by the healing runner
(``_runners/airflow.py``), which re-probes a node through these functions before acting.

Secrets (database / broker URLs) are read from ``airflow.cfg`` (root-readable) and handed to
the probe subprocess over STDIN, never in argv (argv is visible in ``ps``).
"""

import configparser
import csv
import io
import json
import logging
import os
import re
import socket

log = logging.getLogger(__name__)

__virtualname__ = "airflow_health"

AIRFLOW_HOME = "/opt/airflow"
AIRFLOW_CFG = "/opt/airflow/airflow.cfg"
VENV_PYTHON = "/opt/airflow/venv/bin/python"
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
HAPROXY_BACKEND = "airflow_api"

#: daemons (beacon/runner names) -> systemd units
UNITS = {
    "api-server": "airflow-api-server",
    "scheduler": "airflow-scheduler",
    "dag-processor": "airflow-dag-processor",
    "triggerer": "airflow-triggerer",
    "worker": "airflow-worker",
    "flower": "airflow-flower",
    "postgresql": "postgresql",
    "rabbitmq": "rabbitmq-server",
    "haproxy": "haproxy",
}

#: role grain -> daemons of that role
ROLE_DAEMONS = {
    "airflow-master": ["api-server", "scheduler", "dag-processor", "triggerer"],
    "airflow-worker": ["worker"],
    "airflow-flower": ["flower"],
    "airflow-db": ["postgresql"],
    "airflow-broker": ["rabbitmq"],
    "airflow-lb": ["haproxy"],
}

SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
UNIT_RE = re.compile(r"^[A-Za-z0-9@_.-]{1,128}$")
HAPROXY_STATES = ("ready", "drain", "maint")

_HEARTBEAT_SCRIPT = r"""
import json, sys
from sqlalchemy import create_engine, text
url = sys.stdin.read().strip()
args = {"connect_timeout": 5} if url.startswith("postgres") else {}
eng = create_engine(url, connect_args=args)
with eng.connect() as conn:
    now = conn.execute(text("SELECT CURRENT_TIMESTAMP")).scalar()
    rows = conn.execute(text(
        "SELECT hostname, latest_heartbeat FROM job WHERE job_type='SchedulerJob' "
        "AND state='running' ORDER BY latest_heartbeat DESC")).fetchall()
out = []
for host, hb in rows:
    if hb is None:
        continue
    n = now
    if (hb.tzinfo is None) != (n.tzinfo is None):
        n = n.replace(tzinfo=None); hb = hb.replace(tzinfo=None)
    out.append({"hostname": host, "age": round((n - hb).total_seconds(), 1)})
print(json.dumps(out))
"""

_PING_SCRIPT = r"""
import json, sys
from celery import Celery
url = sys.stdin.read().strip()
dest, timeout = sys.argv[1], float(sys.argv[2])
app = Celery(broker=url)
app.conf.broker_connection_retry_on_startup = False
app.conf.broker_connection_timeout = timeout
try:
    replies = app.control.ping(destination=[dest], timeout=timeout)
finally:
    app.close()
print(json.dumps(replies))
"""


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------- pure helpers
def parse_systemctl_show(text):
    """Parse ``systemctl show -p A,B`` output (``Key=Value`` lines) into a dict."""
    out = {}
    for line in (text or "").splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def classify_service(props):
    """
    Map systemd properties to a health status:
    ``ok`` (active/running), ``restarting`` (systemd is handling it: activating/auto-restart,
    reloading, deactivating), ``absent`` (unit not installed), ``dead`` (anything else).
    """
    active = props.get("ActiveState", "")
    sub = props.get("SubState", "")
    if props.get("LoadState") == "not-found":
        return "absent"
    if active == "active" and sub in ("running", "exited", ""):
        return "ok"
    if active in ("activating", "reloading", "deactivating") or sub == "auto-restart":
        return "restarting"
    return "dead"


def parse_haproxy_stat(text, backend=HAPROXY_BACKEND):
    """Parse ``show stat`` CSV; return the server rows of ``backend`` (FRONTEND/BACKEND excluded)."""
    text = (text or "").lstrip()
    if text.startswith("# "):
        text = text[2:]
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        if backend and row.get("pxname") != backend:
            continue
        if row.get("svname") in ("FRONTEND", "BACKEND", None):
            continue
        rows.append(
            {
                "backend": row.get("pxname"),
                "name": row.get("svname"),
                "status": row.get("status"),
                "scur": int(row.get("scur") or 0),
                "weight": row.get("weight"),
                "check_status": row.get("check_status"),
                "addr": row.get("addr"),
            }
        )
    return rows


def validate_haproxy_args(server, state):
    """Raise ValueError unless ``server`` is a plain name and ``state`` is allowed."""
    if not isinstance(server, str) or not SERVER_NAME_RE.match(server):
        raise ValueError(f"invalid server name: {server!r}")
    if state not in HAPROXY_STATES:
        raise ValueError(f"invalid state {state!r}, allowed: {', '.join(HAPROXY_STATES)}")
    return f"set server {HAPROXY_BACKEND}/{server} state {state}\n"


def summarize_heartbeats(rows, stale_seconds):
    """Reduce heartbeat rows to ``{'status': ok|stale|none, 'fresh': [...], 'newest': row}``."""
    rows = sorted(rows or [], key=lambda r: r["age"])
    fresh = [r["hostname"] for r in rows if r["age"] <= stale_seconds]
    status = "ok" if fresh else ("stale" if rows else "none")
    return {
        "status": status,
        "fresh": fresh,
        "newest": rows[0] if rows else None,
        "schedulers": rows,
        "stale_seconds": stale_seconds,
    }


def read_airflow_cfg(path=AIRFLOW_CFG):
    """Return a ConfigParser of airflow.cfg ('%%' -> '%' like Airflow's own parser)."""
    parser = configparser.ConfigParser()
    with open(path, encoding="utf-8") as fh:
        parser.read_file(fh)
    return parser


def _cfg_value(section, key, path=AIRFLOW_CFG):
    env = os.environ.get(f"AIRFLOW__{section.upper()}__{key.upper()}")
    if env:
        return env
    parser = read_airflow_cfg(path)
    if parser.has_option(section, key):
        return parser.get(section, key)
    raise KeyError(f"[{section}] {key} not set in {path}")


def _run_probe(script, stdin, args=(), timeout=20):
    """Run a probe script with the Airflow venv's python; secrets only on stdin."""
    if not os.path.exists(VENV_PYTHON):
        return {"retcode": 127, "stdout": "", "stderr": f"{VENV_PYTHON} missing"}
    return __salt__["cmd.run_all"](
        [VENV_PYTHON, "-c", script, *args],
        stdin=stdin,
        python_shell=False,
        timeout=timeout,
        output_loglevel="quiet",
        ignore_retcode=True,
        env={"HOME": AIRFLOW_HOME},
    )


def _hostname():
    return socket.gethostname()


# ---------------------------------------------------------------- public API
def service(name):
    """
    systemd state of a unit (or of a daemon name such as ``worker``).

    Returns ``{'unit', 'status' (ok|restarting|dead|absent), 'active_state', 'sub_state',
    'n_restarts'}``.

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.service airflow-worker
        salt master1 airflow_health.service scheduler
    """
    unit = UNITS.get(name, name)
    if not UNIT_RE.match(unit or ""):
        return {"unit": unit, "status": "error", "detail": "invalid unit name"}
    res = __salt__["cmd.run_all"](
        ["systemctl", "show", "-p",
         "LoadState,ActiveState,SubState,NRestarts,ActiveEnterTimestampMonotonic", unit],
        python_shell=False,
        ignore_retcode=True,
        output_loglevel="quiet",
    )
    props = parse_systemctl_show(res.get("stdout"))
    if res.get("retcode") and not props:
        return {"unit": unit, "status": "error", "detail": res.get("stderr", "")[:300]}
    try:
        restarts = int(props.get("NRestarts") or 0)
    except ValueError:
        restarts = 0
    return {
        "unit": unit,
        "status": classify_service(props),
        "active_state": props.get("ActiveState"),
        "sub_state": props.get("SubState"),
        "n_restarts": restarts,
        "uptime": unit_uptime(props),
    }


def unit_uptime(props, now_monotonic=None):
    """Seconds since the unit became active (systemd's monotonic clock), None if unknown."""
    import time  # pylint: disable=import-outside-toplevel

    try:
        entered = int(props.get("ActiveEnterTimestampMonotonic") or 0)
    except ValueError:
        return None
    if entered <= 0 or props.get("ActiveState") != "active":
        return None
    now = time.monotonic() if now_monotonic is None else now_monotonic
    return round(max(0.0, now - entered / 1e6), 1)


def api_server(url="http://127.0.0.1:8080/api/v2/monitor/health", timeout=3):
    """
    Probe the api-server health endpoint.

    Returns ``{'status': ok|down, 'http_status', 'detail'}``; ``ok`` needs HTTP 200 and a
    healthy metadatabase in the JSON body.

    CLI Example:

    .. code-block:: bash

        salt master1 airflow_health.api_server
        salt master1 airflow_health.api_server timeout=1
    """
    import requests  # pylint: disable=import-outside-toplevel

    try:
        resp = requests.get(url, timeout=float(timeout))
    except requests.RequestException as exc:
        return {"status": "down", "http_status": None, "detail": type(exc).__name__}
    detail = None
    ok = resp.status_code == 200
    try:
        body = resp.json()
        detail = body
        meta = (body.get("metadatabase") or {}).get("status")
        if meta and meta != "healthy":
            ok = False
    except ValueError:
        detail = resp.text[:200]
    return {"status": "ok" if ok else "down", "http_status": resp.status_code, "detail": detail}


def scheduler_heartbeat(stale_seconds=15, timeout=15):
    """
    Heartbeats of running SchedulerJobs in the metastore (cluster-wide, not only this node).

    Returns ``{'status': ok|stale|none|error, 'fresh': [hostnames], 'newest': {hostname, age},
    'schedulers': [...]}``.

    CLI Example:

    .. code-block:: bash

        salt master2 airflow_health.scheduler_heartbeat
        salt master2 airflow_health.scheduler_heartbeat stale_seconds=30
    """
    try:
        url = _cfg_value("database", "sql_alchemy_conn")
    except (OSError, KeyError, configparser.Error) as exc:
        return {"status": "error", "detail": str(exc)}
    res = _run_probe(_HEARTBEAT_SCRIPT, url, timeout=timeout)
    if res.get("retcode"):
        err = (res.get("stderr") or "").strip().splitlines()
        return {"status": "error", "detail": err[-1][:300] if err else "probe failed"}
    try:
        rows = json.loads(res["stdout"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": "error", "detail": "unparsable probe output"}
    return summarize_heartbeats(rows, float(stale_seconds))


def worker_ping(timeout=5, hostname=None):
    """
    Celery ping of THIS node's worker (``celery@<hostname>``) through the broker.

    Returns ``{'status': ok|hung, 'destination', 'detail'}`` (``error`` if it cannot probe).

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.worker_ping
        salt worker1 airflow_health.worker_ping timeout=2
    """
    host = hostname or _hostname()
    if not SERVER_NAME_RE.match(host):
        return {"status": "error", "detail": "invalid hostname"}
    dest = f"celery@{host}"
    try:
        url = _cfg_value("celery", "broker_url")
    except (OSError, KeyError, configparser.Error) as exc:
        return {"status": "error", "destination": dest, "detail": str(exc)}
    res = _run_probe(_PING_SCRIPT, url, args=(dest, str(float(timeout))), timeout=float(timeout) + 20)
    if res.get("retcode"):
        err = (res.get("stderr") or "").strip().splitlines()
        return {
            "status": "error",
            "destination": dest,
            "detail": err[-1][:300] if err else "probe failed",
        }
    try:
        replies = json.loads(res["stdout"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": "error", "destination": dest, "detail": "unparsable probe output"}
    answered = any(dest in r for r in replies or [])
    return {"status": "ok" if answered else "hung", "destination": dest, "detail": replies}


def _haproxy_cmd(command, sock_path=HAPROXY_SOCKET, timeout=3):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(command.encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def haproxy_backends(backend=HAPROXY_BACKEND, sock_path=HAPROXY_SOCKET):
    """
    Servers of an haproxy backend from the admin socket (``show stat``).

    Returns a list of ``{'name', 'status' (UP/DOWN/DRAIN/MAINT...), 'scur', 'check_status', ...}``.

    CLI Example:

    .. code-block:: bash

        salt infra airflow_health.haproxy_backends
    """
    return parse_haproxy_stat(_haproxy_cmd("show stat\n", sock_path), backend)


def haproxy_set_server(server, state, sock_path=HAPROXY_SOCKET):
    """
    Set the runtime state (ready|drain|maint) of ``airflow_api/<server>`` (no reload).

    CLI Example:

    .. code-block:: bash

        salt infra airflow_health.haproxy_set_server master2 drain
    """
    command = validate_haproxy_args(server, state)
    out = _haproxy_cmd(command, sock_path).strip()
    return {"server": server, "state": state, "result": not out, "detail": out}


def daemons(role_list=None):
    """
    The cluster's daemon table (``_utils/airflow_daemons.py``): ``[{name, unit, role, probe}]``,
    only the daemons of ``role_list`` when given. States read it with
    ``salt['airflow_health.daemons'](roles)``.

    CLI Example:

    .. code-block:: bash

        salt '*' airflow_health.daemons
        salt worker1 airflow_health.daemons '[airflow-worker]'
    """
    rows = __utils__["airflow_daemons.table"]()
    if role_list is None:
        return rows
    wanted = __utils__["airflow_daemons.daemons_for_roles"](role_list)
    return [row for row in rows if row["name"] in wanted]


def roles():
    """
    Roles of this node (grain ``roles``, a list).

    CLI Example:

    .. code-block:: bash

        salt '*' airflow_health.roles
    """
    value = __grains__.get("roles") or []
    return [value] if isinstance(value, str) else list(value)


def daemons_for_roles(role_list):
    """Daemon names (see UNITS) of a list of roles, in a stable order."""
    out = []
    for role in role_list or []:
        for daemon in ROLE_DAEMONS.get(role, []):
            if daemon not in out:
                out.append(daemon)
    return out


def check(worker_ping_timeout=5, heartbeat_stale=15):
    """
    Health of every Airflow daemon of this node's roles, one dict ``{daemon: {status, ...}}``.

    ``scheduler`` on a master reports the CLUSTER's scheduler heartbeat (``ok`` if any running
    SchedulerJob heartbeated within ``heartbeat_stale`` s, ``dead`` if none, ``unknown`` if the
    metastore cannot be read) plus this node's unit state.

    CLI Example:

    .. code-block:: bash

        salt '*' airflow_health.check
    """
    result = {}
    for daemon in daemons_for_roles(roles()):
        result[daemon] = probe(daemon, worker_ping_timeout, heartbeat_stale)
    return result


def probe(daemon, worker_ping_timeout=5, heartbeat_stale=15, start_grace=20):
    """
    Health of ONE daemon on this node: ``{'status': ok|dead|hung|restarting|unknown, ...}``.

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.probe worker
    """
    if daemon not in UNITS:
        return {"status": "unknown", "detail": "unknown daemon"}
    svc = service(daemon)
    entry = {"status": svc["status"], "unit": svc}
    if daemon == "scheduler":
        hb = scheduler_heartbeat(heartbeat_stale)
        entry["heartbeat"] = hb
        entry["status"] = {"ok": "ok", "stale": "dead", "none": "dead"}.get(hb["status"], "unknown")
        return entry
    if svc["status"] != "ok":
        return entry
    if daemon == "worker":
        ping = worker_ping(worker_ping_timeout)
        entry["ping"] = ping
        entry["status"] = {"ok": "ok", "hung": "hung"}.get(ping["status"], "unknown")
        if entry["status"] == "hung" and (svc.get("uptime") or 0) < float(start_grace):
            entry["status"] = "restarting"  # a (re)starting worker does not answer yet
    elif daemon == "api-server":
        api = api_server()
        entry["api"] = api
        entry["status"] = "ok" if api["status"] == "ok" else "dead"
    return entry


def kill_unit(name):
    """
    SIGKILL every process of an Airflow unit's cgroup (a hung, e.g. SIGSTOPped, worker does
    not react to SIGTERM). Only ``airflow-*`` units; systemd / ``service.restart`` brings it back.

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.kill_unit worker
    """
    import signal  # pylint: disable=import-outside-toplevel

    unit = UNITS.get(name, name)
    if unit not in UNITS.values() or not unit.startswith("airflow-"):
        return {"result": False, "detail": "only airflow units"}
    res = __salt__["cmd.run_all"](
        ["systemctl", "show", "-p", "ControlGroup,MainPID", unit],
        python_shell=False, ignore_retcode=True, output_loglevel="quiet",
    )
    props = parse_systemctl_show(res.get("stdout"))
    pids = set()
    cgroup = props.get("ControlGroup")
    if cgroup:
        for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"):
            path = f"{base}{cgroup}/cgroup.procs"
            try:
                with open(path, encoding="utf-8") as fh:
                    pids.update(int(p) for p in fh.read().split() if p.strip())
                break
            except OSError:
                continue
    main = int(props.get("MainPID") or 0)
    if main > 1:
        pids.add(main)
    killed = []
    for pid in sorted(pids):
        if pid <= 1 or pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    return {"result": True, "unit": unit, "killed": killed}
