"""A cgroup subtree of its own for every node, so that each node behaves like a separate machine.

Each node's systemd-nspawn is started from ``<hierarchy>/airflow-lab/<node>`` in every hierarchy
systemd tracks processes with: the v1 ``name=systemd`` hierarchy and the cgroup2 one (on this
hybrid host /sys/fs/cgroup/systemd and /sys/fs/cgroup/unified; on a pure cgroup2 host just
/sys/fs/cgroup). With ``--keep-unit`` nspawn splits the cgroup it was started in into
``supervisor`` (nspawn itself) and ``payload`` (the container, and the root of its cgroup
namespace). The systemd inside the node therefore manages ``/airflow-lab/<node>/payload/...``
and nothing else: a unit's control group holds that node's processes only, and
``systemctl stop`` / ``systemctl kill --kill-who=all`` kill exactly them.

Before this, every nspawn ran in the cgroup of its launcher (``/``), so all nodes shared
``/payload``: ``/payload/system.slice/airflow-worker.service`` held the workers of worker1 and
worker2; worker1's systemd read worker2's processes there as pid 0 (not in its pid namespace)
and gave up on every stop with ``Failed to kill control group ..., ignoring: Input/output error``.

The v1 resource controllers (cpu, memory, pids, ...) are left alone: the nodes see them
read-only, and whatever accounts the lab's memory on the host keeps doing so.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .common import LabError

PARENT = "airflow-lab"
SYSTEMD_V1 = "name=systemd"
V2 = "cgroup2"
MOUNTINFO = "/proc/self/mountinfo"
# nspawn --keep-unit creates these under the cgroup it starts in; started from "/", the old
# layout left them at the root of each hierarchy
LEGACY = ("payload", "supervisor")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def hierarchies(mountinfo: str | None = None) -> dict[str, Path]:
    """{"name=systemd": mount point, "cgroup2": mount point} of the hierarchies systemd tracks
    processes with (the first mount of each; either may be missing)."""
    if mountinfo is None:
        mountinfo = Path(MOUNTINFO).read_text()
    found: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, opts = tail[0], tail[2].split(",")
        key = V2 if fstype == "cgroup2" else SYSTEMD_V1 if fstype == "cgroup" and SYSTEMD_V1 in opts else None
        if key and key not in found:
            found[key] = Path(_unescape(fields[4]))
    return found


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup -> {"name=systemd": path, "cgroup2": path, "memory": path, ...}."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[V2] = path
        else:
            for c in controllers.split(","):
                out[c] = path
    return out


def node_cgroup(node: str) -> str:
    """The node's cgroup path inside each hierarchy."""
    return f"/{PARENT}/{node}"


def within(path: str, node: str) -> bool:
    base = node_cgroup(node)
    return path == base or path.startswith(base + "/")


def node_dirs(node: str, hier: dict[str, Path] | None = None) -> dict[str, Path]:
    hier = hierarchies() if hier is None else hier
    return {k: h / PARENT / node for k, h in hier.items()}


def in_own_cgroup(pid: int, node: str, hier: dict[str, Path] | None = None) -> bool:
    """Whether process pid runs in node's subtree in every tracking hierarchy."""
    try:
        cg = parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return False
    return is_own(cg, node, hierarchies() if hier is None else hier)


def is_own(cg: dict[str, str], node: str, hier: dict[str, Path]) -> bool:
    """Whether a parsed /proc/PID/cgroup puts the process in node's subtree in every tracking
    hierarchy of hier."""
    return bool(hier) and all(within(cg.get(k, ""), node) for k in hier)


def procs(path: Path) -> list[int]:
    """Pids of every process in the cgroup subtree at path."""
    pids: set[int] = set()
    if not path.is_dir():
        return []
    for d, _subdirs, _files in os.walk(path):
        try:
            pids |= {int(x) for x in (Path(d) / "cgroup.procs").read_text().split()}
        except (OSError, ValueError):
            pass
    return sorted(pids)


def _rmtree(path: Path) -> None:
    """rmdir a cgroup subtree bottom-up (cgroup directories are removed with rmdir, not unlink)."""
    for d, _subdirs, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass


def remove(node: str, timeout: float = 15, hier=None, kill=os.kill, sleep=time.sleep) -> None:
    """Remove node's cgroup subtrees. Only while the node is down: any process still in them
    belongs to the node (its pid namespace is gone or going) and gets SIGKILL."""
    deadline = time.monotonic() + timeout
    for path in node_dirs(node, hier).values():
        polls = 0
        while path.exists():
            left = procs(path)
            if not left:
                try:
                    _rmtree(path)
                    break
                except OSError:  # a process joined or is still leaving: look again
                    pass
            elif polls >= 10:  # 1 s of grace for processes of a killed pid namespace to exit
                for pid in left:
                    try:
                        kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if time.monotonic() > deadline:
                raise LabError(f"{node}: cannot remove cgroup {path} (processes {procs(path)})")
            polls += 1
            sleep(0.1)
    remove_parent(hier)


def remove_parent(hier=None) -> None:
    """rmdir <hierarchy>/airflow-lab when no node subtree is left in it."""
    hier = hierarchies() if hier is None else hier
    for h in hier.values():
        try:
            (h / PARENT).rmdir()
        except OSError:  # missing, or other nodes still there
            pass


def prepare(node: str, hier=None) -> list[Path]:
    """Fresh, empty cgroup directories for node; returns their cgroup.procs files, into which
    the launcher of systemd-nspawn writes its own pid before it starts nspawn."""
    hier = hierarchies() if hier is None else hier
    if not hier:
        raise LabError("no name=systemd or cgroup2 hierarchy mounted (see `mount | grep cgroup`)")
    remove(node, hier=hier)  # leftovers of the node's previous boot
    files = []
    for path in node_dirs(node, hier).values():
        path.mkdir(parents=True, exist_ok=True)
        files.append(path / "cgroup.procs")
    return files


def remove_legacy(hier=None) -> list[Path]:
    """Remove the shared ``payload``/``supervisor`` trees the old layout left at the root of each
    hierarchy, when no process is in them. Returns what was removed."""
    hier = hierarchies() if hier is None else hier
    gone = []
    for h in hier.values():
        for name in LEGACY:
            path = h / name
            if path.is_dir() and not procs(path):
                try:
                    _rmtree(path)
                    gone.append(path)
                except OSError:
                    pass
    return gone


def unit_cgroups(node: str, unit: str, hier=None) -> dict[str, Path]:
    """Host directories of a system unit's control group inside node."""
    if "." not in unit:
        unit += ".service"
    return {k: d / "payload" / "system.slice" / unit for k, d in node_dirs(node, hier).items()}
