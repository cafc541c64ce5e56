"""Shared bits of the lab driver: paths, topology, command helpers, progress output.

The lab is six systemd-nspawn nodes on the bridge ``airlab0`` (10.77.0.0/24):

* ``salt``    10.77.0.2   salt-master (the repo is bind-mounted read-only at /srv/airflow)
* ``master1`` 10.77.0.11  airflow-master
* ``master2`` 10.77.0.12  airflow-master
* ``worker1`` 10.77.0.21  airflow-worker
* ``worker2`` 10.77.0.22  airflow-worker
* ``infra``   10.77.0.30  airflow-db + airflow-broker + airflow-lb

All stateful services share ONE infra node on purpose: it keeps the whole lab inside
24 GiB / 2 cores, and there is only one NAT'd node that holds PostgreSQL, RabbitMQ and
haproxy, which is what the tests address (https://10.77.0.30/, certificate from the lab's CA:
lab.saltsetup.CA_CERT; plain http://10.77.0.30/ redirects).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("AIRFLOW_LAB_DIR", "/var/lib/airflow-lab"))
IMAGES = STATE / "images"
NODES_DIR = STATE / "nodes"
CACHE = STATE / "cache"
SECRETS = STATE / "secrets.yaml"
TOPOLOGY_FILE = STATE / "topology.json"
TIMINGS_FILE = STATE / "timings.json"

BRIDGE = "airlab0"
GATEWAY = "10.77.0.1"
SUBNET = "10.77.0.0/24"
PREFIX = 24
COMMENT = "airflow-lab"
SALT_NODE = "salt"
SALT_IP = "10.77.0.2"
LB_URL = "https://10.77.0.30/"       # haproxy: HTTPS (lab CA: saltsetup.CA_CERT); http:// redirects
STATS_URL = "http://10.77.0.30:1936/"
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_TOPOLOGY = {
    "salt": {"ip": "10.77.0.2", "roles": []},
    "master1": {"ip": "10.77.0.11", "roles": ["airflow-master"]},
    "master2": {"ip": "10.77.0.12", "roles": ["airflow-master"]},
    "worker1": {"ip": "10.77.0.21", "roles": ["airflow-worker"]},
    "worker2": {"ip": "10.77.0.22", "roles": ["airflow-worker"]},
    "infra": {"ip": "10.77.0.30", "roles": ["airflow-db", "airflow-broker", "airflow-lb"]},
}

_T0 = time.monotonic()
_print_lock = threading.Lock()


class LabError(RuntimeError):
    pass


def progress(msg: str) -> None:
    with _print_lock:
        print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.monotonic() - _T0


def run(argv, check=True, capture=True, timeout=None, input=None, env=None):
    """Run argv on the host; text mode. Raises LabError with output on failure."""
    try:
        p = subprocess.run(argv, text=True, capture_output=capture, timeout=timeout,
                           input=input, env=env)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timeout after {timeout}s: {' '.join(map(str, argv))}") from e
    if check and p.returncode != 0:
        out = ((p.stdout or "") + (p.stderr or "")).strip()
        raise LabError(f"command failed (rc={p.returncode}): {' '.join(map(str, argv))}\n{out[-3000:]}")
    return p


def topology() -> dict:
    """Current topology: defaults plus nodes added with add-node (persisted in the state dir)."""
    topo = {k: dict(v) for k, v in DEFAULT_TOPOLOGY.items()}
    if TOPOLOGY_FILE.exists():
        topo.update(json.loads(TOPOLOGY_FILE.read_text()))
    return topo


def save_topology(topo: dict) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    TOPOLOGY_FILE.write_text(json.dumps(topo, indent=2, sort_keys=True))


def minions(topo=None) -> list[str]:
    return [n for n in (topo or topology()) if n != SALT_NODE]


def record_timing(name: str, seconds: float) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    data = {}
    if TIMINGS_FILE.exists():
        try:
            data = json.loads(TIMINGS_FILE.read_text())
        except ValueError:
            data = {}
    data[name] = round(seconds, 1)
    TIMINGS_FILE.write_text(json.dumps(data, indent=2, sort_keys=True))


def parallel(fn, items, what="task"):
    """Run fn(item) in threads; raise the first error after all finished."""
    errors: dict = {}
    results: dict = {}

    def wrap(item):
        try:
            results[item] = fn(item)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors[item] = e

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for item, e in errors.items():
            progress(f"{item}: {what} FAILED: {e}")
        raise LabError(f"{what} failed on: {', '.join(map(str, errors))}")
    return results


LOCK_FILE = STATE / ".lock"
_lock = threading.RLock()
_lock_state = {"depth": 0, "fd": None}


@contextlib.contextmanager
def lab_lock(what: str):
    """One lab operation at a time on this host (flock on STATE/.lock; re-entrant in a thread).
    Two processes changing the lab at once (e.g. a test run's `up` while another run's `down`
    deletes the node directories) corrupt the nodes."""
    with _lock:
        if _lock_state["depth"] == 0:
            STATE.mkdir(parents=True, exist_ok=True)
            fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
                progress(f"lab: waiting for another lab operation to finish ({holder})")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
            _lock_state["fd"] = fd
        _lock_state["depth"] += 1
        try:
            yield
        finally:
            _lock_state["depth"] -= 1
            if _lock_state["depth"] == 0:
                fd, _lock_state["fd"] = _lock_state["fd"], None
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def locked(fn):
    """Decorator: the lab operation fn runs under lab_lock."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with lab_lock(fn.__name__):
            return fn(*a, **kw)
    return wrapper


def need_root():
    if os.geteuid() != 0:
        sys.exit("lab: must run as root")
