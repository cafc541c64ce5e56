"""Formula conventions on a real master + minions: clean states, node settings file, healing
beacon, TOFS overrides, map.jinja without mine calls, constraints file from the version.

Nothing here changes the host: real applies only touch the minions' own config dirs
(they stand in for /etc/salt) and temp dirs given by pillar; everything else is test=True or
show_sls.
"""
import json
import os
import pathlib
import re
import shutil
import tempfile

import pytest
from conftest import REPO, parse_states

pytestmark = pytest.mark.timeout(300)

ROLES = ["airflow-master", "airflow-worker", "airflow-flower", "airflow-db", "airflow-broker",
         "airflow-lb"]
CLEAN = {role: f"airflow.{role[8:]}.clean" for role in ROLES}


def _show(salt_cli, sls, minion, pillar=None):
    args = ["state.show_sls", sls] + ([f"pillar={json.dumps(pillar)}"] if pillar else [])
    ret = salt_cli.run(*args, minion_tgt=minion)
    assert ret.returncode == 0 and isinstance(ret.data, dict), ret
    return parse_states(ret.data)


def _apply(salt_cli, sls, minion, pillar=None, **kw):
    args = ["state.apply", sls] + ([f"pillar={json.dumps(pillar)}"] if pillar else [])
    args += [f"{k}={v}" for k, v in kw.items()]
    ret = salt_cli.run(*args, minion_tgt=minion, _timeout=240)
    assert isinstance(ret.data, dict), ret
    return {key.split("_|-")[1]: res for key, res in ret.data.items()}


def _changed(results):
    return {sid: res["changes"] for sid, res in results.items() if res["changes"]}


def _failed(results):
    return {sid: res["comment"] for sid, res in results.items() if res["result"] is False}


def _marker(salt_minions, minion, role):
    return os.path.join(salt_minions[minion].config_dir, "airflow-roles", role)


# ------------------------------------------------------------------ clean states
def test_highstate_has_the_clean_sls_of_every_missing_role(highstate):
    for minion, has in [("master1", {"airflow-master"}), ("worker1", {"airflow-worker"}),
                        ("infra", {"airflow-db", "airflow-broker", "airflow-lb"})]:
        slses = {st["sls"] for st in highstate(minion).values()}
        for role in ROLES:
            assert (CLEAN[role] in slses) == (role not in has), (minion, role)
        # the Airflow software goes only with the last master/worker/flower role
        assert ("airflow.software.clean" in slses) == (minion == "infra"), minion
        assert "airflow.healing" in slses and "airflow.healing.clean" not in slses
        assert f"{sorted(has)[0]}-marker" in highstate(minion)


def test_clean_states_are_noops_where_the_role_never_was(salt_cli, highstate):
    """Every clean SLS renders to one no-op here (these minions never had the roles): applied
    for real, zero changes."""
    for minion in ["master1", "worker1", "infra"]:
        states = highstate(minion)
        cleans = {sid: st for sid, st in states.items() if st["sls"].endswith(".clean")}
        assert cleans, minion
        assert all(st["fun"] == "test.nop" for st in cleans.values()), (minion, cleans)
    results = _apply(salt_cli, "airflow.clean", "master2")
    assert not _failed(results) and not _changed(results), results
    assert all(sid.endswith("-clean-nothing") or sid == "airflow-systemd-daemon-reload"
               for sid in results), sorted(results)


@pytest.fixture
def marker_on(salt_minions):
    made = []

    def _make(minion, role):
        path = _marker(salt_minions, minion, role)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pathlib.Path(path).write_text("# test\n")
        made.append(path)
        return path

    yield _make
    for path in made:
        if os.path.exists(path):
            os.remove(path)


def test_worker_clean_stops_disables_and_removes_the_unit(salt_cli, marker_on):
    marker = marker_on("master1", "airflow-worker")
    states = _show(salt_cli, "airflow.worker.clean", "master1")
    svc = states["airflow-worker-clean-service"]
    assert svc["fun"] == "service.dead" and svc["name"] == "airflow-worker" and svc["enable"] is False
    unit = states["airflow-worker-clean-unit"]
    assert unit["fun"] == "file.absent" and unit["name"] == "/etc/systemd/system/airflow-worker.service"
    assert {"service": "airflow-worker-clean-service"} in unit["require"]
    assert states["airflow-worker-clean-marker"]["name"] == marker
    # one daemon-reload after a removed unit; the mine learns the role change at once
    assert "airflow-systemd-daemon-reload" in states
    assert states["airflow-worker-clean-mine-update"]["onchanges"] == [{"file": "airflow-worker-clean-marker"}]
    assert not [sid for sid in states if "venv" in sid or "software" in sid]  # the venv stays


def test_master_clean_covers_every_master_daemon_of_the_table(salt_cli, marker_on):
    marker_on("worker1", "airflow-master")
    ret = salt_cli.run("airflow_health.daemons", '["airflow-master"]', minion_tgt="worker1")
    names = [row["name"] for row in ret.data]
    assert len(names) >= 4, ret
    states = _show(salt_cli, "airflow.master.clean", "worker1")
    for name in names:
        assert states[f"airflow-{name}-clean-service"]["fun"] == "service.dead"
        assert states[f"airflow-{name}-clean-unit"]["fun"] == "file.absent"
    absent = {st["name"] for st in states.values() if st["fun"] == "file.absent"}
    assert {"/opt/airflow/scheduler-guard.py", "/opt/airflow/simple_auth_manager_passwords.json"} <= absent


def test_db_clean_keeps_the_data_unless_purge_data(salt_cli, marker_on):
    marker_on("master1", "airflow-db")
    states = _show(salt_cli, "airflow.db.clean", "master1")
    assert states["airflow-db-clean-service"]["fun"] == "service.dead"
    assert states["airflow-db-clean-service"]["name"] == "postgresql"
    assert states["airflow-db-clean-config"]["name"] == "/etc/postgresql/15/main/conf.d/airflow.conf"
    assert states["airflow-db-clean-pg-hba"]["fun"] == "file.replace"
    assert not any(st["fun"].startswith("postgres_") for st in states.values())
    purge = _show(salt_cli, "airflow.db.clean", "master1", {"airflow": {"clean": {"purge_data": True}}})
    if shutil.which("psql"):  # the drop needs psql (this host has it or not)
        assert purge["airflow-db-clean-database"]["fun"] == "postgres_database.absent"
        assert purge["airflow-db-clean-role"]["fun"] == "postgres_user.absent"
        assert purge["airflow-db-clean-results-database"]["name"] == "airflow_results"
        assert purge["airflow-db-clean-results-role"]["name"] == "airflow_results"


def test_broker_and_lb_clean_only_with_their_marker(salt_cli, marker_on):
    assert list(_show(salt_cli, "airflow.broker.clean", "master1")) == ["airflow-broker-clean-nothing"]
    marker_on("master1", "airflow-broker")
    marker_on("master1", "airflow-lb")
    broker = _show(salt_cli, "airflow.broker.clean", "master1")
    assert broker["airflow-broker-clean-service"]["name"] == "rabbitmq-server"
    assert not any(st["fun"].startswith("rabbitmq_") for st in broker.values())
    lb = _show(salt_cli, "airflow.lb.clean", "master1")
    assert lb["airflow-lb-clean-service"]["name"] == "haproxy"
    assert lb["airflow-lb-clean-config"]["name"] == "/etc/haproxy/haproxy.cfg"
    assert lb["airflow-lb-clean-tls-pem"]["name"] == "/etc/haproxy/airflow.pem"  # the TLS key goes too


def test_software_clean_removes_home_venv_and_is_then_a_noop(salt_cli):
    """Applied for real on infra (no software role) with airflow:home in a temp dir."""
    home = tempfile.mkdtemp(prefix="afhome", dir="/tmp")
    try:
        os.makedirs(os.path.join(home, "venv", "bin"))
        pathlib.Path(home, "venv", ".airflow-install-spec").write_text("spec\n")
        pathlib.Path(home, "airflow.cfg").write_text("[core]\n")
        pillar = {"airflow": {"home": home, "venv": home + "/venv", "user": "afcleantest",
                              "group": "afcleantest"}}
        states = _show(salt_cli, "airflow.software.clean", "infra", pillar)
        assert states["airflow-software-clean-home"]["name"] == home
        assert {"sls": "airflow.worker.clean"} in states["airflow-software-clean-home"]["require"]
        first = _apply(salt_cli, "airflow.software.clean", "infra", pillar)
        assert not _failed(first), first
        assert not os.path.exists(home)
        second = _apply(salt_cli, "airflow.software.clean", "infra", pillar)
        assert not _failed(second) and not _changed(second), second
        assert "airflow-software-clean-nothing" in second
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------ healing: settings + beacon
EXPECTED_SETTINGS = {
    "home": "/opt/airflow", "venv": "/opt/airflow/venv", "airflow_cfg": "/opt/airflow/airflow.cfg",
    "api_server_port": 8080, "haproxy_socket": "/run/haproxy/admin.sock",
    "haproxy_backend": "airflow_api", "heartbeat_stale": 6.0, "start_grace": 20.0,
    "worker_ping_timeout": 2.0, "postgresql_version": 15, "database_port": 5432, "database_name": "airflow",
    "broker_port": 5672, "scheduler_mode": "active-standby",
}


def _beacon(states):
    conf = {}
    for item in states["airflow-healing-beacon-config"]["dataset"]["beacons"]["airflow_health"]:
        conf.update(item)
    return conf


def test_settings_file_and_beacon_on_every_role(salt_cli, salt_minions, test_secrets):
    for minion, checks in [("infra", ["postgresql", "rabbitmq", "haproxy"]), ("worker1", ["worker"])]:
        states = _show(salt_cli, "airflow.healing", minion)
        settings = states["airflow-healing-settings"]
        assert settings["fun"] == "file.serialize" and settings["serializer"] == "json"
        assert settings["name"] == os.path.join(salt_minions[minion].config_dir, "airflow_health.json")
        assert (settings["user"], settings["group"], settings["mode"]) == ("root", "root", "0644")
        assert settings["dataset"] == EXPECTED_SETTINGS
        assert not set(map(str, test_secrets.values())) & set(map(str, settings["dataset"].values()))
        conf = _beacon(states)
        assert conf["checks"] == checks
        # no `enabled: True`: Salt drops it from a running beacon, beacon.present would never settle
        assert set(conf) == {"interval", "disable_during_state_run", "checks",
                             "worker_ping_failures", "scheduler_check_every", "refire"}
        # the running minion gets the same data as the file, in the same order
        live = {k: v for k, v in states["airflow-healing-beacon"].items()
                if k not in ("fun", "sls", "name", "require", "order")}
        assert live == conf
    one_knob = _show(salt_cli, "airflow.healing", "master1", {"airflow": {
        "scheduler": {"heartbeat_stale": 40}, "lb": {"admin_socket": "/run/h.sock", "backend": "api2"},
        "healing": {"start_grace": 5, "worker_ping_timeout": 3, "interval": 7}}})
    data = one_knob["airflow-healing-settings"]["dataset"]
    assert (data["heartbeat_stale"], data["haproxy_socket"], data["haproxy_backend"],
            data["start_grace"], data["worker_ping_timeout"]) == (40.0, "/run/h.sock", "api2", 5.0, 3.0)
    assert _beacon(one_knob)["interval"] == 7
    guard = _show(salt_cli, "airflow.scheduler", "master1", {"airflow": {"scheduler": {"heartbeat_stale": 40}}})
    assert guard["airflow-scheduler-guard-script"]["context"]["stale_seconds"] == 40


def test_healing_applies_live_then_clean_takes_it_away(salt_cli, salt_minions):
    """Real apply on worker1 (beacon disabled: it must not probe this host): the settings file
    and the beacon appear without a minion restart, a second run changes nothing, and
    airflow.healing.clean removes beacon + files (then a no-op)."""
    conf_dir = salt_minions["worker1"].config_dir
    settings = os.path.join(conf_dir, "airflow_health.json")
    beacon_file = os.path.join(conf_dir, "minion.d", "airflow-beacons.conf")
    pillar = {"airflow": {"healing": {"enabled": False}}}
    try:
        first = _apply(salt_cli, "airflow.healing", "worker1", pillar)
        assert not _failed(first), first
        with open(settings) as fh:
            assert json.load(fh) == EXPECTED_SETTINGS
        assert os.path.exists(beacon_file)
        ret = salt_cli.run("beacons.list", "return_yaml=False", minion_tgt="worker1")
        live = {k: v for item in ret.data["airflow_health"] for k, v in item.items()}
        assert live["checks"] == ["worker"] and live["enabled"] is False, ret.data
        second = _apply(salt_cli, "airflow.healing", "worker1", pillar)
        assert not _failed(second) and not _changed(second), _changed(second)
    finally:
        clean = _apply(salt_cli, "airflow.healing.clean", "worker1")
    assert not _failed(clean), clean
    assert not os.path.exists(settings) and not os.path.exists(beacon_file)
    ret = salt_cli.run("beacons.list", "return_yaml=False", minion_tgt="worker1")
    assert "airflow_health" not in (ret.data or {}), ret.data
    again = _apply(salt_cli, "airflow.healing.clean", "worker1")
    assert list(again) == ["airflow-healing-clean-nothing"] and not _changed(again)


# ------------------------------------------------------------------ map.jinja, roles, constraints
def test_constraints_file_follows_the_version(salt_cli):
    states = _show(salt_cli, "airflow.install", "worker1", {"airflow": {"version": "3.4.0"}})
    assert states["airflow-constraints-file"]["name"] == "/opt/airflow/constraints-3.4.0.txt"
    assert states["airflow-constraints-file"]["source"][-1] == "salt://airflow/files/constraints-3.4.0.txt"
    assert "==3.4.0\" --constraint /opt/airflow/constraints-3.4.0.txt" in states["airflow-pip-install"]["name"]
    own = _show(salt_cli, "airflow.install", "worker1", {"airflow": {"constraints": "site-constraints.txt"}})
    assert own["airflow-constraints-file"]["name"] == "/opt/airflow/site-constraints.txt"
    # the shipped file matches the default version
    with open(os.path.join(REPO, "salt", "airflow", "defaults.yaml")) as fh:
        version = re.search(r"^  version: (\S+)$", fh.read(), re.M).group(1)
    assert os.path.exists(os.path.join(REPO, "salt", "airflow", "files", f"constraints-{version}.txt"))


PROBE = ("{%- set tplroot = 'airflow' %}"
         "{%- from 'airflow/map.jinja' import roles with context %}"
         "{{ {'roles': roles, 'master': 'airflow-master' in roles}|tojson }}")


def test_roles_membership_is_a_boolean(salt_cli):
    for minion, expected in [("master1", True), ("worker1", False)]:
        ret = salt_cli.run("slsutil.renderer", f"string={PROBE}", "default_renderer=jinja", minion_tgt=minion)
        assert ret.returncode == 0, ret
        data = json.loads(ret.data) if isinstance(ret.data, str) else ret.data
        assert data["master"] is expected and isinstance(data["roles"], list), data


def test_no_mine_lookup_in_map_jinja_import_path():
    salt_dir = pathlib.Path(REPO, "salt", "airflow")
    for name in ["map.jinja", "libtofs.jinja", "macros.jinja"]:
        assert "mine.get" not in (salt_dir / name).read_text(), name
    imports = re.compile(r"\{%-?\s*(from|import)\s+[^%]*hosts\.jinja")
    users = sorted(str(p.relative_to(salt_dir)) for p in salt_dir.rglob("*")
                   if p.is_file() and p.name != "hosts.jinja" and imports.search(p.read_text(errors="replace")))
    # macros.jinja: inside daemon() only (the dependency wait's hosts), no lookup on import
    assert users == ["files/haproxy.cfg.jinja", "macros.jinja", "migrate.sls", "scheduler.sls",
                     "settings.jinja"], users
    head, body = (salt_dir / "macros.jinja").read_text().split("{%- macro daemon(", 1)
    assert not imports.search(head) and imports.search(body.split("{%- endmacro %}", 1)[0])
    hosts = (salt_dir / "hosts.jinja").read_text()
    assert len(re.findall(r"salt\['mine\.get'\]", hosts)) == 1  # the one lookup (members' addresses)


# ------------------------------------------------------------------ TOFS
def test_tofs_site_file_wins_for_its_minion_only(salt_cli):
    w = _show(salt_cli, "airflow.worker", "worker1")["airflow-worker-unit"]["source"]
    assert w[:2] == ["salt://airflow/files/worker1/airflow-worker.service.jinja",
                     "salt://airflow/files/worker1/airflow-daemon.service.jinja"], w
    assert w[-2:] == ["salt://airflow/files/airflow-worker.service.jinja",
                      "salt://airflow/files/airflow-daemon.service.jinja"], w
    ret = salt_cli.run("file.source_list", json.dumps(w), "", "base", minion_tgt="worker1")
    assert ret.data[0] == "salt://airflow/files/worker1/airflow-daemon.service.jinja", ret.data
    m = _show(salt_cli, "airflow.api_server", "master1")["airflow-api-server-unit"]["source"]
    ret = salt_cli.run("file.source_list", json.dumps(m), "", "base", minion_tgt="master1")
    assert ret.data[0] == "salt://airflow/files/airflow-daemon.service.jinja", ret.data
    # a pillar-configured source comes first of all
    own = _show(salt_cli, "airflow.config", "worker1", {"airflow": {"tofs": {"source_files": {
        "airflow-config": ["salt://site/airflow.cfg.jinja"]}}}})
    assert own["airflow-config"]["source"][0] == "salt://site/airflow.cfg.jinja"
    assert own["airflow-config"]["source"][-1] == "salt://airflow/files/airflow.cfg.jinja"
