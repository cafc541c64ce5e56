"""The master-owned role record (issue 9): a minion's `roles` grain never grants a role.

Pure core (parse, inventory, claims), the runner verbs grant/revoke/roles and the reconcile's
report of refused claims, with the fakes of test_runner.py (no Salt, fake clock)."""
import json

import pytest

from test_runner import CACHE, MODS, _load, _utils_dict, env  # noqa: F401
from test_runner_incidents import _reconcile_handler, _units

D = MODS["airflow_decide"]
T = MODS["airflow_daemons"]


# ------------------------------------------------------------------ pure core
def test_parse_keeps_valid_entries_and_names_every_bad_one():
    record, errors = D.parse_role_record({
        "master1": ["airflow-master"],
        "infra": "airflow-db",                      # a single role as a string is fine
        "worker1": ["airflow-worker", "root-shell"],  # the unknown role grants nothing
        "bad id!": ["airflow-master"],
        "w2": {"airflow-worker": True},
    }, T)
    assert record == {"master1": ["airflow-master"], "infra": ["airflow-db"],
                      "worker1": ["airflow-worker"]}
    assert any("'bad id!' is not a valid minion id" in e for e in errors)
    assert any("worker1: unknown role(s) root-shell" in e for e in errors)
    assert any("w2: roles must be a list" in e for e in errors)


@pytest.mark.parametrize("data", [None, [], "master1: x", 42])
def test_parse_of_nothing_or_junk_grants_nothing(data):
    record, errors = D.parse_role_record(data, T)
    assert record == {}
    assert (errors == []) == (data is None)


def test_inventory_takes_roles_from_the_record_only():
    grains = {"worker1": {"roles": ["airflow-worker", "airflow-master"], "host": "w1"},
              "rogue": {"roles": ["airflow-master"]}}
    inv = D.inventory({"worker1": ["airflow-worker"], "master1": ["airflow-master"]}, grains)
    assert inv["worker1"] == {"roles": ["airflow-worker"], "host": "w1"}
    assert inv["rogue"]["roles"] == [] and inv["master1"]["roles"] == ["airflow-master"]
    assert D.minions_with_role(inv, "airflow-master") == ["master1"]


def test_claims_are_table_roles_beyond_the_record():
    grains = {"worker1": {"roles": ["airflow-worker", "airflow-master", "webserver"]},
              "master1": {"roles": ["airflow-master"]}}
    record = {"worker1": ["airflow-worker"], "master1": ["airflow-master"]}
    assert D.role_claims(record, grains, T) == {"worker1": ["airflow-master"]}
    assert D.new_claims({"worker1": ["airflow-master"]}, {"worker1": ["airflow-master"]}) == {}
    assert D.new_claims({"worker1": ["airflow-master"]}, None) == {"worker1": ["airflow-master"]}


def test_members_change_and_dump_round_trip():
    rec = D.change_roles({}, "af-m-01", ["airflow-master"])
    rec = D.change_roles(rec, "af-i-01", ["airflow-lb", "airflow-db"])
    assert D.role_members(rec, T)["airflow-master"] == ["af-m-01"]
    assert D.role_members(rec, T)["airflow-flower"] == []
    import yaml
    assert D.parse_role_record(yaml.safe_load(D.dump_role_record(rec)), T) == (rec, [])
    assert D.change_roles(rec, "af-m-01", ["airflow-master"], grant=False) == {
        "af-i-01": ["airflow-db", "airflow-lb"]}


# ------------------------------------------------------------------ runner
def _claim_master_by_grain(env):
    env.ops.cache["worker1"] = {"roles": ["airflow-worker", "airflow-master"]}


def test_a_grain_claim_gives_no_place_in_the_runner(env):
    _claim_master_by_grain(env)
    res = env.rn.remediate("worker1", "scheduler", status="dead")
    assert res == {"result": "ignored", "reason": "minion does not have role airflow-master"}
    assert "worker1" not in env.ctx().minions_running("api-server")
    assert env.rn.roles()["refused"] == {"worker1": ["airflow-master"]}


def test_reconcile_reports_a_refused_claim_once_with_an_alert(env):
    _claim_master_by_grain(env)
    env.ops.handler = _reconcile_handler(_units())
    res = env.rn.reconcile()
    assert res["claims"] == {"worker1": ["airflow-master"]}
    refused = [r for r in env.audit() if r["action"] == "refused"]
    assert [(r["minion"], r["roles"]) for r in refused] == [("worker1", ["airflow-master"])]
    assert ("airflow/alert/roles/claim", {"minion": "worker1", "roles": ["airflow-master"]}) \
        in env.ops.fired
    env.rn.reconcile()  # the same claim: not reported again
    assert len([r for r in env.audit() if r["action"] == "refused"]) == 1
    # nothing the claim implies is acted on: worker1's units are never looked at as a master's
    assert "worker1/scheduler" not in json.dumps(res["plan"])


def test_grant_writes_the_record_sets_the_grain_and_refreshes_pillars(env):
    env.ops.cache["worker3"] = {"roles": []}
    env.ops.alive.add("worker3")
    res = env.rn.grant("worker3", "airflow-worker")
    assert res == {"result": "ok", "minion": "worker3", "roles": ["airflow-worker"],
                   "grain": "set"}
    text = env.roles_file.read_text()
    assert "worker3: [airflow-worker]" in text
    assert ("worker3", "grains.append", ("roles", "airflow-worker")) in env.ops.calls
    assert "saltutil.refresh_pillar" in env.ops.funs()
    assert env.audit()[-1]["action"] == "grant"
    assert "worker3" in env.ctx().minions_running("worker")
    res = env.rn.revoke("worker3", "airflow-worker")
    assert res["roles"] == [] and "worker3" not in env.roles_file.read_text()
    assert ("worker3", "grains.remove", ("roles", "airflow-worker")) in env.ops.calls


def test_grant_is_idempotent_and_rejects_unknown_roles(env):
    assert env.rn.grant("worker1", "airflow-worker")["result"] == "unchanged"
    assert env.ops.calls == []
    res = env.rn.grant("worker1", "airflow-worker,airflow-admin")
    assert res["result"] == "error" and "unknown: airflow-admin" in res["reason"]
    assert env.rn.grant("../etc", "airflow-worker")["result"] == "error"
    assert "airflow-admin" not in env.roles_file.read_text()


# ------------------------------------------------------------------ the master-side module
@pytest.fixture
def roles_mod(tmp_path):
    mod = _load("_modules/airflow_roles.py", "airflow_roles_test")
    record = tmp_path / "roles.yaml"
    record.write_text("af-m-01: [airflow-master]\nrogue!: [airflow-master]\n")
    mod.__opts__ = {"__role": "master",
                    "airflow_healing": {"state_dir": str(tmp_path), "roles_file": str(record)}}
    mod.__utils__ = _utils_dict()
    return mod


def test_module_gives_the_pillar_the_runners_view(roles_mod):
    members = roles_mod.members()
    assert members["airflow-master"] == ["af-m-01"]
    assert set(members) == set(T.roles())
    assert roles_mod.granted("af-m-01") == ["airflow-master"]
    assert roles_mod.granted("rogue!") == []


def test_module_loads_on_the_master_only(roles_mod):
    assert roles_mod.__virtual__() == "airflow_roles"
    roles_mod.__opts__ = {"__role": "minion"}
    assert roles_mod.__virtual__()[0] is False
