"""
systemd watchdog keep-alive of the Airflow daemons (managed by Salt: salt://airflow/files/airflow_watchdog.py).

Installed into the Airflow venv's site-packages with ``airflow_watchdog.pth`` (one line:
``import airflow_watchdog``), so it runs at the start of every Python process of the venv. It
does something only in the MAIN process of a unit with ``WatchdogSec=``: systemd sets
``WATCHDOG_PID`` (that process's pid), ``WATCHDOG_USEC`` and ``NOTIFY_SOCKET`` in its
environment. There it starts one daemon thread that sends ``WATCHDOG=1`` to NOTIFY_SOCKET
every WATCHDOG_USEC/3. Children (Celery prefork children, task processes, uvicorn workers)
inherit the environment but have another pid: no thread. Any error: nothing happens (this
must never break the start of a Python process).

What the keep-alive proves, and what it does not:

* it proves the process is SCHEDULED: an interpreter that is SIGSTOPped (a hang systemd
  cannot see: the unit stays "active"), frozen or dead sends nothing, and systemd kills it
  (``WatchdogSignal=SIGKILL``: a stopped process cannot act on SIGABRT) and restarts it
  (``Restart=on-failure``) after WatchdogSec, with no event, runner or network involved;
* it does NOT prove the daemon does its work: a deadlock, a stuck main loop or a lost broker
  connection leaves this thread alive. The second line stays: the node's beacon (Celery ping
  of the worker, scheduler heartbeat in the metastore) and the healing runner.

Pure standard library; nothing here reads or writes files.
"""

import os

#: WATCHDOG=1 this often per WatchdogSec (sd_watchdog_enabled(3) recommends half; a third
#: leaves two chances before the deadline on a loaded host).
BEATS_PER_PERIOD = 3


def notify_address(value):
    """NOTIFY_SOCKET as an AF_UNIX address: a leading '@' is the abstract namespace ('\\0')."""
    if not value or value[0] not in "/@":
        return None  # vsock (``vsock:...``) and other forms: not supported here
    return "\0" + value[1:] if value[0] == "@" else value


def period_seconds(environ, pid):
    """Seconds between two WATCHDOG=1 for process ``pid``, or None when it is not the
    watchdog's process (or the environment is incomplete or malformed)."""
    if environ.get("WATCHDOG_PID") != str(pid) or not environ.get("NOTIFY_SOCKET"):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1e6 / BEATS_PER_PERIOD


def _beat_forever(address, period):
    import socket  # only in the watchdog's process: every other Python start stays lean
    import time

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)  # never wait on systemd: a full queue drops one beat, not the thread
    while True:
        try:
            sock.sendto(b"WATCHDOG=1", address)
        except OSError:
            pass  # systemd re-executing, a full queue: the next beat tries again
        time.sleep(period)


def start(environ=None, pid=None):
    """Start the keep-alive thread when this is the watchdog's process; True when started."""
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    period = period_seconds(environ, pid)
    address = notify_address(environ.get("NOTIFY_SOCKET", "")) if period else None
    if address is None:
        return False
    import threading

    thread = threading.Thread(target=_beat_forever, args=(address, period),
                              name="systemd-watchdog-keepalive", daemon=True)
    thread.start()
    return True


try:
    start()
except Exception:  # pylint: disable=broad-except  # never break a Python start
    pass
