"""
The healing runner's files under ``state_dir`` (Salt utility module ``airflow_store``).

``<state_dir>/`` (default /var/lib/airflow-salt):

* ``audit.jsonl``     one JSON line per record (``salt-run airflow.audit_log``): the intent of
  an action before it is taken, its outcome after, and every refusal (ignored, blocked,
  skipped, rate-limited, damped). Bounded: a line that would take it past ``audit_max_bytes``
  first rotates it to ``audit.jsonl.1`` (``.1`` to ``.2`` ... up to ``.<audit_keep>``, the
  oldest dropped), under the exclusive flock ``locks/audit.lock``; appends are one O_APPEND
  write each under that lock, reads take it shared and read only the tail they need
* ``maintenance``     flag: auto-remediation paused (``salt-run airflow.maintenance on``)
* ``deployed``        flag: orch.deploy finished (``airflow.mark_deployed``)
* ``locks/<name>.lock``  flock()s that keep two runner jobs off the same thing
* ``lb.request``, ``lb.run``, ``lb.first``  timestamps of the reconcile_lb debounce
  (read and written under the short lock ``lb-request``)
* ``rate/<minion>.json``  per-minion event budget (``airflow_gate.admit`` in the reactor,
  ``airflow_decide.rate_limit``)
* ``attempts/<minion>--<daemon>.json``  epoch seconds of the remediation attempts that flap
  damping counts (``audit(..., attempt=True)`` appends; ``attempts()`` reads), pruned to the
  longest ``*window`` setting: a flood of other audit records cannot reset damping
* ``drained.json``    api-servers drained on purpose (left alone by reconcile_lb)
* the runtime pillar (``runtime_pillar``, default ``pillar/airflow_runtime.sls``) that
  persists the active scheduler

``Store(conf, clock)``: ``conf`` is the runner settings (``airflow_decide.settings``), ``clock``
anything with ``now()`` and ``sleep(seconds)``. No Salt calls here.

The small JSON files (``rate/``, ``attempts/``) are read and rewritten in place under a
flock of the file itself, held for one small read and write: a blocking wait of microseconds,
never behind a Salt call.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os

import yaml

log = logging.getLogger(__name__)

__virtualname__ = "airflow_store"

#: At most this many attempt timestamps are kept per (minion, daemon), whatever the windows.
ATTEMPTS_MAX = 1000
#: The audit log under state_dir; rotated to AUDIT_FILE.1 .. .<audit_keep>.
AUDIT_FILE = "audit.jsonl"
#: Bytes read per step when the audit log is read from its end.
_TAIL_BLOCK = 64 * 1024


def __virtual__():
    return __virtualname__


def _epochs(values):
    """The numbers of a stored list (anything else: empty)."""
    return [float(t) for t in (values if isinstance(values, list) else [])
            if isinstance(t, (int, float)) and not isinstance(t, bool)]


def _attempt_key(minion, daemon):
    if not isinstance(minion, str) or not isinstance(daemon, str):
        raise ValueError(f"attempt of {minion!r}/{daemon!r}: minion and daemon must be names")
    return f"{minion}--{daemon}"


def _tail_lines(path, count):
    """
    The last ``count`` lines of a file (text, without newlines), read from its end in blocks:
    the cost follows ``count``, not the file's size. A missing file has none.
    """
    if count <= 0:
        return []
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return []
    with fh:
        pos = fh.seek(0, os.SEEK_END)
        chunks, newlines = [], 0
        # one newline more than lines wanted (the first one may be cut), or the whole file
        while pos > 0 and newlines <= count:
            step = min(_TAIL_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    lines = b"".join(reversed(chunks)).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    if pos > 0:
        lines = lines[1:]  # the start of this one is before what was read
    return [line.decode("utf-8", "replace") for line in lines[-count:]]


def _iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")


class Store:
    """Files of the healing runner under ``conf['state_dir']``."""

    def __init__(self, conf, clock):
        self.state_dir = conf["state_dir"]
        self.runtime_pillar = conf["runtime_pillar"]
        self.roles_file = conf["roles_file"]
        self.clock = clock
        # attempts are kept for the longest damping window (``window``, or any later
        # ``<something>_window`` setting, e.g. of a cluster-wide failover counter)
        self.attempt_keep = max([float(v) for k, v in conf.items()
                                 if (k == "window" or k.endswith("_window"))
                                 and isinstance(v, (int, float)) and not isinstance(v, bool)]
                                or [0.0])
        self.audit_max_bytes = int(conf["audit_max_bytes"])
        self.audit_keep = int(conf["audit_keep"])

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

    @contextlib.contextmanager
    def short_lock(self, name):
        """
        Blocking lock ``locks/<name>.lock`` for a few file reads and writes (never hold it
        around a Salt call or a sleep: others wait for it).
        """
        self.ensure_dir()
        lockdir = self.path("locks")
        os.makedirs(lockdir, exist_ok=True)
        with open(os.path.join(lockdir, name + ".lock"), "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield True  # closing the file releases the lock

    # ------------------------------------------------------------------ small JSON files
    def _small(self, *parts):
        """Path of ``<state_dir>/<dir>/<name>.json`` (names from ids: no path tricks)."""
        for part in parts:
            if not isinstance(part, str) or not part or "/" in part or "\0" in part \
                    or part.startswith("."):
                raise ValueError(f"not a file name: {part!r}")
        return self.path(os.path.join(*parts) + ".json")

    def read_json(self, *parts):
        """Content of a small JSON file (None when missing or unreadable)."""
        try:
            with open(self._small(*parts), encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_SH)
                return json.loads(fh.read() or "null")
        except (OSError, ValueError):
            return None

    def update_json(self, parts, change):
        """
        Read-modify-write of a small JSON file under its flock. ``parts``: (dir, name);
        ``change(old) -> (new, ret)`` gets the content (None when missing or junk) and
        returns the new content and what update_json returns.
        """
        path = self._small(*parts)
        self.ensure_dir()
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        with os.fdopen(fd, "r+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                old = json.loads(fh.read() or "null")
            except ValueError:
                old = None
            new, ret = change(old)
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(new))
            fh.flush()
        return ret

    # ------------------------------------------------------------------ damping attempts
    def attempts(self, minion, daemon):
        """
        Epoch seconds of the recorded remediation attempts of (minion, daemon), oldest first
        (``airflow_decide.damping`` counts them). Any key works, e.g. ('cluster', 'failover').
        """
        return _epochs(self.read_json("attempts", _attempt_key(minion, daemon)))

    def record_attempt(self, minion, daemon, ts=None):
        """Add an attempt of (minion, daemon) at ``ts`` (default now); returns the kept list."""
        ts = self.clock.now() if ts is None else float(ts)
        keep = self.attempt_keep

        def change(old):
            kept = sorted([t for t in _epochs(old) if ts - t <= keep] + [ts])[-ATTEMPTS_MAX:]
            return kept, kept

        return self.update_json(("attempts", _attempt_key(minion, daemon)), change)

    # ------------------------------------------------------------------ busy nodes
    def mark_busy(self, minion, op_id, action):
        """An action (``Context.act``) acts on ``minion`` from now: scheduled enforcement waits."""
        now = self.clock.now()

        def change(old):
            ops = old if isinstance(old, dict) else {}
            ops[op_id] = {"action": action, "since": now}
            return ops, None

        self.update_json(("busy", minion), change)

    def clear_busy(self, minion, op_id):
        """The action ``op_id`` on ``minion`` is done."""
        def change(old):
            ops = old if isinstance(old, dict) else {}
            ops.pop(op_id, None)
            return ops, None

        self.update_json(("busy", minion), change)

    def busy(self, minion):
        """The latest action still marked on ``minion``: {action, since} or None."""
        ops = self.read_json("busy", minion)
        rows = [row for row in (ops.values() if isinstance(ops, dict) else [])
                if isinstance(row, dict) and isinstance(row.get("since"), (int, float))]
        return max(rows, key=lambda row: row["since"]) if rows else None

    # ------------------------------------------------------------------ enforcement status
    def write_enforcement(self, minion, row):
        """The last scheduled run of ``minion`` (``airflow_drift.status_row``)."""
        self.update_json(("enforce", minion), lambda old: (row, None))

    def enforcement(self):
        """{minion: last run row} of every node that reported one."""
        out = {}
        folder = self.path("enforce")
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(".json") and not name.startswith("."):
                row = self.read_json("enforce", name[:-5])
                if isinstance(row, dict):
                    out[name[:-5]] = row
        return out

    # ------------------------------------------------------------------ audit log
    def audit_path(self, n=0):
        """``audit.jsonl`` (``n`` 0, the one written to) or its rotated ``audit.jsonl.<n>``."""
        return self.path(AUDIT_FILE if not n else f"{AUDIT_FILE}.{n}")

    @contextlib.contextmanager
    def _audit_lock(self, mode):
        """
        flock of ``locks/audit.lock``: LOCK_EX around an append (and the rotation before it),
        LOCK_SH around a read, so a reader never sees a rotation half done. A reader that
        cannot open the lock file (none yet, a read-only state_dir) reads without it.
        """
        path = os.path.join(self.path("locks"), "audit.lock")
        if mode == fcntl.LOCK_EX:
            self.ensure_dir()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        else:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                fd = None
            if fd is None:
                yield False
                return
        try:
            fcntl.flock(fd, mode)
            yield True
        finally:
            os.close(fd)  # releases the lock

    def _rotate(self):
        """audit.jsonl -> .1 -> .2 ... -> .<audit_keep> (the oldest dropped); under LOCK_EX."""
        for n in range(self.audit_keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.audit_path(n), self.audit_path(n + 1))
        os.replace(self.audit_path(), self.audit_path(1))

    def append_audit(self, rec, durable=False):
        """
        Append one record as one line; raises OSError when it is not (all) written: disk
        full, read-only, permissions. Under the exclusive audit lock: rotate first if the line
        would take audit.jsonl past ``audit_max_bytes``, then one O_APPEND write (a short
        write is cut off again, so no half line stays behind); ``durable``: fsync too (the
        intent record of an action, written before the action is taken).
        """
        data = (json.dumps(rec, default=str) + "\n").encode("utf-8")
        with self._audit_lock(fcntl.LOCK_EX):
            try:
                size = os.stat(self.audit_path()).st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.audit_max_bytes:
                self._rotate()
            fd = os.open(self.audit_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                before = os.fstat(fd).st_size
                try:
                    written = os.write(fd, data)
                    if written != len(data):
                        raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} "
                                                    "bytes)", self.audit_path())
                    if durable:
                        os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, before)
                    raise
            finally:
                os.close(fd)
        return rec

    def audit(self, action, minion=None, daemon=None, reason=None, outcome=None, attempt=False,
              strict=False, durable=False, count_attempt=True, **extra):
        """
        Append one audit record (and log it); returns the record. ``attempt``: the record is a
        remediation attempt of (minion, daemon), also counted for flap damping (``attempts/``,
        apart from the log) unless ``count_attempt`` is False (counted when its intent was
        recorded). ``strict``: an attempt or a line that cannot be written raises OSError (the
        caller must not act, see ``Context.act``); otherwise it is logged and dropped.
        """
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
        if attempt and count_attempt:
            try:  # damping reads this store, not the audit log
                self.record_attempt(minion, daemon, now)
            except (OSError, ValueError) as exc:
                if strict:
                    raise
                log.error("airflow healing: cannot record attempt of %s/%s: %s",
                          minion, daemon, exc)
        rec.update(extra)
        try:
            self.append_audit(rec, durable=durable)
        except OSError as exc:
            if strict:
                raise
            log.error("airflow healing: cannot write audit log: %s", exc)
        log.warning("airflow healing: %s", json.dumps(rec, default=str))
        return rec

    def read_audit(self, limit=2000):
        """
        The last ``limit`` audit records, oldest first, read from the end of audit.jsonl and,
        when it holds fewer, of the rotated files (newest first): never the whole history.
        Unparsable lines are skipped.
        """
        limit = int(limit)
        if limit <= 0:
            return []
        lines = []
        with self._audit_lock(fcntl.LOCK_SH):
            for n in range(self.audit_keep + 1):
                lines = _tail_lines(self.audit_path(n), limit - len(lines)) + lines
                if len(lines) >= limit:
                    break
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

    # ------------------------------------------------------------------ the role record
    def read_role_record(self):
        """
        ``(data, error)`` of the role record file (``roles_file``): the loaded YAML (None when
        the file is missing or empty: no minion has a role), error a message or None.
        """
        path = self.roles_file
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"role record {path} unreadable: {exc.strerror}"
        try:
            return yaml.safe_load(text), None
        except yaml.YAMLError as exc:
            return None, f"role record {path} is not YAML ({exc.__class__.__name__})"

    def write_role_record(self, text):
        """Replace the role record atomically (0644: no secret in it, under the record lock)."""
        path = self.roles_file
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

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
