"""
Unit tests of the runner's state files _utils/airflow_store.py: the damping attempts store,
the small JSON files (rate limiting) and the short lock. Real files in tmp_path, fake clock.
"""
import importlib.util
import json
import logging
import pathlib
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(rel, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S = _load("_utils/airflow_store.py", "store_test_airflow_store")
D = _load("_utils/airflow_decide.py", "store_test_airflow_decide")
S.log.disabled = True
logging.getLogger("store_test_airflow_store").disabled = True


class Clock:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


@pytest.fixture
def store(tmp_path):
    conf = D.settings({"airflow_healing": {"state_dir": str(tmp_path)}})
    return S.store(conf, Clock())


def _damped(store, minion, daemon):
    conf = D.RUNNER_DEFAULTS
    return not D.damping(store.attempts(minion, daemon), store.clock.now(),
                         conf["max_attempts"], conf["window"])[0]


def test_audit_attempt_records_the_attempt(store, tmp_path):
    rec = store.audit("restart", "worker1", "worker", "status dead", "recovered", attempt=True)
    assert rec["attempt"] is True
    assert store.attempts("worker1", "worker") == [store.clock.now()]
    assert json.loads((tmp_path / "attempts" / "worker1--worker.json").read_text()) == [
        store.clock.now()]
    store.audit("ignored", "worker1", "worker", "healthy", "ignored")   # not an attempt
    assert len(store.attempts("worker1", "worker")) == 1
    assert store.attempts("worker2", "worker") == []


def test_flood_of_other_records_does_not_reset_damping(store):
    for _ in range(3):
        store.audit("kill-restart", "worker1", "worker", "hung", "failed", attempt=True)
        store.clock.t += 60
    assert _damped(store, "worker1", "worker")
    for i in range(5000):
        store.audit("ignored", "?", None, f"malformed {i}", "ignored")
    assert not any(r.get("attempt") for r in store.read_audit())   # gone from the audit view
    assert _damped(store, "worker1", "worker")                      # still damped
    store.clock.t += 600
    assert not _damped(store, "worker1", "worker")                  # the window slid


def test_attempts_are_pruned_to_the_longest_window(tmp_path):
    conf = D.settings({"airflow_healing": {"state_dir": str(tmp_path), "window": 100}})
    conf["failover_window"] = 300          # a later knob of someone else's damping
    store = S.Store(conf, Clock())
    assert store.attempt_keep == 300
    t0 = store.clock.now()
    for dt in (0, 250, 350):
        store.record_attempt("cluster", "failover", t0 + dt)
    assert store.attempts("cluster", "failover") == [t0 + 250, t0 + 350]   # t0: 350 s old
    # an attempt from before the others (a clock that went back): kept, in order
    assert store.record_attempt("cluster", "failover") == [t0, t0 + 250, t0 + 350]


def test_attempts_are_capped(store, monkeypatch):
    monkeypatch.setattr(S, "ATTEMPTS_MAX", 5)
    for i in range(8):
        store.record_attempt("worker1", "worker", store.clock.now() + i)
    assert store.attempts("worker1", "worker") == [store.clock.now() + i for i in range(3, 8)]


def test_attempts_tolerate_junk_and_reject_bad_names(store, tmp_path):
    (tmp_path / "attempts").mkdir()
    (tmp_path / "attempts" / "worker1--worker.json").write_text("[1, true, \"x\", 2.5")
    assert store.attempts("worker1", "worker") == []
    (tmp_path / "attempts" / "worker1--worker.json").write_text('[1, true, "x", 2.5]')
    assert store.attempts("worker1", "worker") == [1.0, 2.5]
    (tmp_path / "attempts" / "worker1--worker.json").write_text('{"a": 1}')
    assert store.attempts("worker1", "worker") == []
    assert store.record_attempt("worker1", "worker") == [store.clock.now()]   # junk replaced
    for minion, daemon in (("../x", "worker"), (".hidden", "w"), (None, "worker"),
                           ("worker1", None), ("a/b", "c")):
        with pytest.raises(ValueError):
            store.record_attempt(minion, daemon)
    # the audit line is written even when the attempt cannot be recorded
    rec = store.audit("restart", None, None, "x", "failed", attempt=True)
    assert store.read_audit()[-1] == json.loads(json.dumps(rec))


def test_update_json_read_modify_write(store, tmp_path):
    assert store.read_json("rate", "worker1") is None
    assert store.update_json(("rate", "worker1"), lambda old: ({"n": 1}, old)) is None
    assert store.update_json(("rate", "worker1"), lambda old: ({"n": old["n"] + 1}, "ret")) \
        == "ret"
    assert store.read_json("rate", "worker1") == {"n": 2}
    (tmp_path / "rate" / "worker1.json").write_text("{broken")
    assert store.read_json("rate", "worker1") is None
    assert store.update_json(("rate", "worker1"), lambda old: (old, old)) is None
    with pytest.raises(ValueError, match="not a file name"):
        store.update_json(("rate", ""), lambda old: (old, old))


def test_update_json_is_atomic_across_threads(store):
    """Every thread opens its own file description: the flock serialises them."""
    def bump(old):
        return (old or 0) + 1, None

    threads = [threading.Thread(target=lambda: [store.update_json(("rate", "n"), bump)
                                                for _ in range(50)]) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.read_json("rate", "n") == 400


def test_short_lock_serialises_a_read_and_write(store):
    store.write_ts("lb.request", 1.0)

    def bump():
        for _ in range(100):
            with store.short_lock("lb-request"):
                store.write_ts("lb.request", store.read_ts("lb.request") + 1)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.read_ts("lb.request") == 401.0
    with store.short_lock("lb-request") as got:
        assert got
        with store.lock("lb-request") as other:     # held: a non-blocking try fails
            assert not other


# ------------------------------------------------------------------ audit: bounded, rotated
def _small_store(tmp_path, max_bytes=4096, keep=3, **more):
    conf = D.settings({"airflow_healing": {"state_dir": str(tmp_path),
                                           "audit_max_bytes": max_bytes, "audit_keep": keep,
                                           **more}})
    return S.store(conf, Clock())


def _audit_files(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.jsonl"))


def _all_lines(tmp_path, keep):
    """Every line of the audit, oldest file first (for checks, not what the store does)."""
    lines = []
    for n in range(keep, -1, -1):
        path = tmp_path / ("audit.jsonl" if not n else f"audit.jsonl.{n}")
        if path.exists():
            lines += path.read_text().splitlines()
    return lines


def test_audit_rotates_at_the_size_bound_and_keeps_audit_keep_files(tmp_path):
    store = _small_store(tmp_path, max_bytes=4096, keep=3)
    for i in range(400):                                  # ~60 KiB: many rotations
        store.audit("ignored", "worker1", "worker", f"event {i}", "ignored")
    assert _audit_files(tmp_path) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2",
                                      "audit.jsonl.3"]
    for name in _audit_files(tmp_path):
        assert (tmp_path / name).stat().st_size <= 4096
    # what is kept is the newest, in order, without a gap and ending with the last record
    reasons = [json.loads(line)["reason"] for line in _all_lines(tmp_path, 3)]
    first = int(reasons[0].split()[1])
    assert reasons == [f"event {i}" for i in range(first, 400)]
    assert 400 - first >= 3 * 4096 // 200                # roughly 3-4 files of ~200 B lines
    # the tail across the rotated files: the last N records, oldest first
    assert [r["reason"] for r in store.read_audit(50)] == [f"event {i}" for i in range(350, 400)]
    assert [r["reason"] for r in store.read_audit(10_000)] == reasons   # all that is kept
    assert store.read_audit(0) == []


def test_audit_rotation_leaves_other_files_alone(tmp_path):
    (tmp_path / "audit.jsonl.1700000000").write_text("moved aside by hand\n")
    store = _small_store(tmp_path, keep=1)
    for i in range(100):
        store.audit("x", reason=str(i))
    assert _audit_files(tmp_path) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.1700000000"]


def test_read_audit_reads_only_the_tail(tmp_path, monkeypatch):
    """A big history: reading the last 20 records reads a block or two, not the file."""
    store = _small_store(tmp_path, max_bytes=64 * 1024 * 1024, keep=1)
    line = json.dumps({"action": "ignored", "reason": "x" * 200}) + "\n"
    (tmp_path / "audit.jsonl").write_text(line * 100_000)           # ~21 MB
    store.audit("restart", "worker1", "worker", "last", "recovered")
    read = []
    real_open = open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def seek(self, *a):
            return self.fh.seek(*a)

        def read(self, n=-1):
            data = self.fh.read(n)
            read.append(len(data))
            return data

    monkeypatch.setattr(S, "open", lambda p, mode="r", *a, **k: Counting(real_open(p, mode, *a, **k))
                        if mode == "rb" else real_open(p, mode, *a, **k), raising=False)
    recs = store.read_audit(20)
    assert len(recs) == 20 and recs[-1]["reason"] == "last"
    assert sum(read) <= 2 * S._TAIL_BLOCK


def test_tail_lines_edge_cases(tmp_path):
    path = tmp_path / "f"
    assert S._tail_lines(str(path), 3) == []                           # missing
    path.write_text("")
    assert S._tail_lines(str(path), 3) == []
    path.write_text("a\nb\nc")                                          # no final newline
    assert S._tail_lines(str(path), 2) == ["b", "c"]
    path.write_text("".join(f"{i:05d}\n" for i in range(50_000)))     # spans blocks
    assert S._tail_lines(str(path), 3) == ["49997", "49998", "49999"]
    assert S._tail_lines(str(path), 50_001) == [f"{i:05d}" for i in range(50_000)]
    assert S._tail_lines(str(path), 0) == []


def _append_many(state_dir, who, count, max_bytes, keep):
    conf = D.settings({"airflow_healing": {"state_dir": state_dir, "audit_max_bytes": max_bytes,
                                           "audit_keep": keep}})
    store = S.store(conf, Clock())
    for i in range(count):
        store.audit("ignored", who, None, "x" * (i % 37), "ignored", seq=i)


def test_concurrent_appends_from_two_processes_across_rotations(tmp_path):
    """Two runner processes append while the log rotates: no line lost, cut or interleaved."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    count, max_bytes, keep = 1500, 16 * 1024, 100         # keep all: every line is checkable
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), who, count, max_bytes, keep))
             for who in ("proc-a", "proc-b")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    files = _audit_files(tmp_path)
    assert len(files) > 10                                 # it did rotate, many times
    lines = _all_lines(tmp_path, keep)
    recs = [json.loads(line) for line in lines]           # every line whole JSON
    for who in ("proc-a", "proc-b"):
        assert [r["seq"] for r in recs if r["minion"] == who] == list(range(count))
    store = _small_store(tmp_path, max_bytes=max_bytes, keep=keep)
    assert store.read_audit(3 * count) == recs


def test_flood_with_rotation_does_not_reset_damping_or_failover_damping(tmp_path):
    store = _small_store(tmp_path, max_bytes=8192, keep=2)
    conf = D.settings({})
    for _ in range(3):
        store.audit("kill-restart", "worker1", "worker", "hung", "failed", attempt=True)
        store.record_attempt("cluster", "failover")
        store.clock.t += 60

    def decisions():
        now = store.clock.now()
        return (D.damping(store.attempts("worker1", "worker"), now,
                          conf["max_attempts"], conf["window"]),
                D.damping(store.attempts("cluster", "failover"), now,
                          conf["failover_max_attempts"], conf["failover_window"]))

    before = decisions()
    assert before == ((False, 3), (False, 3))
    for i in range(6000):                                  # ignored, blocked, rate-limited ...
        action = ("ignored", "blocked", "rate-limited")[i % 3]
        store.audit(action, f"worker{i % 50}", "worker", f"flood {i}", action)
    assert len(_audit_files(tmp_path)) == 3                # rotated, bounded
    assert not any(r.get("attempt") for r in store.read_audit(10_000))  # out of the log
    assert decisions() == before                           # the decisions did not change
    store.clock.t += 3600
    assert decisions() == ((True, 0), (True, 0))


# ------------------------------------------------------------------ audit: failed writes
def test_strict_audit_raises_and_leaves_no_half_line(store, tmp_path, monkeypatch):
    store.audit("first", reason="ok")
    size = (tmp_path / "audit.jsonl").stat().st_size
    real_write = S.os.write
    monkeypatch.setattr(S.os, "write", lambda fd, data: real_write(fd, data[:10]))  # disk full
    with pytest.raises(OSError, match="short write"):
        store.audit("restart", "worker1", "worker", "x", "intent", strict=True)
    assert (tmp_path / "audit.jsonl").stat().st_size == size          # cut off again
    rec = store.audit("ignored", reason="best effort")                 # not strict: no raise
    assert rec["reason"] == "best effort"
    monkeypatch.setattr(S.os, "write", real_write)
    store.audit("after", reason="ok")
    assert [r["action"] for r in store.read_audit()] == ["first", "after"]


def test_strict_audit_raises_when_the_attempt_cannot_be_counted(store, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "update_json", full)
    with pytest.raises(OSError):
        store.audit("restart", "worker1", "worker", "x", "intent", attempt=True, strict=True)
    assert store.read_audit() == []                         # no line either
    store.audit("restart", "worker1", "worker", "x", "failed", attempt=True)   # best effort
    assert len(store.read_audit()) == 1


def test_read_only_state_dir_raises_strictly_and_reads_still_work(store, monkeypatch):
    store.audit("first", reason="ok")
    real_open = S.os.open

    def read_only(path, flags, *a):
        if flags & (S.os.O_WRONLY | S.os.O_RDWR):
            raise OSError(30, "Read-only file system", path)
        return real_open(path, flags, *a)

    monkeypatch.setattr(S.os, "open", read_only)
    with pytest.raises(OSError, match="Read-only"):
        store.audit("restart", "worker1", "worker", "x", "intent", strict=True)
    store.audit("ignored", reason="best effort")                      # logged, dropped
    assert [r["action"] for r in store.read_audit()] == ["first"]    # reads need no write
