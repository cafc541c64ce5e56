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
