"""Python API of the lab (used by the CLI and by tests/lab)."""
from __future__ import annotations

import ipaddress
import json
import shutil
import time

from . import cgroups, image, network, nodes, saltsetup
from .common import (BRIDGE, LB_URL, NODES_DIR, SALT_NODE, STATE, STATS_URL, SUBNET, TOPOLOGY_FILE, LabError,
                     locked, minions, parallel, progress, record_timing, run, save_topology, topology)


def exec_on(node, argv, check=True, timeout=None, input=None):
    """Run argv in node; returns subprocess.CompletedProcess (text, captured)."""
    return nodes.exec_on(node, list(argv), check=check, timeout=timeout, input=input)


def salt(*argv, check=True, timeout=600):
    """Run a command on the salt node, e.g. salt("salt", "*", "test.ping")."""
    if len(argv) == 1 and not isinstance(argv[0], str):
        argv = tuple(argv[0])
    return exec_on(SALT_NODE, list(argv), check=check, timeout=timeout)


salt_run = salt


def node_ip(node):
    return topology()[node]["ip"]


def is_running(node):
    return nodes.is_running(node)


def secrets():
    return saltsetup.load_secrets()


@locked
def stop_node(node, hard=True):
    nodes.stop(node, hard=hard)


@locked
def start_node(node):
    nodes.boot(node)


@locked
def boot_all(names=None):
    t0 = time.monotonic()
    network.ensure_bridge()
    names = names or list(topology())
    todo = [n for n in names if not nodes.is_running(n)]
    parallel(nodes.boot, names, "boot")
    for path in cgroups.remove_legacy():  # once no node of an older driver is left in them
        progress(f"cgroups: removed {path} (shared by all nodes in the old layout)")
    if todo:
        record_timing("boot", time.monotonic() - t0)
        progress(f"boot: {len(todo)} node(s) booted in {time.monotonic() - t0:.1f}s")


def check_dns(node=SALT_NODE):
    for host in ("deb.debian.org", "pypi.org"):
        p = exec_on(node, ["getent", "hosts", host], check=False, timeout=30)
        if p.returncode != 0:
            raise LabError(f"{node}: cannot resolve {host}: check DNS (set AIRFLOW_LAB_DNS=ip1,ip2)")


@locked
def setup(names=None):
    t0 = time.monotonic()
    image.ensure_image()
    boot_all(names)
    check_dns()
    t1 = time.monotonic()
    saltsetup.setup_salt()
    record_timing("salt_setup", time.monotonic() - t1)
    progress(f"lab: nodes + salt ready in {time.monotonic() - t0:.1f}s (salt setup {time.monotonic() - t1:.1f}s)")


@locked
def lab_deploy():
    dt = saltsetup.deploy()
    record_timing("deploy", dt)
    sec = secrets()
    progress(f"Airflow UI (haproxy): {LB_URL}  (certificate from the lab CA {saltsetup.CA_CERT})")
    progress(f"haproxy stats:        {STATS_URL}  (user admin, password {sec['lb_stats_password']})")
    progress(f"login:                {sec['admin_user']} / {sec['admin_password']}")
    return dt


@locked
def lab_up(deploy=True):
    t0 = time.monotonic()
    setup()
    if deploy:
        lab_deploy()
    record_timing("up_total", time.monotonic() - t0)
    progress(f"lab: up in {time.monotonic() - t0:.1f}s")


@locked
def lab_down(purge=False):
    t0 = time.monotonic()
    names = nodes.known_nodes()
    parallel(nodes.destroy, names, "destroy")
    cgroups.remove_parent()
    cgroups.remove_legacy()
    network.remove_bridge()
    TOPOLOGY_FILE.unlink(missing_ok=True)
    if NODES_DIR.exists():
        shutil.rmtree(NODES_DIR, ignore_errors=True)
    if purge:
        shutil.rmtree(STATE, ignore_errors=True)
    progress(f"lab: down ({len(names)} nodes removed{', state purged' if purge else ''}) "
             f"in {time.monotonic() - t0:.1f}s")


def status():
    topo = topology()
    try:
        k = saltsetup.keys() if nodes.is_running(SALT_NODE) else {}
    except LabError:
        k = {}
    rows = []
    for n, info in topo.items():
        running = nodes.is_running(n)
        if n == SALT_NODE:
            key = "master"
        elif n in k.get("minions", []):
            key = "accepted"
        elif n in k.get("minions_pre", []):
            key = "pending"
        else:
            key = "-"
        pid = nodes.nspawn_pid(n) if running else None
        cgroup = ("-" if pid is None else cgroups.node_cgroup(n) if cgroups.in_own_cgroup(pid, n)
                  else "shared")
        rows.append({"node": n, "ip": info["ip"], "running": running, "key": key,
                     "cgroup": cgroup, "roles": ",".join(info["roles"])})
    return rows


@locked
def add_node(name, roles, ip):
    if name in topology():
        raise LabError(f"node {name} exists")
    if ipaddress.ip_address(ip) not in ipaddress.ip_network(SUBNET):
        raise LabError(f"{ip} is not in {SUBNET}")
    if any(i["ip"] == ip for i in topology().values()):
        raise LabError(f"{ip} already used")
    extra = json.loads(TOPOLOGY_FILE.read_text()) if TOPOLOGY_FILE.exists() else {}
    extra[name] = {"ip": ip, "roles": list(roles)}
    save_topology(extra)
    network.ensure_bridge()
    nodes.boot(name)
    refresh_hosts()
    saltsetup.setup_minion(name)
    saltsetup.accept_keys([name])
    saltsetup.ping([name])
    saltsetup.grant_roles([name])
    progress(f"{name}: added ({','.join(roles)}, {ip}); run `deploy` or highstate to give it its role")


@locked
def remove_node(name):
    if name in (SALT_NODE,):
        raise LabError("cannot remove the salt node")
    roles = topology().get(name, {}).get("roles") or []
    if roles and nodes.is_running(SALT_NODE):  # out of the master's role record first
        salt("salt-run", "airflow.revoke", name, ",".join(roles), check=False, timeout=180)
    nodes.destroy(name)
    if nodes.is_running(SALT_NODE):
        salt("salt-key", "-y", "-d", name, check=False)
    extra = json.loads(TOPOLOGY_FILE.read_text()) if TOPOLOGY_FILE.exists() else {}
    extra.pop(name, None)
    save_topology(extra)
    refresh_hosts()
    progress(f"{name}: removed")


@locked
def pin_tree(rev):
    """Pin the salt master's /srv/airflow to a snapshot of commit rev (see saltsetup.pin_tree)."""
    return saltsetup.pin_tree(rev)


@locked
def unpin_tree():
    saltsetup.unpin_tree()


def pinned_tree():
    return saltsetup.pinned_tree()


def node_cgroups(node):
    """{hierarchy: host directory} of node's own cgroup subtree (lab/cgroups.py)."""
    return cgroups.node_dirs(node)


def unit_cgroups(node, unit):
    """{hierarchy: host directory} of a system unit's control group inside node."""
    return cgroups.unit_cgroups(node, unit)


def _veth_of(node):
    if node not in topology():
        raise LabError(f"unknown node {node}")
    name = network.veth(node)
    if not network.link_exists(name):
        raise LabError(f"{node}: its link {name} does not exist (is the node up?)")
    return name


@locked
def link_down(node):
    """Cut node off the network (a full partition, both directions): the host side of its veth
    goes down, so its eth0 loses carrier. Its processes keep running and `exec_on` still works
    (nsenter needs no network); TCP connections are not reset, their packets are dropped."""
    run(["ip", "link", "set", _veth_of(node), "down"])
    progress(f"{node}: link down (partitioned)")


@locked
def link_up(node):
    """Heal link_down: the veth up again, still a port of the bridge."""
    run(["ip", "link", "set", _veth_of(node), "master", BRIDGE, "up"])
    progress(f"{node}: link up")


def link_is_up(node):
    """Is the host side of node's veth administratively up (False when it does not exist)?"""
    name = network.veth(node)
    p = run(["ip", "-j", "link", "show", name], check=False)
    try:
        return p.returncode == 0 and "UP" in json.loads(p.stdout)[0].get("flags", [])
    except (ValueError, IndexError, AttributeError):
        return False


def refresh_hosts():
    body = nodes.hosts_file()
    for n in topology():
        if nodes.is_running(n):
            exec_on(n, ["/bin/sh", "-c", "cat > /etc/hosts"], input=body)


__all__ = ["exec_on", "salt", "salt_run", "node_ip", "is_running", "stop_node", "start_node", "add_node",
           "remove_node", "lab_up", "lab_deploy", "lab_down", "secrets", "status", "minions", "node_cgroups",
           "unit_cgroups", "pin_tree", "unpin_tree", "pinned_tree", "link_down", "link_up", "link_is_up"]
