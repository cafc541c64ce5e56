"""The lab driver itself: nodes, network, salt keys, exec, per-node cgroups, add/remove of a
throwaway node."""
import json
import os
import subprocess
import sys
import time

import pytest

from lab.common import DEFAULT_TOPOLOGY, REPO

NODES = list(DEFAULT_TOPOLOGY)
pytestmark = pytest.mark.timeout(600)


def wait_for(fn, timeout, every=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timeout {timeout}s waiting for {what} (last: {last!r})")


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


@pytest.mark.extended  # CI budget (test_haproxy_follows_api_servers adds a node too)
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
        cg_dirs = list(lab.node_cgroups(name).values())
        assert cg_dirs and all((d / "payload").is_dir() for d in cg_dirs), cg_dirs
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
    assert not [d for d in cg_dirs if d.exists()], cg_dirs  # its cgroup subtrees went with it
    # the rest of the lab is untouched
    assert all(lab.is_running(n) for n in NODES)
    assert network.lab_rules_present()
    print(f"add+remove node: {added:.1f}s")


# ------------------------------------------------------------------ per-node cgroups
CG_UNIT = "lab-cg-test"


def test_every_node_runs_in_a_cgroup_of_its_own(lab):
    from lab import cgroups, nodes
    for n in NODES:
        pid = nodes.nspawn_pid(n)
        assert pid and cgroups.in_own_cgroup(pid, n), (n, open(f"/proc/{pid}/cgroup").read())
        for path in lab.node_cgroups(n).values():
            assert (path / "payload").is_dir() and (path / "supervisor").is_dir(), path
    # the node's systemd sees its own subtree as the root (cgroup namespace)
    assert lab.exec_on("worker1", ["cat", "/proc/1/cgroup"]).stdout.count("/init.scope") >= 1


def _unit_host_pids(lab, node):
    """{hierarchy: pids} in the host directory of CG_UNIT's control group inside node."""
    from lab import cgroups
    return {k: cgroups.procs(p) for k, p in lab.unit_cgroups(node, CG_UNIT).items()}


def _alive(pid):
    try:
        return b"sleep" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False


def _pid1_journal(lab, node, since):
    return lab.exec_on(node, ["journalctl", "--no-pager", "-o", "cat", "_PID=1", f"--since=@{since}"],
                       check=False, timeout=30).stdout


@pytest.mark.timeout(300)
def test_systemd_in_a_node_kills_exactly_its_own_unit(lab):
    """The same transient unit in worker1 and worker2: SIGKILL --kill-who=all in worker1 kills
    worker1's processes only; `systemctl stop` in worker2 kills worker2's, including a child in a
    session of its own; neither systemd logs the EIO of a cgroup shared between nodes."""
    from lab import nodes
    a, b = "worker1", "worker2"
    since = int(time.time()) - 1
    pids = {}
    for n in (a, b):
        lab.exec_on(n, ["systemctl", "stop", CG_UNIT], check=False)
        lab.exec_on(n, ["systemctl", "reset-failed", CG_UNIT], check=False)
        # main process plus a child that left its session: only the cgroup ties it to the unit
        lab.exec_on(n, ["systemd-run", "--quiet", f"--unit={CG_UNIT}", "/bin/sh", "-c",
                        "setsid sleep 600 & exec sleep 601"])
        pids[n] = wait_for(lambda: (lambda h: len(set(map(tuple, h.values()))) == 1
                                    and len(list(h.values())[0]) == 2 and h)(_unit_host_pids(lab, n)),
                           30, what=f"two processes of {CG_UNIT} in {n}'s cgroup on the host")
        pids[n] = next(iter(pids[n].values()))
    try:
        # distinct host paths, each holding processes of its own node's pid namespace only
        paths = {n: set(lab.unit_cgroups(n, CG_UNIT).values()) for n in (a, b)}
        assert not paths[a] & paths[b], paths
        assert not set(pids[a]) & set(pids[b]), pids
        for n in (a, b):
            pidns = os.readlink(f"/proc/{nodes.leader(n)}/ns/pid")
            assert all(os.readlink(f"/proc/{p}/ns/pid") == pidns for p in pids[n]), (n, pids[n])
            # inside the node, in the hierarchy its systemd tracks with (cgroup2; "unified" on a
            # hybrid host): no pid 0, which is how a process of another pid namespace shows up
            cg2 = "/sys/fs/cgroup/unified" if lab.exec_on(n, ["test", "-d", "/sys/fs/cgroup/unified"],
                                                          check=False).returncode == 0 else "/sys/fs/cgroup"
            inside = lab.exec_on(n, ["cat", f"{cg2}/system.slice/{CG_UNIT}.service/cgroup.procs"]).stdout.split()
            assert "0" not in inside and len(inside) == 2, (n, inside)

        # (a) systemctl kill --signal=SIGKILL --kill-who=all in worker1 (what kill_unit does)
        k = lab.exec_on(a, ["systemctl", "kill", "--signal=SIGKILL", "--kill-who=all", CG_UNIT], check=False)
        assert k.returncode == 0, k.stdout + k.stderr
        wait_for(lambda: not any(map(_alive, pids[a])) and not any(_unit_host_pids(lab, a).values()), 20,
                 what=f"every process of {CG_UNIT} in {a} gone")
        assert all(map(_alive, pids[b])), f"{b}'s processes died with {a}'s"
        assert sorted(next(iter(_unit_host_pids(lab, b).values()))) == sorted(pids[b])
        st = lab.exec_on(b, ["systemctl", "is-active", CG_UNIT], check=False).stdout.strip()
        assert st == "active", st

        # (b) systemctl stop in worker2
        s = lab.exec_on(b, ["systemctl", "stop", CG_UNIT], check=False, timeout=120)
        assert s.returncode == 0, s.stdout + s.stderr
        wait_for(lambda: not any(map(_alive, pids[b])) and not any(_unit_host_pids(lab, b).values()), 20,
                 what=f"every process of {CG_UNIT} in {b} gone")
    finally:
        for n in (a, b):
            lab.exec_on(n, ["systemctl", "stop", CG_UNIT], check=False)
            lab.exec_on(n, ["systemctl", "reset-failed", CG_UNIT], check=False)

    # both systemds logged the end of the unit; neither failed to kill a control group
    ends = {a: f"{CG_UNIT}.service: Failed with result 'signal'", b: f"Stopped {CG_UNIT}.service"}
    for n, marker in ends.items():
        log = wait_for(lambda: (lambda j: marker in j and j)(_pid1_journal(lab, n, since)), 30, 0.5,
                       f"'{marker}' in {n}'s journal")
        bad = [ln for ln in log.splitlines() if "Input/output error" in ln or "Failed to kill control group" in ln]
        assert not bad, (n, bad)


def test_no_node_failed_to_kill_a_control_group_since_boot(lab):
    """Every stop since the nodes booted (deploy restarts, fault tests) found its unit's cgroup."""
    bad = {}
    for n in NODES:
        j = lab.exec_on(n, ["journalctl", "-b", "--no-pager", "-o", "cat", "_PID=1"], check=False, timeout=60).stdout
        lines = [ln for ln in j.splitlines() if "Failed to kill control group" in ln]
        if lines:
            bad[n] = lines[:5]
    assert not bad, bad
