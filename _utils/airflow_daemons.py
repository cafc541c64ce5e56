"""
The one daemon table of the Airflow cluster and the one minion-id rule (Salt utility module).

Everything that names a daemon reads it from here: the execution module ``airflow_health``
(minions), the beacon (through that module), the healing runner (master, through
``__utils__``), the states (``salt['airflow_health.daemons']()``) and the reactor (which hands
raw names to the runner, where they are checked against this table). ``tests/unit`` fails if
any other file re-declares a daemon -> unit mapping or a minion-id pattern.

Columns:
    name   the daemon's name in events, audit records and the runner (``worker``)
    unit   its systemd unit (``airflow-worker``)
    role   the ``roles`` grain value that runs it (``airflow-worker``)
    unit   its systemd unit (``airflow-worker``); ``{postgresql_version}`` is filled in from
           the node settings (``unit_of(name, postgresql_version=15)``)
    probe  how its health is seen beyond systemd:
           ``unit``      systemd state only
           ``api``       HTTP health endpoint (``/api/v2/monitor/health``)
           ``heartbeat`` scheduler heartbeat in the metastore (cluster-wide)
           ``ping``      Celery ping of this node's worker through the broker
           ``sql``       the database answers ``SELECT 1`` on the local socket
           ``amqp``      the broker answers an AMQP 0-9-1 handshake on its port
           ``socket``    haproxy answers ``show info`` on its admin socket
    needs  daemons it cannot work without (its dependencies): a daemon that fails while one of
           them is down is attributed to that dependency, not restarted or moved
    keepalive  True when its main process is a Python process of the Airflow venv, so the
           venv's systemd watchdog keep-alive (salt/airflow/files/airflow_watchdog.py) runs in
           it: only such a unit may get ``WatchdogSec=`` (airflow:systemd:watchdog_sec). A
           fact about the daemon, not a site policy: PostgreSQL, RabbitMQ and haproxy never
           send WATCHDOG=1 (systemd would kill them every WatchdogSec)

Pure data and pure functions: importable by Salt's utils loader and by plain Python (tests).
"""

import inspect
import re
import types

__virtualname__ = "airflow_daemons"

DAEMONS = (
    {"name": "api-server", "unit": "airflow-api-server", "role": "airflow-master", "probe": "api",
     "needs": ("postgresql",), "keepalive": True},
    {"name": "scheduler", "unit": "airflow-scheduler", "role": "airflow-master",
     "probe": "heartbeat", "needs": ("postgresql",), "keepalive": True},
    {"name": "dag-processor", "unit": "airflow-dag-processor", "role": "airflow-master",
     "probe": "unit", "needs": ("postgresql",), "keepalive": True},
    {"name": "triggerer", "unit": "airflow-triggerer", "role": "airflow-master", "probe": "unit",
     "needs": ("postgresql",), "keepalive": True},
    # the Celery result backend is the metastore: a worker needs both
    {"name": "worker", "unit": "airflow-worker", "role": "airflow-worker", "probe": "ping",
     "needs": ("rabbitmq", "postgresql"), "keepalive": True},
    {"name": "flower", "unit": "airflow-flower", "role": "airflow-flower", "probe": "unit",
     "needs": ("rabbitmq",), "keepalive": True},
    # the real cluster unit (Debian's ``postgresql`` wrapper stays "active (exited)" when the
    # postmaster dies); the version comes from the node settings (airflow:database)
    {"name": "postgresql", "unit": "postgresql@{postgresql_version}-main", "role": "airflow-db",
     "probe": "sql", "needs": (), "keepalive": False},
    {"name": "rabbitmq", "unit": "rabbitmq-server", "role": "airflow-broker", "probe": "amqp",
     "needs": (), "keepalive": False},
    {"name": "haproxy", "unit": "haproxy", "role": "airflow-lb", "probe": "socket", "needs": (),
     "keepalive": False},
)

#: Minion ids (and haproxy server names, which are minion ids): starts with a letter or digit,
#: then letters, digits, ``_ . -``; at most 128 characters. Nothing that a shell, a path or a
#: Salt target expression could interpret.
MINION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_MINION_ID_RE = re.compile(MINION_ID_PATTERN)


def __virtual__():
    return __virtualname__


def api():
    """This module's functions as one object (the healing runner hands it to its concerns)."""
    return types.SimpleNamespace(**{
        name: fn for name, fn in globals().items()
        if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == __name__})


def table():
    """The daemon table: a list of ``{name, unit, role, probe, needs, keepalive}`` dicts (copies)."""
    return [dict(row, needs=list(row["needs"])) for row in DAEMONS]


def names():
    """Daemon names in table order."""
    return [row["name"] for row in DAEMONS]


def get(name):
    """The row of daemon ``name`` (a copy), or None when it is not in the table."""
    for row in DAEMONS:
        if row["name"] == name:
            return dict(row, needs=list(row["needs"]))
    return None


def unit_of(name, **facts):
    """
    systemd unit of daemon ``name`` (KeyError when unknown), its placeholders filled from
    ``facts`` (``postgresql_version``; KeyError naming the fact when one is missing).
    """
    row = get(name)
    if row is None:
        raise KeyError(f"unknown daemon {name!r}")
    try:
        return row["unit"].format(**facts)
    except KeyError as exc:
        raise KeyError(f"unit of {name!r} needs {exc.args[0]!r}") from None


def needs(name):
    """Dependencies of daemon ``name`` (daemon names, table order); KeyError when unknown."""
    row = get(name)
    if row is None:
        raise KeyError(f"unknown daemon {name!r}")
    return list(row["needs"])


def role_of(name):
    """Role that runs daemon ``name`` (KeyError when unknown)."""
    row = get(name)
    if row is None:
        raise KeyError(f"unknown daemon {name!r}")
    return row["role"]


def roles():
    """Every role that runs a daemon, in table order."""
    out = []
    for row in DAEMONS:
        if row["role"] not in out:
            out.append(row["role"])
    return out


def keepalive_daemons():
    """Daemon names whose main process runs the venv's watchdog keep-alive (table order)."""
    return [row["name"] for row in DAEMONS if row["keepalive"]]


def daemons_for_roles(role_list):
    """Daemon names run by any role of ``role_list`` (a list or one string), in table order."""
    if isinstance(role_list, str):
        role_list = [role_list]
    wanted = set(role_list or [])
    return [row["name"] for row in DAEMONS if row["role"] in wanted]


def valid_minion_id(value):
    """True when ``value`` is a string that follows MINION_ID_PATTERN."""
    return isinstance(value, str) and bool(_MINION_ID_RE.match(value))
