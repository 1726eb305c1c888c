"""The simulated lab hosts (tests/integration/simhosts.py) are what a multi-host lab is tested on, so they must be
separate hosts in the ways that count: Ansible reaches each over real SSH through its own namespace and sees only that
host's underlay address, the hosts reach each other over the underlay, each has its own /run, and nothing is left
once they are gone."""
import json
import os
import secrets
import subprocess

import pytest

from conftest import run_playbook
from simhosts import STATE_DIR, simulated_hosts

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

PLAYBOOK = """
- name: Look at each simulated host over SSH
  hosts: hypervisors
  gather_facts: false
  tasks:
    - name: Addresses
      ansible.builtin.command: ip -o addr
      changed_when: false
    - name: Ping the other host over the underlay
      ansible.builtin.command: ping -c 1 -W 5 {{ other }}
      changed_when: false
    - name: The run directory on the first host only
      ansible.builtin.file:
        path: /run/qemulab
        state: directory
        mode: "0755"
      when: inventory_hostname == first
    - name: A run file on the first host only
      ansible.builtin.copy:
        dest: "{{ marker }}"
        content: "written on {{ inventory_hostname }}\\n"
        mode: "0644"
      when: inventory_hostname == first
"""


def _processes_in(mnt):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            same = os.readlink("/proc/%s/ns/mnt" % entry) == mnt
            with open("/proc/%s/stat" % entry) as handle:
                running = handle.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            continue
        if same and running:
            found.append(int(entry))
    return found


def _root_addresses():
    return subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout


def test_two_simulated_hosts_over_ssh(tmp_path):
    tag = "t" + secrets.token_hex(3)
    marker = "/run/qemulab/simtest-%s" % tag
    ssh_dir_before = os.path.exists(os.path.expanduser("~/.ssh"))
    with simulated_hosts(2, tag) as hosts:
        first, second = hosts
        recorded = [(host.pid, host.mnt, host.netns) for host in hosts]
        tmpdir = first.tmpdir
        inventory = tmp_path / "inventory.json"
        inventory.write_text(json.dumps({"hypervisors": {"hosts": {
            host.name: dict(host.hostvars(), other=peer.underlay_address, first=first.name, marker=marker)
            for host, peer in ((first, second), (second, first))}}}))
        result = run_playbook(PLAYBOOK, inventory=str(inventory))

        for host, peer in ((first, second), (second, first)):
            addresses = result.result("Addresses", host.name)["stdout"]
            assert " %s/24 " % host.underlay_address in addresses, addresses
            assert peer.underlay_address not in addresses, addresses
            assert result.result("Ping the other host over the underlay", host.name)["rc"] == 0
        # the commands ran in the hosts' namespaces, not on the controller (whose own NIC may well sit in
        # 192.0.2.0/24 too: the hosts' namespaces have no route out, so the two never meet)
        root = _root_addresses()
        assert " %s/" % first.underlay_address not in root and " %s/" % second.underlay_address not in root
        assert result.result("A run file on the first host only", first.name)["changed"]
        assert first.run(["cat", marker]).stdout == "written on %s\n" % first.name
        assert second.run(["test", "-e", marker]).returncode == 1
        assert not os.path.exists(marker)
        # the lab namespaces a host makes are its own too
        assert first.run(["ip", "netns", "add", "qlsim-probe"]).returncode == 0
        assert "qlsim-probe" not in second.run(["ip", "netns", "list"]).stdout
        assert not os.path.exists("/run/netns/qlsim-probe")
        assert all(_processes_in(mnt) for _pid, mnt, _netns in recorded)

        # a host cut off: Ansible reports it unreachable and still reaches the other; afterwards it is back
        with second.unreachable():
            cut = run_playbook(PLAYBOOK, inventory=str(inventory), expect_failure=True)
            assert cut.stats[second.name]["unreachable"] == 1 and cut.stats[first.name]["failures"] == 0
            assert second.run(["true"]).returncode == 0  # still running, only out of reach
        assert run_playbook(PLAYBOOK, inventory=str(inventory)).failed(second.name) == 0

    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "qlsim-%s-" % tag not in namespaces
    for pid, mnt, _netns in recorded:
        assert _processes_in(mnt) == [], "processes of %s's mount namespace survive" % pid
    assert not os.path.exists(tmpdir)
    assert not os.path.exists(os.path.join(STATE_DIR, tag + ".json"))
    assert not os.path.exists(marker)
    with open("/proc/self/mountinfo") as handle:
        assert tmpdir not in handle.read()
    assert os.path.exists(os.path.expanduser("~/.ssh")) == ssh_dir_before
