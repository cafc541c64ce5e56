"""Fast tests of the lab driver's pure logic (no root, no nodes)."""
import base64
import importlib
import subprocess
import sys

import pytest


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_LAB_DIR", str(tmp_path / "state"))
    import lab.common
    importlib.reload(lab.common)
    mods = {}
    for m in ("image", "network", "nodes", "saltsetup", "api"):
        mods[m] = importlib.reload(importlib.import_module(f"lab.{m}"))
    yield mods
    monkeypatch.delenv("AIRFLOW_LAB_DIR")
    importlib.reload(lab.common)
    for m in ("image", "network", "nodes", "saltsetup", "api"):
        importlib.reload(importlib.import_module(f"lab.{m}"))


def test_topology_matches_contract():
    from lab.common import DEFAULT_TOPOLOGY as T
    assert {n: t["ip"] for n, t in T.items()} == {
        "salt": "10.77.0.2", "master1": "10.77.0.11", "master2": "10.77.0.12",
        "worker1": "10.77.0.21", "worker2": "10.77.0.22", "infra": "10.77.0.30"}
    assert T["infra"]["roles"] == ["airflow-db", "airflow-broker", "airflow-lb"]
    assert T["master1"]["roles"] == T["master2"]["roles"] == ["airflow-master"]
    assert T["worker1"]["roles"] == T["worker2"]["roles"] == ["airflow-worker"]


def test_veth_names_fit_ifnamsiz():
    from lab.network import veth
    assert veth("worker1") == "al-worker1"
    long = veth("a-very-long-node-name")
    assert len(long) <= 15 and long != veth("a-very-long-node-name2")


def test_secrets_generated_once_and_pillar_layout(lab):
    s = lab["saltsetup"]
    sec = s.load_secrets()
    assert len(base64.urlsafe_b64decode(sec["fernet_key"])) == 32
    assert sec["admin_user"] == "admin"
    assert s.load_secrets() == sec  # stable across calls (read back from secrets.yaml)
    files = s.pillar_files(sec)
    assert sorted(files) == [f"/etc/airflow-salt/pillar/airflow/secrets/{n}.sls"
                             for n in ("admin", "broker", "cluster", "database", "lb")]
    import yaml
    cluster = yaml.safe_load(files["/etc/airflow-salt/pillar/airflow/secrets/cluster.sls"])
    assert cluster == {"airflow": {"secrets": {"fernet_key": sec["fernet_key"], "api_secret": sec["api_secret"]}}}
    lb = yaml.safe_load(files["/etc/airflow-salt/pillar/airflow/secrets/lb.sls"])
    assert lb["airflow"]["secrets"]["lb_stats_password"] == sec["lb_stats_password"]


def test_resolv_conf_skips_loopback(monkeypatch):
    from lab import network
    monkeypatch.delenv("AIRFLOW_LAB_DNS", raising=False)
    files = {"/etc/resolv.conf": ["127.0.0.53"], "/run/systemd/resolve/resolv.conf": ["192.0.2.53"]}
    monkeypatch.setattr(network, "_nameservers", lambda p: files.get(p, []))
    assert "nameserver 192.0.2.53" in network.resolv_conf()
    assert "127.0.0.53" not in network.resolv_conf()
    files["/run/systemd/resolve/resolv.conf"] = []
    assert "nameserver 1.1.1.1" in network.resolv_conf()


def test_failed_steps_parser():
    from lab.saltsetup import failed_steps
    out = """salt_master:
----------
          ID: db
    Function: salt.state
      Result: True
     Comment: States ran successfully.
----------
          ID: workers
    Function: salt.state
      Result: False
     Comment: Run failed on minions: worker1
Summary for salt_master
Succeeded: 1
Failed:    1
"""
    fails = failed_steps(out)
    assert len(fails) == 1 and "workers" in fails[0] and "worker1" in fails[0]


def test_add_node_validates(lab):
    api = lab["api"]
    with pytest.raises(api.LabError):
        api.add_node("x", ["airflow-worker"], "10.1.2.3")
    with pytest.raises(api.LabError):
        api.add_node("x", ["airflow-worker"], "10.77.0.21")
    with pytest.raises(api.LabError):
        api.add_node("worker1", ["airflow-worker"], "10.77.0.99")


def test_node_pip_conf_drops_local_paths(monkeypatch):
    from lab import image
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple https://example.org/simple")
    conf = image.node_pip_conf()
    assert "/opt/wheels" not in conf and "file:" not in conf
    assert "extra-index-url = https://example.org/simple" in conf
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in conf


def test_recipe_hash_is_stable():
    from lab import image
    assert image.recipe_hash() == image.recipe_hash()
    assert "salt" in image.recipe() and image.recipe()["salt"] == "3008.3"


def test_cli_help():
    p = subprocess.run([sys.executable, "-m", "lab", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for cmd in ("up", "down", "status", "deploy", "exec", "stop-node", "start-node", "add-node"):
        assert cmd in p.stdout
