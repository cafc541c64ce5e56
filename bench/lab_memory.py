"""Memory used by the running lab, per node and in all: the proportional set size (PSS, shared
pages split between their users) of every process in each node's network namespace, plus the
host's used memory for comparison. Writes results/lab-memory.json.

Run as root on the host while the lab is up:  python3 -m bench.lab_memory
"""
import json
import subprocess
import time
from pathlib import Path

from lab.common import REPO, topology


def pss_kib(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def host_used_mib() -> int:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) // 1024


def main() -> None:
    nodes = {}
    for node in topology():
        pids = subprocess.run(["ip", "netns", "pids", f"airlab-{node}"], capture_output=True,
                              text=True).stdout.split()
        nodes[node] = {"processes": len(pids), "pss_mib": round(sum(map(pss_kib, pids)) / 1024, 1)}
        print(f"{node:10s} {nodes[node]['processes']:4d} processes  {nodes[node]['pss_mib']:8.1f} MiB")
    total = round(sum(n["pss_mib"] for n in nodes.values()), 1)
    result = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "nodes": nodes, "lab_pss_mib": total,
              "host_used_mib": host_used_mib()}
    print(f"lab total {total} MiB PSS; host used {result['host_used_mib']} MiB")
    out = REPO / "results" / "lab-memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
