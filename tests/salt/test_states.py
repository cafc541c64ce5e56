"""Each role's highstate renders on a real master/minion and contains what matters."""
import pytest

DAEMONS_MASTER = ["api-server", "dag-processor", "triggerer", "scheduler"]


def _unit(states, name):
    return states[f"airflow-{name}-unit"]


def _watch(state):
    return [list(w.items())[0] for w in state.get("watch", [])]


@pytest.mark.parametrize("minion", ["master1", "master2"])
def test_master_highstate_has_daemons_units_and_common_part(highstate, minion):
    states = highstate(minion)
    for sid in ["airflow-user", "airflow-pip-install", "airflow-config", "airflow-dags-folder",
                "airflow-db-migrate", "airflow-auth-passwords-file", "airflow-systemd-daemon-reload"]:
        assert sid in states, sid
    assert states["airflow-config"]["mode"] == "0640"
    assert states["airflow-config"]["user"] == "airflow"
    assert states["airflow-auth-passwords-file"]["mode"] == "0600"
    for name in DAEMONS_MASTER:
        unit = _unit(states, name)
        assert unit["fun"] == "file.managed"
        assert unit["name"] == f"/etc/systemd/system/airflow-{name}.service"
        # TOFS: site overrides first, the shipped template last
        assert unit["source"][-1] == "salt://airflow/files/airflow-daemon.service.jinja"
    for name in ["api-server", "dag-processor", "triggerer"]:
        svc = states[f"airflow-{name}-service"]
        assert svc["fun"] == "service.running" and svc["enable"] is True
        assert {"sls": "airflow.migrate"} in svc["require"]
    # no healing/worker/lb/db states leak in
    assert "airflow-worker-service" not in states
    assert "airflow-lb-config" not in states and "airflow-db-service" not in states


def test_daemon_watches_only_what_affects_it(highstate):
    states = highstate("master1")
    api = _watch(states["airflow-api-server-service"])
    assert ("file", "airflow-api-server-unit") in api
    assert ("file", "airflow-config") in api
    assert ("cmd", "airflow-pip-install") in api
    assert ("file", "airflow-auth-passwords-file") in api
    trig = _watch(states["airflow-triggerer-service"])
    assert sorted(trig) == sorted([("file", "airflow-triggerer-unit"), ("file", "airflow-config"),
                                   ("cmd", "airflow-pip-install")])
    assert ("file", "airflow-scheduler-guard-script") in _watch(states["airflow-scheduler-service"])
    # only the worker's tasks reach the Task Execution API over HTTPS (the triggerer and the
    # dag-processor use it in-process): a new CA file restarts the worker alone
    assert ("file", "airflow-config-ca-cert") in _watch(highstate("worker1")["airflow-worker-service"])


def test_daemon_command_lines_carry_tuning(highstate):
    m = highstate("master1")
    assert _unit(m, "api-server")["context"]["command"] == "api-server --host 0.0.0.0 --port 8080 --workers 2"
    w = highstate("worker1")
    assert _unit(w, "worker")["context"]["command"] == "celery worker --concurrency 4 --queues default"
    assert m["airflow-scheduler-unit"]["context"]["exec_condition"] == \
        "/opt/airflow/venv/bin/python /opt/airflow/scheduler-guard.py"


def test_active_standby_scheduler_runs_only_on_active_master(highstate):
    m1, m2 = highstate("master1"), highstate("master2")
    assert m1["airflow-scheduler-service"]["fun"] == "service.running"
    assert m1["airflow-scheduler-service"]["enable"] is True
    assert m2["airflow-scheduler-service"]["fun"] == "service.dead"
    assert m2["airflow-scheduler-service"]["enable"] is False
    assert "airflow-scheduler-unit" in m2  # unit file exists for a quick takeover
    assert m2["airflow-scheduler-guard-script"]["context"]["mode"] == "active-standby"


def test_active_active_scheduler_runs_on_every_master(salt_cli):
    from conftest import parse_states

    ret = salt_cli.run("state.show_sls", "airflow.scheduler",
                       'pillar={"airflow": {"scheduler": {"mode": "active-active"}}}', minion_tgt="master*")
    assert ret.returncode == 0, ret
    assert sorted(ret.data) == ["master1", "master2"]
    for minion, data in ret.data.items():
        states = parse_states(data)
        assert states["airflow-scheduler-service"]["fun"] == "service.running", minion
        assert states["airflow-scheduler-guard-script"]["context"]["mode"] == "active-active"


def test_runtime_pillar_moves_the_active_scheduler(salt_cli):
    from conftest import parse_states

    ret = salt_cli.run("state.show_sls", "airflow.scheduler",
                       'pillar={"airflow": {"scheduler": {"active": "master2"}}}', minion_tgt="master2")
    assert ret.returncode == 0, ret
    assert parse_states(ret.data)["airflow-scheduler-service"]["fun"] == "service.running"


def test_migration_runs_once_per_version_on_the_active_master_only(highstate):
    mig1 = highstate("master1")["airflow-db-migrate"]
    assert mig1["fun"] == "cmd.run"
    assert "airflow db check-migrations -t 0" in mig1["name"]
    assert "airflow db migrate" in mig1["name"]
    assert mig1["creates"] == "/opt/airflow/.db-migrated-3.3.2"
    assert mig1["runas"] == "airflow"
    assert highstate("master2")["airflow-db-migrate"]["fun"] == "test.succeed_without_changes"


def test_install_is_pinned_and_idempotent(highstate):
    pip = highstate("worker1")["airflow-pip-install"]
    assert '"apache-airflow[celery,postgres]==3.3.2" --constraint /opt/airflow/constraints-3.3.2.txt' in pip["name"]
    assert ".airflow-install-spec" in pip["unless"]


def test_worker_highstate(highstate):
    states = highstate("worker1")
    svc = states["airflow-worker-service"]
    assert svc["fun"] == "service.running" and svc["enable"] is True
    assert "airflow-config" in states and "airflow-dags-folder" in states
    for absent in ["airflow-api-server-service", "airflow-scheduler-service", "airflow-auth-passwords-file",
                   "airflow-db-migrate"]:
        assert absent not in states


def test_infra_highstate_db_broker_lb(highstate):
    states = highstate("infra")
    hba = states["airflow-db-pg-hba"]
    assert "host    airflow    airflow    127.0.0.0/8    scram-sha-256" in hba["content"]
    assert "host    airflow_results    airflow_results    127.0.0.0/8    scram-sha-256" in hba["content"]
    assert "listen_addresses = '*'" in states["airflow-db-config"]["contents"]
    # passwords on psql's / rabbitmqctl's stdin (never argv): the formula's own state modules
    assert states["airflow-db-role"]["fun"] == "airflow_postgres.role_present"
    assert states["airflow-db-database"]["owner"] == "airflow"
    assert states["airflow-db-results-role"]["fun"] == "airflow_postgres.role_present"
    assert states["airflow-db-results-role"]["name"] == "airflow_results"
    assert states["airflow-db-results-database"]["owner"] == "airflow_results"
    assert states["airflow-broker-user"]["fun"] == "airflow_rabbitmq.user_present"
    assert states["airflow-broker-guest-absent"]["fun"] == "rabbitmq_user.absent"
    assert states["airflow-broker-guest-absent"]["name"] == "guest"
    assert states["airflow-broker-user"]["perms"] == [{"airflow": [".*", ".*", ".*"]}]
    assert states["airflow-broker-vhost"]["name"] == "airflow"
    assert states["airflow-lb-config"]["check_cmd"] == "haproxy -c -f"
    assert states["airflow-lb-service"]["reload"] is True
    pem = states["airflow-lb-tls-pem"]
    assert (pem["name"], pem["user"], pem["mode"], pem["show_changes"]) == \
        ("/etc/haproxy/airflow.pem", "root", "0600", False)
    assert {"file": "airflow-lb-tls-pem"} in states["airflow-lb-config"]["require"]  # haproxy -c loads it
    assert {"file": "airflow-lb-tls-pem"} in states["airflow-lb-service"]["watch"]  # a new certificate reloads
    # no Airflow daemon here, and every state ID is the formula's own (airflow-<sls>-<what>)
    for name in DAEMONS_MASTER + ["worker", "flower"]:
        assert f"airflow-{name}-service" not in states and f"airflow-{name}-unit" not in states
    assert all(sid.startswith("airflow-") for sid in states), sorted(states)


def test_external_database_installs_nothing(salt_cli):
    from conftest import parse_states

    ret = salt_cli.run("state.show_sls", "airflow.db",
                       'pillar={"airflow": {"database": {"external": true, "host": "rds.example"}}}',
                       minion_tgt="infra")
    assert ret.returncode == 0, ret
    states = parse_states(ret.data)
    assert list(states) == ["airflow-db-external"]
