"""No self-reported truth (issue 9): a decision about node X never rests only on what X says.

The scheduler heartbeat comes from the metastore (the db node), api-server health from the
load balancer's view, a failover candidate's api-server is checked there too. Same fakes as
test_runner.py (no Salt, fake clock)."""
from test_runner import HEALTHY_MASTER, STALE, _runtime_active, env  # noqa: F401

FRESH_M1 = {"status": "ok", "fresh": ["master1"], "stale_seconds": 15,
            "schedulers": [{"hostname": "master1", "age": 2}]}


def _handler(metastore, masters_say, check=None, lb=None, started=None):
    """metastore: the db node's heartbeat view; masters_say: what masters report."""
    def handler(minion, fun, args):
        if fun == "airflow_health.metastore_heartbeat":
            assert minion == "infra"  # only the db node is asked
            return metastore() if callable(metastore) else metastore
        if fun == "airflow_health.scheduler_heartbeat":
            return masters_say
        if fun == "airflow_health.service":
            return {"status": "dead"}
        if fun == "airflow_health.check":
            return (check or {}).get(minion, HEALTHY_MASTER)
        if fun == "airflow_health.backend_health":
            return {m: {"status": (lb or {}).get(m, "ok")} for m in ("master1", "master2")}
        if fun == "airflow_health.start" and started is not None:
            started.append(minion)
        return True
    return handler


def test_a_master_that_claims_the_scheduler_dead_is_overruled_by_the_metastore(env):
    # master1 (or anyone forging its events) says: no heartbeat, unit dead. The metastore
    # says master1's scheduler heartbeats: nothing is restarted, nothing moves.
    env.ops.handler = _handler(FRESH_M1, STALE)
    for reporter in ("master1", "master2"):
        res = env.rn.remediate(reporter, "scheduler", status="dead")
        assert res == {"result": "ignored", "reason": "heartbeat fresh"}
    assert not {"airflow_health.restart", "airflow_health.stop", "airflow_health.start"} \
        & set(env.ops.funs())
    assert _runtime_active(env) is None
    assert "airflow_health.scheduler_heartbeat" not in env.ops.funs()


def test_a_master_that_claims_its_heartbeat_fresh_cannot_hide_a_dead_scheduler(env):
    env.ops.handler = _handler(STALE, FRESH_M1)
    assert env.rn.remediate("master1", "scheduler") == {"result": "restarted"}


def test_without_a_db_node_the_judged_master_is_not_asked(env):
    # external metastore: no airflow-db in the record; master1 is judged, master2 reads
    env.roles_file.write_text('{"master1": ["airflow-master"], "master2": ["airflow-master"], '
                              '"worker1": ["airflow-worker"], "infra": ["airflow-lb"]}')
    asked = []

    def handler(minion, fun, args):
        if fun == "airflow_health.scheduler_heartbeat":
            asked.append(minion)
            return FRESH_M1
        return True
    env.ops.handler = handler
    env.rn.remediate("master1", "scheduler", status="dead")
    assert asked == ["master2"]


def test_a_candidate_the_load_balancer_sees_dead_is_not_elected(env):
    started = []
    env.ops.alive.discard("master1")
    env.ops.handler = _handler(STALE, STALE, lb={"master2": "down"}, started=started)
    res = env.rn.failover_scheduler("test", failed="master1")
    assert res["result"] == "no-candidate"
    assert res["candidates"]["master2"]["api-server"] == "dead"
    assert started == [] and _runtime_active(env) is None
