"""Unit tests of the daemon table and minion-id rule, _utils/airflow_daemons.py."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("core_daemons_test", ROOT / "_utils/airflow_daemons.py")
T = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(T)


def test_table_shape_and_copies():
    rows = T.table()
    assert [r["name"] for r in rows] == T.names()
    assert all(set(r) == {"name", "unit", "role", "probe", "needs", "keepalive"} for r in rows)
    assert {r["probe"] for r in rows} == {"unit", "api", "heartbeat", "ping", "sql", "amqp",
                                          "socket"}
    # dependencies are daemons of the table, and the stateful tier depends on nothing
    assert all(set(r["needs"]) <= set(T.names()) for r in rows)
    assert all(not T.needs(d) for d in ("postgresql", "rabbitmq", "haproxy"))
    rows[0]["needs"].append("evil")
    assert "evil" not in T.table()[0]["needs"]
    rows[0]["unit"] = "evil"
    assert T.table()[0]["unit"] != "evil"            # callers get copies
    assert T.__virtual__() == "airflow_daemons"


def test_keepalive_only_where_the_venv_python_is_the_main_process():
    # a watchdog on a daemon that never sends WATCHDOG=1 would kill it every WatchdogSec
    assert T.keepalive_daemons() == [r["name"] for r in T.table() if r["unit"].startswith("airflow-")]
    assert not {"postgresql", "rabbitmq", "haproxy"} & set(T.keepalive_daemons())
    assert all(isinstance(r["keepalive"], bool) for r in T.table())


def test_lookups():
    assert T.get("worker") == {"name": "worker", "unit": "airflow-worker",
                               "role": "airflow-worker", "probe": "ping",
                               "needs": ["rabbitmq", "postgresql"], "keepalive": True}
    assert T.unit_of("postgresql", postgresql_version=15) == "postgresql@15-main"
    with pytest.raises(KeyError, match="postgresql_version"):
        T.unit_of("postgresql")
    with pytest.raises(KeyError):
        T.needs("sshd")
    assert T.get("sshd") is None
    assert T.unit_of("rabbitmq") == "rabbitmq-server" and T.role_of("haproxy") == "airflow-lb"
    with pytest.raises(KeyError):
        T.unit_of("sshd")
    with pytest.raises(KeyError):
        T.role_of("sshd")
    assert T.roles()[0] == "airflow-master" and len(T.roles()) == len(set(T.roles()))
    assert T.daemons_for_roles("airflow-worker") == ["worker"]
    assert T.daemons_for_roles(["airflow-db", "airflow-lb"]) == ["postgresql", "haproxy"]
    assert T.daemons_for_roles(None) == []


@pytest.mark.parametrize("value,ok", [
    ("master1", True), ("m-2.example_x", True), ("a" * 128, True), ("a" * 129, False),
    ("", False), ("-x", False), (".x", False), ("a b", False), ("a;b", False), ("a/b", False),
    ("a\nb", False), (None, False), (7, False)])
def test_valid_minion_id(value, ok):
    assert T.valid_minion_id(value) is ok


def test_api_namespace():
    api = T.api()
    assert api.unit_of("worker") == "airflow-worker" and api.valid_minion_id("m1")
    assert not hasattr(api, "__virtual__")
