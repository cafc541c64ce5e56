# Entry points. `make lab` brings up the nspawn lab and deploys the cluster on it;
# `make test` runs every test tier (fast tier, then the lab tier).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
BENCH_VENV := .venv-bench

.PHONY: host-deps venv lint check lab lab-down lab-status box box-smoke test-vagrant test-lab test-lab-extended test bench bench-memory bench-deps clean

host-deps:
	@tools/host-deps.sh

venv: host-deps $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt
	@echo "== creating $(VENV) (salt, pytest-salt-factories, salt-lint)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

# salt-lint over every SLS, including reactor and orchestration files.
lint: venv
	@echo "== salt-lint"
	find salt pillar reactor -name '*.sls' -not -path '*/_*' | sort | xargs $(VENV)/bin/salt-lint

# Fast tier: real salt-master and minions (pytest-salt-factories) + unit tests. Under 5 minutes.
check: lint
	@echo "== fast tier: tests/unit tests/salt"
	$(PYTEST) -q --timeout=300 --durations=10 tests/unit tests/salt

# The main job: build the base image (cached), boot the nodes, install Salt, deploy the cluster.
lab: host-deps
	$(PYTHON) -m lab up

# A Debian 12 vagrant-libvirt box built here from vagrant/box/ (cached; rebuilt when the recipe
# changes; BOX_FORCE=1 rebuilds), added to Vagrant as airflow/debian12. Use it with
# AIRFLOW_VM_BOX=airflow/debian12 vagrant up --provider=libvirt. Needs root.
box:
	@tools/box-deps.sh
	$(PYTHON) -m lab.box --add $(if $(BOX_FORCE),--force)

# Boots one throwaway VM from that box (vagrant up, vagrant ssh, destroy) -> results/box.json.
# AIRFLOW_VM_LIBVIRT_DRIVER=qemu where /dev/kvm cannot run a stock kernel.
box-smoke:
	$(PYTHON) -m lab.box_smoke

# Vagrant tier: the repo's Vagrantfile for real (box, vagrant up of every VM, orch.deploy,
# cluster_smoke through haproxy) -> results/vagrant.json. Needs root, vagrant-libvirt and qemu
# (tools/box-deps.sh); skips saying what is missing. AIRFLOW_VM_TOPOLOGY=full for six VMs
# (default here: small); the libvirt driver is kvm, or qemu where /dev/kvm cannot run a stock
# kernel (detected; AIRFLOW_VM_LIBVIRT_DRIVER overrides). Not in `make test` (it takes longer
# than CI's budget under software emulation).
test-vagrant: venv
	@tools/box-deps.sh
	$(PYTEST) -v -s -p no:cacheprovider tests/vagrant

lab-down:
	$(PYTHON) -m lab down

lab-status:
	$(PYTHON) -m lab status

# Lab tier: deploys onto real Debian nodes (systemd-nspawn) and injects faults. Needs root.
test-lab: venv
	@echo "== lab tier: tests/lab (without the extended ones: make test-lab-extended)"
	$(PYTEST) -q -x --timeout=900 --durations=20 -m "not extended" tests/lab

# The lab tests that do not fit CI's 45-minute budget: clean states of a role taken away, a
# task surviving a killed worker, incident g, the throwaway node. On a deployed lab (make lab).
test-lab-extended: venv
	@echo "== extended lab tier"
	$(PYTEST) -q -x --timeout=900 --durations=20 -m extended tests/lab

test: check test-lab

# Memory of the running lab per node (PSS) -> results/lab-memory.json
bench-memory:
	$(PYTHON) -m bench.lab_memory

# The recovery bench's own venv: it installs its plotting library (matplotlib) itself, so the
# test venv stays without it. bench/report.py draws results/bench.png with it.
bench-deps: $(BENCH_VENV)/.installed
$(BENCH_VENV)/.installed: bench/requirements.txt
	@echo "== creating $(BENCH_VENV) (matplotlib for results/bench.png)"
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -r bench/requirements.txt
	touch $@

# Recovery bench on the deployed lab (`make lab` first): every fault BENCH_RUNS times (default 5)
# beside its restart floor -> results/bench-samples.jsonl, bench.json, bench.png and the table.
# Not part of `make test`: a test asserts, a bench measures. README's table: python3 -m bench.report --readme
bench: venv bench-deps
	$(PY) -m bench.recovery
	$(BENCH_VENV)/bin/python -m bench.report results/bench-samples.jsonl

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache results/*.json results/*.jsonl results/*.png
