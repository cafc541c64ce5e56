"""Fast real-Salt test tier: ONE salt-master and four salt-minions for the whole session.

Started with pytest-salt-factories as local processes (no systemd, nothing installed).

Fixtures (session scope; reuse them in other tests/salt/test_*.py, e.g. test_healing*.py):

``airflow_salt_paths``
    dict of paths: ``repo`` (checkout), ``root`` (short temp root of the factories),
    ``etc`` (stands in for /etc/airflow-salt: its ``pillar/`` holds the generated test secrets
    ``airflow/secrets/*.sls`` and ``airflow_site.sls``), ``varlib`` (stands in for
    /var/lib/airflow-salt: ``pillar/airflow_runtime.sls``, audit.jsonl, maintenance flag).
``test_secrets``
    dict {key: value} of the secrets written to the test pillar.
``salt_master``
    the running SaltMaster factory. Config: file_roots = repo ``salt/`` + ``site`` (root/site-salt,
    stands in for /etc/airflow-salt/salt: site overrides of the formula's files, TOFS; it holds
    ``SITE_FILES``); pillar_roots =
    [etc/pillar, repo ``pillar/``, varlib/pillar]; runner_dirs = repo ``_runners``; plus
    ``conf/master.d/airflow-reactor.conf`` when it exists, with /srv/airflow, /etc/airflow-salt
    and /var/lib/airflow-salt in it rewritten to the repo / the temp dirs above.
``salt_minions``
    dict role-name -> running SaltMinion factory (each granted the same roles in the role record
    ``etc/roles.yaml``): ``master1`` (grain roles [airflow-master]),
    ``master2`` ([airflow-master]), ``worker1`` ([airflow-worker]), ``infra`` ([airflow-db,
    airflow-broker, airflow-lb]). Minion id == key. Mine (``airflow_address``: airflow_health.address in the
    test airflow_site.sls network 127.0.0.0/8) is updated at start, so every minion's address is 127.0.0.1.
    ``saltutil.sync_all`` ran at start, as orch.deploy does (custom modules + utils: the states
    read the daemon table through them). Each minion's config dir (``factory.config_dir``) stands
    in for /etc/salt: node settings file, beacon config, role markers.
``salt_cli`` / ``salt_run_cli``
    ``salt`` and ``salt-run`` CLIs of the master.
``salt_call_cli``
    ``salt-call`` CLI of minion master1 (other minions: ``salt_minions[name].salt_call_cli()``).

Example: ``salt_cli.run("state.show_sls", "airflow.lb", minion_tgt="infra")`` -> ``ret.data``.
"""
import contextlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

MINION_ROLES = {
    "master1": ["airflow-master"],
    "master2": ["airflow-master"],
    "worker1": ["airflow-worker"],
    "infra": ["airflow-db", "airflow-broker", "airflow-lb"],
}

TEST_SECRETS = {
    "fernet": {"fernet_key": "x5nNYqK0U6GsBpdmNn3Mo-UaWyy8ksTcRX0sVUJ2Ghg="},
    "api": {"api_secret_key": "test-api-secret-key-0123456789"},
    "jwt": {"jwt_secret": "test-jwt-secret-0123456789"},
    # '%' and '/' on purpose: must be URL-encoded and %-escaped in airflow.cfg.
    "database": {"db_password": "db-pw%with/specials"},
    "results": {"results_db_password": "results-pw%with/specials"},
    "broker": {"broker_password": "broker-pw-test"},
    "admin": {"admin_user": "admin", "admin_password": "admin-pw-test"},
    "flower_auth": {"flower_password": "flower-pw-test"},
    "lb": {"lb_stats_password": "stats-pw-test"},
    # no `haproxy -c` runs in this tier (test=True skips check_cmd): placeholders are enough
    "tls": {"lb_tls_cert": "-----BEGIN CERTIFICATE-----\ntest-cert\n-----END CERTIFICATE-----\n",
            "lb_tls_key": "-----BEGIN PRIVATE KEY-----\ntest-key\n-----END PRIVATE KEY-----\n"},
}

# Site overrides of formula files (TOFS): path under the site file root -> content.
SITE_FILES = {
    "airflow/files/worker1/airflow-daemon.service.jinja": "# site override of {{ name }} for worker1\n",
}

# The test site's own pillar: its network only (the mine function follows it: one host, so the
# loopback network and every minion's address is 127.0.0.1).
SITE_PILLAR = {
    "airflow": {"network": {"cidr": "127.0.0.0/8"}},
}


def _rewrite_paths(obj, mapping):
    if isinstance(obj, dict):
        return {k: _rewrite_paths(v, mapping) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rewrite_paths(v, mapping) for v in obj]
    if isinstance(obj, str):
        for old, new in mapping.items():
            obj = obj.replace(old, new)
    return obj


@contextlib.contextmanager
def record_grants(paths, extra):
    """The master's role record grants ``extra`` ({minion: roles}) too while the block runs (as
    `salt-run airflow.grant` would; a grain alone gets a minion nothing), then as it was."""
    record = os.path.join(paths["etc"], "roles.yaml")
    with open(record) as fh:
        before = fh.read()
    with open(record, "w") as fh:
        yaml.safe_dump({**(yaml.safe_load(before) or {}), **extra}, fh)
    try:
        yield
    finally:
        with open(record, "w") as fh:
            fh.write(before)


@pytest.fixture(scope="session")
def airflow_salt_paths():
    # Short root: unix socket paths must fit in 107 characters (pytest's tmp_path is too long).
    root = tempfile.mkdtemp(prefix="afs", dir="/tmp")
    paths = {
        "repo": REPO,
        "root": root,
        "etc": os.path.join(root, "etc-afs"),
        "varlib": os.path.join(root, "var-afs"),
        "site": os.path.join(root, "site-salt"),
    }
    for rel, text in SITE_FILES.items():
        os.makedirs(os.path.dirname(os.path.join(paths["site"], rel)), exist_ok=True)
        with open(os.path.join(paths["site"], rel), "w") as fh:
            fh.write(text)
    os.makedirs(os.path.join(paths["etc"], "pillar", "airflow", "secrets"))
    os.makedirs(os.path.join(paths["varlib"], "pillar"))
    yield paths
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def test_secrets(airflow_salt_paths):
    pillar = os.path.join(airflow_salt_paths["etc"], "pillar")
    flat = {}
    for name, keys in TEST_SECRETS.items():
        with open(os.path.join(pillar, "airflow", "secrets", name + ".sls"), "w") as fh:
            yaml.safe_dump({"airflow": {"secrets": keys}}, fh)
        flat.update(keys)
    with open(os.path.join(pillar, "airflow_site.sls"), "w") as fh:
        yaml.safe_dump(SITE_PILLAR, fh)
    return flat


@pytest.fixture(scope="session")
def salt_factories_config(airflow_salt_paths):
    # start_timeout: daemons start in seconds, but a loaded 2-core host (e.g. the lab running
    # beside) needs more than the default 60 s
    return {"root_dir": airflow_salt_paths["root"], "start_timeout": 180}


@pytest.fixture(scope="session")
def salt_master(salt_factories, airflow_salt_paths, test_secrets):
    paths = airflow_salt_paths
    config = {
        "file_roots": {"base": [os.path.join(REPO, "salt"), paths["site"]]},
        "pillar_roots": {
            "base": [
                os.path.join(paths["etc"], "pillar"),
                os.path.join(REPO, "pillar"),
                os.path.join(paths["varlib"], "pillar"),
            ]
        },
        "runner_dirs": [os.path.join(REPO, "_runners")],
        "utils_dirs": [os.path.join(REPO, "_utils")],
        "log_level_logfile": "info",
    }
    reactor_conf = os.path.join(REPO, "conf", "master.d", "airflow-reactor.conf")
    if os.path.exists(reactor_conf):
        with open(reactor_conf) as fh:
            extra = yaml.safe_load(fh) or {}
        extra = _rewrite_paths(
            extra,
            {
                "/srv/airflow": REPO,
                "/etc/airflow-salt": paths["etc"],
                "/var/lib/airflow-salt": paths["varlib"],
            },
        )
        config.update(extra)
    # the master-owned role record (roles_file of airflow-reactor.conf, rewritten to etc/):
    # the same roles as the minions' grains, as `salt-run airflow.grant` would have written
    with open(os.path.join(paths["etc"], "roles.yaml"), "w") as fh:
        yaml.safe_dump(MINION_ROLES, fh)
    factory = salt_factories.salt_master_daemon("afmaster", overrides=config, max_start_attempts=1)
    with factory.started():
        yield factory


@pytest.fixture(scope="session")
def salt_minions(salt_master):
    minions = {
        name: salt_master.salt_minion_daemon(name, overrides={"grains": {"roles": roles}}, max_start_attempts=1)
        for name, roles in MINION_ROLES.items()
    }
    # start/stop in parallel: each minion takes seconds to come up and to shut down
    with ThreadPoolExecutor(len(minions)) as pool:
        try:
            list(pool.map(lambda f: f.start(), minions.values()))
            cli = salt_master.salt_cli(timeout=120)  # a loaded host answers slowly
            # as orch.deploy does; first: the mine function (airflow_health.address) is custom
            ret = cli.run("saltutil.sync_all", minion_tgt="*")
            assert ret.returncode == 0, ret
            ret = cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="*")
            assert ret.returncode == 0, ret
            ret = cli.run("mine.update", minion_tgt="*")
            assert ret.returncode == 0, ret
            yield minions
        finally:
            list(pool.map(lambda f: f.terminate(), minions.values()))


@pytest.fixture(scope="session")
def salt_cli(salt_master, salt_minions):
    return salt_master.salt_cli(timeout=120)


@pytest.fixture(scope="session")
def salt_run_cli(salt_master, salt_minions):
    return salt_master.salt_run_cli(timeout=120)


@pytest.fixture(scope="session")
def salt_call_cli(salt_minions):
    return salt_minions["master1"].salt_call_cli(timeout=120)


def audit_records(paths):
    """The healing runner's audit records (varlib/audit.jsonl of the test master), oldest first."""
    path = os.path.join(paths["varlib"], "audit.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def parse_states(data):
    """show_highstate/show_sls data -> {state_id: {"fun": "file.managed", "sls": ..., **args}}."""
    states = {}
    for state_id, body in data.items():
        for mod, items in body.items():
            if mod.startswith("__"):
                continue
            args = {"sls": body.get("__sls__")}
            fun = None
            for item in items:
                if isinstance(item, str):
                    fun = item
                else:
                    args.update(item)
            args["fun"] = f"{mod}.{fun}"
            states[state_id] = args
    return states


@pytest.fixture(scope="session")
def highstate(salt_cli):
    """highstate(minion) -> parsed show_highstate of that minion (cached per session)."""
    cache = {}

    def _get(minion):
        if minion not in cache:
            ret = salt_cli.run("state.show_highstate", minion_tgt=minion)
            assert ret.returncode == 0, ret
            assert isinstance(ret.data, dict), ret.data
            cache[minion] = parse_states(ret.data)
        return cache[minion]

    return _get


@pytest.fixture(scope="session")
def rendered(salt_cli):
    """rendered(minion, 'salt://path.jinja') -> the file as Salt renders it on that minion."""
    cache = {}

    def _get(minion, path):
        key = (minion, path)
        if key not in cache:
            ret = salt_cli.run("slsutil.renderer", path, "default_renderer=jinja", minion_tgt=minion)
            assert ret.returncode == 0, ret
            cache[key] = ret.data
        return cache[key]

    return _get
