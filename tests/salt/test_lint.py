"""salt-lint over every SLS of the state tree and pillar (config: .salt-lint)."""
import glob
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_salt_lint_all_sls():
    files = sorted(glob.glob(os.path.join(REPO, "salt", "**", "*.sls"), recursive=True)
                   + glob.glob(os.path.join(REPO, "pillar", "**", "*.sls"), recursive=True))
    assert files
    lint = os.path.join(os.path.dirname(sys.executable), "salt-lint")
    ret = subprocess.run([lint, "-c", os.path.join(REPO, ".salt-lint"), *files],
                         capture_output=True, text=True, cwd=REPO)
    assert ret.returncode == 0, ret.stdout + ret.stderr
