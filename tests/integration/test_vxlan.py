"""qemulab.network.vxlan on two simulated lab hosts (tests/integration/simhosts.py), driven over SSH like a real
multi-host lab: on each host a lab namespace with a bridge, a VXLAN port towards the other host and a veth into a
"guest" namespace; the guests ping each other across the underlay. Check mode changes nothing, a second run changes
nothing, a changed VNI recreates the port, absent removes only the lab's port, and a host without the `local`
address is refused before anything changes."""
import json
import secrets

import pytest

from conftest import run_playbook
from simhosts import simulated_hosts

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

LAB = "vxt"
PLAYBOOK = """
- name: A segment spanning the simulated hosts
  hosts: hypervisors
  gather_facts: false
  tasks:
    - name: Lab namespace
      qemulab.network.netns: {name: "{{ labns }}", lab: %(lab)s}
    - name: Guest namespace
      qemulab.network.netns: {name: "{{ guestns }}", lab: %(lab)s}
    - name: Bridge
      qemulab.network.bridge: {name: br1, netns: "{{ labns }}", lab: %(lab)s}
    - name: VXLAN port
      qemulab.network.vxlan:
        name: "{{ port_name }}"
        netns: "{{ labns }}"
        lab: %(lab)s
        vni: "{{ vni }}"
        local: "{{ lab_underlay_address }}"
        remote: "{{ peer_underlay }}"
        bridge: br1
        mtu: 1450
        state: "{{ vxlan_state }}"
    - name: Guest port
      qemulab.network.veth:
        name: gv0
        netns: "{{ labns }}"
        bridge: br1
        mtu: 1450
        peer: gv1
        peer_netns: "{{ guestns }}"
        peer_addresses: ["{{ guest_address }}/24"]
        lab: %(lab)s
""" % {"lab": LAB}


def _inventory(path, hosts, labns, guestns, **extra):
    first, second = hosts
    data = {"hypervisors": {"hosts": {}}}
    for index, (host, peer) in enumerate(((first, second), (second, first)), start=1):
        hostvars = dict(host.hostvars(), labns=labns, guestns=guestns, peer_underlay=peer.underlay_address,
                        guest_address="10.77.0.%d" % index, port_name="vx-%d" % peer.index, vni=4242,
                        vxlan_state="present")
        hostvars.update(extra)
        data["hypervisors"]["hosts"][host.name] = hostvars
    path.write_text(json.dumps(data))
    return str(path)


def _ping(host, guestns, address):
    return host.run(["ip", "netns", "exec", guestns, "ping", "-c", "2", "-W", "3", address]).returncode == 0


def _link(host, netns, name):
    out = host.run(["ip", "-d", "-n", netns, "link", "show", name])
    return out.stdout if out.returncode == 0 else None


def test_vxlan_joins_a_segment_across_two_hosts(tmp_path):
    tag = "v" + secrets.token_hex(3)
    labns, guestns = "qlvx-lab", "qlvx-guest"
    with simulated_hosts(2, tag) as hosts:
        first, second = hosts
        inventory = _inventory(tmp_path / "inv.json", hosts, labns, guestns)

        checked = run_playbook(PLAYBOOK, inventory=inventory, check=True, diff=True)
        assert checked.changed(first.name) > 0
        planned = checked.result("VXLAN port", first.name)
        assert planned["changed"] and planned["after"]["vni"] == 4242 and planned["after"]["master"] == "br1"
        assert labns not in first.run(["ip", "netns", "list"]).stdout  # check mode made nothing

        applied = run_playbook(PLAYBOOK, inventory=inventory, diff=True)
        made = applied.result("VXLAN port", first.name)
        assert made["changed"] and made["after"] == planned["after"]
        for host, peer in ((first, second), (second, first)):
            link = _link(host, labns, "vx-%d" % peer.index)
            assert "vxlan id 4242 remote %s local %s" % (peer.underlay_address, host.underlay_address) in link
            assert "master br1" in link and "alias qemulab:%s" % LAB in link and "nolearning" in link
            # the underlay socket stays in the host's namespace; the lab namespace has no underlay address
            assert ":4789 " in host.run(["ss", "-Huln"]).stdout
            assert ":4789 " not in host.run(["ip", "netns", "exec", labns, "ss", "-Huln"]).stdout
            assert "192.0.2." not in host.run(["ip", "-n", labns, "-o", "addr"]).stdout
        assert _ping(first, guestns, "10.77.0.2") and _ping(second, guestns, "10.77.0.1")

        again = run_playbook(PLAYBOOK, inventory=inventory)
        assert again.changed(first.name) == 0 and again.changed(second.name) == 0

        # a foreign vxlan with a similar name: made by hand, not the lab's
        foreign = ["ip", "-n", labns, "link", "add", "vx-2-old", "type", "vxlan", "id", "99", "dstport", "4790"]
        assert first.run(foreign).returncode == 0

        renumbered = run_playbook(PLAYBOOK, inventory=_inventory(tmp_path / "inv2.json", hosts, labns, guestns,
                                                                 vni=5151), diff=True)
        recreated = renumbered.result("VXLAN port", first.name)
        assert recreated["changed"] and "vni" in recreated["changes"]
        assert recreated["diff"]["before"]["vni"] == 4242 and recreated["diff"]["after"]["vni"] == 5151
        assert "vxlan id 5151 " in _link(first, labns, "vx-2")
        assert renumbered.changed(first.name) == 1  # only the port; the bridge and guest port stay as they were
        assert _ping(first, guestns, "10.77.0.2")

        wrong_local = run_playbook(PLAYBOOK, inventory=_inventory(
            tmp_path / "inv3.json", hosts, labns, guestns, vni=5151, lab_underlay_address="192.0.2.99",
            port_name="vx-new"), expect_failure=True)
        message = wrong_local.result("VXLAN port", first.name)["msg"]
        assert "local: 192.0.2.99 is not an address of this lab host" in message
        assert _link(first, labns, "vx-new") is None

        removed = run_playbook(PLAYBOOK, inventory=_inventory(tmp_path / "inv4.json", hosts, labns, guestns,
                                                              vni=5151, vxlan_state="absent"))
        assert removed.result("VXLAN port", first.name)["changed"]
        assert _link(first, labns, "vx-2") is None and _link(second, labns, "vx-1") is None
        assert "vxlan id 99 " in _link(first, labns, "vx-2-old")
        assert not _ping(first, guestns, "10.77.0.2")
