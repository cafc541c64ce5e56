"""
The systemd watchdog keep-alive salt/airflow/files/airflow_watchdog.py, run for real: a Python
process started the way systemd starts a unit's main process (WATCHDOG_PID is the pid that
then execs Python, NOTIFY_SOCKET a datagram socket the test binds), once importing the module
and once through airflow_watchdog.pth in a throwaway venv, as the states install it.
"""
import importlib.util
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = ROOT / "salt/airflow/files"
_spec = importlib.util.spec_from_file_location("watchdog_test_module", FILES / "airflow_watchdog.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)  # no WATCHDOG_PID of this pid in the test's environment: no thread

#: WatchdogSec of the runs: 0.3 s, so a beat every 0.1 s
USEC = "300000"
RUN_SECONDS = 0.8


def _clean_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("WATCHDOG_PID", "WATCHDOG_USEC", "NOTIFY_SOCKET", "PYTHONPATH")}
    return env


def _listen(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.05)
    return sock


def _run(python_argv, env, sock, pid_matches=True):
    """Start ``python_argv`` via ``sh -c 'WATCHDOG_PID=$$ exec ...'`` (the pid stays the one
    systemd would put in WATCHDOG_PID) or with another process's pid; collect the datagrams
    until it exits. Returns (returncode, stdout, datagrams)."""
    pid = "$$" if pid_matches else str(os.getpid())
    script = f'WATCHDOG_PID={pid}; export WATCHDOG_PID; exec "$@"'
    proc = subprocess.Popen(["sh", "-c", script, "sh", *python_argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = []
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            got.append(sock.recv(64))
        except socket.timeout:
            pass
    out, err = proc.communicate(timeout=10)
    while True:  # what arrived before the exit
        try:
            got.append(sock.recv(64))
        except (socket.timeout, BlockingIOError):
            break
    return proc.returncode, out.decode() + err.decode(), got


def _import_and_sleep():
    code = (f"import sys; sys.path.insert(0, {str(FILES)!r}); import airflow_watchdog, time; "
            f"time.sleep({RUN_SECONDS}); print('done')")
    return [sys.executable, "-c", code]


@pytest.fixture()
def notify(tmp_path):
    path = tmp_path / "notify"
    sock = _listen(str(path))
    yield str(path), sock
    sock.close()


def test_main_process_sends_watchdog_1_every_third_of_watchdog_usec(notify):
    path, sock = notify
    env = dict(_clean_env(), NOTIFY_SOCKET=path, WATCHDOG_USEC=USEC)
    code, out, got = _run(_import_and_sleep(), env, sock)
    assert code == 0 and "done" in out, out
    assert set(got) == {b"WATCHDOG=1"}
    # 0.8 s at one beat per 0.1 s: at least 4 even on a loaded host, never more than ~9
    assert 4 <= len(got) <= 10, len(got)


def test_no_beat_from_a_process_that_is_not_the_watchdogs(notify):
    # a Celery prefork child or a task process: it inherits the env but has another pid
    path, sock = notify
    env = dict(_clean_env(), NOTIFY_SOCKET=path, WATCHDOG_USEC=USEC)
    code, out, got = _run(_import_and_sleep(), env, sock, pid_matches=False)
    assert code == 0 and "done" in out, out
    assert got == []


def test_no_beat_without_the_environment(notify):
    path, sock = notify
    for env in (_clean_env(),                                      # not under a watchdog
                dict(_clean_env(), WATCHDOG_USEC=USEC),            # no NOTIFY_SOCKET
                dict(_clean_env(), NOTIFY_SOCKET=path)):           # no WATCHDOG_USEC
        code, out, got = _run(_import_and_sleep(), env, sock)
        assert code == 0 and "done" in out, out
        assert got == [], env


def test_abstract_notify_socket():
    name = f"airflow-watchdog-test-{uuid.uuid4().hex}"
    sock = _listen("\0" + name)
    try:
        env = dict(_clean_env(), NOTIFY_SOCKET="@" + name, WATCHDOG_USEC=USEC)
        code, out, got = _run(_import_and_sleep(), env, sock)
    finally:
        sock.close()
    assert code == 0 and "done" in out, out
    assert got and set(got) == {b"WATCHDOG=1"}


@pytest.mark.parametrize("over", [
    {"WATCHDOG_USEC": "soon"}, {"WATCHDOG_USEC": "-5"}, {"WATCHDOG_USEC": "0"},
    {"NOTIFY_SOCKET": "/nonexistent/notify"},   # systemd's socket gone: beats fail silently
    {"NOTIFY_SOCKET": "vsock:2:1234"},           # a form this module does not speak
])
def test_a_bad_environment_never_breaks_the_python_start(over, tmp_path):
    env = dict(_clean_env(), NOTIFY_SOCKET=str(tmp_path / "none"), WATCHDOG_USEC=USEC)
    env.update(over)
    proc = subprocess.run(["sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh",
                           *_import_and_sleep()], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "done" and proc.stderr == ""


def test_pth_in_a_venv_starts_it_with_no_import_of_its_own(tmp_path):
    """The way airflow.install puts it in place: module + airflow_watchdog.pth in purelib."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-I", "-c",
                              "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert purelib.startswith(str(venv) + "/"), purelib  # the venv's own, never the base's
    shutil.copy(FILES / "airflow_watchdog.py", purelib)
    pathlib.Path(purelib, "airflow_watchdog.pth").write_text("import airflow_watchdog\n")
    sock = _listen(str(tmp_path / "notify"))
    try:
        env = dict(_clean_env(), NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC=USEC)
        code, out, got = _run([str(python), "-c", f"import time; time.sleep({RUN_SECONDS}); "
                               "import sys; print('done', 'airflow_watchdog' in sys.modules)"],
                              env, sock)
        assert code == 0 and "done True" in out, out
        assert len(got) >= 4 and set(got) == {b"WATCHDOG=1"}
        # every other Python start of the venv: imported, inert
        code, out, got = _run([str(python), "-c", "print('done')"], _clean_env(), sock)
        assert code == 0 and "done" in out and got == []
    finally:
        sock.close()


# ------------------------------------------------------------------ pure helpers
def test_period_seconds():
    env = {"WATCHDOG_PID": "42", "WATCHDOG_USEC": "3000000", "NOTIFY_SOCKET": "/run/systemd/notify"}
    assert W.period_seconds(env, 42) == pytest.approx(1.0)
    assert W.period_seconds(env, 43) is None
    assert W.period_seconds(dict(env, WATCHDOG_USEC=""), 42) is None
    assert W.period_seconds(dict(env, NOTIFY_SOCKET=""), 42) is None
    assert W.period_seconds({}, 42) is None


def test_notify_address():
    assert W.notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert W.notify_address("@abstract") == "\0abstract"
    assert W.notify_address("") is None and W.notify_address("vsock:2:1") is None


def test_start_is_a_no_op_outside_the_watchdogs_process():
    assert W.start(environ={}, pid=1) is False
    assert W.start(environ={"WATCHDOG_PID": "1", "WATCHDOG_USEC": "1000000",
                            "NOTIFY_SOCKET": "relative"}, pid=1) is False


def test_module_is_stdlib_only_and_says_what_it_proves():
    text = (FILES / "airflow_watchdog.py").read_text()
    imports = {line.split()[1].split(".")[0] for line in text.splitlines()
               if line.strip().startswith(("import ", "from "))}
    assert imports <= {"os", "socket", "threading", "time"}, imports
    assert "SIGSTOP" in W.__doc__ and "deadlock" in W.__doc__ and "beacon" in W.__doc__
