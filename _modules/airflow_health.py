"""
Health probes of the Airflow daemons on this node (execution module ``airflow_health``).

Used by the ``airflow_health`` beacon (on every minion) and by the healing runner
(``_runners/airflow.py``), which re-probes a node through these functions before acting.

Which daemons exist, their units and roles: the daemon table ``_utils/airflow_daemons.py``
(``__utils__``). Paths, port, haproxy names, the stale-heartbeat threshold, the start grace
and the worker ping timeout: the node settings file SETTINGS_FILE, written by the airflow
states from ``defaults.yaml`` + pillar (no secrets). Probes that need it report
``{'status': 'error', 'detail': 'node settings ... missing (apply the airflow states)'}``
when it is missing: there is no second copy of those defaults here.

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
import select
import socket
import subprocess
import threading

log = logging.getLogger(__name__)

__virtualname__ = "airflow_health"

#: The node settings file (the contract with the airflow states, see the module docstring).
SETTINGS_FILE = "/etc/salt/airflow_health.json"
#: Its keys and their types.
SETTINGS_KEYS = {
    "home": str,
    "venv": str,
    "airflow_cfg": str,
    "api_server_port": int,
    "haproxy_socket": str,
    "haproxy_backend": str,
    "heartbeat_stale": float,
    "start_grace": float,
    "worker_ping_timeout": float,
    "postgresql_version": int,
    "database_port": int,
    "database_name": str,
    "broker_port": int,
    "scheduler_mode": str,
}

#: Keys a settings file written by an older formula may lack (until its next highstate): the
#: value the states write by default, so probes keep working across an upgrade.
SETTINGS_OPTIONAL = {"database_name": "airflow"}

UNIT_RE = re.compile(r"^[A-Za-z0-9@_.-]{1,128}$")  # a systemd unit name, not a minion id
BACKEND_RE = re.compile(r"^[\w-]{1,64}$")  # an haproxy backend name
HAPROXY_STATES = ("ready", "drain", "maint")

#: The scheduler heartbeat rows (shared by the one-shot probe and the resident one).
_HEARTBEAT_CODE = r"""
from sqlalchemy import create_engine, text
def engine(url, **kw):
    args = {"connect_timeout": 5} if url.startswith("postgres") else {}
    return create_engine(url, connect_args=args, **kw)
def secs(n, t):
    from datetime import datetime
    n, t = [datetime.fromisoformat(v) if isinstance(v, str) else v for v in (n, t)]  # SQLite: text
    if (t.tzinfo is None) != (n.tzinfo is None):
        n = n.replace(tzinfo=None); t = t.replace(tzinfo=None)
    return round((n - t).total_seconds(), 1)
def heartbeat_rows(eng):
    with eng.connect() as conn:
        now = conn.execute(text("SELECT CURRENT_TIMESTAMP")).scalar()
        rows = conn.execute(text(
            "SELECT hostname, latest_heartbeat, start_date FROM job WHERE job_type='SchedulerJob' "
            "AND state='running' ORDER BY latest_heartbeat DESC")).fetchall()
    out = []
    for host, hb, started in rows:
        if hb is None:
            continue
        out.append({"hostname": host, "age": secs(now, hb),
                    "started": secs(now, started) if started is not None else None})
    return out
"""

_HEARTBEAT_SCRIPT = _HEARTBEAT_CODE + r"""
import json, sys
print(json.dumps(heartbeat_rows(engine(sys.stdin.read().strip()))))
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


#: The beacon's probes that need the Airflow venv (the worker's Celery ping, the scheduler
#: heartbeat in the metastore), resident: one venv Python per kind that imported its library once
#: and answers one JSON line per request line. A fresh Python per probe (import celery or
#: sqlalchemy, connect) cost ~0.3 CPU-s every beacon interval, forever, on every node.
#: The secret URL comes as the first line on stdin (never argv). The process exits on EOF, on an
#: error (the minion starts a new one: a broker or metastore restart leaves no half-dead
#: connection behind) and after argv[1] seconds without a request (a minion that reloaded its
#: modules or died leaves no orphan behind for long).
_RESIDENT_LOOP = r"""
import json, signal, sys
signal.signal(signal.SIGALRM, lambda *_: sys.exit(0))
state = setup(sys.stdin.readline().strip(), sys.argv[2:])
while True:
    # a timer, not select(): stdin's buffer may already hold the next line
    signal.setitimer(signal.ITIMER_REAL, float(sys.argv[1]))
    line = sys.stdin.readline()
    signal.setitimer(signal.ITIMER_REAL, 0)
    if not line:
        break
    try:
        print(json.dumps({"result": handle(state, line.split())}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": (type(exc).__name__ + ": " + str(exc))[:300]}), flush=True)
        break
"""
_RESIDENT_SCRIPTS = {
    # request: "<destination> <timeout>"; argv[2]: the broker connection timeout
    "ping": r"""
from celery import Celery
def setup(url, argv):
    app = Celery(broker=url)
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_timeout = float(argv[0])
    return app
def handle(app, request):
    dest, timeout = request
    return app.control.ping(destination=[dest], timeout=float(timeout))
""" + _RESIDENT_LOOP,
    # request: "rows"; one pooled connection, checked before each use
    "heartbeat": _HEARTBEAT_CODE + r"""
def setup(url, argv):
    return engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
def handle(eng, request):
    return heartbeat_rows(eng)
""" + _RESIDENT_LOOP,
}
#: A resident probe process with no request for this long exits (s; the beacon asks every
#: interval, the heartbeat every scheduler_check_every).
RESIDENT_IDLE = 60

_RESIDENT = {"procs": {}, "lock": threading.Lock()}


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------- node settings
class _NoSettings(Exception):
    """The node settings file is missing or unusable (message: what to do)."""


def _settings():
    """The node settings (SETTINGS_FILE, read per call: it is tiny); raises _NoSettings."""
    try:
        with open(SETTINGS_FILE, encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise _NoSettings(
            f"node settings {SETTINGS_FILE} missing (apply the airflow states)") from None
    except (OSError, ValueError) as exc:
        raise _NoSettings(f"node settings {SETTINGS_FILE} unreadable: {exc}") from None
    if not isinstance(raw, dict):
        raise _NoSettings(f"node settings {SETTINGS_FILE}: not a JSON object")
    out = {}
    for key, kind in SETTINGS_KEYS.items():
        value = raw.get(key, SETTINGS_OPTIONAL.get(key))
        try:
            if value is None or isinstance(value, bool) or (kind is str and not value):
                raise ValueError
            out[key] = kind(value) if kind is not str else str(value)
        except (TypeError, ValueError):
            raise _NoSettings(
                f"node settings {SETTINGS_FILE}: {key} missing or not a {kind.__name__}"
            ) from None
    if not BACKEND_RE.match(out["haproxy_backend"]):
        raise _NoSettings(f"node settings {SETTINGS_FILE}: invalid haproxy_backend")
    return out


def _error(exc):
    return {"status": "error", "detail": str(exc)}


def settings():
    """
    The node settings the probes use (SETTINGS_FILE, written by the airflow states).

    CLI Example:

    .. code-block:: bash

        salt '*' airflow_health.settings
    """
    try:
        return _settings()
    except _NoSettings as exc:
        return _error(exc)


# ---------------------------------------------------------------- pure helpers
def _parse_systemctl_show(text):
    """Parse ``systemctl show -p A,B`` output (``Key=Value`` lines) into a dict."""
    out = {}
    for line in (text or "").splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _classify_service(props):
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


def _unit_uptime(props, now_monotonic=None):
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


def _parse_haproxy_stat(text, backend):
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


def _check_server_state(server, state):
    """ValueError unless ``server`` is a minion id and ``state`` an allowed runtime state."""
    if not _table("valid_minion_id")(server):
        raise ValueError(f"invalid server name: {server!r}")
    if state not in HAPROXY_STATES:
        raise ValueError(f"invalid state {state!r}, allowed: {', '.join(HAPROXY_STATES)}")


def _haproxy_command(server, state, backend):
    """The admin socket command (ValueError for anything but plain names and states)."""
    _check_server_state(server, state)
    if not isinstance(backend, str) or not BACKEND_RE.match(backend):
        raise ValueError(f"invalid backend name: {backend!r}")
    return f"set server {backend}/{server} state {state}\n"


def _summarize_heartbeats(rows, stale_seconds):
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


def _cfg_value(section, key, path):
    """A value of airflow.cfg (``path``), the AIRFLOW__SECTION__KEY environment first."""
    env = os.environ.get(f"AIRFLOW__{section.upper()}__{key.upper()}")
    if env:
        return env
    parser = configparser.ConfigParser()  # '%%' -> '%' like Airflow's own parser
    with open(path, encoding="utf-8") as fh:
        parser.read_file(fh)
    if parser.has_option(section, key):
        return parser.get(section, key)
    raise KeyError(f"[{section}] {key} not set in {path}")


def _run_probe(conf, script, stdin, args=(), timeout=20):
    """Run a probe script with the Airflow venv's python; secrets only on stdin."""
    python = os.path.join(conf["venv"], "bin", "python")
    if not os.path.exists(python):
        return {"retcode": 127, "stdout": "", "stderr": f"{python} missing"}
    return __salt__["cmd.run_all"](
        [python, "-c", script, *args],
        stdin=stdin,
        python_shell=False,
        timeout=timeout,
        output_loglevel="quiet",
        ignore_retcode=True,
        env={"HOME": conf["home"]},
    )


def _last_json_line(res):
    try:
        return json.loads(res["stdout"].strip().splitlines()[-1])
    except (ValueError, IndexError, KeyError, AttributeError):
        raise ValueError("unparsable probe output") from None


def _probe_failure(res):
    err = (res.get("stderr") or "").strip().splitlines()
    return err[-1][:300] if err else "probe failed"


def _hostname():
    return socket.gethostname()


def _table(name):
    """A function of the daemon table (_utils/airflow_daemons.py, synced by saltutil.sync_all)."""
    try:
        return __utils__[f"airflow_daemons.{name}"]
    except KeyError:
        from salt.exceptions import CommandExecutionError  # pylint: disable=import-outside-toplevel

        raise CommandExecutionError(
            "the daemon table airflow_daemons is not on this minion: run saltutil.sync_all"
        ) from None


def _unit(name, conf=None):
    """
    The unit of a daemon name (``worker`` -> ``airflow-worker``, ``postgresql`` ->
    ``postgresql@15-main`` from the node settings); other names as given. None when the
    unit needs a node setting that is missing.
    """
    row = _table("get")(name)
    if not row:
        return name
    if "{" not in row["unit"]:
        return row["unit"]
    try:
        conf = _settings() if conf is None else conf
    except _NoSettings:
        return None
    return _table("unit_of")(name, postgresql_version=conf["postgresql_version"])


# ---------------------------------------------------------------- public API
def service(name, start_grace=None):
    """
    systemd state of a unit (or of a daemon name such as ``worker``).

    Returns ``{'unit', 'status' (ok|restarting|dead|absent), 'active_state', 'sub_state',
    'n_restarts', 'result', 'uptime', 'starting'}``. ``n_restarts``: systemd's own restarts
    (Restart=, e.g. after a watchdog timeout) since the last manual start; ``result``: its
    Result= (``watchdog`` until the restart, then ``success`` again). ``starting`` is True while the unit has been active
    for less than ``start_grace`` seconds (default: the node setting ``start_grace``; None
    without node settings): a daemon that does not answer yet then is starting, not hung.

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.service airflow-worker
        salt master1 airflow_health.service scheduler
    """
    unit = _unit(name)
    if unit is None:
        return {"unit": None, "status": "error",
                "detail": f"node settings {SETTINGS_FILE} missing (apply the airflow states)"}
    if not isinstance(unit, str) or not UNIT_RE.match(unit):
        return {"unit": unit, "status": "error", "detail": "invalid unit name"}
    res = __salt__["cmd.run_all"](
        ["systemctl", "show", "-p",
         "LoadState,ActiveState,SubState,NRestarts,Result,ActiveEnterTimestampMonotonic", unit],
        python_shell=False,
        ignore_retcode=True,
        output_loglevel="quiet",
    )
    props = _parse_systemctl_show(res.get("stdout"))
    if res.get("retcode") and not props:
        return {"unit": unit, "status": "error", "detail": res.get("stderr", "")[:300]}
    try:
        restarts = int(props.get("NRestarts") or 0)
    except ValueError:
        restarts = 0
    if start_grace is None:
        try:
            start_grace = _settings()["start_grace"]
        except _NoSettings:
            start_grace = None
    uptime = _unit_uptime(props)
    return {
        "unit": unit,
        "status": _classify_service(props),
        "active_state": props.get("ActiveState"),
        "sub_state": props.get("SubState"),
        "n_restarts": restarts,
        "result": props.get("Result"),
        "uptime": uptime,
        "starting": (None if start_grace is None
                     else uptime is not None and uptime < float(start_grace)),
    }


def api_server(url=None, timeout=3):
    """
    Probe the api-server health endpoint (default: this node's, port from the node settings).

    Returns ``{'status': ok|down|blocked, 'http_status', 'detail'}``: ``ok`` is HTTP 200 with a
    healthy metadatabase; ``blocked`` is an api-server that answers but reports its metadatabase
    unhealthy (the metastore is the problem, not this daemon); ``down`` anything else
    (``error`` without node settings).

    CLI Example:

    .. code-block:: bash

        salt master1 airflow_health.api_server
        salt master1 airflow_health.api_server timeout=1
    """
    import requests  # pylint: disable=import-outside-toplevel

    if url is None:
        try:
            port = _settings()["api_server_port"]
        except _NoSettings as exc:
            return _error(exc)
        url = f"http://127.0.0.1:{port}/api/v2/monitor/health"
    try:
        resp = requests.get(url, timeout=float(timeout))
    except requests.RequestException as exc:
        return {"status": "down", "http_status": None, "detail": type(exc).__name__}
    detail = None
    status = "ok" if resp.status_code == 200 else "down"
    try:
        body = resp.json()
        detail = body
        meta = (body.get("metadatabase") or {}).get("status") if isinstance(body, dict) else None
        if meta and meta != "healthy":
            status = "blocked" if status == "ok" else "down"
    except ValueError:
        detail = resp.text[:200]
    out = {"status": status, "http_status": resp.status_code, "detail": detail}
    if status == "blocked":
        out["dependency"] = "postgresql"
    return out


def scheduler_heartbeat(stale_seconds=None, timeout=15, resident=False):
    """
    Heartbeats of running SchedulerJobs in the metastore (cluster-wide, not only this node).
    A heartbeat older than ``stale_seconds`` (default: the node setting ``heartbeat_stale``)
    is stale.

    Returns ``{'status': ok|stale|none|error, 'fresh': [hostnames], 'newest': {hostname, age},
    'schedulers': [...], 'stale_seconds'}``.

    CLI Example:

    .. code-block:: bash

        salt master2 airflow_health.scheduler_heartbeat
        salt master2 airflow_health.scheduler_heartbeat stale_seconds=30

    ``resident=True`` (the beacon) asks the long-lived probe process; the CLI and the runner's
    re-probe keep the default, a fresh process.
    """
    try:
        conf = _settings()
        url = _cfg_value("database", "sql_alchemy_conn", conf["airflow_cfg"])
    except _NoSettings as exc:
        return _error(exc)
    except (OSError, KeyError, configparser.Error) as exc:
        return {"status": "error", "detail": str(exc)}
    stale = conf["heartbeat_stale"] if stale_seconds is None else float(stale_seconds)
    if resident:
        try:
            rows = _resident_call("heartbeat", conf, url, ("rows",), timeout)
        except (OSError, ValueError) as exc:
            return {"status": "error", "detail": str(exc)}
        return _summarize_heartbeats(rows, stale)
    res = _run_probe(conf, _HEARTBEAT_SCRIPT, url, timeout=timeout)
    if res.get("retcode"):
        return {"status": "error", "detail": _probe_failure(res)}
    try:
        rows = _last_json_line(res)
    except ValueError as exc:
        return {"status": "error", "detail": str(exc)}
    return _summarize_heartbeats(rows, stale)


#: The metastore's own view of the scheduler heartbeats (the db node, postgres over the local
#: socket): the same rows as _HEARTBEAT_SCRIPT, without an Airflow install or a password.
_HEARTBEAT_SQL = (
    "SELECT coalesce(json_agg(json_build_object("
    "'hostname', hostname, "
    "'age', round(extract(epoch FROM now() - latest_heartbeat)::numeric, 1), "
    "'started', round(extract(epoch FROM now() - start_date)::numeric, 1)"
    ") ORDER BY latest_heartbeat DESC), '[]') FROM job "
    "WHERE job_type = 'SchedulerJob' AND state = 'running' AND latest_heartbeat IS NOT NULL")


def metastore_heartbeat(stale_seconds=None, timeout=10):
    """
    The scheduler heartbeats as the metastore itself has them: run on the db node (PostgreSQL
    managed by this formula), as the postgres superuser over the local socket. The healing
    runner reads heartbeats here, so no decision about a master rests on what that master says.
    Same return as ``scheduler_heartbeat``.

    CLI Example:

    .. code-block:: bash

        salt infra airflow_health.metastore_heartbeat
    """
    try:
        conf = _settings()
    except _NoSettings as exc:
        return _error(exc)
    stale = conf["heartbeat_stale"] if stale_seconds is None else float(stale_seconds)
    res = __salt__["cmd.run_all"](
        ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1",
         "-p", str(conf["database_port"]), "-d", conf["database_name"]],
        stdin=_HEARTBEAT_SQL + ";\n", python_shell=False, ignore_retcode=True,
        output_loglevel="quiet", timeout=float(timeout),
    )
    if res.get("retcode"):
        return {"status": "error", "detail": (res.get("stderr") or "no answer").strip()[:300]}
    try:
        rows = json.loads((res.get("stdout") or "").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": "error", "detail": "unparsable heartbeat rows"}
    return _summarize_heartbeats(rows, stale)


def backend_health(backend=None, timeout=3):
    """
    The load balancer's view of the api-servers: every server of the haproxy backend (name and
    address from ``show stat``) probed from this node like ``api_server`` does locally. Run on
    the lb node; the runner takes api-server health from here, not from the api-servers.

    Returns ``{server: {'status': ok|down|blocked, ...}}`` (an ``error`` dict without settings
    or socket).

    CLI Example:

    .. code-block:: bash

        salt infra airflow_health.backend_health
    """
    rows = haproxy_backends(backend=backend)
    if isinstance(rows, dict):
        return rows
    out = {}
    for row in rows:
        name, addr = row.get("name"), row.get("addr") or ""
        if not _table("valid_minion_id")(name) or not re.match(r"^[0-9A-Za-z.:\[\]-]{1,80}$", addr):
            continue
        out[name] = api_server(url=f"http://{addr}/api/v2/monitor/health", timeout=timeout)
    return out


def worker_ping(timeout=None, hostname=None, resident=False):
    """
    Celery ping of THIS node's worker (``celery@<hostname>``) through the broker, waiting
    ``timeout`` seconds (default: the node setting ``worker_ping_timeout``).

    ``resident=True`` (the beacon, every interval) asks a long-lived probe process instead of
    starting a Python for this one ping. The CLI and the runner's re-probe keep the default: a
    fresh process, independent of whatever state the resident one is in.

    Returns ``{'status': ok|hung, 'destination', 'detail'}`` (``error`` if it cannot probe).

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.worker_ping
        salt worker1 airflow_health.worker_ping timeout=2
        salt worker1 airflow_health.worker_ping resident=True
    """
    host = hostname or _hostname()
    # hostnames share the minion-id charset: nothing a shell or Celery could interpret
    if not _table("valid_minion_id")(host):
        return {"status": "error", "detail": "invalid hostname"}
    dest = f"celery@{host}"
    try:
        conf = _settings()
        url = _cfg_value("celery", "broker_url", conf["airflow_cfg"])
    except _NoSettings as exc:
        return dict(_error(exc), destination=dest)
    except (OSError, KeyError, configparser.Error) as exc:
        return {"status": "error", "destination": dest, "detail": str(exc)}
    wait = conf["worker_ping_timeout"] if timeout is None else float(timeout)
    if resident:
        try:
            replies = _resident_ping(conf, url, dest, wait)
        except (OSError, ValueError) as exc:
            return {"status": "error", "destination": dest, "detail": str(exc)}
    else:
        res = _run_probe(conf, _PING_SCRIPT, url, args=(dest, str(wait)), timeout=wait + 20)
        if res.get("retcode"):
            return {"status": "error", "destination": dest, "detail": _probe_failure(res)}
        try:
            replies = _last_json_line(res)
        except ValueError as exc:
            return {"status": "error", "destination": dest, "detail": str(exc)}
    answered = any(dest in r for r in replies or [] if isinstance(r, dict))
    return {"status": "ok" if answered else "hung", "destination": dest, "detail": replies}


def _stop_resident(kind):
    proc = _RESIDENT["procs"].pop(kind, (None, None))[0]
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass


def _resident_call(kind, conf, secret, request, wait, setup_args=()):
    """One request to the resident probe of ``kind`` (started or replaced as needed): its result.

    Raises OSError/ValueError when it cannot answer within ``wait`` + 20 s; it is then stopped
    and the next call starts a new one."""
    python = os.path.join(conf["venv"], "bin", "python")
    key = (python, secret, tuple(setup_args))
    with _RESIDENT["lock"]:
        proc, running_key = _RESIDENT["procs"].get(kind, (None, None))
        if proc is None or proc.poll() is not None or running_key != key:
            _stop_resident(kind)
            if not os.path.exists(python):
                raise OSError(f"{python} missing")
            # a long-lived child cannot go through cmd.run (which waits for it to end)
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [python, "-c", _RESIDENT_SCRIPTS[kind], str(RESIDENT_IDLE), *setup_args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env={"HOME": conf["home"]}, cwd="/", text=True, close_fds=True)
            _RESIDENT["procs"][kind] = (proc, key)
            proc.stdin.write(secret + "\n")
        try:
            proc.stdin.write(" ".join(request) + "\n")
            proc.stdin.flush()
            # the first answer includes the import (a few s on a loaded host)
            if not select.select([proc.stdout], [], [], wait + 20)[0]:
                raise OSError(f"resident {kind} probe did not answer")
            answer = json.loads(proc.stdout.readline() or "null")
            if not isinstance(answer, dict):
                raise ValueError(f"resident {kind} probe ended")
            if "error" in answer:
                raise ValueError(f"resident {kind} probe: {answer['error']}")
            return answer.get("result")
        except (OSError, ValueError):
            _stop_resident(kind)
            raise


def _resident_ping(conf, url, dest, wait):
    """Replies of one Celery ping through the resident ping probe."""
    return _resident_call("ping", conf, url, (dest, str(wait)), wait, setup_args=(str(wait),))


def _haproxy_cmd(command, sock_path, timeout=3):
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


def haproxy_backends(backend=None, sock_path=None):
    """
    Servers of an haproxy backend from the admin socket (``show stat``); backend and socket
    default to the node settings ``haproxy_backend`` and ``haproxy_socket``.

    Returns a list of ``{'name', 'status' (UP/DOWN/DRAIN/MAINT...), 'scur', 'check_status', ...}``
    (an ``error`` dict without node settings).

    CLI Example:

    .. code-block:: bash

        salt infra airflow_health.haproxy_backends
    """
    if backend is None or sock_path is None:
        try:
            conf = _settings()
        except _NoSettings as exc:
            return _error(exc)
        backend = conf["haproxy_backend"] if backend is None else backend
        sock_path = conf["haproxy_socket"] if sock_path is None else sock_path
    return _parse_haproxy_stat(_haproxy_cmd("show stat\n", sock_path), backend)


def haproxy_set_server(server, state, sock_path=None, backend=None):
    """
    Set the runtime state (ready|drain|maint) of ``<backend>/<server>`` (no reload); backend
    and socket default to the node settings.

    CLI Example:

    .. code-block:: bash

        salt infra airflow_health.haproxy_set_server master2 drain
    """
    _check_server_state(server, state)  # refuse junk before anything else
    if backend is None or sock_path is None:
        try:
            conf = _settings()
        except _NoSettings as exc:
            return dict(_error(exc), server=server, state=state, result=False)
        backend = conf["haproxy_backend"] if backend is None else backend
        sock_path = conf["haproxy_socket"] if sock_path is None else sock_path
    command = _haproxy_command(server, state, backend)
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
    rows = _table("table")()
    if role_list is None:
        return rows
    wanted = _table("daemons_for_roles")(role_list)
    return [row for row in rows if row["name"] in wanted]


def address(cidr=None):
    """
    This node's addresses in the cluster network, pillar ``airflow:network:cidr`` (or ``cidr``):
    the mine function ``airflow_address`` (pillar/airflow/init.sls), so the network is set in
    one key only. ``[]`` (logged) when the key is missing or not a network: hosts.jinja then
    finds no address for this node, and map.jinja fails the run naming the key.

    CLI Example:

    .. code-block:: bash

        salt '*' airflow_health.address
    """
    import ipaddress  # pylint: disable=import-outside-toplevel

    cidr = cidr or (__pillar__.get("airflow", {}).get("network", {}) or {}).get("cidr")
    try:
        net = ipaddress.ip_network(str(cidr), strict=True)
    except ValueError:
        log.error("airflow_health.address: airflow:network:cidr is not a network: %r", cidr)
        return []
    fun = "network.ip_addrs6" if net.version == 6 else "network.ip_addrs"
    # a loopback network (a one-host test site) needs the loopback addresses listed
    return __salt__[fun](cidr=str(net), include_loopback=net.is_loopback)


def roles():
    """
    Roles of this node (grain ``roles``, a list).

    CLI Example:

    .. code-block:: bash

        salt '*' airflow_health.roles
    """
    value = __grains__.get("roles") or []
    return [value] if isinstance(value, str) else list(value)


def check(worker_ping_timeout=None, heartbeat_stale=None, daemons=None):
    """
    Health of every Airflow daemon of this node's roles, one dict ``{daemon: {status, ...}}``
    (see ``probe``; the defaults come from the node settings). ``daemons`` (a list) probes only
    those of them: a failover's candidate check asks for the two it judges, not for the
    scheduler heartbeat it has already read (a Python start, seconds on a loaded node).

    CLI Example:

    .. code-block:: bash

        salt '*' airflow_health.check
        salt master2 airflow_health.check daemons='[api-server, dag-processor]'
    """
    wanted = None if daemons is None else set(daemons if isinstance(daemons, (list, tuple)) else [daemons])
    result = {}
    for daemon in _table("daemons_for_roles")(roles()):
        if wanted is None or daemon in wanted:
            result[daemon] = probe(daemon, worker_ping_timeout, heartbeat_stale)
    return result


def probe(daemon, worker_ping_timeout=None, heartbeat_stale=None, start_grace=None,
          resident=False):
    """
    Health of ONE daemon on this node:
    ``{'status': ok|dead|hung|restarting|blocked|split|unknown, ...}``.

    By the daemon's probe kind (daemon table): ``heartbeat`` (scheduler) reports the CLUSTER's
    scheduler heartbeat (``ok`` if any running SchedulerJob heartbeated within
    ``heartbeat_stale`` s, ``dead`` if none, ``unknown`` if the metastore cannot be read);
    ``ping`` (worker): a running unit that does not answer a Celery ping is ``hung``, or
    ``restarting`` while it is ``starting``; ``api`` (api-server): the health endpoint
    (``blocked`` when it answers but its metastore is unhealthy); ``sql``/``amqp``/``socket``
    (PostgreSQL, RabbitMQ, haproxy): the daemon answers a query / an AMQP handshake / its
    admin socket; ``unit``: the systemd state. In active-standby mode a scheduler heartbeat
    from more than one host is ``split``. Defaults come from the node settings.
    ``resident=True`` (the beacon) reads the heartbeat through the long-lived probe process.

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.probe worker
    """
    row = _table("get")(daemon) if isinstance(daemon, str) else None
    if row is None:
        return {"status": "unknown", "detail": "unknown daemon"}
    svc = service(daemon, start_grace)
    entry = {"status": svc["status"], "unit": svc}
    if row["probe"] == "heartbeat":
        hb = scheduler_heartbeat(heartbeat_stale, resident=resident)
        entry["heartbeat"] = hb
        entry["status"] = {"ok": "ok", "stale": "dead", "none": "dead"}.get(hb["status"], "unknown")
        if entry["status"] == "ok" and _split(hb):
            entry["status"] = "split"  # two schedulers heartbeat in active-standby: fence one
            entry["yield"] = _must_yield(hb, _hostname())
        elif (entry["status"] == "ok" and svc.get("status") == "ok" and _standby_mode()
              and _must_yield(hb, _hostname())):
            # this node's scheduler runs but another one took over meanwhile: about to split
            entry["status"], entry["yield"] = "split", True
        return entry
    if svc["status"] != "ok":
        return entry
    if row["probe"] in _STATEFUL_PROBES:
        res = _STATEFUL_PROBES[row["probe"]]()
        entry[row["probe"]] = res
        entry["status"] = res["status"]
        if entry["status"] == "dead" and svc.get("starting"):
            entry["status"] = "restarting"  # e.g. RabbitMQ takes seconds to open its port
        return entry
    if row["probe"] == "ping":
        ping = worker_ping(worker_ping_timeout)
        entry["ping"] = ping
        entry["status"] = {"ok": "ok", "hung": "hung"}.get(ping["status"], "unknown")
        if entry["status"] == "hung" and svc.get("starting"):
            entry["status"] = "restarting"  # a (re)starting worker does not answer yet
    elif row["probe"] == "api":
        api = api_server()
        entry["api"] = api
        entry["status"] = {"ok": "ok", "down": "dead", "blocked": "blocked"}.get(
            api["status"], "unknown")
        if api.get("dependency"):
            entry["dependency"] = api["dependency"]
    return entry



# ---------------------------------------------------------------- stateful tier probes
def _must_yield(heartbeat, me):
    """
    Seen from this node: has this node's scheduler been superseded? Yes when another host's
    scheduler heartbeats (fresh) with a job started LATER than this node's newest running
    job, fresh or not: that one was started because this node looked dead (the guard lets a
    scheduler start only when no other heartbeat is fresh), e.g. during a partition that has
    healed since. A stale job of this node counts too: right after the heal this node's
    scheduler has not heartbeated yet, and it must step down before it does. Decided on the
    node, from the metastore alone: it works while the salt-master cannot reach the node yet.
    """
    stale = heartbeat.get("stale_seconds")
    if not isinstance(stale, (int, float)):
        return False
    rows = [r for r in heartbeat.get("schedulers") or []
            if isinstance(r, dict) and isinstance(r.get("hostname"), str)
            and isinstance(r.get("age"), (int, float)) and isinstance(r.get("started"), (int, float))]
    short = me.split(".")[0]
    mine = [r["started"] for r in rows if r["hostname"].split(".")[0] == short]
    others = [r["started"] for r in rows
              if r["hostname"].split(".")[0] != short and r["age"] <= stale]
    # "started" is seconds since the job started: a later start is a SMALLER number
    return bool(mine and others) and min(others) < min(mine)


def _standby_mode():
    try:
        return _settings()["scheduler_mode"] == "active-standby"
    except _NoSettings:
        return False


def _split(heartbeat):
    """More than one host heartbeats while the node settings say active-standby."""
    try:
        mode = _settings()["scheduler_mode"]
    except _NoSettings:
        return False
    hosts = {h.split(".")[0] for h in heartbeat.get("fresh") or [] if isinstance(h, str)}
    return mode == "active-standby" and len(hosts) > 1


def _probe_sql(timeout=5):
    """PostgreSQL answers ``SELECT 1`` on its local socket (as the postgres superuser)."""
    try:
        port = str(_settings()["database_port"])
    except _NoSettings as exc:
        return _error(exc)
    res = __salt__["cmd.run_all"](
        ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-p", port, "-c", "SELECT 1"],
        python_shell=False, ignore_retcode=True, output_loglevel="quiet", timeout=timeout,
    )
    if not res.get("retcode") and (res.get("stdout") or "").strip() == "1":
        return {"status": "ok"}
    return {"status": "dead", "detail": (res.get("stderr") or "no answer").strip()[:300]}


def _amqp_handshake(host, port, timeout):
    """True when ``host:port`` answers the AMQP 0-9-1 protocol header with Connection.Start."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        head = b""
        while len(head) < 11:
            chunk = sock.recv(11 - len(head))
            if not chunk:
                break
            head += chunk
    # frame type 1 (method) on channel 0, class 10 (connection) method 10 (start)
    return len(head) == 11 and head[0] == 1 and head[7:11] == b"\x00\x0a\x00\x0a"


def _probe_amqp(timeout=3):
    """RabbitMQ answers an AMQP handshake on this node's broker port (the broker app runs)."""
    try:
        port = _settings()["broker_port"]
    except _NoSettings as exc:
        return _error(exc)
    try:
        ok = _amqp_handshake("127.0.0.1", port, timeout)
    except OSError as exc:
        return {"status": "dead", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": "ok"} if ok else {"status": "dead", "detail": "no AMQP Connection.Start"}


def _probe_socket(timeout=3):
    """haproxy answers ``show info`` on its admin socket."""
    try:
        sock_path = _settings()["haproxy_socket"]
    except _NoSettings as exc:
        return _error(exc)
    try:
        out = _haproxy_cmd("show info\n", sock_path, timeout=timeout)
    except OSError as exc:
        return {"status": "dead", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": "ok"} if "Pid:" in out else {"status": "dead", "detail": out[:200]}


_STATEFUL_PROBES = {"sql": _probe_sql, "amqp": _probe_amqp, "socket": _probe_socket}


# ---------------------------------------------------------------- actions (healing runner)
def _systemctl(*argv, timeout=90):
    res = __salt__["cmd.run_all"](["systemctl", *argv], python_shell=False,
                                  ignore_retcode=True, output_loglevel="quiet", timeout=timeout)
    return not res.get("retcode"), (res.get("stderr") or "").strip()[:300]


def _table_unit(name):
    """``(unit, None)`` of a daemon of the table, else ``(None, refusal result)``."""
    if not isinstance(name, str) or _table("get")(name) is None:
        return None, {"result": False, "detail": f"not a daemon of the table: {name!r}"}
    unit = _unit(name)
    if unit is None:
        return None, {"result": False, "detail": f"node settings {SETTINGS_FILE} missing "
                                                   "(apply the airflow states)"}
    return unit, None


def restart(name, kill=False, enable=False):
    """
    Restart daemon ``name`` (a daemon of the table) the way the healing runner needs it:
    ``systemctl reset-failed`` first (a unit in systemd's start-limit state refuses any start),
    SIGKILL of every process of the unit first when ``kill`` (a hung Airflow daemon ignores
    SIGTERM), then ``systemctl restart`` (and ``enable`` first when asked: a scheduler the
    runner fenced before).

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.restart worker
        salt worker1 airflow_health.restart worker kill=True
    """
    unit, refused = _table_unit(name)
    if refused:
        return refused
    if enable:
        ok, err = _systemctl("enable", unit, timeout=30)
        if not ok:
            return {"result": False, "unit": unit, "detail": err}
    _systemctl("reset-failed", unit, timeout=30)  # fails harmlessly when not failed
    if kill:
        killed = kill_unit(name)
        if not killed["result"]:
            return {"result": False, "unit": unit, "detail": killed["detail"]}
    ok, err = _systemctl("restart", unit)
    return {"result": ok, "unit": unit, "detail": err}


def start(name, enable=False):
    """
    Start daemon ``name`` (``reset-failed`` first, see ``restart``), enabling it first when
    ``enable``.

    CLI Example:

    .. code-block:: bash

        salt master2 airflow_health.start scheduler enable=True
    """
    unit, refused = _table_unit(name)
    if refused:
        return refused
    if enable:
        ok, err = _systemctl("enable", unit, timeout=30)
        if not ok:
            return {"result": False, "unit": unit, "detail": err}
    _systemctl("reset-failed", unit, timeout=30)
    ok, err = _systemctl("start", unit)
    return {"result": ok, "unit": unit, "detail": err}


def stop(name, disable=False):
    """
    Stop daemon ``name`` (and disable it when ``disable``: fencing a scheduler, so that no
    reboot or highstate of this node starts it again before the runner allows it).

    CLI Example:

    .. code-block:: bash

        salt master1 airflow_health.stop scheduler disable=True
    """
    unit, refused = _table_unit(name)
    if refused:
        return refused
    ok, err = _systemctl("stop", unit, timeout=75)
    if ok and disable:
        ok, err = _systemctl("disable", unit, timeout=30)
    return {"result": ok, "unit": unit, "detail": err}


def units():
    """
    systemd state of every daemon of this node's roles, one ``systemctl show`` per daemon and
    no probe beyond systemd (what the periodic reconcile reads: cheap):
    ``{daemon: {status, active_state, sub_state, enabled, starting, n_restarts, result}}``
    (``n_restarts`` going up: systemd restarted it on its own, e.g. its watchdog; the
    reconcile audits that, with ``restart_causes``).

    CLI Example:

    .. code-block:: bash

        salt '*' airflow_health.units
    """
    out = {}
    for daemon in _table("daemons_for_roles")(roles()):
        svc = service(daemon)
        unit = svc.get("unit")
        enabled = None
        if svc.get("status") != "error" and unit:
            res = __salt__["cmd.run_all"](["systemctl", "is-enabled", unit], python_shell=False,
                                          ignore_retcode=True, output_loglevel="quiet")
            enabled = (res.get("stdout") or "").strip() == "enabled"
        out[daemon] = {k: svc.get(k) for k in ("status", "active_state", "sub_state", "starting",
                                               "n_restarts", "result")}
        out[daemon]["enabled"] = enabled
    return out


#: systemd's catalogued "Failed with result '...'" message (SD_MESSAGE_UNIT_FAILURE_RESULT);
#: its UNIT_RESULT field says why (``watchdog``, ``signal``, ``exit-code``, ``timeout`` ...).
UNIT_FAILURE_MESSAGE_ID = "d9b373ed55a64feb8242e02dbe79a49c"


def _parse_failures(text):
    """``journalctl -o json`` lines of UNIT_FAILURE_MESSAGE_ID -> [{at, result}], oldest first."""
    out = []
    for line in (text or "").splitlines():
        try:
            entry = json.loads(line)
            at = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        except (ValueError, KeyError, TypeError):
            continue
        result = entry.get("UNIT_RESULT")
        if isinstance(result, str) and result:
            out.append({"at": round(at, 3), "result": result[:40]})
    return out


def restart_causes(name, limit=5):
    """
    Why systemd stopped daemon ``name`` (a daemon of the table) lately: its last ``limit``
    failure records in the journal, ``{'unit', 'failures': [{'at' (epoch s), 'result'}]}``,
    oldest first; ``result`` ``watchdog`` is a watchdog timeout (WatchdogSec=). What the
    reconcile audits when ``units`` shows ``n_restarts`` going up. Read only.

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.restart_causes worker
    """
    unit, refused = _table_unit(name)
    if refused:
        return refused
    try:
        limit = max(1, min(int(limit), 50))
    except (TypeError, ValueError):
        limit = 5
    res = __salt__["cmd.run_all"](
        ["journalctl", "--no-pager", "-q", "-o", "json", "-n", str(limit), "-u", unit,
         "--output-fields=UNIT_RESULT", f"MESSAGE_ID={UNIT_FAILURE_MESSAGE_ID}"],
        python_shell=False, ignore_retcode=True, output_loglevel="quiet", timeout=20,
    )
    if res.get("retcode") and not res.get("stdout"):
        return {"unit": unit, "failures": [], "detail": (res.get("stderr") or "")[:300]}
    return {"unit": unit, "failures": _parse_failures(res.get("stdout"))}


def kill_unit(name):
    """
    SIGKILL every process of an Airflow unit (``systemctl kill --kill-who=all``): a hung, e.g.
    SIGSTOPped, worker does not react to SIGTERM. Only the ``airflow-*`` units of the daemon
    table; systemd / ``service.restart`` brings it back.

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_health.kill_unit worker
    """
    rows = _table("table")()
    unit = _unit(name)
    if unit not in {r["unit"] for r in rows} or not unit.startswith("airflow-"):
        return {"result": False, "detail": "only airflow units"}
    res = __salt__["cmd.run_all"](
        ["systemctl", "kill", "--signal=SIGKILL", "--kill-who=all", unit],
        python_shell=False, ignore_retcode=True, output_loglevel="quiet",
    )
    ok = not res.get("retcode")
    return {"result": ok, "unit": unit,
            "detail": "" if ok else (res.get("stderr") or "")[:300]}
