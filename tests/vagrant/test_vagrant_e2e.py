"""Vagrant tier (`make test-vagrant`): the repo's Vagrantfile brings the cluster up in real VMs.

One test, end to end (lab/vagrant_e2e.py): the box, `vagrant up` of every VM of the topology
(AIRFLOW_VM_TOPOLOGY, default small: salt, infra, master1, worker1), Salt keys accepted by name
and roles granted by the Vagrantfile's trigger, `orch.deploy`, then `cluster_smoke` through
haproxy from this host with its fan-out on the worker VM(s). Writes results/vagrant.json.
Not in `make test`: under software emulation it takes longer than CI's whole budget.
"""
import json

import pytest

from lab import vagrant_e2e

pytestmark = pytest.mark.vagrant


@pytest.mark.timeout(4 * 3600)
def test_vagrant_up_deploys_the_cluster_and_runs_a_dag_through_haproxy():
    missing = vagrant_e2e.missing_prerequisites()
    if missing:
        pytest.skip("cannot run VMs here: missing " + "; ".join(missing))
    rc = vagrant_e2e.main([])
    record = json.loads(vagrant_e2e.RESULTS.read_text())
    assert rc == 0 and record["ok"], f"vagrant run failed: {record.get('error')}"
    workers = record["role_members"]["airflow-worker"]
    assert workers and set(workers) <= set(record["smoke"]["fan_out_hosts"]), record["smoke"]
    # every VM but the salt-master's own runs a minion, each key accepted by name
    assert set(record["accepted_keys"]) == set(record["vms"]) - {"salt"}, record["accepted_keys"]
