"""Least secrets: every role receives only the secrets its daemons use (real pillar, real renders).

For each role a table of the secret keys it may hold; every OTHER secret's value must be absent
from that minion's whole pillar (``pillar.items``) and from its rendered airflow.cfg. Two extra
minions join for this module: ``flower1`` (airflow-flower only) and ``wf1`` (airflow-worker +
airflow-flower: a minion with several roles gets the union). Neither has an address role, so the
mine-derived hosts the other tests see do not change. Roles without a minion here (db, broker or
lb alone) are checked against pillar/top.sls and the ``*.sls.example`` files.
"""
import ast
import configparser
import json
import os
import re
import shutil
from urllib.parse import quote

import pytest
import yaml

from conftest import REPO, TEST_SECRETS, record_grants

pytestmark = pytest.mark.timeout(300)

MASTER = {"fernet_key", "api_secret_key", "jwt_secret", "db_password", "results_db_password",
          "broker_password", "admin_user", "admin_password"}
WORKER = {"api_secret_key", "results_db_password", "broker_password"}
FLOWER = {"broker_password", "flower_password"}
ROLE_SECRETS = {
    "airflow-master": MASTER,
    "airflow-worker": WORKER,
    "airflow-flower": FLOWER,
    "airflow-db": {"db_password", "results_db_password"},
    "airflow-broker": {"broker_password"},
    "airflow-lb": {"lb_stats_password", "lb_tls_cert", "lb_tls_key"},
}
EXTRA_MINIONS = {"flower1": ["airflow-flower"], "wf1": ["airflow-worker", "airflow-flower"],
                 "rogue1": ["airflow-worker"]}
# rogue1's grain claims airflow-master too; the role record grants it airflow-worker only
GRAINS = {**EXTRA_MINIONS, "rogue1": ["airflow-worker", "airflow-master"]}
MINION_ROLES = {
    "master1": ["airflow-master"],
    "worker1": ["airflow-worker"],
    "infra": ["airflow-db", "airflow-broker", "airflow-lb"],
    **EXTRA_MINIONS,
}
SECRETS = {k: v for keys in TEST_SECRETS.values() for k, v in keys.items()}
# admin_user is a login name ("admin", also the default Flower and stats user), not a secret value
VALUE_KEYS = sorted(k for k in SECRETS if k != "admin_user")


def _allowed(roles):
    out = set()
    for role in roles:
        out |= ROLE_SECRETS[role]
    return out


def _forms(value):
    """The value as it may appear: raw, URL-encoded (in a URL), and %-escaped in airflow.cfg."""
    enc = quote(value, safe="")
    return {value, enc, enc.replace("%", "%%"), value.replace("%", "%%")}


def _present(text, key):
    return any(form in text for form in _forms(SECRETS[key]))


def _forget(salt_master, minion):
    for base in ("minions", "minions_pre", "minions_rejected", "minions_denied"):
        path = os.path.join(salt_master.config["pki_dir"], base, minion)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(salt_master.config["cachedir"], "minions", minion), ignore_errors=True)


@pytest.fixture(scope="module")
def cli(salt_master, salt_minions, airflow_salt_paths):
    # the master's role record grants the extra minions their roles (a grain alone gets nothing)
    with record_grants(airflow_salt_paths, EXTRA_MINIONS):
        yield from _extra_minions(salt_master)


def _extra_minions(salt_master):
    factories = {name: salt_master.salt_minion_daemon(name, overrides={"grains": {"roles": roles}},
                                                      max_start_attempts=1)
                 for name, roles in GRAINS.items()}
    started = []
    try:
        for factory in factories.values():
            factory.start()
            started.append(factory)
        cli = salt_master.salt_cli(timeout=180)
        tgt = ",".join(EXTRA_MINIONS)
        for fun in ("saltutil.sync_all", "saltutil.refresh_pillar", "mine.update"):
            ret = cli.run("-L", fun, *(["wait=True"] if fun.endswith("pillar") else []), minion_tgt=tgt)
            assert ret.returncode == 0, ret
        yield cli
    finally:
        for factory in started:
            factory.terminate()
        for name in EXTRA_MINIONS:
            _forget(salt_master, name)


@pytest.fixture(scope="module")
def pillars(cli):
    ret = cli.run("-L", "pillar.items", minion_tgt=",".join(MINION_ROLES))
    assert ret.returncode == 0, ret
    assert sorted(ret.data) == sorted(MINION_ROLES), ret.data
    return ret.data


def _cfg_text(cli, minion):
    ret = cli.run("slsutil.renderer", "salt://airflow/files/airflow.cfg.jinja", "default_renderer=jinja",
                  minion_tgt=minion)
    assert ret.returncode == 0, ret
    return ret.data


@pytest.mark.parametrize("minion", sorted(MINION_ROLES))
def test_pillar_holds_only_the_roles_secrets(pillars, minion):
    allowed = _allowed(MINION_ROLES[minion])
    pillar = pillars[minion]
    assert set(pillar["airflow"]["secrets"]) == allowed
    text = json.dumps(pillar)
    leaked = [k for k in VALUE_KEYS if k not in allowed and _present(text, k)]
    assert not leaked, f"{minion} ({MINION_ROLES[minion]}) holds {leaked}"


@pytest.mark.parametrize("minion", ["master1", "worker1", "flower1", "wf1"])
def test_airflow_cfg_holds_only_the_roles_secrets(cli, minion):
    allowed = _allowed(MINION_ROLES[minion])
    text = _cfg_text(cli, minion)
    leaked = [k for k in VALUE_KEYS if k not in allowed and _present(text, k)]
    assert not leaked, f"{minion} airflow.cfg holds {leaked}"


def test_worker_cfg_uses_the_result_backend_role_and_no_metastore(cli):
    cfg = configparser.ConfigParser()
    cfg.read_string(_cfg_text(cli, "worker1"))
    assert cfg["celery"]["result_backend"] == \
        "db+postgresql://airflow_results:results-pw%25with%2Fspecials@127.0.0.1:5432/airflow_results"
    assert cfg["celery"]["broker_url"] == "amqp://airflow:broker-pw-test@127.0.0.1:5672/airflow"
    assert cfg["api"]["secret_key"] == SECRETS["api_secret_key"]  # the worker's log server
    assert not cfg.has_section("database")  # airflow celery worker (3.x) never opens the metastore
    assert not cfg.has_section("api_auth")
    assert not cfg.has_option("core", "fernet_key")
    assert not cfg.has_option("celery", "flower_basic_auth")


def test_flower_cfg_has_broker_and_basic_auth_only(cli):
    cfg = configparser.ConfigParser()
    cfg.read_string(_cfg_text(cli, "flower1"))
    assert cfg["celery"]["broker_url"] == "amqp://airflow:broker-pw-test@127.0.0.1:5672/airflow"
    assert cfg["celery"]["flower_basic_auth"] == "admin:flower-pw-test"
    for section, key in [("celery", "result_backend"), ("core", "fernet_key"), ("api", "secret_key")]:
        assert not cfg.has_option(section, key), (section, key)
    assert not cfg.has_section("database") and not cfg.has_section("api_auth")


def test_worker_and_flower_on_one_minion_get_the_union(cli):
    cfg = configparser.ConfigParser()
    cfg.read_string(_cfg_text(cli, "wf1"))
    assert cfg["celery"]["flower_basic_auth"] == "admin:flower-pw-test"
    assert cfg["celery"]["result_backend"].startswith("db+postgresql://airflow_results:")
    assert cfg["api"]["secret_key"] == SECRETS["api_secret_key"]
    assert not cfg.has_section("database")


def test_flower_unit_command_line_has_no_secret(cli):
    ret = cli.run("state.show_sls", "airflow.flower", minion_tgt="flower1")
    assert ret.returncode == 0, ret
    text = json.dumps(ret.data)
    assert "celery flower --port 5555" in text
    assert "basic-auth" not in text and not _present(text, "flower_password")


def _top_files():
    """pillar/top.sls: role -> secret files (airflow.secrets.<file>) it gives (its secrets_of)."""
    with open(os.path.join(REPO, "pillar", "top.sls")) as fh:
        text = fh.read()
    literal = re.search(r"\{%-? set secrets_of = (\{.*?\}) %\}", text, re.S).group(1)
    return ast.literal_eval(literal)


def _example_keys(name):
    with open(os.path.join(REPO, "pillar", "airflow", "secrets", name + ".sls.example")) as fh:
        return set(yaml.safe_load(fh)["airflow"]["secrets"])


def test_top_sls_gives_each_role_exactly_its_secrets():
    """Every role, also those without a minion of their own here (db, broker, lb alone)."""
    top = _top_files()
    assert sorted(top) == sorted(ROLE_SECRETS)
    for role, files in top.items():
        keys = set()
        for name in files:
            keys |= _example_keys(name)
        assert keys == ROLE_SECRETS[role], role
    # the test secrets mirror the example files one to one
    for name, keys in TEST_SECRETS.items():
        assert set(keys) == _example_keys(name), name


def test_a_grain_claim_gains_no_secret_no_backend_and_no_role_states(cli, pillars):
    """rogue1's root claims airflow-master by grain (issue 9). The master's role record does not
    grant it: no master secret in its pillar (test_pillar_holds_only_the_roles_secrets[rogue1]),
    no haproxy backend for it (rendered on infra), and its top applies airflow.refused instead
    of airflow.master."""
    assert "airflow-master" in cli.run("grains.get", "roles", minion_tgt="rogue1").data
    assert set(pillars["rogue1"]["airflow"]["secrets"]) == WORKER
    ret = cli.run("slsutil.renderer", "salt://airflow/files/haproxy.cfg.jinja",
                  "default_renderer=jinja", minion_tgt="infra")
    assert "server master1 127.0.0.1:8080 check" in ret.data and "server rogue1" not in ret.data
    top = cli.run("state.show_top", minion_tgt="rogue1").data
    sls = [x for env in top.values() for x in env]
    assert "airflow.refused" in sls and "airflow.worker" in sls and "airflow.master" not in sls
    ret = cli.run("state.show_sls", "airflow.refused", minion_tgt="rogue1")
    assert "roles airflow-master claimed by the roles grain of rogue1" in json.dumps(ret.data)
