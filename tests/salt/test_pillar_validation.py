"""Bad pillar fails the render (map.jinja / hosts.jinja through airflow_pillar), naming the key.

Real master and minions (tests/salt/conftest.py); bad values come as CLI pillar overrides,
merged over the real pillar like a site pillar would be.
"""
import json

from conftest import TEST_SECRETS, parse_states


def _pillar(airflow):
    return "pillar=" + json.dumps({"airflow": airflow})


def _out(ret):
    return ret.stdout + ret.stderr


def test_default_pillar_renders_worker_command(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.worker", minion_tgt="worker1")
    assert ret.returncode == 0, ret
    text = json.dumps(ret.data)
    assert "celery worker --concurrency 4 --queues default" in text


def test_good_override_renders(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.worker",
                       _pillar({"worker": {"concurrency": 16, "queues": ["default", "heavy"]}}),
                       minion_tgt="worker1")
    assert ret.returncode == 0, ret
    assert "celery worker --concurrency 16 --queues default,heavy" in json.dumps(ret.data)


def test_bad_values_fail_show_sls_naming_every_key(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.worker",
                       _pillar({"worker": {"concurrency": "many", "queues": "default"},
                                "scheduler": {"mode": "active_standby"},
                                "healing": {"enabled": "false"}}),
                       minion_tgt="worker1")
    assert ret.returncode != 0
    out = _out(ret)
    assert "Bad pillar (4 errors)" in out, out
    assert "airflow:worker:concurrency must be an integer >= 1, not 'many'" in out
    assert "airflow:worker:queues must be a list of one or more non-empty strings, not 'default'" in out
    assert "airflow:scheduler:mode must be one of active-standby, active-active, not 'active_standby'" in out
    assert "airflow:healing:enabled must be a boolean (true or false, unquoted), not 'false'" in out
    assert "d,e,f,a,u,l,t" not in out


def test_bad_value_fails_state_apply_test_mode(salt_cli):
    ret = salt_cli.run("state.apply", "airflow.worker", "test=True",
                       _pillar({"worker": {"concurrency": "many"}}), minion_tgt="worker1", _timeout=180)
    assert ret.returncode != 0
    out = _out(ret)
    assert "airflow:worker:concurrency must be an integer >= 1, not 'many'" in out, out
    assert "--concurrency many" not in out


def test_cidr_must_match_a_node_address(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.healing", _pillar({"network": {"cidr": "10.99.0.0/24"}}),
                       minion_tgt="infra")
    assert ret.returncode != 0
    assert "airflow:network:cidr 10.99.0.0/24 must contain an address of this node (its addresses: " \
        in _out(ret), _out(ret)
    ret = salt_cli.run("state.show_sls", "airflow.healing", _pillar({"network": {"cidr": "10.99.0.1/24"}}),
                       minion_tgt="infra")
    assert ret.returncode != 0
    assert "airflow:network:cidr must be a network in CIDR notation" in _out(ret)


def test_scheduler_active_must_be_a_master_of_the_mine(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.scheduler", _pillar({"scheduler": {"active": "worker1"}}),
                       minion_tgt="master1")
    assert ret.returncode != 0
    assert "airflow:scheduler:active must be one of the airflow-master minions (master1, master2), " \
        "not 'worker1'" in _out(ret), _out(ret)
    ret = salt_cli.run("state.show_sls", "airflow.scheduler", _pillar({"scheduler": {"active": "master2"}}),
                       minion_tgt="master1")
    assert ret.returncode == 0, ret
    states = parse_states(ret.data)
    assert states["airflow-scheduler-service"]["fun"] == "service.dead", states["airflow-scheduler-service"]


def test_secret_values_never_in_the_message(salt_cli):
    ret = salt_cli.run("state.show_sls", "airflow.worker",
                       _pillar({"config": {"database": "postgresql://u:leaked-pw-xyz@h/d"},
                                "worker": {"concurrency": 0}}),
                       minion_tgt="worker1")
    assert ret.returncode != 0
    out = _out(ret)
    assert "airflow:config:database must be a mapping, not a str" in out, out
    assert "leaked-pw-xyz" not in out
    for value in TEST_SECRETS["database"].values():
        assert value not in out
