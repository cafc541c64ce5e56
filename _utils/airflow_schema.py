"""
The schema of the merged ``airflow`` settings (defaults.yaml + pillar, as map.jinja builds them)
and its checks (Salt utility module ``airflow_schema``).

``SCHEMA`` is the one table: key path -> expected kind. Adding a key to defaults.yaml is one
row here (``tests/unit/test_pillar_schema.py`` fails when a default has no row or a row no
default). The execution module ``airflow_pillar`` runs the checks where the states render:
map.jinja (every key, plus the CIDR against the node's own addresses) and hosts.jinja
(``scheduler:active`` against the airflow-master minions of the mine); a bad value fails the
render with every error in one message, each naming the key and what was expected.

Strict on purpose: YAML turns ``4`` into an int and ``'4'`` into a string, ``false`` into a
boolean and ``'false'`` into a (true) string; a string where a list belongs is an error, never
split into characters. Keys not in the table are accepted (sites add their own) and reported by
``unknown`` so the caller can warn. Values of mapping kinds (``secrets``, ``config``) never
appear in a message: they may hold passwords.

Pure data and pure functions (no Salt, no I/O): the minion-id rule is the caller's
``valid_minion_id`` (``_utils/airflow_daemons.py``, its one home).
"""

import ipaddress
import math

__virtualname__ = "airflow_schema"


def __virtual__():
    return __virtualname__


# ------------------------------------------------------------------ kinds (one row = one key)
def integer(minimum=None, maximum=None):
    """An int (not a bool, not a string of digits), optionally bounded."""
    return {"kind": "int", "min": minimum, "max": maximum}


def number(minimum=None, above=None):
    """An int or float (not a bool): ``minimum`` inclusive, ``above`` exclusive."""
    return {"kind": "number", "min": minimum, "above": above}


def string(empty=False):
    """A string; empty only when ``empty`` (e.g. a host that the mine fills in)."""
    return {"kind": "str", "empty": empty}


def enum(*values):
    """One of ``values`` (strings)."""
    return {"kind": "enum", "values": values}


def str_list(empty=True):
    """A list of non-empty strings; at least one item unless ``empty``."""
    return {"kind": "list", "empty": empty}


def mapping(values=None, secret=False):
    """A dict; ``values`` the kind of every value (``mapping()`` or ``str_list()``) when given.
    ``secret``: the content is never shown in a message."""
    return {"kind": "map", "values": values, "secret": secret}


PORT = integer(1, 65535)
BOOL = {"kind": "bool"}
PATH = {"kind": "path"}
CIDR = {"kind": "cidr"}
MINION_ID = {"kind": "minion_id"}  # empty allowed: the first airflow-master of the mine

SCHEMA = {
    "version": string(),  # a string: unquoted 3.10 would be the float 3.1
    "home": PATH,
    "venv": PATH,
    "user": string(),
    "group": string(),
    "extras": str_list(),
    "constraints": string(empty=True),
    "dags_folder": PATH,
    "network:cidr": dict(CIDR, required="the cluster network in CIDR notation (like 10.20.0.0/16), "
                                        "a site value: set it in the site's pillar"),
    "scheduler:mode": enum("active-standby", "active-active"),
    "scheduler:active": MINION_ID,
    "scheduler:heartbeat_sec": integer(1),
    "scheduler:heartbeat_stale": number(above=0),
    "scheduler:task_instance_heartbeat_timeout": integer(1),
    "scheduler:watchdog_sec": integer(0),  # wins over systemd:watchdog_sec for the scheduler
    "scheduler:restart_sec": integer(0),  # wins over systemd:restart_sec for the scheduler
    "dag_processor:parsing_processes": integer(1),
    "worker:concurrency": integer(1),
    "worker:queues": str_list(empty=False),
    "worker:watchdog_sec": integer(0),  # wins over systemd:watchdog_sec for the worker
    "api_server:workers": integer(1),
    "api_server:port": PORT,
    "flower:port": PORT,
    "flower:user": string(),
    "database:external": BOOL,
    "database:driver": enum("postgresql", "mysql"),
    "database:host": string(empty=True),
    "database:port": PORT,
    "database:name": string(),
    "database:user": string(),
    "database:results_name": string(),
    "database:results_user": string(),
    "database:postgresql_version": integer(1),
    "broker:external": BOOL,
    "broker:scheme": enum("amqp", "amqps"),
    "broker:host": string(empty=True),
    "broker:port": PORT,
    "broker:vhost": string(),
    "broker:user": string(),
    "lb:host": string(empty=True),
    "lb:port": PORT,
    "lb:http_port": PORT,
    "lb:tls_pem": PATH,
    "lb:stats_port": PORT,
    "lb:stats_user": string(),
    "lb:admin_socket": PATH,
    "lb:backend": string(),
    "lb:check:inter_ms": integer(100, 60000),
    "lb:check:fastinter_ms": integer(100, 60000),
    "lb:check:timeout_ms": integer(100, 60000),
    "lb:check:fall": integer(1, 10),
    "lb:check:rise": integer(1, 10),
    "tls:ca_cert": string(empty=True),  # PEM text; empty: the system trust store
    "systemd:restart_sec": integer(0),
    "systemd:dependency_wait": integer(1),
    "systemd:dependency_poll_max": integer(1),
    "systemd:timeout_stop_sec": integer(1),
    "systemd:watchdog_sec": integer(0),  # 0: no WatchdogSec= (off)
    "enforce:enabled": BOOL,
    "enforce:mode": enum("enforce", "report"),
    "enforce:interval": integer(60),
    "enforce:splay": integer(0),
    "healing:enabled": BOOL,
    "healing:interval": integer(1),
    "healing:worker_ping_failures": integer(1),
    "healing:worker_ping_timeout": number(above=0),
    "healing:scheduler_check_every": number(above=0),
    "healing:refire": number(above=0),
    "healing:start_grace": number(minimum=0),
    "tofs:path_prefix": string(empty=True),
    "tofs:dirs:files": string(),
    "tofs:files_switch": str_list(),
    "tofs:source_files": mapping(values=str_list()),
    "clean:purge_data": BOOL,
    "config": mapping(values=mapping(), secret=True),  # airflow.cfg overrides may hold passwords
    "secrets": mapping(secret=True),  # presence is checked where used (map.jinja secret())
}

#: (key, factor, other key): key must be >= factor x other key. A stale threshold under 3
#: stored beats (a live heartbeat is stored 1-2 beats old) would call a live scheduler dead.
RATIOS = (
    ("scheduler:heartbeat_stale", 3, "scheduler:heartbeat_sec"),
)


# ------------------------------------------------------------------ describing
def expected(rule):
    """What ``rule`` asks for, in words (the ``must be ...`` part of a message)."""
    kind = rule["kind"]
    if kind == "int" and (rule["min"], rule["max"]) == (1, 65535):
        return "a port (an integer 1-65535)"
    if kind == "int":
        if rule["min"] is not None and rule["max"] is not None:
            return f"an integer {rule['min']}-{rule['max']}"
        if rule["min"] is not None:
            return f"an integer >= {rule['min']}"
        return "an integer"
    if kind == "number":
        if rule["above"] is not None:
            return f"a number > {rule['above']}"
        if rule["min"] is not None:
            return f"a number >= {rule['min']}"
        return "a number"
    if kind == "str":
        return "a string" if rule["empty"] else "a non-empty string"
    if kind == "enum":
        return "one of " + ", ".join(rule["values"])
    if kind == "list":
        return ("a list of non-empty strings" if rule["empty"]
                else "a list of one or more non-empty strings")
    if kind == "map":
        if rule["values"] is not None:
            return "a mapping whose values are " + _plural(expected(rule["values"]))
        return "a mapping"
    return {
        "bool": "a boolean (true or false, unquoted)",
        "path": "an absolute path",
        "cidr": "a network in CIDR notation (like 10.77.0.0/24)",
        "minion_id": "empty or a minion id (letters, digits, '_', '.', '-'; first a letter or digit)",
    }[kind]


def _plural(text):
    return "mappings" if text == "a mapping" else text.replace("a list", "lists", 1)


def show(value):
    """A value as a message shows it: short, quoted when a string, no mapping content."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_of(value):
    """A value's type only (for mappings that may hold secrets)."""
    return "null" if value is None else "a " + type(value).__name__


# ------------------------------------------------------------------ checking
def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _valid_cidr(value):
    if not isinstance(value, str) or "/" not in value:
        return False
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return True


def valid(rule, value, valid_minion_id):
    """True when ``value`` is of the kind ``rule`` asks for."""
    kind = rule["kind"]
    if kind == "int":
        return _is_int(value) and (rule["min"] is None or value >= rule["min"]) and \
            (rule["max"] is None or value <= rule["max"])
    if kind == "number":
        return _is_number(value) and (rule["min"] is None or value >= rule["min"]) and \
            (rule["above"] is None or value > rule["above"])
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str) and (rule["empty"] or value != "")
    if kind == "path":
        return isinstance(value, str) and value.startswith("/")
    if kind == "enum":
        return isinstance(value, str) and value in rule["values"]
    if kind == "list":
        return isinstance(value, list) and (rule["empty"] or bool(value)) and \
            all(isinstance(item, str) and item != "" for item in value)
    if kind == "map":
        return isinstance(value, dict) and (rule["values"] is None or all(
            valid(rule["values"], item, valid_minion_id) for item in value.values()))
    if kind == "cidr":
        return _valid_cidr(value)
    if kind == "minion_id":
        return value == "" or bool(valid_minion_id(value))
    raise ValueError(f"unknown schema kind {kind!r}")


def _lookup(config, path):
    """(found, value, error): walk ``a:b:c``; error when a step on the way is not a mapping."""
    node = config
    parts = path.split(":")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            prefix = ":".join(parts[:depth])
            return False, None, f"airflow:{prefix} must be a mapping, not {show(node)}"
        if part not in node:
            return False, None, None
        node = node[part]
    return True, node, None


def section(prefix):
    """The schema's rules under ``prefix`` (``enforce``: ``enforce:mode``, ...), to check one
    section (_pillar/airflow_enforce.py)."""
    return {path: rule for path, rule in SCHEMA.items() if path.startswith(prefix + ":")}


def errors(config, valid_minion_id, schema=None):
    """
    Every schema error of the merged settings ``config`` (the ``airflow`` dict), one message
    each: ``airflow:worker:concurrency must be an integer >= 1, not 'many'``. ``[]``: all good.
    """
    schema = SCHEMA if schema is None else schema
    if not isinstance(config, dict):
        return [f"airflow must be a mapping, not {show(config)}"]
    out = []
    for path, rule in schema.items():
        found, value, error = _lookup(config, path)
        if error:
            if error not in out:  # one error per broken section, not one per key below it
                out.append(error)
            continue
        if not found:
            out.append(f"airflow:{path} is missing (expected {expected(rule)})")
        else:
            out.extend(_check(path, rule, value, valid_minion_id))
    if schema is SCHEMA:
        out.extend(_ratio_errors(config, valid_minion_id))
    return out


def _ratio_errors(config, valid_minion_id):
    """RATIOS between keys that are each valid (a bad key has its own message already)."""
    out = []
    for path, factor, other in RATIOS:
        values = []
        for key in (path, other):
            found, value, error = _lookup(config, key)
            if not found or error or not valid(SCHEMA[key], value, valid_minion_id):
                break
            values.append(value)
        else:
            if values[0] < factor * values[1]:
                out.append(f"airflow:{path} must be >= {factor} x airflow:{other} "
                           f"({factor} x {show(values[1])} = {show(factor * values[1])}), "
                           f"not {show(values[0])}")
    return out


def _check(path, rule, value, valid_minion_id):
    secret = rule.get("secret")
    if rule["kind"] == "map" and isinstance(value, dict) and rule["values"] is not None:
        # name the bad entry (its key; its value only when not secret)
        return [_check(f"{path}:{key}", dict(rule["values"], secret=secret), item, valid_minion_id)[0]
                for key, item in value.items() if not valid(rule["values"], item, valid_minion_id)]
    if valid(rule, value, valid_minion_id):
        return []
    if rule.get("required") and value in (None, ""):
        return [f"airflow:{path} is required: {rule['required']}"]
    shown = _kind_of(value) if secret else show(value)
    return [f"airflow:{path} must be {expected(rule)}, not {shown}"]


def unknown(config, schema=None):
    """Key paths of ``config`` that no row names (sites may add keys; callers may warn)."""
    schema = SCHEMA if schema is None else schema
    known = set(schema)
    prefixes = {":".join(path.split(":")[:n]) for path in schema for n in range(1, path.count(":") + 1)}
    out = []

    def walk(node, prefix):
        for key, value in node.items():
            path = f"{prefix}:{key}" if prefix else str(key)
            if path in known:
                continue  # a row covers it and everything below (mappings: their content)
            if path in prefixes and isinstance(value, dict):
                walk(value, path)
            else:
                out.append("airflow:" + path)

    if isinstance(config, dict):
        walk(config, "")
    return sorted(out)


def network_errors(cidr, addresses):
    """
    ``airflow:network:cidr`` against this node's own addresses (grains ipv4 + ipv6): ``[]``
    when one of them is in the network. A CIDR that is not valid is ``errors``' business.
    """
    if not _valid_cidr(cidr):
        return []
    net = ipaddress.ip_network(cidr, strict=True)
    for addr in addresses or []:
        try:
            if ipaddress.ip_address(str(addr).split("%")[0]) in net:
                return []
        except ValueError:
            continue
    listed = ", ".join(str(a) for a in addresses or []) or "none"
    return [f"airflow:network:cidr {cidr} must contain an address of this node (its addresses: {listed})"]


def scheduler_errors(active, masters, valid_minion_id):
    """
    ``airflow:scheduler:active`` (when not empty) against the airflow-master minions the mine
    knows (``masters``, minion ids): ``[]`` when it is one of them.
    """
    if active in (None, ""):
        return []
    if not isinstance(active, str) or not valid_minion_id(active):
        return [f"airflow:scheduler:active must be {expected(MINION_ID)}, not {show(active)}"]
    if active in (masters or []):
        return []
    known = ", ".join(sorted(masters)) if masters else "none in the mine (run mine.update)"
    return [f"airflow:scheduler:active must be one of the airflow-master minions ({known}), "
            f"not {show(active)}"]


def message(errs):
    """All errors in one render-error message; ``''`` when there are none."""
    if not errs:
        return ""
    return "Bad pillar (" + str(len(errs)) + " error" + ("s" if len(errs) > 1 else "") + "): " + \
        "; ".join(errs)
