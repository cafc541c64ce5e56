"""Proof that the box `make box` built boots: one throwaway VM, `vagrant ssh`, destroy -> results/box.json.

Uses its own Vagrantfile in a temp dir (not the repo's): the box airflow/debian12, a private
network and an rsync synced folder (what the repo's Vagrantfile uses), 1 CPU, 1 GiB.

    python3 -m lab.box_smoke [--driver qemu] [--nice]

--driver qemu is software emulation, for hosts whose /dev/kvm cannot run a stock kernel
(nested, KVM-PVM). --nice lowers the VM's qemu to nice 19 / idle I/O on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .box import BOX_NAME, box_path
from .common import REPO, LabError, progress, run

RESULTS = REPO / "results" / "box.json"
CHECK = "uname -a; systemctl is-system-running; ip -4 -br addr show eth1; cat /srv/sync/hello.txt; sudo -n true && echo sudo ok"

VAGRANTFILE = """Vagrant.configure("2") do |c|
  c.vm.box = "{box}"
  c.vm.hostname = "boxsmoke"
  c.vm.network "private_network", ip: "{ip}"
  c.vm.synced_folder ".", "/vagrant", disabled: true
  c.vm.synced_folder "sync", "/srv/sync", type: "rsync"
  c.vm.boot_timeout = 1200
  c.vm.provider "libvirt" do |lv|
    lv.driver = "{driver}"
    lv.cpus = 1
    lv.memory = 1024
  end
end
"""


def qemu_pid(domain: str) -> int | None:
    p = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 -name guest={domain},"], capture_output=True, text=True)
    pids = p.stdout.split()
    return int(pids[0]) if pids else None


def memory_kib(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def ensure_default_network() -> None:
    """vagrant destroy has been seen to undefine libvirt's `default` network: put it back."""
    if subprocess.run(["virsh", "net-info", "default"], capture_output=True).returncode != 0:
        progress("smoke: libvirt's default network is gone; defining it again")
        run(["virsh", "net-define", "/usr/share/libvirt/networks/default.xml"])
    if "Active: no" in " ".join(run(["virsh", "net-info", "default"]).stdout.split()):
        run(["virsh", "net-start", "default"])


def smoke(driver: str, nice: bool, ip: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="boxsmoke-", dir="/tmp"))
    (work / "sync").mkdir()
    (work / "sync/hello.txt").write_text("hello from the host\n")
    (work / "Vagrantfile").write_text(VAGRANTFILE.format(box=BOX_NAME, ip=ip, driver=driver))
    domain = f"{work.name}_default"    # vagrant-libvirt names the domain <project dir>_<machine>
    env = {**os.environ, "VAGRANT_CWD": str(work)}
    out: dict = {"driver": driver, "niced_vm": nice}
    reniced = False
    try:
        progress(f"smoke: vagrant up --provider=libvirt in {work} (driver {driver})")
        t0 = time.monotonic()
        up = subprocess.Popen(["vagrant", "up", "--provider=libvirt"], cwd=work, env=env,
                              stdout=open(work / "up.log", "w"), stderr=subprocess.STDOUT)
        while up.poll() is None:
            pid = qemu_pid(domain)
            if nice and pid and not reniced:
                subprocess.run(["renice", "-n", "19", "-p", str(pid)], capture_output=True)
                subprocess.run(["ionice", "-c3", "-p", str(pid)], capture_output=True)
                reniced = True
            time.sleep(2)
        out["vm_up_seconds"] = round(time.monotonic() - t0, 1)
        if up.returncode != 0:
            raise LabError(f"vagrant up failed; see {work / 'up.log'}")
        progress(f"smoke: up in {out['vm_up_seconds']}s; vagrant ssh")
        t1 = time.monotonic()
        ssh = run(["vagrant", "ssh", "-c", CHECK], env=env, timeout=600)
        out["ssh_seconds"] = round(time.monotonic() - t1, 1)
        out["ssh_output"] = ssh.stdout.strip().splitlines()
        if out["ssh_output"][1:2] != ["running"]:      # systemctl is-system-running
            raise LabError(f"system not running: {ssh.stdout}")
        pid = qemu_pid(domain)
        if pid:
            mem = memory_kib(pid)
            out["qemu_rss_mib"] = round(mem["VmRSS"] / 1024)
            out["qemu_peak_rss_mib"] = round(mem["VmHWM"] / 1024)
    finally:
        progress("smoke: vagrant destroy -f")
        subprocess.run(["vagrant", "destroy", "-f"], cwd=work, env=env, capture_output=True, timeout=600)
        ensure_default_network()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lab.box_smoke", description=__doc__.split("\n")[0])
    ap.add_argument("--driver", default=os.environ.get("AIRFLOW_VM_LIBVIRT_DRIVER", "kvm"))
    ap.add_argument("--nice", action="store_true", help="the VM's qemu at nice 19, idle I/O class")
    ap.add_argument("--ip", default="192.168.177.50", help="the VM's private network address")
    a = ap.parse_args(argv)
    info_file = box_path().with_suffix(".json")
    build = json.loads(info_file.read_text()) if info_file.is_file() else {}
    try:
        result = smoke(a.driver, a.nice, a.ip)
    except LabError as e:
        print(f"error: {e}")
        return 1
    record = {"box": BOX_NAME, "recipe": build.get("recipe"), "box_build_seconds": build.get("build_seconds"),
              "box_mib": round(build["bytes"] / 2**20) if "bytes" in build else None, **result,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    progress(f"smoke: ok -> {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
