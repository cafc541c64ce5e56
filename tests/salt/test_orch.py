"""The deploy orchestration renders and orders its steps db/broker < migrate < masters < workers < lb."""


def test_orchestration_order(salt_run_cli):
    ret = salt_run_cli.run("state.orchestrate_show_sls", "orch.deploy")
    assert ret.returncode == 0, ret
    (high,) = ret.data.values()
    steps = {}
    for sid, body in high.items():
        items = body["salt"]
        args = {k: v for item in items if isinstance(item, dict) for k, v in item.items()}
        args["fun"] = [i for i in items if isinstance(i, str)][0]
        steps[sid] = args

    def requires(sid):
        return {list(r.values())[0] for r in steps[sid].get("require", [])}

    assert steps["airflow-pause-healing"]["name"] == "airflow.deploy_started"
    assert steps["airflow-sync-all"]["name"] == "saltutil.sync_all"
    assert requires("airflow-sync-all") == {"airflow-pause-healing"}
    # the pip install of Airflow runs beside db + broker, all before the migration
    assert requires("airflow-install-software") == {"airflow-mine-update"}
    assert steps["airflow-install-software"]["sls"] == ["airflow"]
    for sid in ("airflow-install-software", "airflow-deploy-db", "airflow-deploy-broker"):
        assert steps[sid]["parallel"] is True
    assert requires("airflow-mine-update") == {"airflow-sync-all"}
    assert requires("airflow-deploy-db") == {"airflow-mine-update"}
    # db and broker may share a minion (one state job at a time): broker after db
    assert requires("airflow-deploy-broker") == {"airflow-mine-update", "airflow-deploy-db"}
    assert requires("airflow-migrate-metastore") == {"airflow-mine-update", "airflow-install-software",
                                                      "airflow-deploy-db", "airflow-deploy-broker"}
    assert steps["airflow-migrate-metastore"]["sls"] == ["airflow.migrate"]
    assert requires("airflow-deploy-masters") == {"airflow-migrate-metastore"}
    assert steps["airflow-deploy-masters"]["highstate"] is True
    assert requires("airflow-deploy-workers") == {"airflow-deploy-masters"}
    assert requires("airflow-deploy-lb") == {"airflow-deploy-workers"}
    assert requires("airflow-mark-deployed") == {"airflow-deploy-lb"}
    assert steps["airflow-mark-deployed"] == {**steps["airflow-mark-deployed"], "fun": "runner",
                                              "name": "airflow.mark_deployed"}
    for sid, step in steps.items():
        if step["fun"] == "state":  # targets from the master's role record, never a grain
            assert step["tgt_type"] == "list"
            assert "batch" not in step
    assert steps["airflow-deploy-masters"]["tgt"] == "master1,master2"
    assert steps["airflow-install-software"]["tgt"] == "master1,master2,worker1"
    assert steps["airflow-deploy-lb"]["tgt"] == "infra"
    # show_sls keeps the file order: the run order follows it too
    order = [s for s in high]
    assert order.index("airflow-deploy-db") < order.index("airflow-migrate-metastore") < \
        order.index("airflow-deploy-masters") < order.index("airflow-deploy-workers") < \
        order.index("airflow-deploy-lb") < order.index("airflow-mark-deployed")
