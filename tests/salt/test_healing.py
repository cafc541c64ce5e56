"""Self-healing layer on a real salt-master + minions (fast tier, shared tests/salt/conftest.py).

Proves: the reactor config loads and maps our events; malformed and spoofed events change
nothing (audited "ignored"; no runtime pillar written, no service touched); the maintenance
switch pauses remediation; airflow.healing renders the beacon config from pillar.
"""
import json
import os
import time

import pytest
from conftest import audit_records

pytestmark = pytest.mark.timeout(120)


def _mark(paths):
    """Where the audit log ends now: _waitaudit_records(..., since=_mark(paths)) sees only later records."""
    return len(audit_records(paths))


def _waitaudit_records(paths, pred, since, timeout=20):
    """Matching audit records written after ``since`` (a _mark taken before the action)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [r for r in audit_records(paths)[since:] if pred(r)]
        if hits:
            return hits
        time.sleep(0.3)
    raise AssertionError(f"no matching audit record in {timeout}s: {audit_records(paths)[since:][-5:]}")


def _send(minion_factory, tag, data):
    cli = minion_factory.salt_call_cli(timeout=60)
    ret = cli.run("event.send", tag, data=data)
    assert ret.returncode == 0, ret


@pytest.fixture(scope="module")
def synced(salt_cli, salt_minions):
    # the module reads the daemon table from _utils: sync utils, modules and beacons
    ret = salt_cli.run("saltutil.sync_all", minion_tgt="*")
    assert ret.returncode == 0, ret
    return True


def _master_log(salt_master):
    path = salt_master.config.get("log_file")
    if path and os.path.exists(path):
        with open(path, errors="replace") as fh:
            return fh.read()
    return ""


def test_reactor_config_loaded(salt_master, airflow_salt_paths, salt_run_cli):
    reactor = salt_master.config["reactor"]
    tags = {list(entry)[0]: list(entry.values())[0] for entry in reactor}
    assert "salt/beacon/*/airflow_health/*" in tags
    assert "salt/minion/*/start" in tags and "salt/presence/change" in tags
    for files in tags.values():
        for path in files:
            assert os.path.exists(path), path
    assert salt_master.config["presence_events"] is True
    assert salt_master.config["airflow_healing"]["state_dir"] == airflow_salt_paths["varlib"]
    ret = salt_run_cli.run("airflow.maintenance", "status")
    assert ret.returncode == 0 and ret.data == {"maintenance": False}, ret


def test_module_synced_and_roles(salt_cli, synced):
    ret = salt_cli.run("airflow_health.roles", minion_tgt="worker1")
    assert ret.data == ["airflow-worker"], ret
    ret = salt_cli.run("airflow_health.haproxy_set_server", "master1;x", "ready", minion_tgt="infra")
    assert "invalid server name" in str(ret.data) or "invalid server name" in ret.stderr


def test_module_reads_the_table_and_reports_missing_node_settings(salt_cli, synced):
    ret = salt_cli.run("airflow_health.daemons", "[airflow-worker]", minion_tgt="worker1")
    assert [r["unit"] for r in ret.data] == ["airflow-worker"], ret
    if os.path.exists("/etc/salt/airflow_health.json"):
        pytest.skip("this host has node settings")
    ret = salt_cli.run("airflow_health.api_server", minion_tgt="master1")
    assert ret.data == {"status": "error", "detail": "node settings "
                        "/etc/salt/airflow_health.json missing (apply the airflow states)"}, ret


def test_runner_exposes_only_operator_verbs(salt_run_cli):
    ret = salt_run_cli.run("airflow.active_scheduler")
    assert ret.returncode == 0 and ret.data["mode"] == "active-standby", ret
    assert ret.data["active"] == "master1"
    for private in ("airflow.decide_worker", "airflow.parse_runtime_pillar", "airflow.settings"):
        ret = salt_run_cli.run(private)
        assert "is not available" in (ret.stdout + ret.stderr), (private, ret)


def test_spoofed_beacon_tag_from_worker_is_ignored(salt_minions, airflow_salt_paths, synced,
                                                   salt_master):
    before = _mark(airflow_salt_paths)
    # worker1 claims, in the tag and the payload, that master1's scheduler is dead
    _send(salt_minions["worker1"], "salt/beacon/master1/airflow_health/scheduler",
          {"daemon": "scheduler", "status": "dead", "id": "master1"})
    hits = _waitaudit_records(airflow_salt_paths,
                       lambda r: r["action"] == "ignored" and r["minion"] == "worker1", before)
    assert "does not match" in hits[-1]["reason"] or "role" in hits[-1]["reason"]
    assert all(r["action"] in ("ignored",) for r in audit_records(airflow_salt_paths)[before:])
    assert "Failed to render" not in _master_log(salt_master)


def test_spoofed_health_event_claiming_master_role_is_ignored(salt_minions, airflow_salt_paths,
                                                              synced, salt_cli):
    before = _mark(airflow_salt_paths)
    _send(salt_minions["worker1"], "airflow/health/scheduler",
          {"daemon": "scheduler", "status": "dead", "id": "master1", "minion": "master1"})
    hits = _waitaudit_records(airflow_salt_paths,
                       lambda r: r["action"] == "ignored" and r["daemon"] == "scheduler"
                       and "role airflow-master" in (r["reason"] or ""), before)
    assert hits[-1]["minion"] == "worker1"  # acted on the authenticated id, not the claim
    assert hits[-1]["claimed"] == "dead"    # the claim is audited, never acted on
    # nothing changed: no runtime pillar, scheduler placement as before
    assert not os.path.exists(os.path.join(airflow_salt_paths["varlib"], "pillar",
                                           "airflow_runtime.sls"))
    assert not any(r["action"] in ("failover", "restart", "kill-restart", "fence")
                   for r in audit_records(airflow_salt_paths))


def test_malformed_event_is_ignored(salt_minions, airflow_salt_paths, synced, salt_master):
    before = _mark(airflow_salt_paths)
    _send(salt_minions["worker1"], "airflow/health/worker",
          {"daemon": "worker; reboot", "status": "dead"})
    hits = _waitaudit_records(airflow_salt_paths, lambda r: r["action"] == "ignored"
                       and r["reason"] == "malformed health event" and r["minion"] == "worker1",
                       before)
    assert hits[-1]["daemon"] == "?" and hits[-1]["detail"] == "unknown daemon"
    # a payload that is not even a string reaches the runner as data, not as YAML
    before = _mark(airflow_salt_paths)
    _send(salt_minions["worker1"], "airflow/health/worker",
          {"daemon": {"x": "worker: evil"}, "status": ["dead"]})
    _waitaudit_records(airflow_salt_paths, lambda r: r["action"] == "ignored"
                and r["reason"] == "malformed health event" and r["minion"] == "worker1", before)
    assert "Failed to render" not in _master_log(salt_master)


def test_reprobe_healthy_or_absent_does_nothing(salt_run_cli, airflow_salt_paths, synced):
    # worker1 really is a worker; its (test) node has no airflow-worker unit: no action
    open(os.path.join(airflow_salt_paths["varlib"], "deployed"), "w").close()
    try:
        ret = salt_run_cli.run("airflow.remediate", "worker1", "worker")
        assert ret.returncode == 0, ret
        assert ret.data["result"] in ("wait", "ignored"), ret.data
    finally:
        os.remove(os.path.join(airflow_salt_paths["varlib"], "deployed"))
    assert not any(r.get("attempt") for r in audit_records(airflow_salt_paths))


def test_maintenance_switch_pauses_remediation(salt_run_cli, salt_minions, airflow_salt_paths,
                                               synced):
    assert salt_run_cli.run("airflow.maintenance", "on").data == {"maintenance": True}
    try:
        before = _mark(airflow_salt_paths)
        _send(salt_minions["worker1"], "airflow/health/worker", {"daemon": "worker",
                                                                 "status": "hung"})
        hits = _waitaudit_records(airflow_salt_paths, lambda r: r["action"] == "skipped"
                           and r["minion"] == "worker1" and r["daemon"] == "worker", before)
        assert hits[-1]["reason"] == "maintenance mode"
    finally:
        assert salt_run_cli.run("airflow.maintenance", "off").data == {"maintenance": False}
    log = salt_run_cli.run("airflow.audit_log", "limit=5")
    assert log.returncode == 0 and log.data[-1]["action"] == "maintenance"


def _load(rel, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BEACON = _load("_beacons/airflow_health.py", "healing_test_beacon")
HEALTH = _load("_modules/airflow_health.py", "healing_test_health")
#: what the beacon accepts without the legacy keys: its own knobs and Salt's beacon options
BEACON_KEYS = set(BEACON.DEFAULTS) | set(BEACON._SALT_KEYS)


def _dataset(ret_data, state_id):
    """(state args, dataset) of a file.serialize state of show_sls output."""
    state = ret_data[state_id]
    for item in state["file"]:
        if isinstance(item, dict) and "dataset" in item:
            return state, item["dataset"]
    raise AssertionError(state)


def _beacon_conf(ret_data):
    state, dataset = _dataset(ret_data, "airflow-healing-beacon-config")
    conf = {}
    for entry in dataset["beacons"]["airflow_health"]:
        conf.update(entry)
    return state, conf


def test_healing_sls_renders_node_settings_and_beacon_config(salt_cli, synced):
    ret = salt_cli.run("state.show_sls", "airflow.healing", minion_tgt="worker1")
    assert ret.returncode == 0, ret
    state, conf = _beacon_conf(ret.data)
    assert conf["checks"] == ["worker"] and conf["interval"] == 3
    assert set(conf) <= BEACON_KEYS, set(conf) - BEACON_KEYS       # no legacy keys any more
    assert any(isinstance(i, dict) and str(i.get("name", "")).endswith(
        "minion.d/airflow-beacons.conf") for i in state["file"])
    # the node settings file: exactly the keys the health module reads
    state, settings = _dataset(ret.data, "airflow-healing-settings")
    assert set(settings) == set(HEALTH.SETTINGS_KEYS)
    name = [i["name"] for i in state["file"] if isinstance(i, dict) and "name" in i][0]
    assert os.path.basename(name) == os.path.basename(HEALTH.SETTINGS_FILE)
    ret = salt_cli.run("state.show_sls", "airflow.healing",
                       'pillar={"airflow": {"healing": {"interval": 7, "refire": 60}}}',
                       minion_tgt="master1")
    _, conf = _beacon_conf(ret.data)
    assert conf["checks"] == ["api-server", "scheduler", "dag-processor", "triggerer"]
    assert conf["interval"] == 7 and conf["refire"] == 60.0
