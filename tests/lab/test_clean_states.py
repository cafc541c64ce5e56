"""Taking a role away cleans it (issue 7, item 4): a throwaway node worker3 gets `airflow-worker`,
is highstated and answers as a Celery worker; then its `roles` grain is emptied and `state.apply`
must leave nothing of the worker: no airflow-worker unit (stopped, disabled, unit file gone), no
process running from the Airflow venv and no venv (no Airflow-software role is left), no `worker`
check in the beacon config. The node is removed afterwards (key deleted), so the rest of the tier
keeps its two workers and the seed topology.
"""
import json
import time

import pytest

NODE, IP = "worker3", "10.77.0.23"
UNIT = "airflow-worker"
UNIT_FILE = f"/etc/systemd/system/{UNIT}.service"
VENV = "/opt/airflow/venv"
BEACONS_CONF = "/etc/salt/minion.d/airflow-beacons.conf"

pytestmark = [pytest.mark.timeout(2400), pytest.mark.extended]  # CI budget: make test-lab-extended


def _json(text, default):
    text = text or ""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return default
    try:
        return json.JSONDecoder().raw_decode(text[min(starts):])[0]
    except ValueError:
        return default


def salt_json(lab, *argv, timeout=120, salt_timeout=30):
    p = lab.salt("salt", "--out=json", "--static", f"--timeout={salt_timeout}", *argv, check=False,
                 timeout=timeout)
    res = _json(p.stdout, {})
    return res if isinstance(res, dict) else {}


def wait_for(fn, timeout, every=1.0, what="condition"):
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        last = fn()
        if last:
            return time.monotonic() - t0, last
        time.sleep(every)
    raise AssertionError(f"timeout {timeout}s waiting for {what} (last: {last!r})")


def sh(lab, cmd, check=False, timeout=60):
    return lab.exec_on(NODE, ["/bin/sh", "-c", cmd], check=check, timeout=timeout)


def apply(lab, what):
    """state.apply on NODE; {state id: result} (fails on a failed state or no answer)."""
    t0 = time.monotonic()
    res = salt_json(lab, NODE, "state.apply", timeout=1700, salt_timeout=1500).get(NODE)
    dt = time.monotonic() - t0
    print(f"{NODE}: state.apply ({what}) {dt:.1f}s")
    assert isinstance(res, dict), f"{NODE}: state.apply ({what}) returned {res!r}"
    failed = {sid: st.get("comment") for sid, st in res.items() if st.get("result") is False}
    assert not failed, f"{NODE}: state.apply ({what}) failed: {json.dumps(failed, indent=1)[:3000]}"
    return res, dt


def worker_answers(lab):
    res = salt_json(lab, NODE, "airflow_health.worker_ping", "timeout=5").get(NODE)
    return isinstance(res, dict) and res.get("status") == "ok" and res


VENV_PROBE = r"""
import os, sys
venv, uid = sys.argv[1], int(sys.argv[2])
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        maps = open(f"/proc/{pid}/maps").read()
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        continue
    # celery rewrites its command line and the venv's python is a symlink to the system one:
    # the venv shows in the mapped files (site-packages) or the owner, not always in cmdline/exe
    if venv in cmd or venv + "/" in maps or (uid >= 0 and owner == uid):
        print(pid, cmd.strip()[:200])
"""


def venv_processes(lab, uid=-1):
    """Processes in NODE using the Airflow venv (command line, mapped files) or owned by uid."""
    out = lab.exec_on(NODE, ["python3", "-c", VENV_PROBE, VENV, str(uid)], check=False, timeout=60).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def beacon_checks(lab):
    """The airflow_health beacon's checks in the beacon config file (None: no file)."""
    p = sh(lab, f"cat {BEACONS_CONF}")
    if p.returncode != 0:
        return None
    import yaml
    conf = yaml.safe_load(p.stdout) or {}
    checks = []
    for item in (conf.get("beacons") or {}).get("airflow_health") or []:
        if isinstance(item, dict) and "checks" in item:
            checks = item["checks"] or []
    return checks


def worker_left(lab, uid=-1):
    """What is left of the worker role on NODE (empty: nothing); uid: the airflow user's."""
    left = {}
    props = dict(ln.split("=", 1) for ln in sh(lab, f"systemctl show -p LoadState,ActiveState,"
                                                    f"UnitFileState {UNIT}").stdout.splitlines() if "=" in ln)
    if props.get("ActiveState") not in ("inactive", "failed", None):
        left["active"] = props.get("ActiveState")
    if props.get("LoadState") != "not-found":
        left["unit"] = props
    if sh(lab, f"test -e {UNIT_FILE}").returncode == 0:
        left["unit_file"] = UNIT_FILE
    procs = venv_processes(lab, uid)
    if procs:
        left["venv_processes"] = procs
    if sh(lab, f"test -e {VENV}").returncode == 0:
        left["venv"] = VENV
    checks = beacon_checks(lab)
    if checks and "worker" in checks:
        left["beacon_checks"] = checks
    return left


def test_worker_role_taken_away_leaves_nothing(lab, results_file):
    from lab.common import topology
    if NODE in topology():
        lab.remove_node(NODE)
    t0 = time.monotonic()
    lab.add_node(NODE, ["airflow-worker"], IP)
    try:
        # (1) the role: highstate, the worker answers Celery pings through the broker
        _, install_s = apply(lab, "airflow-worker")
        assert sh(lab, f"systemctl is-active {UNIT}").stdout.strip() == "active"
        answer_s, _ = wait_for(lambda: worker_answers(lab), 180, 3, f"celery@{NODE} answering")
        uid = int(sh(lab, "id -u airflow", check=True).stdout.strip())
        present = worker_left(lab, uid)
        assert {"unit", "unit_file", "venv", "venv_processes", "beacon_checks"} <= set(present), present
        print(f"{NODE}: worker up ({install_s:.0f}s install, answering {answer_s:.1f}s later)")

        # (2) take the role away and apply: the clean states remove the worker
        res = salt_json(lab, NODE, "grains.setval", "roles", "[]").get(NODE)
        assert res == {"roles": []}, res
        assert salt_json(lab, NODE, "grains.get", "roles").get(NODE) == []
        t1 = time.monotonic()
        res, clean_s = apply(lab, "no roles")
        changed = sorted(sid for sid, st in res.items() if st.get("changes"))
        print(f"{NODE}: clean changed {changed}")
        # the minion may restart itself after the beacon config changed: poll until it answers and
        # nothing of the worker is left
        try:
            wait_for(lambda: salt_json(lab, NODE, "test.ping").get(NODE) is True and not worker_left(lab, uid),
                     120, 2, f"nothing of the worker left on {NODE}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; left: {worker_left(lab, uid)}") from None
        beacons = salt_json(lab, NODE, "beacons.list", "return_yaml=False").get(NODE)
        assert "'worker'" not in json.dumps(beacons).replace('"', "'"), beacons
        # a second apply has nothing left to clean
        res2, _ = apply(lab, "no roles, again")
        again = sorted(sid for sid, st in res2.items() if st.get("changes"))
        assert not worker_left(lab, uid), worker_left(lab, uid)
        results_file("clean-states", {"test": "worker_role_removed", "node": NODE,
                                      "install_s": round(install_s, 1), "clean_apply_s": round(clean_s, 1),
                                      "nothing_left_after_s": round(time.monotonic() - t1, 1),
                                      "changed": changed, "second_apply_changed": again})
        assert not again, f"second apply after the clean still changes {again}"
    finally:
        lab.remove_node(NODE)
    keys = json.loads(lab.salt("salt-key", "-L", "--out=json").stdout)
    assert NODE not in sum(keys.values(), []), keys
    assert not lab.is_running(NODE) and NODE not in topology()
    print(f"{NODE}: added, cleaned and removed in {time.monotonic() - t0:.0f}s")
