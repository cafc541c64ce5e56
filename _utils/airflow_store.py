"""
The healing runner's files under ``state_dir`` (Salt utility module ``airflow_store``).

``<state_dir>/`` (default /var/lib/airflow-salt):

* ``audit.jsonl``     one JSON line per healing action (``salt-run airflow.audit_log``)
* ``maintenance``     flag: auto-remediation paused (``salt-run airflow.maintenance on``)
* ``deployed``        flag: orch.deploy finished (``airflow.mark_deployed``)
* ``locks/<name>.lock``  flock()s that keep two runner jobs off the same thing
* ``lb.request``, ``lb.run``, ``lb.first``  timestamps of the reconcile_lb debounce
* ``drained.json``    api-servers drained on purpose (left alone by reconcile_lb)
* the runtime pillar (``runtime_pillar``, default ``pillar/airflow_runtime.sls``) that
  persists the active scheduler

``Store(conf, clock)``: ``conf`` is the runner settings (``airflow_decide.settings``), ``clock``
anything with ``now()`` and ``sleep(seconds)``. No Salt calls here.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os

log = logging.getLogger(__name__)

__virtualname__ = "airflow_store"


def __virtual__():
    return __virtualname__


def _iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")


class Store:
    """Files of the healing runner under ``conf['state_dir']``."""

    def __init__(self, conf, clock):
        self.state_dir = conf["state_dir"]
        self.runtime_pillar = conf["runtime_pillar"]
        self.clock = clock

    def path(self, name):
        return os.path.join(self.state_dir, name)

    def ensure_dir(self):
        os.makedirs(self.state_dir, mode=0o750, exist_ok=True)

    # ------------------------------------------------------------------ locks
    @contextlib.contextmanager
    def lock(self, name, blocking=False, timeout=0):
        """File lock ``locks/<name>.lock``; yields True if acquired (False: someone holds it)."""
        self.ensure_dir()
        lockdir = self.path("locks")
        os.makedirs(lockdir, exist_ok=True)
        fh = open(os.path.join(lockdir, name + ".lock"), "a+", encoding="utf-8")
        got = False
        try:
            deadline = self.clock.now() + timeout
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    got = True
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if not blocking or self.clock.now() >= deadline:
                        break
                    self.clock.sleep(0.2)
            yield got
        finally:
            if got:
                fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    # ------------------------------------------------------------------ audit log
    def audit(self, action, minion=None, daemon=None, reason=None, outcome=None, attempt=False,
              **extra):
        """Append one audit record (and log it); returns the record."""
        now = self.clock.now()
        rec = {
            "time": _iso(now),
            "ts": round(now, 3),
            "action": action,
            "minion": minion,
            "daemon": daemon,
            "reason": reason,
            "outcome": outcome,
        }
        if attempt:
            rec["attempt"] = True
        rec.update(extra)
        line = json.dumps(rec, default=str)
        try:
            self.ensure_dir()
            with open(self.path("audit.jsonl"), "a", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                fh.write(line + "\n")
                fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError as exc:
            log.error("airflow healing: cannot write audit log: %s", exc)
        log.warning("airflow healing: %s", line)
        return rec

    def read_audit(self, limit=2000):
        """The last ``limit`` audit records (unparsable lines skipped)."""
        try:
            with open(self.path("audit.jsonl"), encoding="utf-8") as fh:
                lines = fh.readlines()[-int(limit):]
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    # ------------------------------------------------------------------ flags, timestamps
    def flag(self, name):
        return os.path.exists(self.path(name))

    def set_flag(self, name):
        self.ensure_dir()
        with open(self.path(name), "w", encoding="utf-8") as fh:
            fh.write(_iso(self.clock.now()) + "\n")

    def clear_flag(self, name):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path(name))

    def read_ts(self, name):
        try:
            with open(self.path(name), encoding="utf-8") as fh:
                return float(fh.read().strip())
        except (OSError, ValueError):
            return None

    def write_ts(self, name, ts):
        self.ensure_dir()
        with open(self.path(name), "w", encoding="utf-8") as fh:
            fh.write(repr(float(ts)))

    # ------------------------------------------------------------------ runtime pillar
    def read_runtime_pillar(self):
        """Text of the runtime pillar file (None if there is none)."""
        try:
            with open(self.runtime_pillar, encoding="utf-8") as fh:
                return fh.read()
        except OSError:
            return None

    def write_runtime_pillar(self, text):
        """Replace the runtime pillar file atomically."""
        os.makedirs(os.path.dirname(self.runtime_pillar), exist_ok=True)
        tmp = self.runtime_pillar + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, self.runtime_pillar)

    # ------------------------------------------------------------------ drained api-servers
    def drained(self):
        try:
            with open(self.path("drained.json"), encoding="utf-8") as fh:
                names = json.load(fh)
        except (OSError, ValueError):
            return set()
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def set_drained(self, names):
        self.ensure_dir()
        with open(self.path("drained.json"), "w", encoding="utf-8") as fh:
            json.dump(sorted(names), fh)


def store(conf, clock):
    """A Store of the runner settings ``conf`` using ``clock``."""
    return Store(conf, clock)
