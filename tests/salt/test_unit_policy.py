"""Restart policy of every unit the formula runs (issue 8): no start-limit state ever, a bounded
dependency wait before an Airflow daemon starts, drop-ins for postgresql/rabbitmq/haproxy,
reset-failed before a start, and the scheduler guard failing closed.

Units and drop-ins are rendered by the real Salt with the context their states give them;
the guard and the wait script are executed here (no systemd needed)."""
import datetime
import importlib.util
import json
import os
import socket
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO, parse_states

WAIT_SCRIPT = os.path.join(REPO, "salt", "airflow", "files", "wait-for-deps.py")
MASTER_DAEMONS = ["api-server", "dag-processor", "triggerer", "scheduler"]
METASTORE = "metastore=127.0.0.1:5432"   # the test mine: every minion is 127.0.0.1
BROKER = "broker=127.0.0.1:5672"
with open(os.path.join(REPO, "salt", "airflow", "defaults.yaml"), encoding="utf-8") as _fh:
    RESTART_SEC = str(__import__("yaml").safe_load(_fh)["airflow"]["systemd"]["restart_sec"])


def _render(salt_cli, path, context, minion="master1"):
    args = [f"{k}={json.dumps(v)}" for k, v in context.items()]
    ret = salt_cli.run("slsutil.renderer", path, "default_renderer=jinja", *args, minion_tgt=minion)
    assert ret.returncode == 0, ret
    return ret.data


def _sections(text):
    """{section: [(key, value), ...]}: repeated keys (two ExecCondition=) kept, in order."""
    sections, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif line and not line.startswith("#") and current is not None:
            current.append(tuple(line.split("=", 1)))
    return sections


def _unit_text(salt_cli, states, name, minion):
    unit = states[f"airflow-{name}-unit"]
    return _render(salt_cli, unit["source"][-1], unit["context"], minion)


def _wait_cmd(*deps):
    return ("/opt/airflow/venv/bin/python /opt/airflow/wait-for-deps.py --timeout 60 --max-interval 16 "
            + " ".join(deps))


# ------------------------------------------------------------------ Airflow daemon units
@pytest.mark.parametrize("minion,name,deps", [
    ("master1", "api-server", [METASTORE]),
    ("master1", "dag-processor", [METASTORE]),
    ("master1", "triggerer", [METASTORE]),
    ("worker1", "worker", [METASTORE, BROKER]),   # Celery broker + result backend in the metastore
])
def test_daemon_unit_never_start_limited_and_waits_for_its_deps(salt_cli, highstate, minion, name, deps):
    states = highstate(minion)  # worker1 has a site override (SITE_FILES): the shipped one is source[-1]
    s = _sections(_unit_text(salt_cli, states, name, minion))
    assert ("StartLimitIntervalSec", "0") in s["Unit"]
    assert not [k for k, _ in s["Unit"] + s["Service"] if k == "StartLimitBurst"]
    assert not [k for k, _ in s["Service"] if k.startswith("StartLimit")]  # ignored there by systemd
    assert ("ExecStartPre", _wait_cmd(*deps)) in s["Service"]
    assert ("Restart", "on-failure") in s["Service"] and ("RestartSec", RESTART_SEC) in s["Service"]
    # the start (incl. the wait) must not time out before the wait gives up
    assert ("TimeoutStartSec", "120") in s["Service"]
    assert not [k for k, _ in s["Service"] if k == "ExecCondition"]
    # no secret on the command line: hosts and ports only
    assert "pw" not in _wait_cmd(*deps) and "@" not in dict(s["Service"])["ExecStartPre"]


def test_scheduler_waits_for_the_metastore_before_its_guard(salt_cli, highstate):
    s = _sections(_unit_text(salt_cli, highstate("master1"), "scheduler", "master1"))
    conditions = [v for k, v in s["Service"] if k == "ExecCondition"]
    # ExecCondition runs before ExecStartPre: the wait goes first so the guard never asks a dead
    # metastore; both exit 255 (a failure, retried) when they cannot tell
    assert conditions == [_wait_cmd(METASTORE),
                          "/opt/airflow/venv/bin/python /opt/airflow/scheduler-guard.py"]
    assert not [k for k, _ in s["Service"] if k == "ExecStartPre"]
    assert ("StartLimitIntervalSec", "0") in s["Unit"]
    # its own RestartSec (airflow:scheduler:restart_sec): a watchdog kill is restarted at once
    assert ("RestartSec", str(_DEFAULTS["scheduler"]["restart_sec"])) in s["Service"]
    assert _DEFAULTS["scheduler"]["restart_sec"] != _DEFAULTS["systemd"]["restart_sec"]


def test_flower_waits_for_the_broker_only(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.flower", minion_tgt="master1")
    assert ret.returncode == 0, ret
    ctx = parse_states(ret.data)["airflow-flower-unit"]["context"]
    assert ctx["wait_for_deps"] == _wait_cmd(BROKER)


def test_dependency_hosts_follow_the_pillar(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.worker",
                       'pillar={"airflow": {"database": {"host": "db.example", "port": 6432}, '
                       '"broker": {"host": "mq.example"}, "systemd": {"dependency_wait": 30}}}',
                       minion_tgt="worker1")
    assert ret.returncode == 0, ret
    ctx = parse_states(ret.data)["airflow-worker-unit"]["context"]
    assert ctx["wait_for_deps"].endswith("--timeout 30 --max-interval 16 metastore=db.example:6432 "
                                         "broker=mq.example:5672")
    assert ctx["dependency_wait"] == 30


@pytest.mark.parametrize("name", ["api-server", "dag-processor", "triggerer", "scheduler"])
def test_running_daemon_is_reset_before_its_start(highstate, name):
    states = highstate("master1")
    reset = states[f"airflow-{name}-reset-failed"]
    assert reset["fun"] == "cmd.run"
    assert reset["name"] == f"systemctl reset-failed airflow-{name}"
    assert reset["onlyif"] == f"systemctl is-failed --quiet airflow-{name}"
    assert {"module": "airflow-systemd-daemon-reload"} in reset["require"]
    svc = states[f"airflow-{name}-service"]
    assert {"cmd": f"airflow-{name}-reset-failed"} in svc["require"]
    assert {"file": f"airflow-{name}-wait-script"} in svc["require"]
    wait = states[f"airflow-{name}-wait-script"]
    assert wait["name"] == "/opt/airflow/wait-for-deps.py"
    assert wait["source"] == "salt://airflow/files/wait-for-deps.py"


def test_stopped_scheduler_gets_no_reset(highstate):
    states = highstate("master2")  # the standby: service.dead
    assert states["airflow-scheduler-service"]["fun"] == "service.dead"
    assert "airflow-scheduler-reset-failed" not in states


# ------------------------------------------------------------------ systemd watchdog
with open(os.path.join(REPO, "salt", "airflow", "defaults.yaml"), encoding="utf-8") as _fh:
    _DEFAULTS = __import__("yaml").safe_load(_fh)["airflow"]
WATCHDOG_KEYS = ("WatchdogSec", "WatchdogSignal", "NotifyAccess")


@pytest.mark.parametrize("minion,name,seconds", [
    ("worker1", "worker", _DEFAULTS["worker"]["watchdog_sec"]),       # its own, shorter
    ("master1", "scheduler", _DEFAULTS["scheduler"]["watchdog_sec"]),   # its own, shorter
    ("master1", "api-server", _DEFAULTS["systemd"]["watchdog_sec"]),
])
def test_keepalive_daemon_has_a_watchdog_and_needs_the_keepalive(salt_cli, highstate, minion, name, seconds):
    states = highstate(minion)
    s = _sections(_unit_text(salt_cli, states, name, minion))
    for pair in [("WatchdogSec", str(seconds)), ("WatchdogSignal", "SIGKILL"), ("NotifyAccess", "main")]:
        assert pair in s["Service"], pair
    svc = states[f"airflow-{name}-service"]
    # a start without the keep-alive in the venv would be killed every WatchdogSec
    assert {"cmd": "airflow-install-watchdog-pth"} in svc["require"], svc["require"]
    module = states["airflow-install-watchdog-module"]
    assert module["name"] == "/opt/airflow/airflow_watchdog.py"
    assert module["source"][-1] == "salt://airflow/files/airflow_watchdog.py"
    pth = states["airflow-install-watchdog-pth"]
    assert "airflow_watchdog.pth" in pth["name"] and "cmp -s /opt/airflow/airflow_watchdog.py" in pth["unless"]
    assert {"file": "airflow-install-watchdog-module"} in pth["require"]


def test_watchdog_off_by_pillar(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.worker",
                       'pillar={"airflow": {"worker": {"watchdog_sec": 0}}}', minion_tgt="worker1")
    assert ret.returncode == 0, ret
    states = parse_states(ret.data)
    s = _sections(_render(salt_cli, states["airflow-worker-unit"]["source"][-1],
                          states["airflow-worker-unit"]["context"], "worker1"))
    assert not [k for k, _ in s["Service"] if k in WATCHDOG_KEYS]
    assert {"cmd": "airflow-install-watchdog-pth"} not in states["airflow-worker-service"]["require"]


# ------------------------------------------------------------------ stateful tier
STATEFUL = [  # (sls, daemon, unit, Restart=)
    ("db", "postgresql", "postgresql@15-main", "on-failure"),
    ("broker", "rabbitmq", "rabbitmq-server", "on-failure"),
    ("lb", "haproxy", "haproxy", "always"),
]


@pytest.mark.parametrize("sls,daemon,unit,restart", STATEFUL)
def test_stateful_unit_dropin_reload_and_reset(salt_cli, highstate, sls, daemon, unit, restart):
    states = highstate("infra")
    sid = f"airflow-{sls}-{daemon}"
    dropin = states[f"{sid}-dropin"]
    assert dropin["fun"] == "file.managed"
    assert dropin["name"] == f"/etc/systemd/system/{unit}.service.d/airflow-restart.conf"
    assert dropin["source"][-1] == "salt://airflow/files/restart-policy.conf.jinja"
    assert dropin["onchanges_in"] == [{"module": "airflow-systemd-daemon-reload"}]
    s = _sections(_render(salt_cli, dropin["source"][-1], dropin["context"], "infra"))
    assert s["Unit"] == [("StartLimitIntervalSec", "0")]
    assert s["Service"] == [("Restart", restart), ("RestartSec", RESTART_SEC)]
    reset = states[f"{sid}-reset-failed"]
    assert reset["fun"] == "cmd.run"
    assert reset["name"] == f"systemctl reset-failed {unit}"
    assert reset["onlyif"] == f"systemctl is-failed --quiet {unit}"
    svc = states[f"airflow-{sls}-service"]
    assert {"cmd": f"{sid}-reset-failed"} in svc["require"]
    assert {"module": "airflow-systemd-daemon-reload"} in svc["require"]
    # the daemon-reload of airflow.systemd runs only when a drop-in changed (idempotent)
    assert "airflow-systemd-daemon-reload" in states


def test_db_manages_the_real_cluster_unit(highstate):
    states = highstate("infra")
    assert states["airflow-db-service"]["name"] == "postgresql"   # the wrapper, "active (exited)"
    cluster = states["airflow-db-cluster-service"]
    assert cluster["fun"] == "service.running" and cluster["enable"] is True
    assert cluster["name"] == "postgresql@15-main"
    assert {"service": "airflow-db-service"} in cluster["require"]
    for sid in ["airflow-db-role", "airflow-db-reload"]:
        assert {"service": "airflow-db-cluster-service"} in states[sid]["require"], sid


def test_cluster_unit_follows_the_postgresql_version(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.db", 'pillar={"airflow": {"database": {"postgresql_version": 16}}}',
                       minion_tgt="infra")
    assert ret.returncode == 0, ret
    states = parse_states(ret.data)
    assert states["airflow-db-cluster-service"]["name"] == "postgresql@16-main"
    assert states["airflow-db-postgresql-dropin"]["name"] == \
        "/etc/systemd/system/postgresql@16-main.service.d/airflow-restart.conf"


def test_reset_failed_is_honest_under_test_mode(salt_cli):
    """No unit is failed here: every reset-failed state reports no change, even with test=True."""
    ret = salt_cli.run("state.apply", "airflow.lb", "test=True", minion_tgt="infra", _timeout=180)
    assert isinstance(ret.data, dict), ret
    resets = {k: v for k, v in ret.data.items() if k.split("_|-")[1].endswith("-reset-failed")}
    assert resets, sorted(ret.data)
    for key, res in resets.items():
        assert res["result"] is True and not res["changes"], (key, res)
        assert "onlyif" in res["comment"], (key, res)


# ------------------------------------------------------------------ the wait script
def _wait_module():
    spec = importlib.util.spec_from_file_location("wait_for_deps", WAIT_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wait_backoff_is_capped_exponential():
    mod = _wait_module()
    gen = mod.delays(16)
    assert [next(gen) for _ in range(8)] == [1, 2, 4, 8, 16, 16, 16, 16]


def test_wait_gives_up_after_the_timeout_and_names_what_is_down():
    mod = _wait_module()
    now = [0.0]
    slept, probes = [], []

    def probe(host, port, timeout):
        probes.append((host, port, now[0]))
        return port == 5432 and now[0] >= 7   # the metastore comes back at t=7

    def sleep(s):
        slept.append(s)
        now[0] += s

    targets = [("metastore", "db", 5432), ("broker", "mq", 5672)]
    down = mod.wait(targets, timeout=40, max_interval=8, clock=lambda: now[0], sleep=sleep, probe=probe)
    assert down == [("broker", "mq", 5672)]
    # metastore: polled at 0, 1, 3, 7 (up); broker: from 7, back-off restarts at 1, capped at 8
    assert slept == [1, 2, 4, 1, 2, 4, 8, 8, 8, 2]
    assert now[0] == 40                            # never beyond the budget
    assert all(t <= 40 for _, _, t in probes) and probes[-1] == ("mq", 5672, 40)


def test_wait_script_exit_codes(tmp_path):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        ok = subprocess.run([sys.executable, WAIT_SCRIPT, f"metastore=127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "reachable" in ok.stdout, ok
    # the port is closed now; timeout 0: one probe, then give up -> 255 (a failure, also as ExecCondition)
    down = subprocess.run([sys.executable, WAIT_SCRIPT, "--timeout", "0", f"broker=127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 255 and f"broker 127.0.0.1:{port} still unreachable" in down.stdout, down
    bad = subprocess.run([sys.executable, WAIT_SCRIPT, "no-port"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 255, bad  # argparse's exit 2 would skip an ExecCondition silently


# ------------------------------------------------------------------ the scheduler guard
@pytest.fixture(scope="module")
def guard(salt_cli, tmp_path_factory):
    """The guard as Salt renders it for master1 (its state's context), in a temp file."""
    ret = salt_cli.run("state.show_sls", "airflow.scheduler", minion_tgt="master1")
    assert ret.returncode == 0, ret
    state = parse_states(ret.data)["airflow-scheduler-guard-script"]
    path = tmp_path_factory.mktemp("guard") / "scheduler-guard.py"
    path.write_text(_render(salt_cli, state["source"][-1], state["context"]))
    return path


def _run_guard(guard, cfg_path):
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONFIG"}
    env["AIRFLOW_CONFIG"] = str(cfg_path)
    return subprocess.run([sys.executable, str(guard)], env=env, capture_output=True, text=True, timeout=60)


def _cfg(tmp_path, conn):
    path = tmp_path / "airflow.cfg"
    path.write_text(f"[database]\nsql_alchemy_conn = {conn}\n")
    return path


def test_guard_fails_closed_when_the_metastore_is_unreachable(guard, tmp_path):
    # nothing listens on port 1; without sqlalchemy/psycopg2 in this venv it cannot check either
    ret = _run_guard(guard, _cfg(tmp_path, "postgresql+psycopg2://x@127.0.0.1:1/x"))
    assert ret.returncode == 255, ret
    assert "not starting" in ret.stdout and "allowing" not in ret.stdout, ret


def test_guard_fails_closed_without_its_config(guard, tmp_path):
    ret = _run_guard(guard, tmp_path / "missing.cfg")
    assert ret.returncode == 255 and "cannot read" in ret.stdout, ret


def _has_sqlalchemy():
    return subprocess.run([sys.executable, "-c", "import sqlalchemy"], capture_output=True).returncode == 0


needs_sqlalchemy = pytest.mark.skipif(not _has_sqlalchemy(),
                                      reason="sqlalchemy is not importable in this venv (the guard's "
                                             "sqlite cases need it; Airflow's venv has it)")


def _sqlite_metastore(tmp_path, rows):
    db = tmp_path / "airflow.db"
    con = sqlite3.connect(db)
    if rows is not None:
        con.execute("CREATE TABLE job (id INTEGER PRIMARY KEY, state VARCHAR(20), job_type VARCHAR(30), "
                    "latest_heartbeat TIMESTAMP, hostname VARCHAR(500))")
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        for host, age in rows:
            con.execute("INSERT INTO job (state, job_type, latest_heartbeat, hostname) VALUES (?, ?, ?, ?)",
                        ("running", "SchedulerJob", str(now - datetime.timedelta(seconds=age)), host))
    con.commit()
    con.close()
    return _cfg(tmp_path, f"sqlite:///{db}")


@needs_sqlalchemy
def test_guard_allows_a_fresh_metastore(guard, tmp_path):
    ret = _run_guard(guard, _sqlite_metastore(tmp_path, None))
    assert ret.returncode == 0 and "no job table" in ret.stdout, ret


@needs_sqlalchemy
def test_guard_refuses_while_another_scheduler_is_fresh(guard, tmp_path):
    ret = _run_guard(guard, _sqlite_metastore(tmp_path, [("other.example", 2)]))
    assert ret.returncode == 1 and "refusing" in ret.stdout and "other.example" in ret.stdout, ret


@needs_sqlalchemy
def test_guard_allows_when_the_other_heartbeat_is_stale_or_its_own(guard, tmp_path):
    ret = _run_guard(guard, _sqlite_metastore(tmp_path, [("other.example", 600), (socket.getfqdn(), 0)]))
    assert ret.returncode == 0 and "no other live scheduler" in ret.stdout, ret
