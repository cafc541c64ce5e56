"""Unit tests of the pure decision core _utils/airflow_decide.py: every branch, no clock."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(rel, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


T = _load("_utils/airflow_daemons.py", "core_test_airflow_daemons")  # the table
D = _load("_utils/airflow_decide.py", "core_test_airflow_decide")

CACHE = {
    "master1": {"roles": ["airflow-master"], "host": "master1"},
    "master2": {"roles": "airflow-master"},
    "worker1": {"roles": ["airflow-worker"]},
    "infra": {"roles": ["airflow-db", "airflow-broker", "airflow-lb"]},
    "odd": {"roles": 7},
}


def test_virtual():
    assert D.__virtual__() == "airflow_decide"


# ------------------------------------------------------------------ settings
def test_settings_defaults_and_override():
    conf = D.settings({"airflow_healing": {"max_attempts": "5", "state_dir": "/tmp/x/"}})
    assert conf["max_attempts"] == 5 and conf["window"] == 600.0
    assert conf["runtime_pillar"] == "/tmp/x/pillar/airflow_runtime.sls"
    assert D.settings({})["state_dir"] == "/var/lib/airflow-salt"
    assert D.settings(None)["dry_run"] is False
    conf = D.settings({"airflow_healing": {"runtime_pillar": "/p.sls"}})
    assert conf["runtime_pillar"] == "/p.sls"


def test_settings_drop_retired_keys():
    conf = D.settings({"airflow_healing": {"heartbeat_stale": 15, "scheduler_start_grace": 60}})
    assert "heartbeat_stale" not in conf and "scheduler_start_grace" not in conf


@pytest.mark.parametrize("value,expected", [
    (True, True), (False, False), (1, True), (0, False), ("false", False), ("False", False),
    ("no", False), ("off", False), ("0", False), ("true", True), (" Yes ", True), ("on", True)])
def test_parse_bool_strict(value, expected):
    assert D.parse_bool(value, "dry_run") is expected


@pytest.mark.parametrize("value", ["maybe", "", None, 2, 1.0, [], "nein"])
def test_parse_bool_junk_names_the_key(value):
    with pytest.raises(ValueError, match="airflow_healing:dry_run"):
        D.parse_bool(value, "dry_run")


def test_settings_string_false_is_not_truthy():
    assert D.settings({"airflow_healing": {"dry_run": "false"}})["dry_run"] is False
    with pytest.raises(ValueError, match="airflow_healing:require_deploy"):
        D.settings({"airflow_healing": {"require_deploy": "sure"}})


@pytest.mark.parametrize("key,value", [("window", "soon"), ("lb_quiet", True),
                                       ("max_attempts", -1), ("probe_timeout", None)])
def test_settings_junk_numbers(key, value):
    with pytest.raises(ValueError, match=f"airflow_healing:{key}"):
        D.settings({"airflow_healing": {key: value}})


def test_settings_audit_rotation_knobs():
    conf = D.settings({})
    assert (conf["audit_max_bytes"], conf["audit_keep"]) == (10 * 1024 * 1024, 5)
    conf = D.settings({"airflow_healing": {"audit_max_bytes": "65536", "audit_keep": 2}})
    assert (conf["audit_max_bytes"], conf["audit_keep"]) == (65536, 2)
    for key, value in (("audit_keep", 0), ("audit_keep", "many"), ("audit_max_bytes", 100),
                       ("audit_max_bytes", True), ("audit_max_bytes", "10M")):
        with pytest.raises(ValueError, match=f"airflow_healing:{key}"):
            D.settings({"airflow_healing": {key: value}})


def test_settings_shape_and_mode():
    with pytest.raises(ValueError, match="mapping"):
        D.settings({"airflow_healing": ["x"]})
    with pytest.raises(ValueError, match="default_mode"):
        D.settings({"airflow_healing": {"default_mode": "both"}})


# ------------------------------------------------------------------ ids, roles, requests
def test_ids_and_roles():
    assert D.safe_id(T, "worker1") == "worker1" and D.safe_id(T, "a;b") == "?"
    assert D.safe_id(T, None) == "?"
    assert D.valid_ids(T, ["m1", "x y", 3, "m2"]) == ["m1", "m2"]
    assert D.valid_ids(T, "m1") == [] and D.valid_ids(T, None) == []
    assert D.grain_roles({"roles": "airflow-lb"}) == ["airflow-lb"]
    assert D.grain_roles({"roles": ["a", 1]}) == ["a"]
    assert D.grain_roles({"roles": 7}) == [] and D.grain_roles(None) == []
    assert D.grain_roles("junk") == []
    assert D.minions_with_role(CACHE, "airflow-master") == ["master1", "master2"]
    assert D.minions_with_role(None, "airflow-master") == []


@pytest.mark.parametrize("tag,expected", [
    ("salt/beacon/worker1/airflow_health/worker", "worker1"),
    ("salt/beacon/", ""),
    ("salt/beacon", None),
    ("airflow/health/worker", None),
    (None, None), (7, None)])
def test_tag_minion(tag, expected):
    assert D.tag_minion(tag) == expected


def test_claimed_status():
    assert D.claimed_status("hung") == "hung"
    assert D.claimed_status("hung; rm") is None and D.claimed_status(None) is None


@pytest.mark.parametrize("minion,daemon,tag,ok,why,detail", [
    ("worker1", "worker", None, True, "ok", None),
    ("worker1", "worker", "worker1", True, "ok", None),
    ("infra", "haproxy", None, True, "ok", None),
    ("master2", "scheduler", None, True, "ok", None),              # roles grain as a string
    ("worker1", "scheduler", None, False, "role airflow-master", None),  # spoofed role
    ("master1", "worker", None, False, "role airflow-worker", None),
    ("worker1", "worker", "master1", False, "does not match", None),   # tag names another
    ("ghost", "worker", None, False, "grains cache", None),
    ("worker1;reboot", "worker", None, False, "malformed", "invalid minion id"),
    ("../etc", "worker", None, False, "malformed", "invalid minion id"),
    (None, "worker", None, False, "malformed", "invalid minion id"),
    ("worker1", "worker", "", False, "malformed", "invalid minion id in the tag"),
    ("worker1", "worker", "a b", False, "malformed", "invalid minion id in the tag"),
    ("worker1", "sshd", None, False, "malformed", "unknown daemon"),
    ("worker1", "worker && rm", None, False, "malformed", "unknown daemon"),
    ("worker1", ["worker"], None, False, "malformed", "unknown daemon"),
])
def test_validate_request(minion, daemon, tag, ok, why, detail):
    res, reason, det = D.validate_request(T, minion, daemon, tag, CACHE)
    assert res is ok and why in reason and det == detail


def test_remediation_route_by_probe_kind():
    assert D.remediation_route(T, "scheduler") == "scheduler"
    assert D.remediation_route(T, "api-server") == "lb"
    assert D.remediation_route(T, "worker") == "service"
    assert D.remediation_route(T, "postgresql") == "service"


@pytest.mark.parametrize("maint,deployed,require,expected", [
    (True, True, True, "maintenance"), (False, False, True, "not deployed"),
    (False, False, False, None), (False, True, True, None)])
def test_gate(maint, deployed, require, expected):
    assert D.gate(maint, deployed, require) == expected


# ------------------------------------------------------------------ damping, services
def test_damping_counts_attempts_in_window_only():
    now = 10_000
    attempts = [now - 700, now - 500, now - 100, "junk", None, True]   # old, 2 in, unreadable
    assert D.damping(attempts, now, 3, 600) == (True, 2)
    attempts.append(now - 1)
    assert D.damping(attempts, now, 3, 600) == (False, 3)
    # window slides: 400 s later only two remain
    assert D.damping(attempts, now + 400, 3, 600) == (True, 2)
    assert D.damping(None, now, 3, 600) == (True, 0)
    assert D.damping("junk", now, 3, 600) == (True, 0)
    assert D.damping((now,), now, 1, 600) == (False, 1)


@pytest.mark.parametrize("daemon,probe,action", [
    ("worker", None, "unreachable"), ("worker", "junk", "unreachable"),
    ("worker", {"status": "ok"}, "ignore"), ("worker", {"status": "dead"}, "restart"),
    ("worker", {"status": "hung"}, "kill-restart"),
    ("worker", {"status": "restarting"}, "wait"), ("worker", {"status": "unknown"}, "wait"),
    ("worker", {"status": "absent"}, "wait"), ("worker", {"status": "error"}, "wait"),
    ("worker", {}, "wait"),
    ("postgresql", {"status": "dead"}, "restart"), ("postgresql", {"status": "ok"}, "ignore"),
    ("postgresql", {"status": "hung"}, "wait"),       # no liveness probe beyond systemd
    ("rabbitmq", {"status": "restarting"}, "wait"),
])
def test_decide_service(daemon, probe, action):
    assert D.decide_service(T, daemon, probe) == action


def test_probe_ok():
    assert D.probe_ok({"status": "ok"}) and not D.probe_ok({"status": "hung"})
    assert not D.probe_ok(None)


# ------------------------------------------------------------------ scheduler
def test_scheduler_placement():
    masters = ["master1", "master2"]
    sp = D.scheduler_placement
    assert sp("master2", {"active": "master1"}, masters, "active-standby", T) == (
        "active-standby", "master2")                                       # runtime wins
    assert sp(None, {"active": "master1", "mode": "active-active"}, masters,
              "active-standby", T) == ("active-active", "master1")
    assert sp(None, {"active": "", "mode": "weird"}, masters, "active-standby", T) == (
        "active-standby", "master1")                                       # first master
    assert sp(None, {"active": "x;y"}, ["master2"], "active-standby", T)[1] == "master2"
    assert sp(None, None, [], "active-standby", T) == ("active-standby", None)


@pytest.mark.parametrize("mode,hb,needed", [
    ("active-standby", {"status": "stale"}, True), ("active-standby", {"status": "none"}, True),
    ("active-standby", {"status": "ok"}, False), ("active-standby", None, False),
    ("active-active", {"status": "stale"}, False)])
def test_needs_active_probe(mode, hb, needed):
    assert D.needs_active_probe(mode, hb) is needed


STALE = {"status": "stale", "newest": {"hostname": "master1", "age": 120}}
AS = "active-standby"


@pytest.mark.parametrize("mode,hb,active,reach,unit,allowed,expected", [
    ("active-active", STALE, "master1", True, {"status": "dead"}, True, "ignore-active-active"),
    (AS, None, "master1", True, None, True, "unreachable"),               # reporter silent
    (AS, "junk", "master1", True, None, True, "unreachable"),
    (AS, {"status": "ok"}, "master1", True, {"status": "ok"}, True, "healthy"),
    (AS, {"status": "error"}, "master1", False, None, True, "unknown"),   # metastore unreadable
    (AS, STALE, "master1", False, None, True, "failover"),               # node gone
    (AS, STALE, None, False, None, True, "failover"),                    # nobody active
    (AS, STALE, "master1", True, {"status": "restarting"}, True, "wait"),  # systemd on it
    (AS, STALE, "master1", True, {"status": "ok", "starting": True}, True, "wait"),  # grace
    (AS, {"status": "none"}, "master1", True, {"status": "ok", "starting": True}, True, "wait"),
    (AS, STALE, "master1", True, {"status": "ok", "starting": False}, True, "restart"),  # hung
    (AS, STALE, "master1", True, {"status": "ok", "starting": None}, True, "restart"),
    (AS, STALE, "master1", True, {"status": "dead"}, True, "restart"),   # failed unit
    (AS, STALE, "master1", True, None, True, "restart"),                 # no answer about it
    (AS, STALE, "master1", True, {"status": "dead"}, False, "failover-damped"),
    (AS, STALE, "master1", True, {"status": "ok"}, False, "failover-damped"),
])
def test_decide_scheduler(mode, hb, active, reach, unit, allowed, expected):
    assert D.decide_scheduler(mode, hb, active, reach, unit, allowed) == expected


def test_node_names_and_host_matches():
    names = D.node_names("master1", {"host": "node-a", "fqdn": "node-a.lab", "nodename": 3})
    assert names == {"master1", "node-a", "node-a.lab"}
    assert D.node_names(None) == set() and D.node_names("m", "junk") == {"m"}
    assert D.host_matches("master1", {"master1"})
    assert D.host_matches("master1.lab.local", {"master1"})
    assert D.host_matches("node-a", names)
    assert not D.host_matches("master2", {"master1"})
    assert not D.host_matches(None, {"master1"}) and not D.host_matches(5, {"master1"})


def test_fresh_hosts():
    assert D.fresh_hosts({"fresh": ["a", 1, "b"]}) == ["a", "b"]
    assert D.fresh_hosts({"fresh": "a"}) == [] and D.fresh_hosts(None) == []


@pytest.mark.parametrize("hb,manual,needed", [
    ({"status": "ok", "fresh": ["master2"]}, True, True),     # manual: always
    (None, False, True),                                       # cannot tell
    ({"status": "stale", "fresh": []}, False, True),
    ({"status": "ok", "fresh": ["master1"]}, False, True),    # the failed one still heartbeats
    ({"status": "ok", "fresh": ["master2"]}, False, False),   # it already moved
])
def test_failover_needed(hb, manual, needed):
    assert D.failover_needed(hb, {"master1"}, manual) is needed


def test_candidate_and_election():
    assert D.candidate({"api-server": {"status": "ok"}, "dag-processor": "junk"}) == {
        "present": True, "api-server": "ok", "dag-processor": None}
    assert D.candidate(None) == {"present": True, "api-server": None, "dag-processor": None}
    healthy = {"present": True, "api-server": "ok", "dag-processor": "ok"}
    cands = {
        "master3": healthy,
        "master2": healthy,
        "master0": {"present": True, "api-server": "dead", "dag-processor": "ok"},
        "master1": healthy,
        "masterX": {"present": False, "api-server": "ok", "dag-processor": "ok"},
        "masterY": None,
    }
    assert D.elect_master(cands, failed="master1") == "master2"
    assert D.elect_master(dict(reversed(list(cands.items()))), failed="master1") == "master2"
    assert D.elect_master({"master1": healthy}, failed="master1") is None
    assert D.elect_master({}, failed="master1") is None and D.elect_master(None) is None


@pytest.mark.parametrize("stop,outcome", [
    ({"result": True}, "fenced"), (None, "unreachable"), ({"result": False}, "failed"),
    ("Minion did not return. [No response]", "unreachable"), (True, "unreachable")])
def test_fencing_outcome(stop, outcome):
    assert D.fencing_outcome(stop) == outcome


def test_fence_wait_until_uses_the_reported_staleness():
    assert D.fence_wait_until(100.0, {"stale_seconds": 15}) == 120.0
    assert D.fence_wait_until(100.0, {"stale_seconds": True}) == 100.0
    assert D.fence_wait_until(100.0, {}) == 100.0 and D.fence_wait_until(100.0, None) == 100.0


OLD = {"master1", "node-a"}


@pytest.mark.parametrize("fence,hb,waited,verdict", [
    ("fenced", {"status": "ok", "fresh": ["master1"]}, False, "start"),
    ("fenced", {"status": "error"}, False, "start"),             # stopped+disabled: safe
    ("unreachable", {"status": "error"}, False, "refuse"),         # cannot verify
    ("unreachable", None, False, "refuse"),
    ("failed", {"status": "error"}, False, "refuse"),
    ("unreachable", {"status": "stale", "fresh": []}, False, "start"),
    ("unreachable", {"status": "none", "fresh": []}, False, "start"),
    ("failed", {"status": "stale", "fresh": []}, False, "start"),  # answered, but silent
    ("unreachable", {"status": "ok", "fresh": ["master1"]}, False, "wait"),  # vanished just now
    ("unreachable", {"status": "ok", "fresh": ["node-a.lab"]}, False, "wait"),  # old_names
    ("unreachable", {"status": "ok", "fresh": ["master1"]}, True, "refuse"),   # still alive!
    ("unreachable", {"status": "ok", "fresh": ["master3"]}, False, "refuse"),  # someone else
    ("unreachable", {"status": "ok", "fresh": ["master1", "master3"]}, False, "refuse"),
    ("failed", {"status": "ok", "fresh": ["master1"]}, False, "refuse"),       # not fenced
])
def test_scheduler_start_verdict(fence, hb, waited, verdict):
    assert D.scheduler_start_verdict(fence, hb, OLD, waited) == verdict


def test_runs_scheduler():
    assert D.runs_scheduler({"fresh": ["master2.lab"]}, {"master2"})
    assert not D.runs_scheduler({"fresh": ["master1"]}, {"master2"})
    assert not D.runs_scheduler(None, {"master2"})


@pytest.mark.parametrize("mode,active,minion,fence", [
    ("active-standby", "master1", "master2", True), ("active-standby", "master1", "master1", False),
    ("active-active", "master1", "master2", False), ("active-standby", None, "master2", False)])
def test_must_fence_returning(mode, active, minion, fence):
    assert D.must_fence_returning(mode, active, minion) is fence


@pytest.mark.parametrize("mode,active,lost,expected", [
    ("active-standby", "master1", ["master1"], True), ("active-standby", "master1", ["m2"], False),
    ("active-active", "master1", ["master1"], False), ("active-standby", None, [None], False),
    ("active-standby", "master1", None, False)])
def test_presence_failover(mode, active, lost, expected):
    assert D.presence_failover(mode, active, lost) is expected


def test_runtime_pillar_roundtrip():
    text = D.runtime_pillar_text(T, "master2")
    assert "airflow:\n  scheduler:\n    active: master2\n" in text
    assert D.parse_runtime_pillar(T, text) == "master2"
    with pytest.raises(ValueError):
        D.runtime_pillar_text(T, "master2\nairflow: evil")
    assert D.parse_runtime_pillar(T, "airflow:\n  scheduler:\n    active: a;b\n") is None
    assert D.parse_runtime_pillar(T, "active: master1\n") is None      # not nested: not ours
    assert D.parse_runtime_pillar(T, "airflow:\n  scheduler:\n    mode: x\n") is None
    assert D.parse_runtime_pillar(T, None) is None


# ------------------------------------------------------------------ load balancer
def test_starts_burst():
    assert D.starts_burst(None, None)
    assert D.starts_burst(5.0, 6.0)        # the last run covered the pending burst
    assert not D.starts_burst(7.0, 6.0)    # a burst is pending since 7.0
    assert not D.starts_burst(7.0, None)


def test_debounce_decision_waits_for_quiet():
    # no request stamp (a manual call that lost its file): run
    assert D.debounce_decision(10.0, None, None, None, 2.0, 10.0) == ("run", 0.0)
    # the last request came 0.5 s ago: wait the rest of the quiet period
    assert D.debounce_decision(10.5, 10.0, 10.0, None, 2.0, 10.0) == ("wait", 1.5)
    assert D.debounce_decision(12.0, 10.0, 10.0, None, 2.0, 10.0) == ("run", 0.0)
    assert D.debounce_decision(10.0, 10.0, 10.0, 9.0, 0, 10.0) == ("run", 0.0)   # quiet 0


def test_debounce_decision_max_wait():
    # a steady stream: quiet never comes, the burst runs max_wait after its first request
    assert D.debounce_decision(19.0, 18.9, 10.0, 5.0, 2.0, 10.0) == ("wait", 1.0)
    assert D.debounce_decision(20.0, 19.9, 10.0, 5.0, 2.0, 10.0) == ("run", 0.0)
    assert D.debounce_decision(20.0, 19.9, 10.0, None, 2.0, 10.0) == ("run", 0.0)
    # max_wait 0: no maximum
    assert D.debounce_decision(20.0, 19.9, 10.0, 5.0, 2.0, 0) == ("wait", pytest.approx(1.9))
    # a first stamp older than the last run belongs to a burst that run covered: no deadline
    assert D.debounce_decision(20.0, 19.9, 10.0, 15.0, 2.0, 10.0)[0] == "wait"
    assert D.debounce_decision(20.0, 19.9, 10.0, 10.0, 2.0, 10.0)[0] == "wait"


def test_debounce_decision_future_stamps_are_bounded():
    # the clock went back an hour: the leader waits one quiet period, not an hour
    assert D.debounce_decision(100.0, 3700.0, 3700.0, None, 2.0, 10.0) == ("wait", 2.0)
    assert D.debounce_decision(100.0, 3700.0, 3600.0, 50.0, 2.0, 1.0) == ("wait", 1.0)


def test_lb_pending():
    assert not D.lb_pending(None, None, 10.0)
    assert not D.lb_pending(None, 5.0, 10.0)
    assert D.lb_pending(5.0, None, 10.0)          # never ran
    assert D.lb_pending(6.0, 5.0, 10.0)           # came after the run started
    assert not D.lb_pending(5.0, 5.0, 10.0)       # the run started with it: covered
    assert not D.lb_pending(4.0, 5.0, 10.0)
    assert D.lb_pending(4.0, 50.0, 10.0)          # run start in the future: covers nothing


def test_api_health():
    results = {"master1": {"status": "ok"}, "master2": {"status": "down"},
               "master3": {"status": "error"}, "master4": "junk"}
    assert D.api_health(results, ["master1", "master2", "master3", "master4", "master5"]) == {
        "master1": "ok", "master2": "dead", "master3": None, "master4": None, "master5": None}
    assert D.api_health(None, None) == {}


def test_lb_runtime_actions():
    backends = [{"name": "master1", "status": "UP"}, {"name": "master2", "status": "DOWN"},
                {"name": "master3", "status": "MAINT"}, {"name": "master4", "status": "MAINT"},
                {"name": "master5", "status": "UP"}, {"name": "x;y", "status": "UP"}, "junk",
                {"name": "master6", "status": None}]
    health = {"master1": "ok", "master2": "dead", "master3": "ok", "master4": "ok",
              "master5": None, "x;y": "dead", "master6": "dead"}
    assert D.lb_runtime_actions(T, backends, health, drained={"master4"}) == [
        ("master2", "maint"), ("master3", "ready"), ("master6", "maint")]
    # never maint the last healthy server, never act when salt cannot see anyone
    assert D.lb_runtime_actions(T, [{"name": "master1", "status": "UP"}],
                                {"master1": "dead"}) == []
    assert D.lb_runtime_actions(T, backends[:2], {"master1": None, "master2": None}) == []
    assert D.lb_runtime_actions(T, {"status": "error"}, health) == []   # not a list
    assert D.lb_runtime_actions(T, backends, None) == []
    # already in MAINT and dead: nothing to do
    assert D.lb_runtime_actions(T, [{"name": "master3", "status": "MAINT"}],
                                {"master3": "dead", "master1": "ok"}) == []


def test_sessions_of():
    rows = [{"name": "master2", "scur": 3}, {"name": "master2", "scur": "x"},
            {"name": "master1", "scur": 9}, "junk", {"name": "master2", "scur": None}]
    assert D.sessions_of(rows, "master2") == 3
    assert D.sessions_of({"status": "error"}, "master2") == 0 and D.sessions_of(None, "m") == 0


def test_lb_apply_ok():
    assert D.lb_apply_ok({"infra": {}}, ["infra"])
    assert not D.lb_apply_ok({"infra": "ERROR"}, ["infra"])
    assert not D.lb_apply_ok({}, ["infra"])
    assert D.lb_apply_ok({}, []) and D.lb_apply_ok(None, None)


# ---------------------------------------------------------------- dependencies, split, reconcile
def test_dependency_down_and_status():
    health = {"postgresql": "dead", "rabbitmq": "ok"}
    assert D.dependency_down(T, "worker", health) == "postgresql"
    assert D.dependency_down(T, "flower", health) is None
    assert D.dependency_down(T, "scheduler", {"postgresql": None}) is None  # no evidence
    assert D.dependency_down(T, "postgresql", health) is None and D.dependency_down(
        T, "worker", None) is None
    assert D.dependency_status({"infra": {"status": "ok"}}, ["infra"]) == "ok"
    assert D.dependency_status({"infra": {"status": "dead"}, "db2": "x"}, ["infra", "db2"]) == "dead"
    assert D.dependency_status({}, ["infra"]) == "dead"  # the db node does not answer
    assert D.dependency_status(None, []) is None


def test_a_dependency_that_just_came_back_is_settling():
    up = lambda s: {"status": "ok", "unit": {"uptime": s}}  # noqa: E731
    assert D.dependency_status({"infra": up(3.0)}, ["infra"], settle=35) == "settling"
    assert D.dependency_status({"infra": up(35.0)}, ["infra"], settle=35) == "ok"
    assert D.dependency_status({"infra": up(3.0)}, ["infra"]) == "ok"          # no settle asked
    # one long-up node serves: settled; an uptime that is no number is no evidence
    assert D.dependency_status({"a": up(3.0), "b": up(900.0)}, ["a", "b"], settle=35) == "ok"
    for junk in (None, "3", True, -1, {"uptime": 1}):
        assert D.dependency_status({"infra": up(junk)}, ["infra"], settle=35) == "ok", junk
    assert D.dependency_status({"infra": {"status": "ok", "unit": "x"}}, ["infra"], settle=35) == "ok"
    # settling blocks the kill of a hung daemon only, never the start of a dead one
    health = {"postgresql": "ok", "rabbitmq": "settling"}
    assert D.dependency_down(T, "worker", health) is None
    assert D.dependency_down(T, "worker", health, action="restart") is None
    assert D.dependency_down(T, "worker", health, action="kill-restart") == "rabbitmq"
    both = {"postgresql": "dead", "rabbitmq": "settling"}
    for action in (None, "restart"):
        assert D.dependency_down(T, "worker", both, action=action) == "postgresql"
    # a kill is blocked by both: the first of the table's needs names it
    assert D.dependency_down(T, "worker", both, action="kill-restart") == T.get("worker")["needs"][0]


def test_split_targets():
    names = {"master1": {"master1", "master1.lab"}, "master2": {"master2"}}
    hb = {"status": "ok", "fresh": ["master1.lab", "master2"]}
    assert D.split_targets("active-standby", "master2", hb, names) == ["master1"]
    assert D.split_targets("active-standby", "master1", hb, names) == ["master2"]
    assert D.split_targets("active-standby", "master2", {"fresh": ["master2"]}, names) == []
    assert D.split_targets("active-active", "master2", hb, names) == []
    assert D.split_targets("active-standby", None, hb, names) == []
    assert D.split_targets("active-standby", "master2", None, names) == []


def test_reconcile_plan():
    roles = {"master1": ["airflow-master"], "master2": ["airflow-master"],
             "worker1": ["airflow-worker"], "bad id": ["airflow-worker"]}
    ok = {"status": "ok", "enabled": True}
    units = {
        "master1": {"scheduler": {"status": "dead", "enabled": False}, "api-server": ok,
                    "triggerer": {"status": "dead"}, "dag-processor": {"status": "restarting"}},
        "master2": {"scheduler": {"status": "dead", "enabled": True}, "api-server": ok},
        "worker1": {"worker": {"status": "dead"}, "scheduler": {"status": "dead"}, "x": "junk"},
        "bad id": {"worker": {"status": "dead"}},
        "infra": "no answer",
    }
    assert D.reconcile_plan(T, "active-standby", "master1", units, roles) == [
        ("master1", "scheduler", "scheduler"), ("master1", "triggerer", "remediate"),
        ("master2", "scheduler", "fence"), ("worker1", "worker", "remediate")]
    units["master2"]["scheduler"] = {"status": "ok", "enabled": False}
    units["master1"]["scheduler"] = ok
    assert D.reconcile_plan(T, "active-standby", "master1", units, roles)[0] == (
        "master1", "triggerer", "remediate")
    assert ("master2", "scheduler", "fence") in D.reconcile_plan(
        T, "active-standby", "master1", units, roles)
    units["master2"]["scheduler"] = {"status": "dead", "enabled": False}
    assert ("master2", "scheduler", "fence") not in D.reconcile_plan(
        T, "active-standby", "master1", units, roles)
    # active-active: every scheduler is an ordinary daemon
    assert ("master2", "scheduler", "remediate") in D.reconcile_plan(
        T, "active-active", "master1", units, roles)
    assert D.reconcile_plan(T, "active-standby", "master1", None, None) == []
# ------------------------------------------------------------------ rate limiting
def test_rate_limit_fixed_window():
    bucket, verdicts = None, []
    for i in range(25):
        bucket, verdict = D.rate_limit(bucket, 100.0 + i * 0.1, 20, 10)
        verdicts.append(verdict)
    assert verdicts == ["allow"] * 20 + ["audit"] + ["drop"] * 4   # one audit per window
    assert bucket == {"start": 100.0, "count": 25, "previous_dropped": 0}
    # the window ends: a new one starts, reporting what the previous one dropped
    bucket, verdict = D.rate_limit(bucket, 110.0, 20, 10)
    assert verdict == "allow" and bucket == {"start": 110.0, "count": 1, "previous_dropped": 5}
    bucket, verdict = D.rate_limit(bucket, 111.0, 20, 10)
    assert verdict == "allow" and bucket["count"] == 2 and bucket["previous_dropped"] == 5


def test_rate_limit_junk_disabled_and_clock_back():
    assert D.rate_limit("junk", 5.0, 2, 10) == ({"start": 5.0, "count": 1,
                                                 "previous_dropped": 0}, "allow")
    assert D.rate_limit({"start": 5.0, "count": "x"}, 6.0, 2, 10)[0]["count"] == 1
    assert D.rate_limit({"start": True, "count": 3}, 6.0, 2, 10)[0]["start"] == 6.0
    # a clock that went back starts a new window
    assert D.rate_limit({"start": 50.0, "count": 9}, 6.0, 2, 10) == (
        {"start": 6.0, "count": 1, "previous_dropped": 7}, "allow")
    # 0: no limit, the bucket is left as it was
    assert D.rate_limit({"start": 1.0, "count": 99}, 2.0, 0, 10) == (
        {"start": 1.0, "count": 99}, "allow")
    assert D.rate_limit(None, 2.0, 5, 0) == ({}, "allow")
    assert D.rate_limit({"start": 1.0, "count": 1}, 2.0, 1, 10)[1] == "audit"


def test_systemd_restarts_counts_up_only():
    units = {"worker1": {"worker": {"status": "ok", "n_restarts": 2}},
             "master1": {"scheduler": {"status": "ok", "n_restarts": 0},
                         "api-server": {"status": "ok"}},                 # older module: no count
             "bad id!": {"worker": {"n_restarts": 9}}}
    seen, restarted = D.systemd_restarts(T, None, units)
    assert restarted == [("worker1", "worker", 0, 2)]                     # first pass: since 0
    assert seen == {"worker1/worker": 2, "master1/scheduler": 0}
    assert D.systemd_restarts(T, seen, units) == (seen, [])              # nothing new: silent
    units["worker1"]["worker"]["n_restarts"] = 3                         # the watchdog again
    seen, restarted = D.systemd_restarts(T, seen, units)
    assert restarted == [("worker1", "worker", 2, 3)]
    units["worker1"]["worker"]["n_restarts"] = 0                         # a manual restart
    seen, restarted = D.systemd_restarts(T, seen, units)
    assert restarted == [] and seen["worker1/worker"] == 0
    # junk counts and unknown daemons are left out; an unanswered node keeps its count
    units = {"worker1": {"worker": {"n_restarts": True}, "sshd": {"n_restarts": 4}}}
    assert D.systemd_restarts(T, seen, units) == (seen, [])
