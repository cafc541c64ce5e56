"""Nodes: overlayfs root per node, booted with systemd-nspawn in the node's netns.

The host here has no systemd as PID 1, so nspawn is started detached (new session, via
a throwaway sh so it is re-parented to init) with a pidfile; commands run in a node with
``nsenter -t <container PID 1> -a``. That sh first moves itself into the node's own cgroup
(lab/cgroups.py), so each node's systemd manages a cgroup subtree nobody else uses.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from . import cgroups, image, network
from .common import (CACHE, NODE_PATH, NODES_DIR, REPO, SALT_IP, SALT_NODE, LabError,
                     progress, run, topology)

BOOT_TIMEOUT = 120
NODE_PIP_CACHE = "/var/cache/airlab-pip"


def ndir(node: str) -> Path:
    return NODES_DIR / node


def merged(node: str) -> Path:
    return ndir(node) / "root"


def mounted(path: Path) -> bool:
    p = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == p for line in f)


def mount_overlay(node: str) -> None:
    d = ndir(node)
    lower_file = d / "image"
    lower = Path(lower_file.read_text().strip()) if lower_file.exists() else None
    if lower is None or not lower.is_dir():
        lower = image.latest_image()
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    lower_file.write_text(str(lower))
    if not mounted(merged(node)):
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={d / 'upper'},workdir={d / 'work'}", str(merged(node))])


def unmount(node: str) -> None:
    m = merged(node)
    for _ in range(5):
        if not mounted(m):
            return
        if run(["umount", str(m)], check=False).returncode != 0:
            run(["umount", "-l", str(m)], check=False)
    if mounted(m):
        raise LabError(f"{node}: cannot unmount {m}")


def hosts_file() -> str:
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    for n, info in topology().items():
        lines.append(f"{info['ip']} {n}" + (" salt" if n == SALT_NODE and info["ip"] == SALT_IP else ""))
    return "\n".join(lines) + "\n"


def write_node_files(node: str) -> None:
    root = merged(node)
    (root / "etc/hostname").write_text(node + "\n")
    (root / "etc/hosts").write_text(hosts_file())
    rc = root / "etc/resolv.conf"
    if rc.is_symlink():
        rc.unlink()
    rc.write_text(network.resolv_conf())
    pc = root / "etc/pip.conf"
    if pip_cache_enabled() and pc.exists() and "cache-dir" not in pc.read_text():
        pc.write_text(pc.read_text() + f"cache-dir = {NODE_PIP_CACHE}\n")
    mid = root / "etc/machine-id"
    if not mid.exists() or not mid.read_text().strip():
        mid.write_text(uuid.uuid4().hex + "\n")


def _pidfile(node: str) -> Path:
    return ndir(node) / "nspawn.pid"


def nspawn_pid(node: str) -> int | None:
    pf = _pidfile(node)
    if not pf.exists():
        return None
    try:
        pid = int(pf.read_text().strip())
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("State:")]
    except (ValueError, OSError):
        return None
    if b"systemd-nspawn" not in cmd[0] or node.encode() not in cmd or (state and "Z" in state[0]):
        return None
    return pid


def leader(node: str) -> int | None:
    pid = nspawn_pid(node)
    if pid is None:
        return None
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def is_running(node: str) -> bool:
    return leader(node) is not None


def nsenter_argv(node: str, argv, env=None) -> list[str]:
    pid = leader(node)
    if pid is None:
        raise LabError(f"{node}: not running")
    envs = [f"PATH={NODE_PATH}", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb", "USER=root"]
    envs += [f"{k}={v}" for k, v in (env or {}).items()]
    return ["nsenter", "-t", str(pid), "-a", "--", "env", "-i", *envs, *argv]


def exec_on(node: str, argv, check=True, timeout=None, input=None, capture=True, env=None):
    p = run(nsenter_argv(node, argv, env), check=False, capture=capture, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise LabError(f"{node}: {' '.join(argv)} failed (rc={p.returncode})\n"
                       f"{((p.stdout or '') + (p.stderr or ''))[-3000:]}")
    return p


def _binds(node: str) -> list[str]:
    b = []
    if node == SALT_NODE:
        b.append(f"--bind-ro={REPO}:/srv/airflow")
    if pip_cache_enabled():
        (CACHE / "pip").mkdir(parents=True, exist_ok=True)
        os.chmod(CACHE / "pip", 0o1777)
        b.append(f"--bind={CACHE / 'pip'}:{NODE_PIP_CACHE}")
    return b


def pip_cache_enabled() -> bool:
    """Opt-in (AIRFLOW_LAB_PIP_CACHE=1): one pip cache on the host shared by all nodes.

    Off by default: measured here, the registry proxy sends no Cache-Control headers, so pip
    stores nothing in its HTTP cache and the bind gains nothing."""
    return os.environ.get("AIRFLOW_LAB_PIP_CACHE", "0") == "1"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def wait_booted(node: str, timeout=BOOT_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    state = "?"
    pf = _pidfile(node)
    while time.monotonic() < deadline:
        # right after the fork the child may not have exec'd systemd-nspawn yet: check the pid
        raw = pf.read_text().strip() if pf.exists() else ""
        if not (raw.isdigit() and _alive(int(raw))):
            tail = (ndir(node) / "console.log").read_text(errors="replace")[-2000:]
            raise LabError(f"{node}: systemd-nspawn exited during boot:\n{tail}")
        if leader(node):
            try:
                p = run(nsenter_argv(node, ["systemctl", "is-system-running"]), check=False,
                        timeout=20)
            except LabError:  # a slow answer while 7 nodes boot on 2 cores: ask again
                state = "no answer in 20s"
                continue
            state = p.stdout.strip()
            if state in ("running", "degraded"):
                return state
        time.sleep(0.5)
    raise LabError(f"{node}: not booted after {timeout}s (state {state})")


# sh moves itself into the node's cgroups (nspawn starts there and puts the container in
# <cgroup>/payload), backgrounds nspawn and exits: nspawn is re-parented to init (no zombie)
LAUNCH_SCRIPT = ('exec 0</dev/null >>"$1" 2>&1; shift; pf="$1"; shift; '
                 'IFS=:; for f in $LAB_CGROUP_PROCS; do echo $$ > "$f" || exit 1; done; unset IFS; '
                 'unset LAB_CGROUP_PROCS; "$@" & echo $! > "$pf"')


def launch(argv, log: Path, pidfile: Path, cgroup_procs) -> int:
    """Start argv detached, from the cgroups whose cgroup.procs files are given; its pid goes
    to pidfile, its output to log. Returns the launcher's exit code (not argv's)."""
    env = dict(os.environ, LAB_CGROUP_PROCS=":".join(map(str, cgroup_procs)))
    return subprocess.run(["sh", "-c", LAUNCH_SCRIPT, "sh", str(log), str(pidfile), *argv], env=env,
                          start_new_session=True).returncode


def boot(node: str) -> None:
    """Make node run: netns, overlay, boot. No-op if it already runs."""
    info = topology()[node]
    network.ensure_netns(node, info["ip"])
    if is_running(node):
        if cgroups.in_own_cgroup(nspawn_pid(node), node):
            return
        # converge a lab booted by an older driver: all its nodes share one cgroup tree
        progress(f"{node}: runs in the cgroup tree shared by all nodes (old layout): "
                 "restarting it in a cgroup of its own")
        stop(node, hard=False)
    t0 = time.monotonic()
    mount_overlay(node)
    write_node_files(node)
    argv = ["systemd-nspawn", "-q", "-D", str(merged(node)), "-M", node,
            f"--network-namespace-path=/run/netns/{network.netns(node)}",
            "--register=no", "--keep-unit", "-b", "--resolv-conf=off", "--timezone=off",
            "--link-journal=no", "--console=passive", *_binds(node)]
    log = ndir(node) / "console.log"
    pf = _pidfile(node)
    pf.unlink(missing_ok=True)
    if launch(argv, log, pf, cgroups.prepare(node)) != 0:
        raise LabError(f"{node}: cannot start systemd-nspawn in its cgroup {cgroups.node_cgroup(node)}:\n"
                       + log.read_text(errors="replace")[-2000:])
    state = wait_booted(node)
    if not cgroups.in_own_cgroup(nspawn_pid(node), node):
        raise LabError(f"{node}: systemd-nspawn is not in its cgroup {cgroups.node_cgroup(node)}")
    progress(f"{node}: booted ({state}) in {time.monotonic() - t0:.1f}s at {info['ip']}")


def _kill_tree(node: str) -> None:
    ldr, pid = leader(node), nspawn_pid(node)
    if ldr:  # SIGKILL to the container's PID 1 kills every process of its pid namespace
        try:
            os.kill(ldr, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop(node: str, hard: bool = True, timeout: float = 180) -> None:
    """Power the node off: hard = pulled plug (SIGKILL), else a clean systemd poweroff
    (waits up to `timeout`: Celery workers get 120 s for a warm shutdown), then SIGKILL."""
    pid = nspawn_pid(node)
    if pid is None:
        return
    if not hard:
        os.kill(pid, signal.SIGTERM)  # nspawn forwards SIGRTMIN+3 -> systemd halts the node
    deadline = time.monotonic() + (timeout if not hard else 0)
    while time.monotonic() < deadline and nspawn_pid(node):
        time.sleep(0.3)
    if nspawn_pid(node):
        _kill_tree(node)
        end = time.monotonic() + 15
        while time.monotonic() < end and nspawn_pid(node):
            time.sleep(0.1)
    if nspawn_pid(node):
        raise LabError(f"{node}: systemd-nspawn (pid {pid}) did not exit")
    _pidfile(node).unlink(missing_ok=True)
    cgroups.remove(node)
    progress(f"{node}: stopped ({'hard' if hard else 'graceful'})")


def destroy(node: str) -> None:
    """Remove everything of a node: processes, mount, netns/veth, its directory."""
    stop(node, hard=True)
    # nspawn processes not tracked by a pidfile (crash leftovers) whose root is this node
    root = str(merged(node))
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"systemd-nspawn") and root.encode() in cmd:
                try:
                    os.kill(int(p.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    cgroups.remove(node)  # waits until the node's killed processes have left its cgroups
    time.sleep(0.2) if mounted(merged(node)) else None
    unmount(node)
    network.remove_netns(node)
    shutil.rmtree(ndir(node), ignore_errors=True)


def known_nodes() -> list[str]:
    """Topology nodes plus leftovers (node dirs / netns) of nodes no longer in the topology."""
    names = list(topology())
    extra = set(network.lab_netns())
    if NODES_DIR.is_dir():
        extra |= {p.name for p in NODES_DIR.iterdir() if p.is_dir()}
    return names + sorted(extra - set(names))
