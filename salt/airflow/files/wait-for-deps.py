"""Dependency wait of the Airflow daemon units (managed by Salt, salt://airflow/files/wait-for-deps.py):
their ExecStartPre, or their first ExecCondition where the unit has a start guard (the
scheduler: the guard then never queries a metastore that is down).

Waits until every dependency accepts a TCP connection, polling with a capped exponential
back-off (1, 2, 4, ... --max-interval s), and gives up after --timeout s with exit 255 (also on
bad arguments or a crash): a failure both as ExecStartPre and as ExecCondition (where 1..254
would skip the start without a retry), so the unit fails and systemd's Restart=on-failure tries
again after RestartSec. So a daemon whose metastore or broker is down costs one cheap poll every
few seconds instead of a full Airflow start (and a crash) every RestartSec, and the back-off is
bounded (systemd 252 has no RestartSteps/RestartMaxDelaySec for that).

    wait-for-deps.py [--timeout S] [--max-interval S] LABEL=HOST:PORT [LABEL=HOST:PORT ...]

e.g.  wait-for-deps.py --timeout 60 --max-interval 16 metastore=10.77.0.5:5432 broker=10.77.0.5:5672
Hosts and ports only: no credentials on the command line. Python stdlib only.
"""
import argparse
import socket
import sys
import time

CONNECT_TIMEOUT = 3.0  # one attempt; a dropped SYN must not eat the whole budget
FAILED = 255


def delays(max_interval):
    """The poll intervals: 1, 2, 4, ... capped at max_interval (endless)."""
    delay = 1.0
    while True:
        yield min(delay, max_interval)
        delay = min(delay * 2, max_interval)


def parse_target(text):
    """'label=host:port' (or 'host:port', '[v6]:port') -> (label, host, port)."""
    label, _, addr = text.rpartition("=")
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not LABEL=HOST:PORT: {text!r}")
    return label or addr, host.strip("[]"), int(port)


def reachable(host, port, timeout):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait(targets, timeout, max_interval, clock=time.monotonic, sleep=time.sleep, probe=reachable):
    """Poll each target until it answers or `timeout` s have passed. Returns the targets that
    never answered (empty: all up)."""
    deadline = clock() + timeout
    down = []
    for label, host, port in targets:
        backoff = delays(max_interval)
        while True:
            left = deadline - clock()
            if probe(host, port, max(0.1, min(CONNECT_TIMEOUT, left))):
                break
            left = deadline - clock()
            if left <= 0:
                down.append((label, host, port))
                break
            delay = min(next(backoff), left)
            print(f"wait-for-deps: {label} {host}:{port} not reachable, next try in {delay:.0f}s",
                  flush=True)
            sleep(delay)
    return down


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    parser.add_argument("--max-interval", type=float, default=16.0, help="cap of the poll interval (s)")
    parser.add_argument("targets", nargs="+", type=parse_target, metavar="LABEL=HOST:PORT")
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # argparse exits 2 (would skip an ExecCondition): fail instead
        return FAILED
    down = wait(args.targets, args.timeout, max(1.0, args.max_interval))
    if down:
        names = ", ".join(f"{label} {host}:{port}" for label, host, port in down)
        print(f"wait-for-deps: gave up after {args.timeout:.0f}s: {names} still unreachable "
              "(systemd retries after RestartSec)", flush=True)
        return FAILED
    print("wait-for-deps: " + ", ".join(f"{label} {host}:{port}" for label, host, port in args.targets)
          + " reachable", flush=True)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception as exc:  # noqa: BLE001 - exit 1 would skip an ExecCondition: fail instead
        print(f"wait-for-deps: {exc.__class__.__name__}: {exc}", flush=True)
        code = FAILED
    sys.exit(code)
