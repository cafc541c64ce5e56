"""The repo's Vagrantfile, for real: VMs up, Salt, orch.deploy, a DAG through haproxy -> results/vagrant.json.

    python3 -m lab.vagrant_e2e [--topology small] [--driver qemu] [--keep]

Runs as root on a host with vagrant, vagrant-libvirt and qemu (tools/box-deps.sh installs them).
Steps, each timed: the box (`make box`'s, built if its recipe changed), libvirt's daemons and its
`default` network, `vagrant up <vm>` one VM at a time (the Vagrantfile's trigger accepts each key
by name and grants its roles), `salt-run state.orchestrate orch.deploy` on the salt VM, then
`cluster_smoke` triggered from this host through haproxy (https://<net>.30/, the VMs' own CA)
and its tasks' hosts read back. The VMs are destroyed at the end unless --keep.

--driver qemu is software emulation, for hosts whose /dev/kvm cannot run a stock kernel (nested,
KVM-PVM); --topology small (salt, infra, master1, worker1) is what fits 2 cores under it.
Extra CA certificates of this host (/usr/local/share/ca-certificates) go to the VMs through
AIRFLOW_VM_CA_CERTS, so a TLS-inspecting egress proxy works there as it does here.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .box import BOX_NAME, add_to_vagrant, ensure_box
from .box_smoke import ensure_default_network, memory_kib, qemu_pid
from .image import host_ca_certs
from .common import REPO, LabError, progress

RESULTS = REPO / "results" / "vagrant.json"
STATE_DIR = Path("/var/lib/airflow-vagrant")      # vagrant's machine state, out of the work tree
TOPOLOGIES = ("full", "small")     # the Vagrantfile's AIRFLOW_VM_TOPOLOGY values; it lists the VMs
HOST_TOOLS = {"vagrant": "vagrant", "virsh": "libvirt-clients", "libvirtd": "libvirt-daemon-system",
              "qemu-system-x86_64": "qemu-system-x86",
              "dnsmasq": "dnsmasq-base"}     # libvirt's `default` network; only a Recommends of libvirt
SMOKE_DAG = "cluster_smoke"


def missing_prerequisites() -> list[str]:
    """What this host lacks for a real `vagrant up` (empty: it can run)."""
    missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)]
    if shutil.which("vagrant"):
        plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True).stdout
        if "vagrant-libvirt" not in plugins:
            missing.append("the vagrant-libvirt plugin (apt-get install vagrant-libvirt)")
    if os.geteuid() != 0:
        missing.append("root (libvirt's system daemons, the box build)")
    return missing


def default_driver() -> str:
    """kvm, or qemu (software emulation) where /dev/kvm is missing or is KVM-PVM, which cannot
    run a stock Debian kernel."""
    if not os.path.exists("/dev/kvm") or os.path.isdir("/sys/module/kvm_pvm"):
        return "qemu"
    return "kvm"


def start_libvirt() -> None:
    """libvirtd and virtlogd as plain daemons when nothing started them (no systemd as PID 1 here)."""
    for daemon in ("virtlogd", "libvirtd"):
        if subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode != 0:
            progress(f"vagrant: starting {daemon} -d")
            subprocess.run([daemon, "-d"], check=True)
    for _ in range(30):
        if subprocess.run(["virsh", "version"], capture_output=True).returncode == 0:
            break
        time.sleep(1)
    ensure_default_network()


def host_ca_bundle(dest: Path) -> Path | None:
    """This host's extra CA certificates in one PEM file (None when it has none)."""
    pems = [data.decode() for data in host_ca_certs().values()]
    if not pems:
        return None
    dest.write_text("\n".join(pem.strip() for pem in pems) + "\n")
    return dest


def vagrant(env: dict, *argv: str, timeout: float = 3600, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run vagrant in the repo; with log, its output goes there (long steps print progress)."""
    if log is None:
        return subprocess.run(["vagrant", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
    with log.open("a") as out:
        out.write(f"\n$ vagrant {' '.join(argv)}\n")
        out.flush()
        return subprocess.run(["vagrant", *argv], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)


def machines(env: dict) -> list[str]:
    """The VMs of the selected topology, in the Vagrantfile's order (salt first)."""
    p = vagrant(env, "status", "--machine-readable", timeout=120)
    if p.returncode != 0:
        raise LabError(f"vagrant status: {(p.stdout + p.stderr)[-1000:]}")
    names = []
    for line in p.stdout.splitlines():
        fields = line.split(",")
        if len(fields) > 3 and fields[2] == "provider-name" and fields[1] not in names:
            names.append(fields[1])
    return names


def on_salt(env: dict, cmd: str, timeout: float = 600) -> str:
    p = vagrant(env, "ssh", "salt", "-c", cmd, timeout=timeout)
    if p.returncode != 0:
        raise LabError(f"on the salt VM: {cmd}: exit {p.returncode}: {(p.stdout + p.stderr)[-2000:]}")
    return p.stdout


def qemu_memory(prefix: str, vms: list[str]) -> dict:
    """Resident and peak memory (MiB) of each VM's qemu process."""
    out = {}
    for vm in vms:
        pid = qemu_pid(prefix + vm)
        if pid:
            mem = memory_kib(pid)
            out[vm] = {"rss_mib": round(mem["VmRSS"] / 1024), "peak_rss_mib": round(mem["VmHWM"] / 1024)}
    return out


class Api:
    """Airflow 3's REST API through haproxy, with a JWT from /auth/token, checked against the VMs' CA."""

    def __init__(self, base: str, user: str, password: str, ca_pem: str):
        self.base, self.user, self.password = base.rstrip("/"), user, password
        self.ctx = ssl.create_default_context(cadata=ca_pem)
        self.token = None

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if auth:
            if self.token is None:
                status, doc = self.call("POST", "/auth/token", {"username": self.user, "password": self.password},
                                        auth=False)
                if status not in (200, 201):
                    raise LabError(f"POST /auth/token: HTTP {status}: {doc}")
                self.token = doc["access_token"]
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, {"error": e.read().decode(errors="replace")[:500]}

    def wait(self, what: str, fn, timeout: float, every: float = 5.0):
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                result = fn()
                if result:
                    return result
            except (OSError, LabError, KeyError, ValueError) as e:    # haproxy/api not up yet
                last = e
            time.sleep(every)
        raise LabError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


def smoke_run(api: Api, workers: list[str]) -> dict:
    """cluster_smoke through haproxy: parsed, unpaused, run to success; which hosts ran its tasks."""
    api.wait("the API through haproxy", lambda: api.call("GET", "/api/v2/version", auth=False)[0] == 200, 900)
    api.wait(f"DAG {SMOKE_DAG} parsed", lambda: api.call("GET", f"/api/v2/dags/{SMOKE_DAG}")[0] == 200, 900)
    status, doc = api.call("PATCH", f"/api/v2/dags/{SMOKE_DAG}", {"is_paused": False})
    if status != 200:
        raise LabError(f"unpause {SMOKE_DAG}: HTTP {status}: {doc}")
    t0 = time.monotonic()
    status, doc = api.call("POST", f"/api/v2/dags/{SMOKE_DAG}/dagRuns", {"logical_date": None})
    if status not in (200, 201):
        raise LabError(f"trigger {SMOKE_DAG}: HTTP {status}: {doc}")
    run_id = doc["dag_run_id"]

    def finished():
        state = api.call("GET", f"/api/v2/dags/{SMOKE_DAG}/dagRuns/{run_id}")[1].get("state")
        if state == "failed":
            raise LabError(f"dag run {run_id} failed")
        return state == "success"
    api.wait(f"dag run {run_id}", finished, 1200)
    seconds = round(time.monotonic() - t0, 1)
    tis = api.call("GET", f"/api/v2/dags/{SMOKE_DAG}/dagRuns/{run_id}/taskInstances")[1]["task_instances"]
    hosts = {}
    for ti in tis:
        key = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
        hosts[key] = (ti.get("hostname") or "").split(".")[0]
    fan_out_hosts = sorted({h for t, h in hosts.items() if t.startswith("fan_out")})
    if not set(workers) <= set(fan_out_hosts):
        raise LabError(f"tasks did not run on every worker VM {workers}: {hosts}")
    return {"run_id": run_id, "seconds": seconds, "fan_out_hosts": fan_out_hosts, "tasks": hosts}


def vagrant_env(topology: str, driver: str, net: str) -> dict:
    """The environment every vagrant call of a run gets (the Vagrantfile's variables)."""
    env = {**os.environ, "AIRFLOW_VM_BOX": BOX_NAME, "AIRFLOW_VM_TOPOLOGY": topology, "AIRFLOW_VM_NET": net,
           "AIRFLOW_VM_LIBVIRT_DRIVER": driver, "VAGRANT_DOTFILE_PATH": str(STATE_DIR / "dotfile"),
           "AIRFLOW_VM_BOOT_TIMEOUT": "1800"}
    ca = host_ca_bundle(STATE_DIR / "extra-ca.pem")
    if ca:
        env["AIRFLOW_VM_CA_CERTS"] = str(ca)
    return env


def smoke_step(env: dict, net: str, workers: list[str], record: dict) -> None:
    """cluster_smoke through haproxy with the salt VM's admin login and CA (both root's files there)."""
    admin = on_salt(env, "sudo cat /etc/airflow-salt/pillar/airflow/secrets/admin.sls")
    creds = dict(line.strip().split(": ", 1) for line in admin.splitlines() if line.strip().startswith("admin_"))
    ca_pem = on_salt(env, "sudo cat /etc/airflow-salt/tls/ca.pem")
    api = Api(f"https://{net}.30", creds["admin_user"].strip("'\""), creds["admin_password"].strip("'\""), ca_pem)
    t3 = time.monotonic()
    record["smoke"] = smoke_run(api, workers)
    record["first_green_seconds"] = round(time.monotonic() - t3, 1)


def run(topology: str, driver: str, net: str, keep: bool, record: dict) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log = STATE_DIR / "vagrant.log"
    log.write_text("")
    t0 = time.monotonic()
    box = ensure_box()
    add_to_vagrant(box)
    info = json.loads(box.with_suffix(".json").read_text())
    record["box"] = {"name": BOX_NAME, "recipe": info.get("recipe"), "build_seconds": info.get("build_seconds"),
                     "mib": round(info["bytes"] / 2**20), "ready_seconds": round(time.monotonic() - t0, 1)}
    start_libvirt()
    env = vagrant_env(topology, driver, net)
    record["extra_ca_certs"] = "AIRFLOW_VM_CA_CERTS" in env
    vms = machines(env)
    record["vms"] = vms
    progress(f"vagrant: topology {topology} ({', '.join(vms)}), driver {driver}; log {log}")
    prefix = REPO.name + "_"       # vagrant-libvirt names a domain <Vagrantfile's dir>_<machine>
    record["vm_up_seconds"] = {}
    try:
        for vm in vms:
            progress(f"vagrant: up {vm} (output in {log})")
            t1 = time.monotonic()
            p = vagrant(env, "up", "--provider=libvirt", "--no-parallel", vm, timeout=5400, log=log)
            record["vm_up_seconds"][vm] = round(time.monotonic() - t1, 1)
            if p.returncode != 0:
                raise LabError(f"vagrant up {vm} failed after {record['vm_up_seconds'][vm]}s; see {log}")
            progress(f"vagrant: {vm} up in {record['vm_up_seconds'][vm]}s")
        keys = on_salt(env, "sudo salt-key -l acc --out=json")
        record["accepted_keys"] = sorted(json.loads(keys).get("minions", []))
        members = json.loads(on_salt(env, "sudo salt-run airflow.roles --out=json"))["members"]
        workers = sorted(members.get("airflow-worker") or [])
        record["role_members"] = members
        progress(f"vagrant: accepted keys {record['accepted_keys']}; salt-run state.orchestrate orch.deploy")
        t2 = time.monotonic()
        p = vagrant(env, "ssh", "salt", "-c", "sudo salt-run state.orchestrate orch.deploy", timeout=7200, log=log)
        record["deploy_seconds"] = round(time.monotonic() - t2, 1)
        if p.returncode != 0:
            raise LabError(f"orch.deploy failed after {record['deploy_seconds']}s; see {log}")
        progress(f"vagrant: deployed in {record['deploy_seconds']}s; cluster_smoke through haproxy")
        smoke_step(env, net, workers, record)
        record["qemu_memory"] = qemu_memory(prefix, vms)
        record["total_seconds"] = round(time.monotonic() - t0, 1)
        record["ok"] = True
        progress(f"vagrant: green: {SMOKE_DAG} ran on {record['smoke']['fan_out_hosts']} "
                 f"in {record['smoke']['seconds']}s; total {record['total_seconds']}s")
    finally:
        record.setdefault("qemu_memory", qemu_memory(prefix, vms))
        if not keep:
            progress("vagrant: destroy -f")
            vagrant(env, "destroy", "-f", timeout=1200, log=log)
            ensure_default_network()


def resume_smoke(record: dict) -> None:
    """On VMs an earlier run kept (--keep) and deployed but did not see green: only the
    cluster_smoke step, added to that run's record, which keeps its own timings."""
    if not record.get("deploy_seconds") or "error" not in record:
        raise LabError(f"{RESULTS} is not a kept run that deployed and then failed: nothing to resume")
    net = record["net"].split("/")[0].rsplit(".", 1)[0]      # "192.168.77.0/24" -> "192.168.77"
    env = vagrant_env(record["topology"], record["driver"], net)
    record["resumed"] = {"after_error": record.pop("error"),
                         "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    workers = sorted(record["role_members"].get("airflow-worker") or [])
    progress(f"vagrant: resuming {record['started']}'s run at cluster_smoke through haproxy")
    smoke_step(env, net, workers, record)
    record["qemu_memory"] = qemu_memory(REPO.name + "_", record["vms"])
    record["ok"] = True
    progress(f"vagrant: green: {SMOKE_DAG} ran on {record['smoke']['fan_out_hosts']} in {record['smoke']['seconds']}s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lab.vagrant_e2e", description=__doc__.split("\n")[0])
    ap.add_argument("--topology", choices=TOPOLOGIES, default=os.environ.get("AIRFLOW_VM_TOPOLOGY", "small"))
    ap.add_argument("--driver", default=os.environ.get("AIRFLOW_VM_LIBVIRT_DRIVER") or default_driver(),
                    help="libvirt domain type: kvm, or qemu (software emulation; the default where "
                         "/dev/kvm cannot run a stock kernel)")
    ap.add_argument("--net", default=os.environ.get("AIRFLOW_VM_NET", "192.168.77"))
    ap.add_argument("--keep", action="store_true", help="leave the VMs running (vagrant destroy -f later)")
    ap.add_argument("--resume-smoke", action="store_true",
                    help="on the VMs of a kept run that deployed and then failed: only cluster_smoke, "
                         "added to its record")
    a = ap.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print("error: cannot run vagrant here: missing " + "; ".join(missing))
        return 2
    record = {"topology": a.topology, "driver": a.driver, "net": f"{a.net}.0/24", "ok": False,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host_cores": os.cpu_count()}
    try:
        if a.resume_smoke:
            record = json.loads(RESULTS.read_text())
            resume_smoke(record)
        else:
            run(a.topology, a.driver, a.net, a.keep, record)
    except (LabError, subprocess.TimeoutExpired, OSError) as e:
        record["error"] = str(e)
        print(f"error: {e}")
    finally:
        record["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(record, indent=1) + "\n")
        progress(f"vagrant: record -> {RESULTS}")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
