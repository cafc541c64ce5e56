"""No secret in a world-readable file (the lab); no secret on a command line is checked during
the e2e tier's second highstate (tests/lab/test_e2e_cluster.py, helpers.argv_samples).

Each node's filesystem (/etc /opt /srv /var/lib /var/cache /run /tmp /root /home; never /proc
or /sys): no regular file that is world-readable (mode & 0o004) contains a secret value
(`grep -lF -f <values>` over those files only, run in the node; the values file is 0600 and
removed afterwards). One line per run in results/secret-exposure.jsonl.
"""
import json
import shlex

import pytest

from tests.lab.helpers import SALT_NODE, lab_nodes, secret_values, sh

pytestmark = pytest.mark.timeout(600)

SCAN_DIRS = ("/etc", "/opt", "/srv", "/var/lib", "/var/cache", "/run", "/tmp", "/root", "/home")
VALUES_FILE = "/root/.secret-exposure-values"


FIND = ("find {dirs} -type f -perm -0004 -size -50M -print0 2>/dev/null"
        " | xargs -0 -r grep -lsF -f {values} -- 2>/dev/null; true")


def test_no_secret_in_a_world_readable_file(lab, results_file):
    values = secret_values(lab)
    body = "".join(v + "\n" for v in values)
    found = {}
    for node in lab_nodes(lab):
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
