"""Fast tests of the lab driver's pure logic (no root, no nodes)."""
import base64
import importlib
import shutil
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
                             for n in ("admin", "api", "broker", "database", "fernet", "flower_auth", "jwt",
                                       "lb", "results")]
    import yaml
    api = yaml.safe_load(files["/etc/airflow-salt/pillar/airflow/secrets/api.sls"])
    assert api == {"airflow": {"secrets": {"api_secret_key": sec["api_secret_key"]}}}
    lb = yaml.safe_load(files["/etc/airflow-salt/pillar/airflow/secrets/lb.sls"])
    assert lb["airflow"]["secrets"]["lb_stats_password"] == sec["lb_stats_password"]
    # separate secrets for separate purposes; secrets.yaml readable by root only
    values = [v for k, v in sec.items() if k != "admin_user"]
    assert len(set(values)) == len(values)
    assert (s.SECRETS.stat().st_mode & 0o777) == 0o600


def test_secrets_of_an_older_lab_are_kept_and_completed(lab):
    s = lab["saltsetup"]
    s.SECRETS.parent.mkdir(parents=True, exist_ok=True)
    s.SECRETS.write_text('fernet_key: "fk"\napi_secret: "old-api"\ndb_password: "dbpw"\n'
                         'broker_password: "bpw"\nadmin_user: "admin"\nadmin_password: "apw"\n'
                         'lb_stats_password: "lpw"\n')
    s.SECRETS.chmod(0o644)
    sec = s.load_secrets()
    assert sec["fernet_key"] == "fk" and sec["db_password"] == "dbpw" and sec["admin_password"] == "apw"
    assert sec["api_secret_key"] == "old-api"  # continuity of the api-servers' signing key
    assert sec["jwt_secret"] not in ("old-api", "") and sec["results_db_password"] and sec["flower_password"]
    assert s.load_secrets() == sec
    assert (s.SECRETS.stat().st_mode & 0o777) == 0o600


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl CLI")
def test_lab_tls_ca_once_server_certificate_for_the_lb_node(lab):
    """A CA made once under STATE/tls, a certificate for the lb node (SAN: its IP and name) that
    verifies against it, keys 0600, reused on the next call, remade when the lb's IP changes."""
    import copy
    import ssl
    import yaml
    s, common = lab["saltsetup"], importlib.import_module("lab.common")
    assert s.CA_CERT == common.STATE / "tls" / "ca.pem"
    topo = copy.deepcopy(common.DEFAULT_TOPOLOGY)
    assert s.lb_node(topo) == ("infra", "10.77.0.30")
    t = s.ensure_tls(topo=topo)
    assert t["ca_cert"] == s.CA_CERT and s.CA_CERT.exists()
    for key in ("ca.key", "lb.key"):
        assert (s.TLS_DIR / key).stat().st_mode & 0o777 == 0o600, key
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(t["lb_cert"])],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:10.77.0.30" in text and "DNS:infra" in text and "TLS Web Server Authentication" in text
    subprocess.run(["openssl", "verify", "-CAfile", str(s.CA_CERT), str(t["lb_cert"])], check=True,
                   capture_output=True)
    ssl.create_default_context(cafile=str(s.CA_CERT))  # loads as a trust anchor
    again = s.ensure_tls(topo=topo)
    assert (again["ca_pem"], again["cert_pem"], again["key_pem"]) == (t["ca_pem"], t["cert_pem"], t["key_pem"])
    topo["infra"]["ip"] = "10.77.0.31"
    moved = s.ensure_tls(topo=topo)
    assert moved["ca_pem"] == t["ca_pem"] and moved["cert_pem"] != t["cert_pem"]  # same CA, new SAN
    files = s.tls_pillar_files(moved)
    assert sorted(files) == ["/etc/airflow-salt/pillar/airflow/ca.sls",
                             "/etc/airflow-salt/pillar/airflow/secrets/tls.sls"]
    tls = yaml.safe_load(files["/etc/airflow-salt/pillar/airflow/secrets/tls.sls"])["airflow"]["secrets"]
    assert tls == {"lb_tls_cert": moved["cert_pem"], "lb_tls_key": moved["key_pem"]}
    ca = yaml.safe_load(files["/etc/airflow-salt/pillar/airflow/ca.sls"])
    assert ca == {"airflow": {"tls": {"ca_cert": t["ca_pem"]}}}


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
    for cmd in ("up", "down", "status", "deploy", "exec", "stop-node", "start-node", "add-node", "pin-tree",
                "unpin-tree"):
        assert cmd in p.stdout


# ------------------------------------------------------------------ per-node cgroups (lab/cgroups.py)
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 41 0:38 / /mnt/other\\040cg rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTINFO = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
PROC_CGROUP = """\
9:name=systemd:/airflow-lab/worker1/supervisor
4:memory:/process_api/abc
2:cpu,cpuacct:/
0::/airflow-lab/worker1/supervisor
"""


def test_cgroup_hierarchies_are_the_ones_systemd_tracks_with():
    from pathlib import Path
    from lab import cgroups
    assert cgroups.hierarchies(HYBRID_MOUNTINFO) == {  # v1 controllers left alone; first mount wins
        "name=systemd": Path("/sys/fs/cgroup/systemd"), "cgroup2": Path("/sys/fs/cgroup/unified")}
    assert cgroups.hierarchies(V2_MOUNTINFO) == {"cgroup2": Path("/sys/fs/cgroup")}
    assert cgroups.hierarchies(HYBRID_MOUNTINFO.replace("name=systemd", "pids")) == {
        "cgroup2": Path("/sys/fs/cgroup/unified")}
    assert cgroups._unescape("/mnt/other\\040cg") == "/mnt/other cg"


def test_proc_cgroup_parsed_and_own_subtree_recognised():
    from pathlib import Path
    from lab import cgroups
    cg = cgroups.parse_proc_cgroup(PROC_CGROUP)
    assert cg["name=systemd"] == cg["cgroup2"] == "/airflow-lab/worker1/supervisor"
    assert cg["cpu"] == cg["cpuacct"] == "/" and cg["memory"] == "/process_api/abc"
    hier = cgroups.hierarchies(HYBRID_MOUNTINFO)
    assert cgroups.is_own(cg, "worker1", hier)
    assert not cgroups.is_own(cg, "worker", hier)  # a prefix of the name is another node
    assert not cgroups.is_own(cg, "worker2", hier)
    shared = cgroups.parse_proc_cgroup(PROC_CGROUP.replace("/airflow-lab/worker1", ""))
    assert not cgroups.is_own(shared, "worker1", hier)  # the old layout: nspawn in /supervisor
    half = dict(cg, cgroup2="/supervisor")
    assert not cgroups.is_own(half, "worker1", hier)  # every tracking hierarchy must agree
    assert not cgroups.is_own(cg, "worker1", {})
    assert cgroups.node_dirs("worker1", hier) == {
        "name=systemd": Path("/sys/fs/cgroup/systemd/airflow-lab/worker1"),
        "cgroup2": Path("/sys/fs/cgroup/unified/airflow-lab/worker1")}
    assert cgroups.unit_cgroups("worker1", "airflow-worker", hier)["cgroup2"] == Path(
        "/sys/fs/cgroup/unified/airflow-lab/worker1/payload/system.slice/airflow-worker.service")


def _fake_hier(tmp_path):
    hier = {"name=systemd": tmp_path / "systemd", "cgroup2": tmp_path / "unified"}
    for h in hier.values():
        h.mkdir()
    return hier


def test_cgroup_prepare_and_remove_on_a_fake_hierarchy(tmp_path):
    from lab import cgroups
    hier = _fake_hier(tmp_path)
    procs = cgroups.prepare("worker1", hier=hier)
    assert procs == [tmp_path / "systemd/airflow-lab/worker1/cgroup.procs",
                     tmp_path / "unified/airflow-lab/worker1/cgroup.procs"]
    cgroups.prepare("worker2", hier=hier)
    # what nspawn and the node's systemd create below it, with a process left in a unit
    unit = tmp_path / "systemd/airflow-lab/worker1/payload/system.slice/x.service"
    unit.mkdir(parents=True)
    (unit / "cgroup.procs").write_text("4242\n")
    assert cgroups.procs(tmp_path / "systemd/airflow-lab/worker1") == [4242]
    killed = []

    def kill(pid, sig):  # the process exits on SIGKILL: its pid leaves cgroup.procs
        killed.append((pid, sig))
        (unit / "cgroup.procs").unlink()
    cgroups.remove("worker1", hier=hier, kill=kill)
    assert killed == [(4242, 9)]
    assert not (tmp_path / "systemd/airflow-lab/worker1").exists()
    assert not (tmp_path / "unified/airflow-lab/worker1").exists()
    assert (tmp_path / "systemd/airflow-lab/worker2").is_dir()  # the other node is untouched
    cgroups.remove("worker2", hier=hier)
    assert not (tmp_path / "systemd/airflow-lab").exists()  # the parent goes with the last node
    cgroups.remove("worker2", hier=hier)  # idempotent


def test_cgroup_remove_gives_up_on_a_process_that_stays(tmp_path):
    from lab import cgroups
    hier = _fake_hier(tmp_path)
    cgroups.prepare("worker1", hier=hier)
    (tmp_path / "systemd/airflow-lab/worker1/cgroup.procs").write_text("4242\n")
    with pytest.raises(cgroups.LabError, match="cannot remove cgroup"):
        cgroups.remove("worker1", hier=hier, timeout=1.5, kill=lambda pid, sig: None)


def test_cgroup_prepare_needs_a_tracking_hierarchy():
    from lab import cgroups
    with pytest.raises(cgroups.LabError, match="no name=systemd or cgroup2"):
        cgroups.prepare("worker1", hier={})


def test_legacy_shared_trees_removed_only_when_empty(tmp_path):
    from lab import cgroups
    hier = _fake_hier(tmp_path)
    (tmp_path / "systemd/payload/system.slice/airflow-worker.service").mkdir(parents=True)
    (tmp_path / "systemd/supervisor").mkdir()
    (tmp_path / "systemd/supervisor/cgroup.procs").write_text("17\n")  # an old-layout nspawn runs
    (tmp_path / "unified/payload").mkdir()
    gone = cgroups.remove_legacy(hier)
    assert sorted(gone) == [tmp_path / "systemd/payload", tmp_path / "unified/payload"]
    assert (tmp_path / "systemd/supervisor").is_dir()


def test_launcher_moves_itself_into_the_cgroups_before_starting(tmp_path):
    """The sh that starts nspawn writes its own pid into every cgroup.procs file, then starts the
    command in the background (which inherits the cgroups) and records its pid."""
    import time
    from lab import nodes
    procs = [tmp_path / "a.procs", tmp_path / "b.procs"]
    for p in procs:
        p.write_text("")
    log, pf, out = tmp_path / "console.log", tmp_path / "x.pid", tmp_path / "out"
    rc = nodes.launch(["sh", "-c", f'echo "$$ ${{LAB_CGROUP_PROCS:-unset}}" > {out}'], log, pf, procs)
    assert rc == 0
    deadline = time.monotonic() + 10
    while not (out.exists() and out.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    launcher = procs[0].read_text().strip()
    assert launcher.isdigit() and procs[1].read_text().strip() == launcher
    pid, env = out.read_text().split()
    assert env == "unset" and pid != launcher
    assert pf.read_text().strip() == pid  # the pidfile names the started command, not the launcher
    # a cgroup it cannot join: the launcher fails and starts nothing
    pf.unlink()
    assert nodes.launch(["true"], log, pf, [tmp_path / "missing/cgroup.procs"]) != 0
    assert not pf.exists()


def test_lab_operations_exclude_each_other(lab, tmp_path, capsys):
    """A second process's lab operation waits for the first one (flock), naming it; nested
    operations in one process do not deadlock."""
    import os
    import time
    import lab.common as common
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lab.common import lab_lock\n"
         "with lab_lock('lab_down'):\n    print('held', flush=True)\n    time.sleep(1.5)\n"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ), cwd=str(common.REPO))
    assert child.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    with common.lab_lock("lab_up"):
        waited = time.monotonic() - t0
        with common.lab_lock("boot_all"):  # re-entrant
            assert "lab_up" in common.LOCK_FILE.read_text()
    assert child.wait(timeout=10) == 0
    assert waited > 0.5, waited
    assert f"pid {child.pid}: lab_down" in capsys.readouterr().out
    assert common.LOCK_FILE.read_text() == ""  # released: no holder recorded
