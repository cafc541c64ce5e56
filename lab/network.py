"""Bridge, per-node network namespaces + veths, NAT, DNS for the lab."""
from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path

from .common import BRIDGE, COMMENT, GATEWAY, PREFIX, SUBNET, progress, run

NETNS_DIR = Path("/run/netns")


def netns(node: str) -> str:
    return f"airlab-{node}"


def veth(node: str) -> str:
    name = f"al-{node}"
    if len(name) > 15:
        name = "al-" + node[:6] + "-" + hashlib.sha1(node.encode()).hexdigest()[:5]
    return name


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


def ensure_bridge() -> None:
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f"{GATEWAY}/{PREFIX}" not in addrs:
        run(["ip", "addr", "add", f"{GATEWAY}/{PREFIX}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    # bridged traffic must not go through iptables' FORWARD filter (br_netfilter may be loaded)
    for rule in _rules():
        if run(["iptables", *rule[0:1], "-C", *rule[1:]], check=False).returncode != 0:
            run(["iptables", *rule[0:1], "-A", *rule[1:]])


def _rules():
    c = ["-m", "comment", "--comment", COMMENT]
    return [
        ["-tnat", "POSTROUTING", "-s", SUBNET, "!", "-o", BRIDGE, "-j", "MASQUERADE", *c],
        ["-tfilter", "FORWARD", "-i", BRIDGE, "-j", "ACCEPT", *c],
        ["-tfilter", "FORWARD", "-o", BRIDGE, "-j", "ACCEPT", *c],
    ]


def remove_nat() -> None:
    for rule in _rules():
        while run(["iptables", rule[0], "-C", *rule[1:]], check=False).returncode == 0:
            run(["iptables", rule[0], "-D", *rule[1:]])


def lab_rules_present() -> list[str]:
    out = []
    for t in ("nat", "filter"):
        out += [ln for ln in run(["iptables", "-t", t, "-S"]).stdout.splitlines() if COMMENT in ln]
    return out


def ns_exec(node: str, *argv: str, check=True):
    return run(["ip", "netns", "exec", netns(node), *argv], check=check)


def ensure_netns(node: str, ip: str) -> None:
    """Create netns + veth for node (idempotent; repairs half-made leftovers)."""
    ns = netns(node)
    host_if = veth(node)
    ok = (NETNS_DIR / ns).exists() and link_exists(host_if) and \
        f"{ip}/{PREFIX}" in ns_exec(node, "ip", "-o", "-4", "addr", "show", "dev", "eth0", check=False).stdout
    if not ok:
        remove_netns(node)
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", host_if, "master", BRIDGE, "up"])
        ns_exec(node, "ip", "link", "set", "lo", "up")
        ns_exec(node, "ip", "addr", "add", f"{ip}/{PREFIX}", "dev", "eth0")
        ns_exec(node, "ip", "link", "set", "eth0", "up")
        ns_exec(node, "ip", "route", "add", "default", "via", GATEWAY)
    run(["ip", "link", "set", host_if, "master", BRIDGE, "up"])


def remove_netns(node: str) -> None:
    if link_exists(veth(node)):
        run(["ip", "link", "del", veth(node)], check=False)
    if (NETNS_DIR / netns(node)).exists():
        run(["ip", "netns", "del", netns(node)], check=False)


def lab_netns() -> list[str]:
    """Node names that have a lab netns (including leftovers)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name[len("airlab-"):] for p in NETNS_DIR.iterdir() if p.name.startswith("airlab-"))


def lab_veths() -> list[str]:
    out = run(["ip", "-o", "link", "show"]).stdout
    names = [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ":" in ln]
    return [n for n in names if n.startswith("al-")]


def remove_bridge() -> None:
    for v in lab_veths():
        run(["ip", "link", "del", v], check=False)
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE])
    remove_nat()


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return True


def _nameservers(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.strip().startswith("nameserver") and len(ln.split()) > 1]


def resolv_conf() -> str:
    """resolv.conf for the nodes: the host's nameservers unless they are loopback stubs
    (unreachable from a netns), then systemd-resolved's upstream list, then public DNS."""
    servers = [s for s in _nameservers("/etc/resolv.conf") if not _is_loopback(s)]
    if not servers:
        servers = [s for s in _nameservers("/run/systemd/resolve/resolv.conf") if not _is_loopback(s)]
    if not servers:
        servers = ["1.1.1.1", "8.8.8.8"]
        progress("dns: host resolver is loopback-only; nodes use public DNS " + ", ".join(servers))
    env = os.environ.get("AIRFLOW_LAB_DNS")
    if env:
        servers = env.split(",")
    return "".join(f"nameserver {s}\n" for s in servers[:3]) + "options timeout:2 attempts:2\n"
