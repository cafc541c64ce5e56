"""
Unit tests of the reactor's event gate _modules/airflow_gate.py and its use in reactor/health.sls.

The module is loaded like Salt's master-side loader does it: ``__utils__`` holds the real
utility modules, except ``airflow_ops.system_clock`` (a fake clock). The rate files and the
audit log are real, in tmp_path.
"""
import importlib.util
import json
import logging
import pathlib

import jinja2
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
UTILS = ("airflow_daemons", "airflow_decide", "airflow_store", "airflow_ops")


def _load(rel, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MODS = {name: _load(f"_utils/{name}.py", f"gate_test_{name}") for name in UTILS}
for _mod in MODS.values():
    if hasattr(_mod, "log"):
        _mod.log.disabled = True  # salt's deferred log handler: keep quiet


class FakeClock:
    def __init__(self, start=1_700_000_000.0):
        self.t = start

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


def _utils_dict(clock):
    """What Salt's utils loader gives the module: {'<virtualname>.<function>': function}."""
    out = {}
    for mod in MODS.values():
        for attr, value in vars(mod).items():
            if callable(value) and not attr.startswith("_") and not isinstance(value, type):
                out[f"{mod.__virtualname__}.{attr}"] = value
    out["airflow_ops.system_clock"] = lambda: clock
    return out


@pytest.fixture
def gate(tmp_path):
    mod = _load("_modules/airflow_gate.py", "gate_test_module")
    mod.clock = FakeClock()
    mod.__utils__ = _utils_dict(mod.clock)
    mod.__opts__ = {"__role": "master", "airflow_healing": {"state_dir": str(tmp_path)}}
    mod.tmp = tmp_path
    mod.audit = lambda: [json.loads(x) for x in
                         (tmp_path / "audit.jsonl").read_text().splitlines()] \
        if (tmp_path / "audit.jsonl").exists() else []
    return mod


def _limited(gate):
    return [r for r in gate.audit() if r["action"] == "rate-limited"]


# ------------------------------------------------------------------ loading
def test_loads_only_on_the_master(gate):
    assert gate.__virtual__() == "airflow_gate"
    gate.__opts__["__role"] = "minion"
    loaded, reason = gate.__virtual__()
    assert loaded is False and "master" in reason
    assert "CLI Example" in gate.admit.__doc__ and "airflow_gate.admit" in gate.admit.__doc__


# ------------------------------------------------------------------ admit / refuse
def test_flood_admits_the_budget_and_audits_once(gate):
    results = [gate.admit("worker1") for _ in range(100)]
    assert results == [True] * 20 + [False] * 80                   # rate_limit_events 20
    limited = _limited(gate)
    assert len(limited) == 1 and len(gate.audit()) == 1            # one per window, not 80
    assert (limited[0]["minion"], limited[0]["count"], limited[0]["outcome"]) == (
        "worker1", 21, "rate-limited")
    assert "previous_dropped" not in limited[0]
    # the rest of the full window is refused from memory: one file write, not 80 ...
    assert json.loads((gate.tmp / "rate" / "worker1.json").read_text())["count"] == 21
    assert gate.admit("master1") is True                           # its own budget
    # ... and still counted: the next window reports all 80 the full one dropped
    gate.clock.t += 10
    assert gate.admit("worker1") is True
    assert json.loads((gate.tmp / "rate" / "worker1.json").read_text())["previous_dropped"] == 80


def test_a_clock_that_went_back_is_not_refused_from_memory(gate):
    assert [gate.admit("worker1") for _ in range(21)][-1] is False
    gate.clock.t -= 3600                       # before the full window's start: a new window
    assert gate.admit("worker1") is True


def test_window_resets_and_reports_what_the_last_one_dropped(gate):
    for _ in range(26):
        gate.admit("worker1")
    assert gate.admit("worker1") is False
    gate.clock.t += 9.9
    assert gate.admit("worker1") is False                          # same window
    gate.clock.t += 0.1                                            # rate_limit_window 10
    assert [gate.admit("worker1") for _ in range(21)] == [True] * 20 + [False]
    limited = _limited(gate)
    assert len(limited) == 2 and limited[1]["previous_dropped"] == 8


def test_settings_come_from_the_runner_config(gate):
    gate.__opts__["airflow_healing"].update(rate_limit_events=2, rate_limit_window=5)
    assert [gate.admit("worker1") for _ in range(3)] == [True, True, False]
    assert "more than 2 events in 5s" in _limited(gate)[0]["reason"]
    gate.__opts__["airflow_healing"]["rate_limit_events"] = 0       # 0: no limit
    assert all(gate.admit("worker2") for _ in range(50))
    assert len(_limited(gate)) == 1


def test_default_budget_never_drops_a_legitimate_beacon(gate):
    """
    The beacon fires at most one event per daemon per check (a change, or the 30 s re-fire).
    Worst legitimate cases within one window: every daemon of a master flapping at every
    check, and every daemon of an all-in-one node going down and coming back.
    """
    D, T = MODS["airflow_decide"], MODS["airflow_daemons"]
    healing = yaml.safe_load((ROOT / "salt/airflow/defaults.yaml").read_text())["airflow"][
        "healing"]
    limit = D.RUNNER_DEFAULTS["rate_limit_events"]
    window = D.RUNNER_DEFAULTS["rate_limit_window"]
    checks_per_window = int(window // healing["interval"]) + 1
    per_role = {}
    for row in T.DAEMONS:
        per_role[row["role"]] = per_role.get(row["role"], 0) + 1
    assert max(per_role.values()) * checks_per_window <= limit
    assert len(T.DAEMONS) * 2 <= limit
    assert healing["refire"] >= window            # a re-fire adds at most one per window
    # and for real: a master's daemons reporting at every check of a window
    on_master = [r["name"] for r in T.DAEMONS if r["role"] == "airflow-master"]
    admitted = []
    for check in range(checks_per_window):
        gate.clock.t = 1_700_000_000.0 + check * healing["interval"]
        admitted += [gate.admit("master2") for _ in on_master]
    assert admitted == [True] * (max(per_role.values()) * checks_per_window)
    assert not _limited(gate)


def test_invalid_ids_share_one_bucket(gate):
    for i in range(20):
        assert gate.admit([None, "a;b", {"id": 1}, "../etc"][i % 4]) is True
    assert gate.admit("x y") is False
    assert sorted(p.name for p in (gate.tmp / "rate").iterdir()) == ["?.json"]
    assert _limited(gate)[0]["minion"] == "?"


# ------------------------------------------------------------------ errors never block healing
@pytest.mark.parametrize("breakage", ["missing util", "junk setting", "unwritable state_dir",
                                      "store raises"])
def test_any_error_admits_and_is_logged(gate, breakage, monkeypatch):
    if breakage == "missing util":
        del gate.__utils__["airflow_store.store"]
    elif breakage == "junk setting":
        gate.__opts__["airflow_healing"]["rate_limit_events"] = "many"
    elif breakage == "unwritable state_dir":
        (gate.tmp / "file").write_text("x")
        gate.__opts__["airflow_healing"]["state_dir"] = str(gate.tmp / "file")
    else:
        def boom(self, parts, change):
            raise RuntimeError("disk on fire")
        monkeypatch.setattr(MODS["airflow_store"].Store, "update_json", boom)
    logged = []

    class Log:
        def exception(self, msg, *args):
            logged.append(msg % args)

    monkeypatch.setattr(gate, "log", Log())
    assert all(gate.admit("worker1") is True for _ in range(30))  # over the budget
    assert len(logged) == 30 and "'worker1'; event admitted" in logged[0]


# ------------------------------------------------------------------ reactor/health.sls
def _render(salt, data, tag="airflow/health/worker"):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROOT / "reactor")))
    return yaml.safe_load(env.get_template("health.sls").render(salt=salt, data=data, tag=tag))


def test_health_sls_asks_the_gate_with_the_sender_id():
    asked = []

    def admit(minion):
        asked.append(minion)
        return len(asked) == 1

    data = {"id": "worker1", "data": {"daemon": "worker", "status": "hung"}}
    first = _render({"airflow_gate.admit": admit}, data)
    args = first["airflow-remediate"]["runner.airflow.remediate"][0]["args"]
    assert {"minion": "worker1"} in args and {"daemon": "worker"} in args
    assert _render({"airflow_gate.admit": admit}, data) is None     # refused: no reaction
    assert asked == ["worker1", "worker1"]


def test_health_sls_without_the_gate_module_still_reacts():
    out = _render({}, {"id": "worker1", "data": {"daemon": "worker"}})
    assert "runner.airflow.remediate" in out["airflow-remediate"]
