"""The lab driver itself: nodes, network, salt keys, exec, add/remove of a throwaway node."""
import json
import subprocess
import sys
import time

import pytest

from lab.common import DEFAULT_TOPOLOGY, REPO

NODES = list(DEFAULT_TOPOLOGY)
pytestmark = pytest.mark.timeout(600)


def test_nodes_run_with_their_ips(lab):
    for n in NODES:
        assert lab.is_running(n), n
        out = lab.exec_on(n, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert f"{lab.node_ip(n)}/24" in out, (n, out)
        assert lab.exec_on(n, ["hostname"]).stdout.strip() == n


def test_systemd_runs_in_each_node(lab):
    for n in NODES:
        state = lab.exec_on(n, ["systemctl", "is-system-running"], check=False).stdout.strip()
        assert state in ("running", "degraded"), (n, state)


def test_nodes_reach_each_other(lab):
    for src in ("salt", "worker1", "infra"):
        for dst in NODES:
            if dst != src:
                p = lab.exec_on(src, ["ping", "-c1", "-W2", dst], check=False, timeout=15)
                assert p.returncode == 0, f"{src} -> {dst}: {p.stdout}{p.stderr}"


def test_all_minion_keys_accepted_and_ping(lab):
    keys = json.loads(lab.salt("salt-key", "-L", "--out=json").stdout)
    minions = [n for n in NODES if n != "salt"]
    assert set(minions) <= set(keys["minions"]), keys
    assert not set(minions) & set(keys.get("minions_pre", []))
    res = json.loads(lab.salt("salt", "--out=json", "--static", "--timeout=20", "*", "test.ping").stdout)
    assert all(res.get(m) is True for m in minions), res


def test_exec_exit_code_passes_through(lab):
    cmd = [sys.executable, "-m", "lab", "exec", "worker2", "--", "sh", "-c", "echo hi; exit 7"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 7 and "hi" in p.stdout
    assert lab.exec_on("worker2", ["false"], check=False).returncode == 1


@pytest.mark.timeout(400)
def test_add_and_remove_throwaway_node(lab):
    from lab import network
    name, ip = "scratch1", "10.77.0.99"
    if name in lab.topology():
        lab.remove_node(name)
    t0 = time.monotonic()
    lab.add_node(name, ["airflow-worker"], ip)
    try:
        assert lab.is_running(name)
        res = json.loads(lab.salt("salt", "--out=json", "--static", name, "grains.get", "roles").stdout)
        assert res[name] == ["airflow-worker"]
        assert lab.exec_on("worker1", ["ping", "-c1", "-W2", ip], check=False).returncode == 0
    finally:
        lab.remove_node(name)
    added = time.monotonic() - t0
    assert not lab.is_running(name)
    assert name not in network.lab_netns()
    assert network.veth(name) not in network.lab_veths()
    keys = json.loads(lab.salt("salt-key", "-L", "--out=json").stdout)
    assert name not in sum(keys.values(), [])
    assert name not in lab.topology()
    # the rest of the lab is untouched
    assert all(lab.is_running(n) for n in NODES)
    assert network.lab_rules_present()
    print(f"add+remove node: {added:.1f}s")
