"""The Vagrantfile: valid for Vagrant, same topology as the lab."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VF = REPO / "Vagrantfile"

EXPECTED = {
    "salt": ("2", []),
    "master1": ("11", ["airflow-master"]),
    "master2": ("12", ["airflow-master"]),
    "worker1": ("21", ["airflow-worker"]),
    "worker2": ("22", ["airflow-worker"]),
    "infra": ("30", ["airflow-db", "airflow-broker", "airflow-lb"]),
}


def text():
    return VF.read_text()


def test_six_machines_with_ips_and_roles():
    t = text()
    for name, (octet, roles) in EXPECTED.items():
        m = re.search(r'"%s"\s*=>\s*\{\s*ip:\s*"#\{NET\}\.(\d+)",\s*roles:\s*\[([^\]]*)\]' % name, t)
        assert m, f"machine {name} missing"
        assert m.group(1) == octet
        assert re.findall(r'"([^"]+)"', m.group(2)) == roles
    assert 'ENV.fetch("AIRFLOW_VM_NET", "192.168.77")' in t
    assert "config.vm.define name" in t


def test_grains_master_and_providers():
    t = text()
    assert "salt-run airflow.grant #{name}" in t and "master: #{MASTER_IP}" in t and "id: #{name}" in t
    assert 'provider "virtualbox"' in t and 'provider "libvirt"' in t
    assert 'ENV.fetch("AIRFLOW_VM_BOX", "debian/bookworm64")' in t
    assert "AIRFLOW_VM_CPUS" in t and "AIRFLOW_VM_MEMORY" in t
    assert 'pip install -q "salt==#{SALT_VERSION}"' in t
    assert "salt-key -y -a" in t and "auto_accept" not in t.replace("no auto_accept", "")


def test_synced_folders():
    t = text()
    dirs = re.search(r"SYNCED_DIRS = %w\[([^\]]*)\]", t).group(1).split()
    for d in ("salt", "pillar", "reactor", "_modules", "_beacons", "_runners", "conf"):
        assert d in dirs
    # every directory the master's config reads under /srv/airflow (utils_dirs, pillar_dirs,
    # reactor SLS, ...) reaches the VM: _utils and _pillar were once missing here
    conf = ""
    for path in sorted((REPO / "conf" / "master.d").glob("*.conf")):
        conf += path.read_text()
    needed = set(re.findall(r"/srv/airflow/([A-Za-z_]+)", conf))
    assert needed and not needed - set(dirs), needed - set(dirs)
    assert 'm.vm.synced_folder d, "/srv/airflow/#{d}"' in t
    assert "/srv/airflow/conf/master.d/*.conf /etc/salt/master.d/" in t


def test_ruby_syntax():
    if not shutil.which("ruby"):
        pytest.skip("ruby not installed")
    p = subprocess.run(["ruby", "-c", str(VF)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_vagrant_validate(tmp_path):
    if not shutil.which("vagrant"):
        pytest.skip("vagrant not installed (apt-get install vagrant)")
    p = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                                         "VAGRANT_HOME": str(tmp_path / ".vagrant.d")})
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_vagrant_site_pillar_sets_its_own_network():
    # the formula ships no site value: the Vagrantfile writes its site pillar (network only)
    t = text()
    assert "/etc/airflow-salt/pillar/airflow_site.sls" in t
    assert "cidr: #{NET}.0/24" in t and "#{SITE_PILLAR}" in t


# The Vagrantfile evaluated by Ruby with Vagrant's entry points stubbed, printing one of its
# values (its machine list per topology, a provisioning script), without a provider.
def _ruby_eval(tmp_path, expr, **env):
    if not shutil.which("ruby"):
        pytest.skip("ruby not installed (apt-get install vagrant brings it)")
    prog = ('module Vagrant; def self.require_version(*); end; def self.configure(*); end; end; '
            f'load ARGV[0]; puts {expr}')
    return subprocess.run(["ruby", "-e", prog, str(VF)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env})


def _nodes(tmp_path, **env):
    return _ruby_eval(tmp_path, 'NODES.keys.join(",")', **env)


def test_topologies_full_by_default_small_on_request(tmp_path):
    full = _nodes(tmp_path)
    assert full.returncode == 0, full.stderr
    assert full.stdout.strip().split(",") == list(EXPECTED)
    small = _nodes(tmp_path, AIRFLOW_VM_TOPOLOGY="small")
    assert small.returncode == 0, small.stderr
    assert small.stdout.strip().split(",") == ["salt", "master1", "worker1", "infra"]


def test_bad_topology_or_missing_ca_file_fails_naming_the_variable(tmp_path):
    bad = _nodes(tmp_path, AIRFLOW_VM_TOPOLOGY="tiny")
    assert bad.returncode != 0 and "AIRFLOW_VM_TOPOLOGY=tiny" in bad.stderr and "full, small" in bad.stderr
    ca = _nodes(tmp_path, AIRFLOW_VM_CA_CERTS=str(tmp_path / "nope.pem"))
    assert ca.returncode != 0 and "AIRFLOW_VM_CA_CERTS=" in ca.stderr and "no such file" in ca.stderr
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    assert _nodes(tmp_path, AIRFLOW_VM_CA_CERTS=str(pem)).returncode == 0


def test_extra_ca_goes_to_the_trust_store_and_to_pip_before_any_download():
    t = text()
    assert 'm.vm.provision "extra-ca", type: "file", source: CA_CERTS' in t
    install = t.split("INSTALL_SALT = <<~SH", 1)[1].split("\nSH\n", 1)[0]
    assert install.index("update-ca-certificates") < install.index("pip install")
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in install


def test_the_salt_vm_waits_for_busy_minions(tmp_path):
    # orch.deploy's pip install keeps VMs busy: Salt's default 10 s find_job wait made the first
    # real run give up on running jobs ("Minion did not return a state result")
    p = _ruby_eval(tmp_path, "MASTER_SETUP")
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if "/etc/salt/master.d/vagrant.conf" in x)
    conf = tmp_path / "vagrant.conf"
    subprocess.run(["bash", "-c", line.replace("/etc/salt/master.d/vagrant.conf", str(conf))], check=True)
    assert yaml.safe_load(conf.read_text())["gather_job_timeout"] >= 30


def _site_pillar(tmp_path, **env):
    p = _ruby_eval(tmp_path, "SITE_PILLAR", **env)
    assert p.returncode == 0, p.stderr
    site = tmp_path / "airflow_site.sls"
    site.unlink(missing_ok=True)
    subprocess.run(["bash", "-c", p.stdout.replace("/etc/airflow-salt/pillar/airflow_site.sls", str(site))],
                   check=True)
    return yaml.safe_load(site.read_text())["airflow"]


def test_software_emulated_vms_get_checks_and_watchdogs_slow_daemons_pass(tmp_path):
    # under qemu (TCG) the api-server's health answered in 3-9 s (the 700 ms default kept it DOWN)
    # and the 2-5 s watchdogs killed slow daemons in a loop
    emulated = _site_pillar(tmp_path, AIRFLOW_VM_LIBVIRT_DRIVER="qemu")
    assert emulated["network"]["cidr"] == "192.168.77.0/24"
    assert emulated["lb"]["check"]["timeout_ms"] >= 10000
    assert emulated["lb"]["check"]["inter_ms"] >= 1000
    for key in ("systemd", "scheduler", "worker"):
        assert emulated[key]["watchdog_sec"] >= 30, key
    assert emulated["scheduler"]["heartbeat_stale"] >= 3 * emulated["scheduler"]["heartbeat_sec"]
    # kvm/VirtualBox keep the formula's defaults
    assert _site_pillar(tmp_path) == {"network": {"cidr": "192.168.77.0/24"}}


def test_the_emulated_site_pillar_passes_the_formula_schema(tmp_path):
    import importlib.util

    from salt.utils.dictupdate import merge     # what map.jinja's slsutil.merge calls
    spec = importlib.util.spec_from_file_location("vf_airflow_schema", REPO / "_utils/airflow_schema.py")
    schema = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(schema)
    defaults = yaml.safe_load((REPO / "salt/airflow/defaults.yaml").read_text())["airflow"]
    emulated = _site_pillar(tmp_path, AIRFLOW_VM_LIBVIRT_DRIVER="qemu")
    config = merge(defaults, emulated)
    assert schema.errors(config, lambda minion: True) == []
    assert schema.unknown(emulated) == []
