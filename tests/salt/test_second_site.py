"""A second site renders its whole cluster from its own pillar (issue 11, fast tier).

The formula ships no site value: a site with other minion ids (af-m-01, ...) and its own network,
whose site pillar holds nothing but ``airflow:network:cidr``, gets haproxy backends, database and
broker hosts and the scheduler placement from the role record and the mine (which follows that
one key). Without the key, every role's render fails naming it. One host: the site's network is
the loopback network, so every address is 127.0.0.1.
"""
import configparser
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from conftest import REPO, TEST_SECRETS, _rewrite_paths

pytestmark = pytest.mark.timeout(300)

SITE_ROLES = {
    "af-m-01": ["airflow-master"],
    "af-m-02": ["airflow-master"],
    "af-w-01": ["airflow-worker"],
    "af-infra-01": ["airflow-db", "airflow-broker", "airflow-lb"],
}
SITE_NETWORK = "127.0.0.0/8"


@pytest.fixture(scope="module")
def site(salt_factories):
    root = tempfile.mkdtemp(prefix="afs2", dir="/tmp")
    etc, varlib = os.path.join(root, "etc"), os.path.join(root, "varlib")
    os.makedirs(os.path.join(etc, "pillar", "airflow", "secrets"))
    os.makedirs(os.path.join(varlib, "pillar"))
    for name, keys in TEST_SECRETS.items():
        with open(os.path.join(etc, "pillar", "airflow", "secrets", name + ".sls"), "w") as fh:
            yaml.safe_dump({"airflow": {"secrets": keys}}, fh)
    site_pillar = os.path.join(etc, "pillar", "airflow_site.sls")
    with open(site_pillar, "w") as fh:  # the site's only value
        yaml.safe_dump({"airflow": {"network": {"cidr": SITE_NETWORK}}}, fh)
    with open(os.path.join(etc, "roles.yaml"), "w") as fh:  # as salt-run airflow.grant writes it
        yaml.safe_dump(SITE_ROLES, fh)
    with open(os.path.join(REPO, "conf", "master.d", "airflow-reactor.conf")) as fh:
        reactor = _rewrite_paths(yaml.safe_load(fh), {
            "/srv/airflow": REPO, "/etc/airflow-salt": etc, "/var/lib/airflow-salt": varlib})
    config = {
        "file_roots": {"base": [os.path.join(REPO, "salt")]},
        "pillar_roots": {"base": [os.path.join(etc, "pillar"), os.path.join(REPO, "pillar"),
                                  os.path.join(varlib, "pillar")]},
        "runner_dirs": [os.path.join(REPO, "_runners")],
        "utils_dirs": [os.path.join(REPO, "_utils")],
        "module_dirs": reactor["module_dirs"],
        "airflow_healing": reactor["airflow_healing"],
    }
    master = salt_factories.salt_master_daemon("af-site-salt", overrides=config, max_start_attempts=1)
    with master.started():
        minions = {name: master.salt_minion_daemon(name, overrides={"grains": {"roles": roles}},
                                                    max_start_attempts=1)
                   for name, roles in SITE_ROLES.items()}
        with ThreadPoolExecutor(len(minions)) as pool:
            try:
                list(pool.map(lambda f: f.start(), minions.values()))
                cli = master.salt_cli(timeout=120)
                for fun in ("saltutil.sync_all", "saltutil.refresh_pillar", "mine.update"):
                    ret = cli.run(fun, minion_tgt="*")
                    assert ret.returncode == 0, ret
                yield {"cli": cli, "site_pillar": site_pillar}
            finally:
                list(pool.map(lambda f: f.terminate(), minions.values()))
    shutil.rmtree(root, ignore_errors=True)


def _render(site, minion, path):
    ret = site["cli"].run("slsutil.renderer", path, "default_renderer=jinja", minion_tgt=minion)
    assert ret.returncode == 0, ret
    return ret.data


def test_the_mine_follows_the_one_network_key(site):
    ret = site["cli"].run("mine.get", "*", "airflow_address", minion_tgt="af-m-01")
    assert ret.data == {name: ["127.0.0.1"] for name in SITE_ROLES}, ret.data


def test_the_second_site_renders_its_own_cluster(site):
    haproxy = _render(site, "af-infra-01", "salt://airflow/files/haproxy.cfg.jinja")
    servers = [line.split()[1:3] for line in haproxy.splitlines() if line.strip().startswith("server ")]
    assert servers == [["af-m-01", "127.0.0.1:8080"], ["af-m-02", "127.0.0.1:8080"]], servers
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(_render(site, "af-m-02", "salt://airflow/files/airflow.cfg.jinja"))
    assert "@127.0.0.1:5432/airflow" in cfg["database"]["sql_alchemy_conn"]
    assert "@127.0.0.1:5672/" in cfg["celery"]["broker_url"]
    assert cfg["core"]["execution_api_server_url"].startswith("https://127.0.0.1/")
    # the scheduler runs on the first master by id, nowhere else (no airflow:scheduler:active)
    for minion, running in (("af-m-01", True), ("af-m-02", False)):
        ret = site["cli"].run("state.show_sls", "airflow.scheduler", minion_tgt=minion)
        assert ret.returncode == 0, ret
        service = ret.data["airflow-scheduler-service"]["service"]
        assert ("running" in service) is running and ("dead" in service) is not running, service


def test_without_the_network_every_role_fails_naming_the_key(site):
    os.rename(site["site_pillar"], site["site_pillar"] + ".off")
    try:
        for minion in SITE_ROLES:
            ret = site["cli"].run("state.show_sls", "airflow.healing", minion_tgt=minion)
            assert ret.returncode != 0 and "airflow:network:cidr is required" in str(ret.data), \
                (minion, ret.data)
    finally:
        os.rename(site["site_pillar"] + ".off", site["site_pillar"])
