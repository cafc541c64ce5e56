"""A bare minion (nothing synced): the states read the daemon table through the custom module
airflow_health (+ _utils/airflow_daemons.py), so they need it at render time.

Salt 3008: a highstate syncs every custom module type, utils included, BEFORE it renders
(HighState.load_dynamic -> saltutil.sync_all); state.sls / show_sls do not. orch.deploy runs
saltutil.sync_all on every minion first, and a render without the module fails naming it.
"""
import os
import shutil

import pytest

from conftest import record_grants

pytestmark = pytest.mark.timeout(300)


def _forget(salt_master, minion):
    """The master forgets a stopped minion: key file and cache removed directly, so no salt/key
    event reaches the reactor (a key deletion would make the runner reconcile haproxy) and `*`
    does not wait for a minion that is gone."""
    for base in ("minions", "minions_pre", "minions_rejected", "minions_denied"):
        path = os.path.join(salt_master.config["pki_dir"], base, minion)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(salt_master.config["cachedir"], "minions", minion), ignore_errors=True)


@pytest.fixture(scope="module")
def bare(salt_master, salt_minions, airflow_salt_paths):
    factory = salt_master.salt_minion_daemon("bare1", overrides={"grains": {"roles": ["airflow-lb"]}},
                                             max_start_attempts=1)
    try:
        with record_grants(airflow_salt_paths, {"bare1": ["airflow-lb"]}), factory.started():
            yield salt_master.salt_cli(timeout=180)
    finally:
        _forget(salt_master, "bare1")


def test_state_sls_without_sync_names_the_missing_module(bare):
    ret = bare.run("state.show_sls", "airflow.healing", minion_tgt="bare1")
    assert ret.returncode != 0
    out = ret.stdout + ret.stderr
    assert "Custom module airflow_health" in out and "saltutil.sync_all" in out, out


def test_highstate_syncs_modules_and_utils_before_rendering(bare):
    # test mode: nothing is changed on this host; a render error would come back as a list
    ret = bare.run("state.apply", "test=True", minion_tgt="bare1", _timeout=240)
    assert isinstance(ret.data, dict), ret
    ids = {key.split("_|-")[1] for key in ret.data}
    assert {"airflow-healing-settings", "airflow-healing-beacon", "airflow-lb-config"} <= ids, sorted(ids)
    # module + utils on the minion now (the call goes through __utils__ airflow_daemons)
    ret = bare.run("airflow_health.daemons", '["airflow-lb"]', minion_tgt="bare1")
    assert [row["name"] for row in ret.data] == ["haproxy"], ret.data
