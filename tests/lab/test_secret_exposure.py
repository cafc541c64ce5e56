"""No secret on a command line during a highstate, none in a world-readable file (the lab).

1. While `salt '*' state.apply` runs on the whole lab, every node samples `ps -ww -eo args`
   every 0.2 s (a loop inside the node, deduplicated there); no sample may contain a secret value
   of the lab (lab.saltsetup.load_secrets()). The highstate is the one after a deploy: it checks
   every password (rabbitmqctl authenticate_user, the PostgreSQL verifiers) and restarts nothing.
2. Each node's filesystem (/etc /opt /srv /var/lib /var/cache /run /tmp /root /home; never /proc
   or /sys): no regular file that is world-readable (mode & 0o004) contains a secret value
   (`grep -lF -f <values>` over those files only, run in the node; the values file is 0600 and
   removed afterwards).

About 2 minutes of lab time (one highstate, one find+grep per node). One line per run in
results/secret-exposure.jsonl.
"""
import concurrent.futures
import json
import shlex
import time

import pytest

from tests.lab.helpers import SALT_NODE, sh

pytestmark = pytest.mark.timeout(600)

SCAN_DIRS = ("/etc", "/opt", "/srv", "/var/lib", "/var/cache", "/run", "/tmp", "/root", "/home")
VALUES_FILE = "/root/.secret-exposure-values"
STOP_FILE = "/run/secret-exposure.stop"
SAMPLE_EVERY = 0.2
MAX_SAMPLE_SECONDS = 400

# The loop runs inside the node; `sort -u` keeps one copy of each distinct command line.
SAMPLER = f"""
rm -f {STOP_FILE}
end=$(( $(date +%s) + {MAX_SAMPLE_SECONDS} ))
n=0
{{ while [ ! -e {STOP_FILE} ] && [ $(date +%s) -lt $end ]; do
     ps -ww -eo args= 2>/dev/null; n=$((n+1)); echo "@@sample $n"; sleep {SAMPLE_EVERY}
   done; }} | sort -u
"""


def _values(lab):
    """Every secret value of the lab; admin_user is a login name, not a secret."""
    sec = lab.secrets()
    return sorted({str(v) for k, v in sec.items() if k != "admin_user" and v and len(str(v)) >= 8})


def _nodes(lab):
    from lab.common import topology
    return [n for n in topology() if lab.is_running(n)]


def _sample(lab, node):
    p = lab.exec_on(node, ["/bin/sh", "-c", SAMPLER], check=False, timeout=MAX_SAMPLE_SECONDS + 60)
    lines = (p.stdout or "").splitlines()
    samples = sum(1 for line in lines if line.startswith("@@sample "))
    return node, samples, [line for line in lines if not line.startswith("@@sample ")]


def _redact(line, values):
    for v in values:
        line = line.replace(v, "<" + v[:3] + "...>")
    return line


def test_no_secret_on_any_command_line_during_a_highstate(lab, results_file):
    values = _values(lab)
    assert len(values) >= 9, "lab secrets missing"
    nodes = _nodes(lab)
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        futures = [pool.submit(_sample, lab, node) for node in nodes]
        time.sleep(1.0)  # the samplers are running
        t0 = time.monotonic()
        p = lab.salt("salt", "--out=json", "--static", "--timeout=300", "*", "state.apply", "queue=True",
                     check=False, timeout=420)
        highstate_s = round(time.monotonic() - t0, 1)
        time.sleep(1.0)  # a last sample after the run
        for node in nodes:
            sh(lab, node, f"touch {STOP_FILE}")
        results = [f.result() for f in futures]
    for node in nodes:
        sh(lab, node, f"rm -f {STOP_FILE}")
    try:
        ret = json.loads(p.stdout or "{}")
    except ValueError:
        ret = {}
    failed = {m: [sid for sid, st in (states or {}).items() if isinstance(st, dict) and st.get("result") is False]
              for m, states in ret.items() if isinstance(states, dict)}
    failed = {m: s for m, s in failed.items() if s}
    leaks = {}
    samples = {}
    for node, n, lines in results:
        samples[node] = n
        hits = [_redact(line, values) for line in lines if any(v in line for v in values)]
        if hits:
            leaks[node] = hits
    results_file("secret-exposure", {"what": "argv_during_highstate", "highstate_seconds": highstate_s,
                                     "samples": samples, "leaks": leaks, "minions": sorted(ret),
                                     "failed_states": failed})
    print(f"highstate {highstate_s}s; samples per node {samples}; failed states {failed}")
    assert all(n >= 5 for n in samples.values()), f"too few samples: {samples}"
    assert ret, f"no highstate result: {p.stderr[-1000:]}"
    assert not leaks, f"secret values on command lines: {json.dumps(leaks, indent=1)}"


FIND = ("find {dirs} -type f -perm -0004 -size -50M -print0 2>/dev/null"
        " | xargs -0 -r grep -lsF -f {values} -- 2>/dev/null; true")


def test_no_secret_in_a_world_readable_file(lab, results_file):
    values = _values(lab)
    body = "".join(v + "\n" for v in values)
    found = {}
    for node in _nodes(lab):
        lab.exec_on(node, ["/bin/sh", "-c", f"umask 077; cat > {VALUES_FILE}"], input=body)
        try:
            dirs = " ".join(d for d in SCAN_DIRS)
            p = sh(lab, node, FIND.format(dirs=dirs, values=VALUES_FILE), timeout=240)
            paths = [x for x in (p.stdout or "").splitlines() if x and x != VALUES_FILE]
            if paths:
                # the mode and whether an unprivileged user can actually read it (directories)
                q = sh(lab, node, "for f in " + " ".join(shlex.quote(x) for x in paths) +
                       "; do m=$(stat -c '%a %U:%G' \"$f\"); "
                       "if runuser -u nobody -- test -r \"$f\" 2>/dev/null; then r=readable; else r=dir-protected; fi; "
                       "echo \"$f $m $r\"; done")
                found[node] = (q.stdout or "").splitlines()
        finally:
            sh(lab, node, f"rm -f {VALUES_FILE}")
    results_file("secret-exposure", {"what": "world_readable_files", "found": found})
    print(f"world-readable files with a secret: {json.dumps(found, indent=1)}")
    assert not found, f"secret values in world-readable files: {json.dumps(found, indent=1)}"


def test_secret_files_on_the_salt_node_are_private(lab):
    """The lab driver's pillar secret files: root-only (0600) in a 0700 directory."""
    p = sh(lab, SALT_NODE, "stat -c '%a %n' /etc/airflow-salt/pillar/airflow/secrets "
                           "/etc/airflow-salt/pillar/airflow/secrets/*.sls", check=True)
    modes = dict(reversed(line.split(" ", 1)) for line in p.stdout.splitlines())
    assert modes.pop("/etc/airflow-salt/pillar/airflow/secrets") == "700", p.stdout
    assert modes and all(m == "600" for m in modes.values()), p.stdout
    assert not any(path.endswith("/cluster.sls") for path in modes), "stale cluster.sls left"
