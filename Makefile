# One entry point for people and CI. `make setup` is idempotent and is a prerequisite of everything else.
SHELL := /bin/bash
ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
BUILD := $(ROOT)/.build
COLLECTION_LINK := $(BUILD)/collections/ansible_collections/qemulab/network
export ANSIBLE_CONFIG := $(ROOT)/ansible.cfg
# The ssh plugin's control sockets: its default (~/.ansible/cp) ignores ansible.cfg's `home`, so runs through make keep
# them in the checkout too (a ControlPath must stay under 108 bytes: checkout path + ~45).
export ANSIBLE_SSH_CONTROL_PATH_DIR := $(BUILD)/ansible/cp
export PATH := $(BIN):$(PATH)

# Debian packages the collection, its roles and its tests use on the lab host (mmdebstrap, slirp4netns and uidmap:
# what a user without root needs, docs/rootless.md's one admin step).
APT_PACKAGES := qemu-system-x86 qemu-utils iproute2 debootstrap busybox-static e2fsprogs \
	openssh-client graphviz python3-venv python3-dev gcc cpio zstd kmod socat iperf3 tcpdump \
	iputils-ping procps psmisc rsync git iptables shellcheck openssh-server dpdk-dev \
	mmdebstrap slirp4netns uidmap

.PHONY: setup apt venv collection lab cleanup status graph docs test test-first-lane test-second-lane test-alone \
	test-unit test-integration sanity lint molecule bench clean

setup: apt venv collection

apt:
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null | awk '$$4 != "installed" {print $$1}'; \
	  for p in $(APT_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// }" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

collection:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn $(ROOT) $(COLLECTION_LINK)

lab: setup
	$(BIN)/ansible-playbook lab.yml

cleanup: setup
	$(BIN)/ansible-playbook lab.yml --tags cleanup

status: setup
	$(BIN)/ansible-playbook lab.yml --tags status

graph: setup
	$(BIN)/ansible-playbook playbooks/graph.yml

# docs/inventory.md's field tables, generated from the lab schema (a unit test fails when they differ).
docs: setup
	PYTHONPATH=$(BUILD)/collections $(PY) -c 'import sys; from ansible_collections.qemulab.network.plugins.plugin_utils._lab_schema import render_inventory_doc as r; p = "docs/inventory.md"; t = open(p).read(); open(p, "w").write(r(t))'

# Everything, in two lanes at once and then what must run alone: the integration suite keeps about one of two cores
# busy (guests boot and answer while Ansible waits), so the second lane's unit tests, sanity, lint, self-contained
# integration modules and molecule run beside it. pytest.ini's markers say which module may run where. Each lane's
# output is printed whole when it ends (--output-sync), with its slowest tests (--durations: what to move between
# lanes). `make test-integration` still runs the whole suite in one go.
test: setup
	$(MAKE) --no-print-directory -j2 --output-sync=target test-first-lane test-second-lane
	$(MAKE) --no-print-directory test-alone

test-first-lane: setup
	$(BIN)/pytest -q --durations=15 tests/integration -m "not second_lane and not alone"

# QEMULAB_TEST_LANE: the console-tmpfs sweep at a session's end (tests/integration/conftest.py) is the first lane's.
test-second-lane: setup
	$(MAKE) --no-print-directory test-unit
	$(MAKE) --no-print-directory sanity
	$(MAKE) --no-print-directory lint
	QEMULAB_TEST_LANE=second $(BIN)/pytest -q --durations=15 tests/integration -m second_lane
	$(MAKE) --no-print-directory molecule

test-alone: setup
	$(BIN)/pytest -q tests/integration -m alone

test-unit: setup
	$(BIN)/pytest -q tests/unit

test-integration: setup
	$(BIN)/pytest -q tests/integration

sanity: setup
	tests/sanity/run

# HOME, ANSIBLE_HOME and XDG_CACHE_HOME under .build: ansible-lint's cache (otherwise .ansible in the checkout), its
# version check (~/.cache/ansible-lint) and the Ansible it runs (~/.ansible) stay out of the user's home.
lint: setup
	HOME=$(BUILD)/lint ANSIBLE_HOME=$(BUILD)/lint/.ansible XDG_CACHE_HOME=$(BUILD)/lint/.cache $(BIN)/ansible-lint

# ANSIBLE_HOME: molecule installs the collection into $$ANSIBLE_HOME/collections (~/.ansible by default, where it
# would shadow the checkout for playbooks run elsewhere); .build/collections already links this checkout there, so
# nothing is copied and nothing lands in the user's home. MOLECULE_COMMAND=syntax runs one step only. --all: every
# scenario, default (the seed lab) and topology (the star of topologies/star.qemulab.yml).
# Ansible's remote temp (the lab host's own too, over the local connection) would be ~/.ansible/tmp: the scenarios
# get a directory of their own for the run instead, removed after it (the guests make the same path in their /tmp).
molecule: setup
	cd $(ROOT) && tmp=$$(mktemp -d -t qemulab-molecule-remote-tmp-XXXXXX) && \
	  { ANSIBLE_HOME=$(BUILD) ANSIBLE_REMOTE_TEMP=$$tmp $(BIN)/molecule $(or $(MOLECULE_COMMAND),test) --all; \
	    rc=$$?; rm -rf "$$tmp"; exit $$rc; }

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(BUILD) .pytest_cache
