"""Fixtures of the lab tier: a real multi-node cluster in systemd-nspawn nodes.

Skipped (with the reason) unless running as root with systemd-nspawn and debootstrap,
or when AIRFLOW_LAB_SKIP=1. AIRFLOW_LAB_FRESH=1 tears any existing lab down first and
builds from bare nodes; otherwise a running, deployed lab is reused.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"
from tests.lab.helpers import LB, STATS, lab_ca  # noqa: E402,F401  haproxy: https, the lab CA

# Traffic to the lab's node addresses never goes through an HTTP proxy of the host.
for _var in ("no_proxy", "NO_PROXY"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "10.77.0.0/24,10.77.0.30,10.77.0.11,10.77.0.12"]))


def _skip_reason():
    if os.environ.get("AIRFLOW_LAB_SKIP") == "1":
        return "AIRFLOW_LAB_SKIP=1"
    if os.geteuid() != 0:
        return "lab tests need root"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "iptables"):
        if not shutil.which(tool):
            return f"lab tests need {tool} (apt-get install systemd-container debootstrap iptables)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _skip_reason()
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.lab)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def results_file(name: str, record: dict) -> None:
    """Append one measurement as a JSON line to results/<name>.jsonl, with the host's load average
    (2 cores: timings taken while other jobs load the host are not comparable)."""
    RESULTS.mkdir(exist_ok=True)
    record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "host_load_1m": round(os.getloadavg()[0], 1), **record}
    with open(RESULTS / f"{name}.jsonl", "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


@pytest.fixture(scope="session", name="results_file")
def results_file_fixture():
    return results_file


def _deployed(api) -> bool:
    """A lab is reusable when every node runs and haproxy answers the health endpoint."""
    import urllib.request
    if not all(api.is_running(n) for n in api.topology()):
        return False
    import ssl
    try:
        ctx = ssl.create_default_context(cafile=lab_ca())  # no CA yet: not deployed by this tree
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        with opener.open(LB + "/api/v2/monitor/health", timeout=5) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def lab():
    """The lab, up and deployed. Yields the lab.api module."""
    from lab import api, common
    timings = {}
    t0 = time.monotonic()
    if os.environ.get("AIRFLOW_LAB_FRESH") == "1":
        api.lab_down()
        timings["down"] = round(time.monotonic() - t0, 1)
    if os.environ.get("AIRFLOW_LAB_FRESH") == "1" or not _deployed(api):
        common.TIMINGS_FILE.unlink(missing_ok=True)
        t1 = time.monotonic()
        api.lab_up(deploy=True)
        timings["up_with_deploy"] = round(time.monotonic() - t1, 1)
        try:
            timings.update(json.loads(common.TIMINGS_FILE.read_text()))
        except (OSError, ValueError):
            pass
        timings["reused"] = False
    else:
        timings["reused"] = True
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lab-timings.json").write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
    # The nodes' scheduled highstates would correct the faults the tests inject (a stopped
    # service, a changed file) under them: paused for the session, the operator's own switch.
    # tests/lab/test_drift.py resumes it for its duration; the lab is left with it running.
    api.salt("salt-run", "airflow.enforcement", "pause", check=False, timeout=120)
    yield api
    api.salt("salt-run", "airflow.enforcement", "resume", check=False, timeout=120)
    if os.environ.get("AIRFLOW_LAB_DOWN_AFTER") == "1":
        # tear down at the end of the session and check that nothing of the lab is left
        import subprocess
        from lab import network
        t2 = time.monotonic()
        api.lab_down()
        timings["down"] = round(time.monotonic() - t2, 1)
        (RESULTS / "lab-timings.json").write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
        assert not network.lab_netns(), network.lab_netns()
        assert not network.lab_veths(), network.lab_veths()
        assert not network.link_exists(common.BRIDGE)
        assert not network.lab_rules_present(), network.lab_rules_present()
        assert str(common.NODES_DIR) not in open("/proc/self/mountinfo").read()
        from lab import cgroups
        left = [h / cgroups.PARENT for h in cgroups.hierarchies().values() if (h / cgroups.PARENT).exists()]
        assert not left, f"cgroup directories of the lab left: {left}"
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert not [ln for ln in ps.splitlines() if "systemd-nspawn" in ln and str(common.NODES_DIR) in ln]


class AirflowAPI:
    """Tiny REST client for Airflow 3 through haproxy with a JWT from /auth/token."""

    def __init__(self, base, username, password):
        import requests
        self.base, self.username, self.password = base.rstrip("/"), username, password
        self.s = requests.Session()
        # haproxy's certificate, checked against the lab CA. Session.verify alone loses to
        # REQUESTS_CA_BUNDLE in the environment (requests merges it per request): pass it each time
        self.s.verify = lab_ca()
        self.token = None

    def _login(self):
        r = self._retry("POST", "/auth/token", json={"username": self.username, "password": self.password},
                        auth=False)
        r.raise_for_status()
        self.token = r.json()["access_token"]

    def _retry(self, method, path, auth=True, tries=10, **kw):
        import requests
        last = None
        for i in range(tries):
            headers = kw.pop("headers", {}) or {}
            if auth:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                r = self.s.request(method, self.base + path, headers=headers, timeout=20,
                                   verify=self.s.verify, **kw)
                if r.status_code < 500:
                    return r
                last = r
            except requests.ConnectionError as e:
                last = e
            time.sleep(min(2 + i, 6))
        if isinstance(last, Exception):
            raise last
        return last

    def request(self, method, path, **kw):
        if self.token is None:
            self._login()
        r = self._retry(method, path, **kw)
        if r.status_code == 401:
            self._login()
            r = self._retry(method, path, **kw)
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)


@pytest.fixture(scope="session")
def airflow_api(lab):
    sec = lab.secrets()
    return AirflowAPI(LB, sec["admin_user"], sec["admin_password"])
