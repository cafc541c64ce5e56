"""Files as Salt renders them on the minions (real pillar, real mine), secrets per role."""
import configparser
import json


def _cfg(text):
    parser = configparser.ConfigParser()  # same interpolation as Airflow's parser
    parser.read_string(text)
    return parser


def test_master_airflow_cfg(rendered):
    cfg = _cfg(rendered("master1", "salt://airflow/files/airflow.cfg.jinja"))
    assert cfg["core"]["executor"] == "CeleryExecutor"
    assert cfg["core"]["load_examples"] == "False"
    assert cfg["core"]["fernet_key"] == "x5nNYqK0U6GsBpdmNn3Mo-UaWyy8ksTcRX0sVUJ2Ghg="
    # workers reach the Task Execution API through the load balancer (mine address of infra), HTTPS
    assert cfg["core"]["execution_api_server_url"] == "https://127.0.0.1/execution/"
    assert cfg["api"]["base_url"] == "https://127.0.0.1"
    assert "ssl_ca_file" not in cfg["api"]  # no airflow:tls:ca_cert: the system trust store
    assert "ssl_cert" not in cfg["api"]  # the api-servers themselves stay plain HTTP
    # '%' and '/' in the password: URL-encoded, then '%%'-escaped (configparser gives back '%25')
    assert cfg["database"]["sql_alchemy_conn"] == \
        "postgresql+psycopg2://airflow:db-pw%25with%2Fspecials@127.0.0.1:5432/airflow"
    # the Celery result backend has its own database and role (never the metastore password)
    assert cfg["celery"]["result_backend"] == \
        "db+postgresql://airflow_results:results-pw%25with%2Fspecials@127.0.0.1:5432/airflow_results"
    assert cfg["celery"]["broker_url"] == "amqp://airflow:broker-pw-test@127.0.0.1:5672/airflow"
    assert cfg["celery"]["worker_concurrency"] == "4"
    # separate secrets for separate purposes
    assert cfg["api"]["secret_key"] == "test-api-secret-key-0123456789"
    assert cfg["api_auth"]["jwt_secret"] == "test-jwt-secret-0123456789"
    assert cfg["api"]["workers"] == "2"
    assert cfg["dag_processor"]["parsing_processes"] == "1"
    # airflow:scheduler:heartbeat_sec: what lets the healing layer see a lost master quickly
    assert cfg["scheduler"]["scheduler_heartbeat_sec"] == "1"
    assert cfg["core"]["simple_auth_manager_users"] == "admin:admin"
    assert cfg["core"]["simple_auth_manager_passwords_file"] == "/opt/airflow/simple_auth_manager_passwords.json"


def test_worker_airflow_cfg_has_no_admin_login(rendered):
    cfg = _cfg(rendered("worker1", "salt://airflow/files/airflow.cfg.jinja"))
    assert cfg["core"]["executor"] == "CeleryExecutor"
    assert "simple_auth_manager_users" not in cfg["core"]
    assert cfg["core"]["execution_api_server_url"] == "https://127.0.0.1/execution/"


def test_admin_passwords_file(rendered):
    assert json.loads(rendered("master1", "salt://airflow/files/simple_auth_manager_passwords.json.jinja")) == \
        {"admin": "admin-pw-test"}


def test_haproxy_backends_from_mine(rendered):
    text = rendered("infra", "salt://airflow/files/haproxy.cfg.jinja")
    assert "    server master1 127.0.0.1:8080 check\n    server master2 127.0.0.1:8080 check" in text
    assert "option httpchk GET /api/v2/monitor/health" in text
    assert "http-check expect status 200" in text
    assert "default-server inter 500ms fastinter 200ms fall 2 rise 1" in text and "timeout check 700ms" in text
    assert "bind :443 ssl crt /etc/haproxy/airflow.pem alpn h2,http/1.1" in text
    assert "bind :80\n" in text and "bind :1936" in text
    assert "http-request redirect scheme https code 301 unless { ssl_fc }" in text
    assert "stats auth admin:stats-pw-test" in text
    assert "stats socket /run/haproxy/admin.sock mode 660 level admin" in text
    assert "default_backend airflow_api" in text


def test_lb_tls_pem_is_cert_then_key(rendered, test_secrets):
    text = rendered("infra", "salt://airflow/files/haproxy-tls.pem.jinja")
    assert text.strip() == test_secrets["lb_tls_cert"].strip() + "\n" + test_secrets["lb_tls_key"].strip()


def test_ca_cert_from_pillar_is_written_for_the_task_sdk_client(salt_cli):
    """airflow:tls:ca_cert: <home>/ca.pem (settings.jinja points [api] ssl_ca_file at it; that
    half only the lab sees: slsutil.renderer takes no pillar override)."""
    from conftest import parse_states

    ca = "-----BEGIN CERTIFICATE-----\ntest-ca\n-----END CERTIFICATE-----"
    pillar = 'pillar={"airflow": {"tls": {"ca_cert": "%s"}}}' % ca.replace("\n", "\\n")
    ret = salt_cli.run("state.show_sls", "airflow.config", pillar, minion_tgt="worker1")
    assert ret.returncode == 0, ret
    state = parse_states(ret.data)["airflow-config-ca-cert"]
    assert (state["fun"], state["name"], state["mode"]) == ("file.managed", "/opt/airflow/ca.pem", "0644")
    assert state["contents"] == ca + "\n"
    # without it (the test pillar): no file; the system trust store decides
    ret = salt_cli.run("state.show_sls", "airflow.config", minion_tgt="worker1")
    assert parse_states(ret.data)["airflow-config-ca-cert"]["fun"] == "file.absent"


def test_scheduler_guard_renders_and_compiles(salt_cli):
    ret = salt_cli.run("slsutil.renderer", "salt://airflow/files/scheduler-guard.py.jinja", "default_renderer=jinja",
                       'mode="active-standby"', "stale_seconds=15", 'home="/opt/airflow"', minion_tgt="master1")
    assert ret.returncode == 0, ret
    compile(ret.data, "scheduler-guard.py", "exec")
    assert "STALE_SECONDS = 15" in ret.data
    assert 'os.environ.get("AIRFLOW_CONFIG") or AIRFLOW_CFG' in ret.data


def test_secrets_per_role(salt_cli, test_secrets):
    ret = salt_cli.run("pillar.item", "airflow:secrets", minion_tgt="*")
    assert ret.returncode == 0, ret
    got = {m: set((d or {}).get("airflow:secrets") or {}) for m, d in ret.data.items()}
    assert got["master1"] == got["master2"] == {"fernet_key", "api_secret_key", "jwt_secret", "db_password",
                                                 "results_db_password", "broker_password",
                                                 "admin_user", "admin_password"}
    assert got["worker1"] == {"api_secret_key", "results_db_password", "broker_password"}
    assert got["infra"] == {"db_password", "results_db_password", "broker_password", "lb_stats_password",
                            "lb_tls_cert", "lb_tls_key"}


def test_missing_secret_fails_naming_the_key(salt_cli):
    # absent: the worker has no admin secrets, rendering the admin login must fail by name
    ret = salt_cli.run("slsutil.renderer", "salt://airflow/files/simple_auth_manager_passwords.json.jinja",
                       "default_renderer=jinja", minion_tgt="worker1")
    assert ret.returncode != 0
    assert "Missing required pillar key airflow:secrets:admin_user" in ret.stdout + ret.stderr
    # empty: counts as missing too (state render error)
    ret = salt_cli.run("state.show_sls", "airflow.db", 'pillar={"airflow": {"secrets": {"db_password": ""}}}',
                       minion_tgt="infra")
    assert ret.returncode != 0
    assert "Missing required pillar key airflow:secrets:db_password" in ret.stdout + ret.stderr


def test_state_apply_test_mode_on_bare_minion(salt_cli):
    """test=True on this bare host: no render errors; every state predicts a change or no-op.

    The only failures allowed are state modules whose tools are missing here (rabbitmqctl).
    """
    # master1 (superset of the Airflow node states) and infra (db, broker, lb); the same
    # formula parts on master2/worker1 are covered by the show_highstate tests.
    ret = salt_cli.run("-L", "state.apply", "test=True", minion_tgt="master1,infra", _timeout=180)
    assert sorted(ret.data) == ["infra", "master1"], ret
    for minion, data in ret.data.items():
        assert isinstance(data, dict), (minion, data)  # a render error returns a list of strings
        for key, res in data.items():
            if res["result"] is False:
                assert "__virtual__ returned False" in res["comment"] or \
                    "requisite failed" in res["comment"], (minion, key, res["comment"])
        ids = {key.split("_|-")[1] for key in data}
        assert {"airflow-config", "airflow-pip-install"} <= ids or minion == "infra"
