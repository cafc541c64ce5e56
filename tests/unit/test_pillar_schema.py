"""Unit tests of the pillar schema _utils/airflow_schema.py (pure) and the airflow_pillar module."""
import copy
import importlib.util
import logging
import pathlib
import sys

import jinja2
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
logging.getLogger("airflow_pillar_mod").disabled = True  # its unknown-key warnings


def _load(name, rel):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S = _load("schema_test_airflow_schema", "_utils/airflow_schema.py")
T = _load("schema_test_airflow_daemons", "_utils/airflow_daemons.py")
M = _load("airflow_pillar_mod", "_modules/airflow_pillar.py")
sys.path.insert(0, str(ROOT))
from lab import saltsetup as SALTSETUP  # noqa: E402  the lab's site pillar
M.__utils__ = {f"{mod.__virtualname__}.{n}": f for mod in (S, T) for n, f in vars(mod).items()
               if callable(f) and not n.startswith("_")}
FORMULA_DEFAULTS = yaml.safe_load((ROOT / "salt/airflow/defaults.yaml").read_text())["airflow"]
# defaults.yaml plus the one value every site must set (the cluster network has no default)
DEFAULTS = copy.deepcopy(FORMULA_DEFAULTS)
DEFAULTS["network"]["cidr"] = "10.77.0.0/24"
VALID_ID = T.valid_minion_id


def _with(path, value):
    """defaults.yaml with ``path`` (a:b:c) set to ``value``."""
    conf = copy.deepcopy(DEFAULTS)
    *parents, last = path.split(":")
    node = conf
    for part in parents:
        node = node[part]
    node[last] = value
    return conf


def _errors(path, value):
    return S.errors(_with(path, value), VALID_ID)


def _leaves(node, prefix=""):
    """Key paths of defaults.yaml: a scalar, a list or an empty mapping ends a path."""
    for key, value in node.items():
        path = f"{prefix}:{key}" if prefix else key
        if isinstance(value, dict) and value:
            yield from _leaves(value, path)
        else:
            yield path


def test_virtual():
    assert S.__virtual__() == "airflow_schema"
    assert M.__virtual__() == "airflow_pillar"


# ------------------------------------------------------------------ one source, defaults pass
def test_every_default_has_a_row_and_every_row_a_default():
    assert set(_leaves(DEFAULTS)) == set(S.SCHEMA)


def _merge(base, over):
    """slsutil.merge strategy=recurse, merge_lists=False (map.jinja)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _example_pillar():
    """pillar/examples/production.sls without its comment marks (the example is all comments)."""
    text = (ROOT / "pillar/examples/production.sls").read_text()
    body = text.split("\n# airflow:", 1)[1].split("\n#\n# More workers", 1)[0]
    return yaml.safe_load("\n".join(line[2:] for line in ("# airflow:" + body).splitlines()))


def test_defaults_lab_and_example_pillars_pass():
    assert S.errors(DEFAULTS, VALID_ID) == []
    assert S.unknown(DEFAULTS) == []
    # the formula's own pillar holds no site value: only the mine function, which follows
    # airflow:network:cidr (no second copy of the network)
    shipped = yaml.safe_load(jinja2.Template((ROOT / "pillar/airflow/init.sls").read_text()).render())
    assert shipped == {"mine_functions": {"airflow_address": {
        "mine_function": "airflow_health.address"}}}
    # the lab's site pillar (written by the lab driver) over the formula's defaults
    lab = yaml.safe_load(SALTSETUP.site_pillar_text())
    assert S.errors(_merge(FORMULA_DEFAULTS, lab["airflow"]), VALID_ID) == []
    example = _example_pillar()["airflow"]
    assert example["broker"]["scheme"] == "amqps" and example["worker"]["queues"] == ["default", "heavy"]
    merged = _merge(DEFAULTS, example)
    assert S.errors(merged, VALID_ID) == []
    assert S.unknown(merged) == []


def test_every_integer_of_defaults_is_checked_as_a_number():
    ints = [p for p in _leaves(DEFAULTS) if isinstance(_get(DEFAULTS, p), int)
            and not isinstance(_get(DEFAULTS, p), bool)]
    assert len(ints) >= 20
    for path in ints:
        assert S.SCHEMA[path]["kind"] in ("int", "number"), path
        errs = _errors(path, "many")
        assert errs and errs[0].startswith(f"airflow:{path} must be "), (path, errs)
        assert errs[0].endswith(", not 'many'"), errs


def _get(conf, path):
    for part in path.split(":"):
        conf = conf[part]
    return conf


# ------------------------------------------------------------------ integers, numbers, ports
def test_concurrency_must_be_a_positive_integer():
    assert _errors("worker:concurrency", "many") == \
        ["airflow:worker:concurrency must be an integer >= 1, not 'many'"]
    assert _errors("worker:concurrency", 0) == ["airflow:worker:concurrency must be an integer >= 1, not 0"]
    assert _errors("worker:concurrency", "4") == ["airflow:worker:concurrency must be an integer >= 1, not '4'"]
    assert _errors("worker:concurrency", 4.0)  # a float is not an integer
    assert _errors("worker:concurrency", True)  # a bool is not an integer
    assert _errors("worker:concurrency", 16) == []


@pytest.mark.parametrize("path", ["api_server:port", "flower:port", "database:port", "broker:port",
                                  "lb:port", "lb:http_port", "lb:stats_port"])
def test_ports(path):
    for bad in (0, 65536, -1, "8080", None):
        assert _errors(path, bad) == [f"airflow:{path} must be a port (an integer 1-65535), not {S.show(bad)}"]
    for good in (1, 5671, 65535):
        assert _errors(path, good) == []


def test_zero_allowed_where_systemd_allows_it():
    assert _errors("systemd:restart_sec", 0) == []
    assert _errors("systemd:dependency_wait", 0) == \
        ["airflow:systemd:dependency_wait must be an integer >= 1, not 0"]
    assert _errors("systemd:restart_sec", -1) == ["airflow:systemd:restart_sec must be an integer >= 0, not -1"]


def test_stale_heartbeat_must_be_three_beats():
    conf = _with("scheduler:heartbeat_sec", 4)
    conf["scheduler"]["heartbeat_stale"] = 11.5
    assert S.errors(conf, VALID_ID) == [
        "airflow:scheduler:heartbeat_stale must be >= 3 x airflow:scheduler:heartbeat_sec "
        "(3 x 4 = 12), not 11.5"]
    conf["scheduler"]["heartbeat_stale"] = 12
    assert S.errors(conf, VALID_ID) == []
    # a bad key has its own message, not a second one about the ratio
    assert _errors("scheduler:heartbeat_sec", 0) == \
        ["airflow:scheduler:heartbeat_sec must be an integer >= 1, not 0"]


def test_numbers_take_floats_and_bounds():
    assert _errors("scheduler:heartbeat_stale", 7.5) == []
    assert _errors("scheduler:heartbeat_stale", 0) == \
        ["airflow:scheduler:heartbeat_stale must be a number > 0, not 0"]
    assert _errors("healing:start_grace", 0) == []
    assert _errors("healing:start_grace", -0.5) == ["airflow:healing:start_grace must be a number >= 0, not -0.5"]
    assert _errors("healing:refire", float("inf"))
    assert _errors("healing:refire", float("nan"))
    assert _errors("healing:refire", False)


# ------------------------------------------------------------------ lists
def test_queues_string_is_an_error_not_split():
    assert _errors("worker:queues", "default") == \
        ["airflow:worker:queues must be a list of one or more non-empty strings, not 'default'"]
    assert _errors("worker:queues", []) == \
        ["airflow:worker:queues must be a list of one or more non-empty strings, not []"]
    assert _errors("worker:queues", ["default", ""])
    assert _errors("worker:queues", ["default", 3])
    assert _errors("worker:queues", ["default", "heavy"]) == []


def test_extras_list():
    assert _errors("extras", "celery,postgres") == \
        ["airflow:extras must be a list of non-empty strings, not 'celery,postgres'"]
    assert _errors("extras", []) == []  # no extra at all is a choice
    assert _errors("extras", ["celery", None])
    assert _errors("tofs:files_switch", "id")


# ------------------------------------------------------------------ enums
@pytest.mark.parametrize("path,good,bad,words", [
    ("scheduler:mode", "active-active", "active_standby", "one of active-standby, active-active"),
    ("database:driver", "mysql", "postgres", "one of postgresql, mysql"),
    ("broker:scheme", "amqps", "AMQP", "one of amqp, amqps"),
])
def test_enums(path, good, bad, words):
    assert _errors(path, good) == []
    assert _errors(path, bad) == [f"airflow:{path} must be {words}, not {bad!r}"]
    assert _errors(path, ["amqp"])


# ------------------------------------------------------------------ booleans
@pytest.mark.parametrize("path", ["database:external", "broker:external", "healing:enabled",
                                  "clean:purge_data"])
def test_booleans_are_real_booleans(path):
    assert _errors(path, True) == [] and _errors(path, False) == []
    for bad in ("false", "True", 0, 1, None):
        assert _errors(path, bad) == \
            [f"airflow:{path} must be a boolean (true or false, unquoted), not {S.show(bad)}"], bad


# ------------------------------------------------------------------ strings and paths
def test_strings_and_paths():
    assert _errors("version", 3.1) == ["airflow:version must be a non-empty string, not 3.1"]
    assert _errors("version", "") == ["airflow:version must be a non-empty string, not ''"]
    assert _errors("database:host", "") == []  # empty: the mine fills it in
    assert _errors("database:host", 5) == ["airflow:database:host must be a string, not 5"]
    assert _errors("tls:ca_cert", "") == []  # empty: the system trust store
    assert _errors("tls:ca_cert", None) == ["airflow:tls:ca_cert must be a string, not null"]
    assert _errors("home", "opt/airflow") == ["airflow:home must be an absolute path, not 'opt/airflow'"]
    assert _errors("lb:admin_socket", None) == ["airflow:lb:admin_socket must be an absolute path, not null"]


def test_long_values_are_cut():
    errs = _errors("user", ["x" * 200])
    assert len(errs[0]) < 150 and errs[0].endswith("...")


# ------------------------------------------------------------------ cidr, minion id
def test_cidr_syntax():
    assert _errors("network:cidr", "10.20.0.0/16") == []
    assert _errors("network:cidr", "fd00::/64") == []
    for bad in ("10.77.0.5/24", "10.77.0.0", "10.77.0.0/33", "lab", 10):
        assert _errors("network:cidr", bad) == \
            [f"airflow:network:cidr must be a network in CIDR notation (like 10.77.0.0/24), not {S.show(bad)}"]


def test_cidr_against_node_addresses():
    assert S.network_errors("10.77.0.0/24", ["127.0.0.1", "10.77.0.11"]) == []
    assert S.network_errors("fd00::/64", ["fd00::5%eth0"]) == []
    assert S.network_errors("10.77.0.0/24", ["127.0.0.1", "192.168.1.4"]) == \
        ["airflow:network:cidr 10.77.0.0/24 must contain an address of this node "
         "(its addresses: 127.0.0.1, 192.168.1.4)"]
    assert S.network_errors("10.77.0.0/24", []) == \
        ["airflow:network:cidr 10.77.0.0/24 must contain an address of this node (its addresses: none)"]
    assert S.network_errors("10.77.0.0/24", ["junk", "10.77.0.3"]) == []
    assert S.network_errors("not-a-cidr", ["10.77.0.3"]) == []  # errors() reports the syntax


def test_scheduler_active_syntax():
    assert _errors("scheduler:active", "") == []
    assert _errors("scheduler:active", "master2") == []
    errs = _errors("scheduler:active", "master 2; rm")
    assert errs and errs[0].startswith("airflow:scheduler:active must be empty or a minion id")
    assert _errors("scheduler:active", None)


def test_scheduler_active_must_be_a_known_master():
    masters = ["master1", "master2"]
    assert S.scheduler_errors("", masters, VALID_ID) == []
    assert S.scheduler_errors(None, masters, VALID_ID) == []
    assert S.scheduler_errors("master2", masters, VALID_ID) == []
    assert S.scheduler_errors("worker1", masters, VALID_ID) == \
        ["airflow:scheduler:active must be one of the airflow-master minions (master1, master2), not 'worker1'"]
    assert S.scheduler_errors("master1", [], VALID_ID) == \
        ["airflow:scheduler:active must be one of the airflow-master minions "
         "(none in the mine (run mine.update)), not 'master1'"]
    assert S.scheduler_errors("-bad", masters, VALID_ID)[0].startswith(
        "airflow:scheduler:active must be empty or a minion id")
    assert S.scheduler_errors(7, masters, VALID_ID)


# ------------------------------------------------------------------ mappings, secrets, structure
def test_secrets_and_config_values_never_shown():
    errs = _errors("secrets", ["hunter2-secret"])
    assert errs == ["airflow:secrets must be a mapping, not a list"]
    errs = _errors("config", {"database": "postgresql://u:hunter2@h/d"})
    assert errs == ["airflow:config:database must be a mapping, not a str"]
    assert not any("hunter2" in e for e in errs)
    assert _errors("config", {"core": {"parallelism": 128}}) == []
    assert _errors("secrets", {"db_password": "x"}) == []  # values: presence is checked where used


def test_tofs_source_files():
    assert _errors("tofs:source_files", {"airflow-lb-config": ["salt://site/haproxy.cfg.jinja"]}) == []
    assert _errors("tofs:source_files", {"airflow-lb-config": "salt://site/haproxy.cfg.jinja"}) == \
        ["airflow:tofs:source_files:airflow-lb-config must be a list of non-empty strings, "
         "not 'salt://site/haproxy.cfg.jinja'"]


def test_section_not_a_mapping_is_one_error():
    assert _errors("worker", 4) == ["airflow:worker must be a mapping, not 4"]
    assert S.errors("junk", VALID_ID) == ["airflow must be a mapping, not 'junk'"]


def test_missing_key_is_named():
    conf = copy.deepcopy(DEFAULTS)
    del conf["worker"]["concurrency"]
    assert S.errors(conf, VALID_ID) == ["airflow:worker:concurrency is missing (expected an integer >= 1)"]


def test_all_errors_in_one_message():
    conf = _with("worker:concurrency", "many")
    conf["worker"]["queues"] = "default"
    conf["scheduler"]["mode"] = "active_standby"
    errs = S.errors(conf, VALID_ID)
    assert len(errs) == 3
    msg = S.message(errs)
    assert msg.startswith("Bad pillar (3 errors): ")
    for key in ("airflow:worker:concurrency", "airflow:worker:queues", "airflow:scheduler:mode"):
        assert key in msg
    assert S.message([]) == ""
    assert S.message(["x"]) == "Bad pillar (1 error): x"


def test_unknown_keys_are_listed_not_errors():
    conf = copy.deepcopy(DEFAULTS)
    conf["site_thing"] = 1
    conf["worker"]["autoscale"] = "4,16"
    conf["config"]["core"] = {"parallelism": 1}  # content of a mapping row is not "unknown"
    assert S.errors(conf, VALID_ID) == []
    assert S.unknown(conf) == ["airflow:site_thing", "airflow:worker:autoscale"]
    assert S.unknown("junk") == []


def test_every_kind_is_described():
    for path, rule in S.SCHEMA.items():
        assert S.expected(rule), path
    with pytest.raises(ValueError):
        S.valid({"kind": "nope"}, 1, VALID_ID)
    assert S.expected(S.integer()) == "an integer"
    assert S.expected(S.integer(2, 9)) == "an integer 2-9"
    assert S.expected(S.number()) == "a number"
    assert S.expected(S.mapping(values=S.mapping())) == "a mapping whose values are mappings"


# ------------------------------------------------------------------ the execution module
@pytest.fixture
def grains(monkeypatch):
    g = {"ipv4": ["127.0.0.1", "10.77.0.21"], "ipv6": ["::1"], "roles": ["airflow-worker"]}
    monkeypatch.setattr(M, "__grains__", g, raising=False)
    return g


def test_module_check_good_and_bad(grains):
    assert M.check(DEFAULTS) == ""
    msg = M.check(_with("worker:concurrency", "many"))
    assert msg == "Bad pillar (1 error): airflow:worker:concurrency must be an integer >= 1, not 'many'"


def test_module_cidr_against_the_node(grains):
    conf = _with("network:cidr", "10.99.0.0/24")
    assert M.errors(conf) == ["airflow:network:cidr 10.99.0.0/24 must contain an address of this node "
                              "(its addresses: 127.0.0.1, 10.77.0.21, ::1)"]
    grains["roles"] = "airflow-master"  # a string grain counts as one role
    assert M.errors(conf)
    grains["roles"] = []  # not a cluster node (only the clean states): not its network
    assert M.errors(conf) == []
    grains["roles"] = ["web"]
    assert M.errors(conf) == []
    assert M.errors(conf, addresses=["10.99.0.7"]) == []


def test_module_scheduler(grains):
    assert M.check_scheduler("master1", ["master1", "master2"]) == ""
    assert M.scheduler_errors("master3", ["master1"]) == \
        ["airflow:scheduler:active must be one of the airflow-master minions (master1), not 'master3'"]
    assert M.check_scheduler("master3", ["master1"]).startswith("Bad pillar (1 error): airflow:scheduler:active")


def test_module_warns_unknown_key_once(grains, monkeypatch):
    seen = []
    monkeypatch.setattr(M.log, "warning", lambda fmt, *args: seen.append(fmt % args))
    monkeypatch.setattr(M, "_WARNED", set())
    conf = copy.deepcopy(DEFAULTS)
    conf["site_thing"] = 1
    assert M.errors(conf) == [] and M.errors(conf) == []
    assert seen == ["airflow_pillar: airflow:site_thing is not a key of the airflow formula (accepted)"]


def test_module_without_utils_says_how_to_fix(monkeypatch):
    from salt.exceptions import CommandExecutionError

    monkeypatch.setattr(M, "__utils__", {})
    with pytest.raises(CommandExecutionError, match="saltutil.sync_all"):
        M.check({})


def test_the_cluster_network_is_required_and_has_no_default():
    assert FORMULA_DEFAULTS["network"]["cidr"] == ""
    errs = S.errors(FORMULA_DEFAULTS, VALID_ID)
    assert len(errs) == 1 and errs[0].startswith("airflow:network:cidr is required: "), errs
    assert _errors("network:cidr", None)[0].startswith("airflow:network:cidr is required")


# ------------------------------------------------------------------ systemd watchdog
def test_watchdog_defaults():
    assert DEFAULTS["systemd"]["watchdog_sec"] == 5
    # the worker's is shorter (its hang recovery target, issue 12): each beat a third of it
    assert 0 < DEFAULTS["worker"]["watchdog_sec"] < DEFAULTS["systemd"]["watchdog_sec"]


def test_watchdog_values():
    assert _errors("systemd:watchdog_sec", 0) == []              # off
    assert _errors("worker:watchdog_sec", 0) == []                # off for the worker
    assert _errors("worker:watchdog_sec", -1) == [
        "airflow:worker:watchdog_sec must be an integer >= 0, not -1"]
    assert _errors("systemd:watchdog_sec", "5s") == [
        "airflow:systemd:watchdog_sec must be an integer >= 0, not '5s'"]
    assert _errors("systemd:watchdog_sec", True) == [
        "airflow:systemd:watchdog_sec must be an integer >= 0, not True"]
