"""Salt setup "as a user would": master config from the repo, minion config, roles granted
by `salt-run airflow.grant` (the master-owned role record + the grain),
keys accepted explicitly by name, secrets as pillar files, deploy by orchestration."""
from __future__ import annotations

import base64
import json
import os
import re
import secrets as _secrets
import subprocess
import sys
import time

from . import nodes
from .common import SALT_IP, SALT_NODE, SECRETS, STATE, SUBNET, LabError, minions, progress, topology

SECRET_FILES = {
    "fernet": ("fernet_key",),
    "api": ("api_secret_key",),
    "jwt": ("jwt_secret",),
    "database": ("db_password",),
    "results": ("results_db_password",),
    "broker": ("broker_password",),
    "admin": ("admin_user", "admin_password"),
    "flower_auth": ("flower_password",),
    "lb": ("lb_stats_password",),
}
PILLAR_SECRETS_DIR = "/etc/airflow-salt/pillar/airflow/secrets"
#: pillar files of earlier versions of the lab, removed from the salt node (cluster.sls held
#: fernet_key + api_secret for masters AND workers)
STALE_SECRET_FILES = ("cluster",)


def _generate() -> dict:
    return {
        "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "api_secret_key": lambda: _secrets.token_hex(32),
        "jwt_secret": lambda: _secrets.token_hex(32),
        "db_password": lambda: _secrets.token_hex(16),
        "results_db_password": lambda: _secrets.token_hex(16),
        "broker_password": lambda: _secrets.token_hex(16),
        "admin_user": lambda: "admin",
        "admin_password": lambda: _secrets.token_hex(12),
        "flower_password": lambda: _secrets.token_hex(12),
        "lb_stats_password": lambda: _secrets.token_hex(12),
    }


def _read_secrets() -> dict:
    out = {}
    for line in SECRETS.read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            k, v = line.split(":", 1)
            v = v.strip()
            out[k.strip()] = json.loads(v) if v.startswith('"') else v
    return out


def load_secrets() -> dict:
    """Secrets of the lab, generated once into STATE/secrets.yaml (flat `key: "value"` YAML, 0600).

    A secrets.yaml of an earlier lab keeps its values; keys it lacks are generated and added
    (the old `api_secret` becomes `api_secret_key`, the jwt_secret is a new, separate one)."""
    data = _read_secrets() if SECRETS.exists() else {}
    missing = [k for k in _generate() if not data.get(k)]
    if "api_secret_key" in missing and data.get("api_secret"):
        data["api_secret_key"] = data["api_secret"]
        missing.remove("api_secret_key")
    for key in missing:
        data[key] = _generate()[key]()
    if missing or not SECRETS.exists() or SECRETS.stat().st_mode & 0o077:
        STATE.mkdir(parents=True, exist_ok=True)
        tmp = SECRETS.with_name(SECRETS.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write("# airflow lab secrets (generated once; `python3 -m lab down --purge` deletes them)\n")
            f.writelines(f"{k}: {json.dumps(v)}\n" for k, v in data.items())
        os.replace(tmp, SECRETS)
    return data


def pillar_files(sec: dict) -> dict[str, str]:
    out = {}
    for name, keys in SECRET_FILES.items():
        body = "".join(f"    {k}: {json.dumps(sec[k])}\n" for k in keys)
        out[f"{PILLAR_SECRETS_DIR}/{name}.sls"] = "# written by the airflow lab driver\nairflow:\n  secrets:\n" + body
    return out


# ------------------------------------------------------------------ the lab's site pillar
#: The lab's own values (the formula ships none): its network, and knobs made short for tests.
#: Written to the salt node like the secrets, as the site pillar every site has.
SITE_PILLAR_FILE = "/etc/airflow-salt/pillar/airflow_site.sls"
LAB_SITE_PILLAR = {
    "airflow": {
        "network": {"cidr": SUBNET},
        # a hung worker counts after one missed ping (production: 2)
        "healing": {"worker_ping_failures": 1},
        # a hand edit is corrected within about two minutes (production: 30 min + 5 min splay);
        # the lab tests pause it while they inject faults (salt-run airflow.enforcement pause)
        "enforce": {"interval": 120, "splay": 30},
    },
}


def site_pillar_text() -> str:
    return ("# written by the airflow lab driver: the lab's site values (formula defaults: "
            "salt/airflow/defaults.yaml)\n"
            + json.dumps(LAB_SITE_PILLAR, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------ TLS of the load balancer
# A self-signed CA made once (like secrets.yaml) and a server certificate for the lb node (SAN:
# its IP from the topology + its name; remade when those change or it nears its end). The openssl
# CLI only: the lab driver runs with the host's python3. Keys are written 0600.
TLS_DIR = STATE / "tls"
CA_CERT = TLS_DIR / "ca.pem"   # what the lab tests (and a browser) verify haproxy's certificate with
PILLAR_CA_FILE = "/etc/airflow-salt/pillar/airflow/ca.sls"   # airflow.ca: airflow:tls:ca_cert
TLS_CNF = """[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def lb_node(topo: dict | None = None) -> tuple[str, str]:
    """(name, ip) of the lab's airflow-lb node."""
    topo = topo if topo is not None else topology()
    for name in sorted(topo):
        if "airflow-lb" in topo[name].get("roles", []):
            return name, topo[name]["ip"]
    raise LabError("no airflow-lb node in the lab topology")


def _openssl(*argv, input=None) -> str:
    p = subprocess.run(["openssl", *argv], capture_output=True, text=True, input=input)
    if p.returncode != 0:
        raise LabError(f"openssl {argv[0]} failed: {p.stderr.strip()}")
    return p.stdout


def _write_key(path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def ensure_tls(tls_dir=None, topo: dict | None = None) -> dict:
    """The lab CA (made once) and the lb's certificate; returns their paths and PEM texts:
    {ca_cert, lb_cert, lb_key: path, ca_pem, cert_pem, key_pem: text}."""
    from pathlib import Path
    d = Path(tls_dir) if tls_dir is not None else TLS_DIR
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ca_key, ca_pem, key, crt, san_file = (d / "ca.key", d / "ca.pem", d / "lb.key", d / "lb.pem", d / "lb.san")
    name, ip = lb_node(topo)
    san = f"IP:{ip}, DNS:{name}"
    cnf = d / "openssl.cnf"
    cnf.write_text(TLS_CNF.format(san=san))
    if not (ca_key.exists() and ca_pem.exists()):
        _write_key(ca_key, _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"))
        ca_pem.write_text(_openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=airflow lab CA",
                                   "-days", "3650", "-config", str(cnf), "-extensions", "ca"))
        crt.unlink(missing_ok=True)  # a new CA: the old server certificate no longer verifies
    fresh = (crt.exists() and key.exists() and san_file.exists() and san_file.read_text() == san and
             subprocess.run(["openssl", "x509", "-checkend", str(30 * 86400), "-noout", "-in", str(crt)],
                            capture_output=True).returncode == 0)
    if not fresh:
        _write_key(key, _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"))
        csr = _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-config", str(cnf))
        crt.write_text(_openssl("x509", "-req", "-in", "/dev/stdin", "-CA", str(ca_pem), "-CAkey", str(ca_key),
                                "-set_serial", "0x" + _secrets.token_hex(16), "-days", "825",
                                "-extfile", str(cnf), "-extensions", "server", input=csr))
        san_file.write_text(san)
    return {"ca_cert": ca_pem, "lb_cert": crt, "lb_key": key, "ca_pem": ca_pem.read_text(),
            "cert_pem": crt.read_text(), "key_pem": key.read_text()}


def tls_pillar_files(tls: dict | None = None) -> dict[str, str]:
    """airflow.secrets.tls (lb only: lb_tls_cert, lb_tls_key) and airflow.ca (every node:
    airflow:tls:ca_cert, public) for the salt master."""
    tls = tls if tls is not None else ensure_tls()
    head = "# written by the airflow lab driver\nairflow:\n"
    return {
        f"{PILLAR_SECRETS_DIR}/tls.sls": head + "  secrets:\n" +
        f"    lb_tls_cert: {json.dumps(tls['cert_pem'])}\n    lb_tls_key: {json.dumps(tls['key_pem'])}\n",
        PILLAR_CA_FILE: head + f"  tls:\n    ca_cert: {json.dumps(tls['ca_pem'])}\n",
    }


def _sh(node: str, script: str, timeout=120, input=None):
    return nodes.exec_on(node, ["/bin/sh", "-ec", script], timeout=timeout, input=input)


MASTER_SCRIPT = r"""
mkdir -p /etc/salt/master.d {pdir}
chmod 0700 {pdir}
before=$(cat /etc/salt/master.d/*.conf 2>/dev/null | md5sum)
for f in /srv/airflow/conf/master.d/*.conf; do [ -e "$f" ] && cp "$f" /etc/salt/master.d/; done
after=$(cat /etc/salt/master.d/*.conf 2>/dev/null | md5sum)
systemctl enable -q salt-master
if [ "$before" != "$after" ] && systemctl -q is-active salt-master; then systemctl restart salt-master; fi
systemctl start salt-master
"""

MINION_SCRIPT = r"""
mkdir -p /etc/salt/minion.d
printf 'master: {master}\nid: {node}\nacceptance_wait_time: 2\n' > /tmp/lab.conf
changed=0
cmp -s /tmp/lab.conf /etc/salt/minion.d/lab.conf || {{ mv /tmp/lab.conf /etc/salt/minion.d/lab.conf; changed=1; }}
rm -f /tmp/lab.conf
systemctl enable -q salt-minion
if [ $changed = 1 ]; then systemctl restart salt-minion; else systemctl start salt-minion; fi
"""


def setup_master() -> None:
    t0 = time.monotonic()
    _sh(SALT_NODE, MASTER_SCRIPT.format(pdir=PILLAR_SECRETS_DIR))
    # umask 077: the pillar files are 0600 root (the salt-master runs as root)
    site = {SITE_PILLAR_FILE: site_pillar_text()}
    for path, body in {**pillar_files(load_secrets()), **tls_pillar_files(), **site}.items():
        nodes.exec_on(SALT_NODE, ["/bin/sh", "-c", f"umask 077; cat > {path}.tmp && chmod 0600 {path}.tmp "
                                                   f"&& mv {path}.tmp {path}"],
                      input=body)
    nodes.exec_on(SALT_NODE, ["rm", "-f", *[f"{PILLAR_SECRETS_DIR}/{n}.sls" for n in STALE_SECRET_FILES]])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if nodes.exec_on(SALT_NODE, ["salt-key", "-L", "--out=json"], check=False, timeout=30).returncode == 0:
            progress(f"salt: salt-master up in {time.monotonic() - t0:.1f}s")
            return
        time.sleep(1)
    raise LabError("salt-master did not come up (see `journalctl -u salt-master` on node salt)")


def setup_minion(node: str) -> None:
    _sh(node, MINION_SCRIPT.format(master=SALT_IP, node=node))


def grant_roles(names: list[str]) -> None:
    """
    Onboarding as README tells users: `salt-run airflow.grant <minion> <roles>` on the master
    writes the master-owned role record and sets the minion's `roles` grain (no-op when both
    already match).
    """
    for node in names:
        roles = topology()[node]["roles"]
        if not roles:
            continue
        p = nodes.exec_on(SALT_NODE, ["salt-run", "--out=json", "airflow.grant", node,
                                      ",".join(roles)], check=False, timeout=180)
        try:
            out = p.stdout
            res = json.loads(out[out.index("{") if out.startswith("{") else out.index("\n{"):])
        except ValueError:
            res = {}
        if res.get("result") not in ("ok", "unchanged") or res.get("grain") == "unreachable":
            raise LabError(f"salt-run airflow.grant {node} failed: {p.stdout[-400:]} {p.stderr[-400:]}")
        progress(f"salt: {node} granted {','.join(roles)} ({res['result']})")


def keys() -> dict:
    p = nodes.exec_on(SALT_NODE, ["salt-key", "-L", "--out=json"], timeout=30)
    return json.loads(p.stdout)


def accept_keys(names: list[str], timeout=120) -> None:
    """Accept each minion's key explicitly by name once it shows up (no auto_accept)."""
    t0 = time.monotonic()
    pending = set(names)
    deadline = t0 + timeout
    while pending and time.monotonic() < deadline:
        k = keys()
        for n in list(pending):
            if n in k.get("minions", []):
                pending.discard(n)
            elif n in k.get("minions_pre", []):
                nodes.exec_on(SALT_NODE, ["salt-key", "-y", "-a", n], timeout=30)
                progress(f"salt: accepted key of {n}")
                pending.discard(n)
            elif n in k.get("minions_rejected", []) + k.get("minions_denied", []):
                # a rebuilt node has a new key: drop the stale one and let the minion retry
                nodes.exec_on(SALT_NODE, ["salt-key", "-y", "-d", n], timeout=30)
                nodes.exec_on(n, ["systemctl", "restart", "salt-minion"], timeout=60)
        if pending:
            time.sleep(1)
    if pending:
        raise LabError(f"minion keys never showed up: {sorted(pending)}")


def ping(names: list[str], timeout=120) -> None:
    deadline = time.monotonic() + timeout
    res = {}
    while time.monotonic() < deadline:
        # short timeouts: a minion that has not re-authenticated since its key was accepted
        # (it retries every acceptance_wait_time=2 s) would otherwise cost a 10+10 s wait
        p = nodes.exec_on(SALT_NODE, ["salt", "--out=json", "--static", "--timeout=5",
                                      "-L", ",".join(names), "test.ping"], check=False, timeout=60)
        try:
            res = json.loads(p.stdout or "{}")
        except ValueError:
            res = {}
        if all(res.get(n) is True for n in names):
            return
        time.sleep(1)
    raise LabError(f"test.ping did not answer True for all: {res}")


def setup_salt(names: list[str] | None = None) -> None:
    """Master (if needed) + minions `names` (default: all): configure, accept keys, ping."""
    from .common import parallel
    t0 = time.monotonic()
    names = names if names is not None else minions()
    setup_master()
    parallel(setup_minion, names, "salt-minion setup")
    accept_keys(names)
    time.sleep(2)
    ping(names)
    grant_roles(names)
    progress(f"salt: {len(names)} minions answer test.ping ({time.monotonic() - t0:.1f}s)")


def stream_on(node: str, argv, timeout=None) -> tuple[int, str]:
    """Run on node, echo output live, return (rc, output)."""
    p = subprocess.Popen(nodes.nsenter_argv(node, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, bufsize=1)
    out = []
    deadline = time.monotonic() + timeout if timeout else None
    assert p.stdout
    for line in p.stdout:
        sys.stdout.write(line)
        out.append(line)
        if deadline and time.monotonic() > deadline:
            p.kill()
            raise LabError(f"{' '.join(argv)}: timeout after {timeout}s")
    return p.wait(), "".join(out)


def failed_steps(output: str) -> list[str]:
    """Extract 'ID / Function / Comment' of every failed state from highstate output."""
    fails = []
    for block in re.split(r"\n\s*-{6,}\n", output):
        if re.search(r"^\s*Result:\s*False", block, re.M):
            keep = [ln.strip() for ln in block.splitlines()
                    if re.match(r"\s*(ID|Function|Name|Comment|Result):", ln)]
            fails.append(" | ".join(keep)[:600])
    return fails


def _watch_jobs(stop, t0, every=20):
    """While the orchestration runs (it prints only at the end), show the running jobs."""
    last = None
    while not stop.wait(every):
        try:
            p = nodes.exec_on(SALT_NODE, ["salt-run", "--log-level=quiet", "--out=json", "jobs.active"],
                              check=False, timeout=30)
            jobs = json.loads(p.stdout or "{}")
        except (LabError, ValueError):
            continue
        desc = []
        for j in jobs.values():
            args = [a for a in j.get("Arguments", []) if isinstance(a, str)]
            running = sorted({m for r in j.get("Running", []) for m in r})
            if j.get("Function") != "runner.jobs.active":
                desc.append(f"{j.get('Function')} {' '.join(args)} on {','.join(running)}")
        line = "; ".join(sorted(desc)) or "(between steps)"
        if line != last:
            progress(f"deploy: {time.monotonic() - t0:.0f}s: running {line}")
            last = line


def active_state_jobs() -> list[str]:
    p = nodes.exec_on(SALT_NODE, ["salt-run", "--log-level=quiet", "--out=json", "jobs.active"],
                      check=False, timeout=60)
    try:
        jobs = json.loads(p.stdout or "{}")
    except ValueError:
        return []
    return [f"{j.get('Function')} on {','.join(sorted({m for r in j.get('Running', []) for m in r}))}"
            for j in jobs.values() if str(j.get("Function", "")).startswith("state.")]


def wait_quiet(timeout=600) -> None:
    """Wait until no state run is active (e.g. one started by the self-healing reactor after
    nodes came back): a concurrent run makes the orchestration's steps fail with
    'The function "state.apply" is running as PID ...'."""
    deadline = time.monotonic() + timeout
    shown = False
    while time.monotonic() < deadline:
        busy = active_state_jobs()
        if not busy:
            return
        if not shown:
            progress(f"deploy: waiting for running state jobs to finish: {'; '.join(busy)}")
            shown = True
        time.sleep(3)
    progress("deploy: state jobs still running; deploying anyway")


def deploy(timeout=3600, attempts=2) -> float:
    t0 = time.monotonic()
    for attempt in range(1, attempts + 1):
        wait_quiet()
        try:
            _deploy_once(timeout)
            break
        except LabError as e:
            if attempt < attempts and "is running as PID" in str(e):
                progress("deploy: a concurrent state run got in the way; retrying once")
                continue
            raise
    return time.monotonic() - t0


def _deploy_once(timeout):
    import threading
    t0 = time.monotonic()
    progress("deploy: salt-run state.orchestrate orch.deploy")
    stop = threading.Event()
    threading.Thread(target=_watch_jobs, args=(stop, t0), daemon=True).start()
    try:
        rc, out = stream_on(SALT_NODE, ["salt-run", "--log-level=error", "state.orchestrate", "orch.deploy",
                                         "--state-output=changes"],
                            timeout=timeout)
    finally:
        stop.set()
    dt = time.monotonic() - t0
    fails = failed_steps(out)
    bad = re.search(r"^\s*Failed:\s+[1-9]", out, re.M) or fails
    if rc != 0 or bad:
        for f in fails:
            progress(f"deploy: FAILED STEP: {f}")
        conflict = " (a concurrent state run: 'is running as PID')" if "is running as PID" in out else ""
        raise LabError(f"deploy failed (rc={rc}) after {dt:.0f}s{conflict}")
    progress(f"deploy: done in {dt:.0f}s")
    return dt


# ------------------------------------------------------------------ pinned tree
# The salt node bind-mounts the live checkout at /srv/airflow. While others edit it, a lab run
# can pin the salt master to a snapshot of one commit: `git archive` into the salt node, bind-
# mounted read-only over /srv/airflow in the node's mount namespace (until unpin or a reboot of
# the salt node), master.d re-copied, fileserver updated, modules synced to the minions.
TREE_DIR = "/var/lib/airflow-lab-tree"
TREE_MARK = f"{TREE_DIR}/PINNED"
SRV = "/srv/airflow"


def _srv_mounts() -> int:
    p = nodes.exec_on(SALT_NODE, ["cat", "/proc/self/mountinfo"], timeout=30)
    return sum(1 for ln in p.stdout.splitlines() if ln.split()[4] == SRV)


def pinned_tree() -> str | None:
    """Commit the salt master's /srv/airflow is pinned to, or None (the live checkout)."""
    if not nodes.is_running(SALT_NODE) or _srv_mounts() < 2:
        return None
    p = nodes.exec_on(SALT_NODE, ["cat", TREE_MARK], check=False, timeout=30)
    return p.stdout.strip() or "?"


def _resync(why: str) -> None:
    setup_master()  # conf/master.d of the tree now at /srv/airflow (restarts the master if changed)
    nodes.exec_on(SALT_NODE, ["salt-run", "fileserver.update"], check=False, timeout=300)
    p = nodes.exec_on(SALT_NODE, ["salt", "--timeout=60", "*", "saltutil.sync_all"], check=False, timeout=600)
    progress(f"salt: {why}; modules synced (rc={p.returncode})")


def pin_tree(rev: str) -> str:
    from .common import REPO, run
    sha = run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"]).stdout.strip()
    root = nodes.merged(SALT_NODE)
    dest = root / TREE_DIR.lstrip("/") / sha
    if not dest.is_dir():
        tmp = dest.with_name(sha + ".tmp")
        run(["rm", "-rf", str(tmp)])
        tmp.mkdir(parents=True)
        run(["sh", "-c", 'git -C "$1" archive "$2" | tar -x -C "$3"', "sh", str(REPO), sha, str(tmp)])
        tmp.rename(dest)
    unpin_tree(resync=False)
    _sh(SALT_NODE, f"mount --make-private {SRV}; mount --bind {TREE_DIR}/{sha} {SRV}; "
                   f"mount -o remount,bind,ro {SRV}; echo {sha} > {TREE_MARK}")
    _resync(f"/srv/airflow pinned to {sha[:12]}")
    return sha


def unpin_tree(resync: bool = True) -> None:
    was = _srv_mounts() >= 2
    while _srv_mounts() >= 2:
        _sh(SALT_NODE, f"umount {SRV}")
    nodes.exec_on(SALT_NODE, ["rm", "-f", TREE_MARK], check=False)
    if was and resync:
        _resync("/srv/airflow is the live checkout again")
