"""Unit tests: a lab spread over several lab hosts (issue 17, docs/multi-host.md) - each host's share of VMs,
bridges, taps, host ports and VXLAN ports, the VNI formula, the MTU a segment through VXLAN gets, the guests'
connection through their lab host, and every validation message (host, field, value, fix)."""
import copy
import hashlib
import os
import re
import shlex

import pytest

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager

from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_placement
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
SEED_INVENTORY = os.path.join(REPO, "inventories", "seed")
# what simulated lab hosts look like to Ansible: SSH to their own 127.0.0.1 through a ProxyCommand into their netns
SIM = {
    "labhost1": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 22,
                 "ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
                 "ansible_ssh_common_args": "-o ProxyCommand='ip netns exec qsim-1 socat - TCP:%h:%p' "
                                            "-o StrictHostKeyChecking=no",
                 "lab_underlay_address": "192.0.2.11"},
    "labhost2": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 22,
                 "ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
                 "ansible_ssh_common_args": "-o ProxyCommand='ip netns exec qsim-2 socat - TCP:%h:%p' "
                                            "-o StrictHostKeyChecking=no",
                 "lab_underlay_address": "192.0.2.12"},
}
HOST2_VMS = ("rt2", "rt3", "rt4", "h2")


def _seed():
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[SEED_INVENTORY])
    variables = VariableManager(loader=loader, inventory=inventory)
    hostvars = dict((host.name, dict(variables.get_vars(host=host, include_hostvars=False)))
                    for host in inventory.get_hosts())
    return hostvars, inventory.get_groups_dict()


SEED = _seed()


def split_seed(hosts=("labhost1", "labhost2")):
    """The seed lab split as issue 17 says: rt1, h1, htest (and br1's host port) on the first lab host; rt2, rt3,
    rt4, h2 on the second. The lab-wide variables move from localhost to the first lab host."""
    hostvars, groups = copy.deepcopy(SEED)
    lab_wide = dict((k, v) for k, v in hostvars.pop("localhost").items() if k.startswith("lab_"))
    groups["hypervisors"] = list(hosts)
    for name in hosts:
        hostvars[name] = dict(copy.deepcopy(SIM[name]), **lab_wide)
    for vm in HOST2_VMS:
        hostvars[vm]["vm_hypervisor"] = hosts[1]
    return hostvars, groups


def share(plan, host):
    return plan["hosts"][host]


# -- placement ---------------------------------------------------------------------------------------------------
def test_each_lab_host_gets_its_own_vms_taps_bridges_and_host_ports():
    plan = compile_lab(*split_seed())
    assert plan["errors"] == []
    one, two = share(plan, "labhost1"), share(plan, "labhost2")
    assert [vm["name"] for vm in one["vms"]] == ["rt1", "h1", "htest"]
    assert [vm["name"] for vm in two["vms"]] == ["rt2", "rt3", "rt4", "h2"]
    assert sorted(t["name"] for t in one["links"]["taps"]) == ["vport11", "vport12", "vport13", "vport21", "vport31"]
    assert sorted(t["name"] for t in two["links"]["taps"]) == [
        "vport22", "vport32", "vport41", "vport42", "vport51", "vport52", "vport61", "vport62"]
    # br2 (rt1-rt2) and br3 (rt1-rt3) span both hosts: their bridge is on both
    assert [b["name"] for b in one["links"]["bridges"]] == ["br1", "br2", "br3"]
    assert [b["name"] for b in two["links"]["bridges"]] == ["br2", "br3", "br4", "br5", "br6"]
    assert [p["name"] for p in one["host_ports"]] == ["veth0"] and two["host_ports"] == []
    assert sorted(one["guests"]) == ["h1", "htest", "rt1"] and sorted(two["guests"]) == ["h2", "rt2", "rt3", "rt4"]
    # the guests' plays find every guest, wherever it runs
    assert sorted(plan["guests"]) == sorted(["rt1", "h1", "htest"] + list(HOST2_VMS))


def test_a_spanning_segment_gets_one_vxlan_port_per_other_host_on_each_end():
    plan = compile_lab(*split_seed())
    one, two = share(plan, "labhost1")["vxlans"], share(plan, "labhost2")["vxlans"]
    assert [(v["bridge"], v["local"], v["remote"], v["remote_host"]) for v in one] == [
        ("br2", "192.0.2.11", "192.0.2.12", "labhost2"), ("br3", "192.0.2.11", "192.0.2.12", "labhost2")]
    assert [(v["bridge"], v["local"], v["remote"], v["remote_host"]) for v in two] == [
        ("br2", "192.0.2.12", "192.0.2.11", "labhost1"), ("br3", "192.0.2.12", "192.0.2.11", "labhost1")]
    for mine, theirs in zip(one, two):
        assert (mine["name"], mine["vni"], mine["port"], mine["lab"], mine["netns"]) == (
            theirs["name"], theirs["vni"], 4789, "seed", "qemulab-seed")
    assert len(set(v["vni"] for v in one)) == 2


def test_three_hosts_make_a_full_mesh_of_unicast_tunnels_with_a_vni_per_pair():
    hostvars, groups = split_seed()
    hostvars["labhost3"] = dict(copy.deepcopy(SIM["labhost2"]), lab_underlay_address="192.0.2.13")
    groups["hypervisors"].append("labhost3")
    hostvars["rt3"]["vm_hypervisor"] = "labhost3"
    plan = compile_lab(hostvars, groups)
    assert plan["errors"] == []
    br3 = dict((host, [v for v in share(plan, host)["vxlans"] if v["bridge"] == "br3"]) for host in plan["hosts"])
    # br3 (rt1 on 1, rt3 on 3) and br5 (rt3 on 3, rt4 on 2): each host has one port per other host of the segment
    assert [v["remote_host"] for v in br3["labhost1"]] == ["labhost3"]
    assert br3["labhost2"] == []
    vnis = [v["vni"] for host in plan["hosts"] for v in share(plan, host)["vxlans"]]
    # one VNI per tunnel, seen from both ends; Linux refuses two ports with one VNI on one UDP port in a namespace
    for host in plan["hosts"]:
        names = [v["vni"] for v in share(plan, host)["vxlans"]]
        assert len(names) == len(set(names)), host
    assert all(vnis.count(n) == 2 for n in vnis)


# -- VNI and names -----------------------------------------------------------------------------------------------
def test_the_vni_is_the_documented_hash_of_lab_segment_and_host_pair():
    expected = int(hashlib.sha256(b"seed/br2/labhost1/labhost2").hexdigest()[:6], 16)
    assert _lab_placement.vni("seed", "br2", "labhost2", "labhost1") == expected
    plan = compile_lab(*split_seed())
    br2 = [v for v in share(plan, "labhost1")["vxlans"] if v["bridge"] == "br2"][0]
    assert br2["vni"] == expected and br2["name"] == "vx-%06x" % expected
    # another lab's tunnels differ, so two labs on the same hosts do not collide
    assert _lab_placement.vni("other", "br2", "labhost1", "labhost2") != expected


def test_a_vni_clash_within_the_lab_is_resolved_by_the_next_attempt(monkeypatch):
    real = _lab_placement.vni
    monkeypatch.setattr(_lab_placement, "vni", lambda lab, bridge, a, b, attempt=0: (
        4242 if attempt == 0 else real(lab, bridge, a, b, attempt)))
    plan = compile_lab(*split_seed())
    assert plan["errors"] == []
    vnis = [v["vni"] for v in share(plan, "labhost1")["vxlans"]]
    assert vnis == [4242, real("seed", "br3", "labhost1", "labhost2", 1)]
    assert [v["vni"] for v in share(plan, "labhost2")["vxlans"]] == vnis


def test_vxlan_port_names_pass_the_name_rule_and_fit_ifnamsiz():
    for number in (1, 0xabcdef, _lab_placement.VNI_MAX):
        name = _lab_placement.vxlan_name(number)
        assert check_name(name, "tap") is None and len(name.encode()) <= 15


def test_a_tap_named_like_a_vxlan_port_is_refused():
    hostvars, groups = split_seed()
    port = share(compile_lab(hostvars, groups), "labhost1")["vxlans"][0]["name"]
    hostvars["h1"]["vm_nics"][0]["tap"] = port
    errors = compile_lab(hostvars, groups)["errors"]
    assert errors == ["h1: vm_nics[0].tap %s is the name of the VXLAN port of segment br2 between labhost1 and "
                      "labhost2; give the tap another name" % port]


# -- MTU ---------------------------------------------------------------------------------------------------------
def test_a_spanning_segment_is_lowered_to_the_underlay_mtu_less_50_and_only_it():
    plan = compile_lab(*split_seed())
    one = share(plan, "labhost1")
    taps = dict((t["name"], t.get("mtu")) for t in one["links"]["taps"])
    assert taps == {"vport11": None, "vport21": 1450, "vport31": 1450, "vport12": None, "vport13": None}
    assert dict((b["name"], b.get("mtu")) for b in one["links"]["bridges"]) == {"br1": None, "br2": 1450,
                                                                                 "br3": 1450}
    assert [v["mtu"] for v in one["vxlans"]] == [1450, 1450]
    rt1 = [vm for vm in one["vms"] if vm["name"] == "rt1"][0]
    assert [nic.get("mtu") for nic in rt1["nics"][:3]] == [None, 1450, 1450]
    interfaces = [item["content"] for item in rt1["fw_cfg"] if item["name"] == "opt/qemulab/interfaces"][0]
    assert interfaces.count("    mtu 1450") == 2


def test_a_larger_underlay_mtu_carries_larger_frames():
    hostvars, groups = split_seed()
    hostvars["labhost1"]["lab_underlay_mtu"] = 9000
    plan = compile_lab(hostvars, groups)
    assert plan["errors"] == []
    assert [v["mtu"] for v in share(plan, "labhost2")["vxlans"]] == [8950, 8950]


def test_a_host_port_on_a_spanning_segment_gets_its_mtu():
    hostvars, groups = split_seed()
    hostvars["h1"]["vm_hypervisor"] = "labhost2"
    plan = compile_lab(hostvars, groups)
    assert plan["errors"] == []
    assert share(plan, "labhost1")["host_ports"][0]["mtu"] == 1450


def test_a_nic_mtu_too_large_for_vxlan_is_refused_with_the_figures():
    hostvars, groups = split_seed()
    for vm, index in (("rt1", 1), ("rt2", 0)):
        hostvars[vm]["vm_nics"][index]["mtu"] = 9000
    assert compile_lab(hostvars, groups)["errors"] == [
        "%s: vm_nics[%d].mtu 9000 does not fit segment br2, which spans lab hosts labhost1, labhost2 over VXLAN: "
        "lab_underlay_mtu 1500 less 50 bytes of VXLAN leaves 1450; give 1450 or less, or raise lab_underlay_mtu "
        "(the underlay must carry it)" % (vm, index) for vm, index in (("rt1", 1), ("rt2", 0))]


def test_a_single_host_lab_keeps_its_mtus_and_has_no_tunnels():
    hostvars, groups = copy.deepcopy(SEED)
    plan = compile_lab(hostvars, groups)
    host = share(plan, "localhost")
    assert plan["errors"] == []
    assert (host["vxlans"], host["segments"], host["connections"], host["jump_dir"]) == ([], [], {}, "")
    assert all("mtu" not in t for t in host["links"]["taps"]) and all("mtu" not in b for b in host["links"]["bridges"])


# -- validation --------------------------------------------------------------------------------------------------
def test_a_vm_on_a_host_outside_hypervisors_is_refused():
    hostvars, groups = split_seed()
    hostvars["rt2"]["vm_hypervisor"] = "labhost9"
    assert "rt2: vm_hypervisor 'labhost9' is not a host of group hypervisors (labhost1, labhost2); name one of " \
           "them" in compile_lab(hostvars, groups)["errors"]


def test_two_lab_hosts_with_one_underlay_address_are_refused():
    hostvars, groups = split_seed()
    hostvars["labhost2"]["lab_underlay_address"] = "192.0.2.11"
    assert compile_lab(hostvars, groups)["errors"] == [
        "labhost2: lab_underlay_address 192.0.2.11 is already the underlay address of labhost1; give every lab "
        "host its own address"]


def test_a_missing_underlay_address_is_refused_only_where_a_segment_spans():
    hostvars, groups = split_seed()
    del hostvars["labhost2"]["lab_underlay_address"]
    assert compile_lab(hostvars, groups)["errors"] == [
        "labhost2: lab_underlay_address is not set, but segment br2 spans lab hosts labhost1, labhost2; give the "
        "address this host's VXLAN tunnels use, one the other lab hosts reach, like 192.0.2.11"]
    # no segment spans when every VM is on one host: the second host needs no address
    for vm in HOST2_VMS:
        hostvars[vm]["vm_hypervisor"] = "labhost1"
    assert compile_lab(hostvars, groups)["errors"] == []


def test_an_underlay_address_that_is_not_an_address_at_all_is_refused():
    hostvars, groups = split_seed()
    hostvars["labhost1"]["lab_underlay_address"] = "192.0.2.300"
    errors = compile_lab(hostvars, groups)["errors"]
    assert errors[0].startswith("labhost1: lab_underlay_address '192.0.2.300' is not an IPv4 address; write it")


def lab_hosts(**addresses):
    return dict((host, {"mem_available_mib": 64000, "cpus": 4, "addresses": found})
                for host, found in addresses.items())


def test_an_underlay_address_the_host_does_not_have_is_refused_as_read_on_that_host():
    hostvars, groups = split_seed()
    found = lab_hosts(labhost1=[{"address": "127.0.0.1", "interface": "lo", "mtu": 65536},
                                {"address": "192.0.2.11", "interface": "under0", "mtu": 1500}],
                      labhost2=[{"address": "127.0.0.1", "interface": "lo", "mtu": 65536},
                                {"address": "192.0.2.21", "interface": "under0", "mtu": 1500}])
    assert compile_lab(hostvars, groups, lab_hosts=found)["errors"] == [
        "labhost2: lab_underlay_address 192.0.2.12 is not an address of this lab host (it has 192.0.2.21); give "
        "one of its own addresses that the other lab hosts reach"]


def test_an_underlay_interface_below_lab_underlay_mtu_is_refused():
    hostvars, groups = split_seed()
    hostvars["labhost1"]["lab_underlay_mtu"] = 9000
    found = lab_hosts(labhost1=[{"address": "192.0.2.11", "interface": "under0", "mtu": 9000}],
                      labhost2=[{"address": "192.0.2.12", "interface": "under0", "mtu": 1500}])
    assert compile_lab(hostvars, groups, lab_hosts=found)["errors"] == [
        "labhost2: lab_underlay_mtu 9000 is more than the MTU 1500 of under0, which carries lab_underlay_address "
        "192.0.2.12 on this lab host; set lab_underlay_mtu to 1500 or less, or raise that interface's MTU"]


def test_an_unreachable_lab_host_is_named_and_a_bring_up_refused():
    hostvars, groups = split_seed()
    found = lab_hosts(labhost1=[{"address": "192.0.2.11", "interface": "under0", "mtu": 1500}])
    found["labhost2"] = {"unreachable": True, "msg": "Failed to connect to the host via ssh: timed out"}
    plan = compile_lab(hostvars, groups, lab_hosts=found)
    assert plan["errors"] == [
        "labhost2: connection could not be reached (Failed to connect to the host via ssh: timed out); fix the lab "
        "host's connection variables or take its VMs elsewhere (vm_hypervisor)"]
    # a cleanup stops only for its own problems (lab name, namespace), and finds the reachable host's arguments
    assert plan["cleanup_errors"] == [] and sorted(plan["hosts"]) == ["labhost1", "labhost2"]


def test_each_lab_host_s_capacity_is_checked_against_its_own_vms():
    hostvars, groups = split_seed()
    found = lab_hosts(labhost1=[{"address": "192.0.2.11", "interface": "u", "mtu": 1500}],
                      labhost2=[{"address": "192.0.2.12", "interface": "u", "mtu": 1500}])
    found["labhost2"]["mem_available_mib"] = 3000  # four 1 GiB VMs do not fit; three on labhost1 would
    found["labhost1"]["mem_available_mib"] = 3500
    errors = compile_lab(hostvars, groups, lab_hosts=found)["errors"]
    assert len(errors) == 1 and errors[0].startswith("labhost2: vm_memory of the lab's 4 VMs adds up to 4096 MiB")


# -- reaching the guests ------------------------------------------------------------------------------------------
def _expand(template, tokens):
    """What ssh does to a ProxyCommand before its shell runs it: %% -> %, %h/%p -> the target."""
    return re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else tokens[m.group(1)], template)


def test_a_guest_on_a_remote_lab_host_jumps_through_it_with_the_host_s_own_connection_nested():
    plan = compile_lab(*split_seed())
    conn = share(plan, "labhost2")["connections"]["rt2"]
    assert conn["ansible_host"] == "127.0.0.1"
    assert conn["ansible_ssh_private_key_file"] == "/var/lib/qemulab/jump/seed/labhost2/id_ed25519"
    assert share(plan, "labhost2")["jump_dir"] == "/var/lib/qemulab/jump/seed/labhost2"
    args = shlex.split(conn["ansible_ssh_common_args"])  # as Ansible's ssh connection splits them
    assert args[:4] == ["-o", "UserKnownHostsFile=/var/lib/qemulab/jump/seed/labhost2/known_hosts",
                        "-o", "StrictHostKeyChecking=yes"]
    assert args[4] == "-o" and args[5].startswith("ProxyCommand=")
    # ssh expands the outer tokens, then its shell splits the command: the lab host's own ssh with its own options
    outer = shlex.split(_expand(args[5][len("ProxyCommand="):], {"h": "127.0.0.1", "p": "2202"}))
    assert outer == ["ssh", "-o", "BatchMode=yes", "-p", "22", "-l", "root",
                     "-o", "ProxyCommand=ip netns exec qsim-2 socat - TCP:%h:%p", "-o", "StrictHostKeyChecking=no",
                     "127.0.0.1", "-W", "127.0.0.1:2202"]
    # and the inner ProxyCommand's own tokens are left for the inner ssh
    inner = _expand(outer[8][len("ProxyCommand="):], {"h": "127.0.0.1", "p": "22"})
    assert shlex.split(inner) == ["ip", "netns", "exec", "qsim-2", "socat", "-", "TCP:127.0.0.1:22"]


def test_a_guest_on_a_local_lab_host_keeps_its_inventory_connection():
    hostvars, groups = split_seed()
    hostvars["labhost1"] = dict((k, v) for k, v in hostvars["labhost1"].items() if not k.startswith("ansible_ssh"))
    hostvars["labhost1"]["ansible_connection"] = "local"
    plan = compile_lab(hostvars, groups)
    assert plan["errors"] == []
    assert share(plan, "labhost1")["connections"] == {} and share(plan, "labhost1")["jump_dir"] == ""
    assert sorted(share(plan, "labhost2")["connections"]) == ["h2", "rt2", "rt3", "rt4"]


def test_a_quote_in_the_host_s_connection_stays_one_argument():
    hostvars, groups = split_seed()
    hostvars["labhost2"]["ansible_ssh_private_key_file"] = "/keys/it's here; rm -rf x"
    conn = share(compile_lab(hostvars, groups), "labhost2")["connections"]["h2"]
    command = shlex.split(conn["ansible_ssh_common_args"])[5][len("ProxyCommand="):]
    argv = shlex.split(_expand(command, {"h": "127.0.0.1", "p": "2206"}))
    assert argv[argv.index("-i") + 1] == "/keys/it's here; rm -rf x"


def test_a_remote_host_name_that_cannot_name_a_directory_is_refused():
    hostvars, groups = split_seed()
    hostvars["lab host/2"] = hostvars.pop("labhost2")
    groups["hypervisors"][1] = "lab host/2"
    for vm in HOST2_VMS:
        hostvars[vm]["vm_hypervisor"] = "lab host/2"
    errors = compile_lab(hostvars, groups)["errors"]
    assert errors == ["lab host/2: inventory_hostname 'lab host/2' cannot name the controller's directory of this "
                      "lab host's guest keys; use letters, digits, '.', '_' and '-' (set ansible_host for the "
                      "address)"]


# -- topology files ----------------------------------------------------------------------------------------------
def test_a_topology_file_places_nodes_with_host_on_its_hypervisors():
    from ansible_collections.qemulab.network.plugins.plugin_utils._topology import compile_topology, flatten
    data = {"plugin": "qemulab.network.topology", "lab": "split", "pool": "10.6.0.0/16", "ssh_port_base": 3300,
            "hypervisors": {"labhost1": dict(SIM["labhost1"]), "labhost2": dict(SIM["labhost2"])},
            "nodes": {"r1": {"role": "router"}, "r2": {"role": "router", "host": "labhost2"},
                      "h1": {"role": "host"}},
            "segments": [["r1", "r2"], ["r1", "h1"]]}
    inventory = compile_topology(data, "split.qemulab.yml")
    assert inventory["errors"] == []
    assert inventory["groups"]["hypervisors"] == ["labhost1", "labhost2"]
    assert inventory["host_vars"]["r2"]["vm_hypervisor"] == "labhost2"
    assert "vm_hypervisor" not in inventory["host_vars"]["r1"]
    plan = compile_lab(*flatten(inventory))
    assert [v["bridge"] for v in share(plan, "labhost2")["vxlans"]] == [
        v["bridge"] for v in share(plan, "labhost1")["vxlans"]] and len(share(plan, "labhost1")["vxlans"]) == 1
    data["nodes"]["r2"]["host"] = "labhost9"
    assert compile_topology(data, "split.qemulab.yml")["errors"] == [
        "split.qemulab.yml: the inventory made from it: r2: vm_hypervisor 'labhost9' is not a host of group "
        "hypervisors (labhost1, labhost2); name one of them"]


def test_the_way_out_s_segment_reaches_the_first_lab_host_like_a_host_port():
    hostvars, groups = split_seed()
    hostvars["labhost1"]["lab_uplink"] = {"bridge": "br6", "address": "10.20.60.254/24", "upstream": "eth0"}
    plan = compile_lab(hostvars, groups)
    assert plan["errors"] == []
    one = share(plan, "labhost1")
    assert "br6" in [b["name"] for b in one["links"]["bridges"]]
    assert [v["remote_host"] for v in one["vxlans"] if v["bridge"] == "br6"] == ["labhost2"]
