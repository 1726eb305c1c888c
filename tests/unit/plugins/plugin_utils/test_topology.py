"""Unit tests: a topology file compiled into the classic inventory - its shape, names, MACs, ports and addresses
that stay put when the file grows, and bad input reported naming the file, the place, the value and the fix."""
import copy

import pytest
import yaml

from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab, derived_mac
from ansible_collections.qemulab.network.plugins.plugin_utils._topology import (
    compile_topology, default_port_base, flatten)

pytestmark = pytest.mark.unit

BASE = yaml.safe_load("""
plugin: qemulab.network.topology
lab: grow
pool: 10.5.0.0/16
ssh_port_base: 3100
defaults: {memory: 256M}
nodes:
  r1: {role: router}
  r2: {role: router, vcpus: 2}
  h1: {role: host}
segments:
  - [r1, r2]
  - {members: [r2, h1, {lab_host: {name: vport0, peer: vport1}}], mtu: 4000}
""")


def compiled(data):
    return compile_topology(copy.deepcopy(data), "grow.qemulab.yml")


def errors(change):
    data = copy.deepcopy(BASE)
    change(data)
    return compiled(data)["errors"]


def test_the_output_is_the_classic_inventory_with_concrete_values():
    result = compiled(BASE)
    assert result["errors"] == []
    assert result["groups"] == {"hypervisors": ["localhost"], "lab": [], "routers": ["r1", "r2"], "hosts": ["h1"]}
    assert result["children"] == {"lab": ["routers", "hosts"]}
    assert result["group_vars"]["all"] == {
        "lab_name": "grow", "lab_netns": "qemulab-grow",
        "lab_host_ports": [{"name": "vport0", "peer": "vport1", "bridge": "br2", "address": "10.5.1.3/24",
                            "routes": [{"to": "10.5.0.0/24", "via": "10.5.1.1"}]}]}
    assert result["group_vars"]["lab"] == {
        "ansible_host": "127.0.0.1", "ansible_user": "root",
        "ansible_ssh_private_key_file": "/var/lib/qemulab/ssh/id_ed25519",
        "ansible_ssh_common_args": "-o UserKnownHostsFile=/var/lib/qemulab/labs/grow/known_hosts "
                                   "-o StrictHostKeyChecking=yes",
        "ansible_python_interpreter": "/usr/bin/python3", "vm_memory": "256M"}
    assert result["host_vars"]["r2"] == {
        "ansible_port": 3101, "vm_vcpus": 2,
        "vm_nics": [{"bridge": "br1", "tap": "t1-2", "mac": derived_mac("grow", "r2", "br1"), "address": "10.5.0.2/24"},
                    {"bridge": "br2", "tap": "t2-1", "mac": derived_mac("grow", "r2", "br2"), "address": "10.5.1.1/24",
                     "mtu": 4000}]}
    assert result["host_vars"]["h1"]["vm_gateway"] == "10.5.1.1"
    assert result["host_vars"]["r1"]["vm_routes"] == [{"to": "10.5.1.0/24", "via": "10.5.0.2"}]
    # the lab compiler takes it as it is
    plan = compile_lab(*flatten(result), check_files=False)
    assert plan["errors"] == [] and plan["netns"] == "qemulab-grow"
    assert [(vm["name"], vm["ssh_port"], vm["memory_mb"], vm["vcpus"]) for vm in plan["vms"]] == [
        ("r1", 3100, 256, 1), ("r2", 3101, 256, 2), ("h1", 3102, 256, 1)]


def test_names_macs_ports_and_addresses_stay_when_a_node_and_a_segment_are_appended():
    before = compiled(BASE)
    grown = copy.deepcopy(BASE)
    grown["nodes"]["r3"] = {"role": "router"}
    grown["segments"].append(["r3", "r1"])
    grown["segments"][1]["members"].append("r3")
    after = compiled(grown)
    assert after["errors"] == []
    for name in ("r1", "r2", "h1"):
        old, new = before["host_vars"][name], after["host_vars"][name]
        assert new["ansible_port"] == old["ansible_port"]
        assert new["vm_nics"][:len(old["vm_nics"])] == old["vm_nics"], name
    assert after["group_vars"]["all"]["lab_host_ports"][0]["address"] == "10.5.1.3/24"
    assert [n["tap"] for n in after["host_vars"]["r3"]["vm_nics"]] == ["t2-4", "t3-1"]
    assert after["host_vars"]["r3"]["ansible_port"] == 3103


def test_the_default_port_block_is_chosen_by_the_lab_name_and_stays_below_the_ephemeral_range():
    data = copy.deepcopy(BASE)
    del data["ssh_port_base"]
    base = default_port_base("grow")
    assert base % 100 == 0 and 20000 <= base <= 29900
    assert [compiled(data)["host_vars"][n]["ansible_port"] for n in ("r1", "r2", "h1")] == [base, base + 1, base + 2]
    assert default_port_base("grow") == base and len({default_port_base("lab%d" % i) for i in range(20)}) > 10


def test_member_overrides_and_given_subnets():
    data = copy.deepcopy(BASE)
    data["segments"][0] = {"members": [{"r1": {"address": "10.20.10.1", "mac": "12:34:56:AB:CD:71", "tap": "vport11",
                                               "model": "e1000"}}, "r2"], "subnet": "10.20.10.0/24", "name": "br-x"}
    result = compiled(data)
    assert result["errors"] == []
    assert result["host_vars"]["r1"]["vm_nics"] == [{"bridge": "br-x", "tap": "vport11", "mac": "12:34:56:AB:CD:71",
                                                     "address": "10.20.10.1/24", "model": "e1000"}]
    # r2 takes the lowest address the override left free; the second segment still gets the pool's first /24
    assert result["host_vars"]["r2"]["vm_nics"][0]["address"] == "10.20.10.2/24"
    assert result["host_vars"]["r2"]["vm_nics"][1]["address"] == "10.5.0.1/24"


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(lab="Grow"),
     "grow.qemulab.yml: lab 'Grow' is not a lab name (it contains 'G'); use lower-case letters, digits and '-', "
     "starting with a letter or digit, at most 15 characters"),
    (lambda d: d["nodes"].update(r1={"role": "switch"}),
     "grow.qemulab.yml: nodes.r1.role 'switch' is not router or host; write role: router or role: host"),
    (lambda d: d["nodes"]["r2"].update(memory="5X"),
     "grow.qemulab.yml: nodes.r2.memory '5X' is not a memory size; give MiB as an integer or a size like 512M or 1G"),
    (lambda d: d["nodes"]["r2"].update(colour="red"),
     "grow.qemulab.yml: nodes.r2.colour is not a known key; use only role, memory, vcpus, image, ssh_port, "
     "forwarding, routes, gateway, nat, user_nics, host, vars"),
    (lambda d: d["nodes"]["r2"].update(vars={"vm_nics": []}),
     "grow.qemulab.yml: nodes.r2.vars.vm_nics is derived from the node's field segments (and user_nics); set that "
     "instead"),
    (lambda d: d["segments"].append(["r1", "nobody"]),
     "grow.qemulab.yml: segments[2].members[1] 'nobody' is not a node of this file; name one of r1, r2, h1, or "
     "lab_host"),
    (lambda d: d["segments"].append({"members": ["r1"], "name": "a-very-long-bridge"}),
     "grow.qemulab.yml: segments[2].name 'a-very-long-bridge' is 18 characters long; a bridge name has at most 15, "
     "pick a shorter one"),
    (lambda d: d["segments"].append({"members": ["r1"], "name": "br1"}),
     "grow.qemulab.yml: segments[2].name br1 is also the name of segments[0].name (given or derived); give every "
     "bridge, tap and host port its own name"),
    (lambda d: d["segments"].append({"members": [{"r1": {"address": "10.9.9.9/24"}}], "subnet": "10.5.7.0/24"}),
     "grow.qemulab.yml: segments[2].members[0].r1.address 10.9.9.9/24 is not in the segment's subnet 10.5.7.0/24; "
     "give an address in it"),
    (lambda d: d["segments"].append({"members": ["r1", "h1", "r2"], "subnet": "10.5.7.0/30"}),
     "grow.qemulab.yml: segments[2].subnet 10.5.7.0/30 has too few addresses for 3 members; give a larger subnet"),
    (lambda d: d["segments"][1].update(mac="x"),
     "grow.qemulab.yml: segments[1].mac is not a known key; use only members, subnet, name, model, vhost, mtu, netem, link"),
    (lambda d: d["segments"].__setitem__(0, [{"r1": {"mac": "01:00:00:00:00:01"}}, "r2"]),
     "grow.qemulab.yml: segments[0].members[0].r1.mac 01:00:00:00:00:01 is a multicast MAC; a NIC needs a unicast "
     "one (even first octet)"),
    (lambda d: d.pop("pool"),
     "grow.qemulab.yml: segments[0] has no subnet: the file has no pool; give the segment a subnet or the file a "
     "(larger) pool"),
    (lambda d: d["nodes"]["h1"].update(ssh_port=3100),
     "grow.qemulab.yml: nodes.h1.ssh_port 3100 is also node r1's derived port (ssh_port_base + its position); pin "
     "another port or change ssh_port_base"),
    (lambda d: d.update(plugin="qemulab.network.topologies"),
     "grow.qemulab.yml: plugin 'qemulab.network.topologies' is not qemulab.network.topology; write plugin: "
     "qemulab.network.topology"),
])
def test_a_bad_value_names_the_file_the_place_the_value_and_the_fix(change, expected):
    assert expected in errors(change)


def test_an_unroutable_topology_is_a_problem_before_any_inventory_is_made():
    def split(data):
        data["nodes"]["h2"] = {"role": "host"}
        data["nodes"]["r9"] = {"role": "router"}
        data["segments"].append(["h2"])
        data["segments"].append(["r9"])
    result = compile_topology(copy.deepcopy(BASE), "x")
    assert result["errors"] == []
    data = copy.deepcopy(BASE)
    split(data)
    result = compiled(data)
    assert result["host_vars"] == {} and result["groups"] == {}
    assert result["errors"] == [
        "grow.qemulab.yml: nodes.r1 has no router path to segments[2] (br3, 10.5.2.0/24), segments[3] (br4, "
        "10.5.3.0/24); add a router joining them to the rest of the lab, or drop them",
        "grow.qemulab.yml: nodes.r2 has no router path to segments[2] (br3, 10.5.2.0/24), segments[3] (br4, "
        "10.5.3.0/24); add a router joining them to the rest of the lab, or drop them",
        "grow.qemulab.yml: nodes.r9 has no router path to segments[0] (br1, 10.5.0.0/24), segments[1] (br2, "
        "10.5.1.0/24), segments[2] (br3, 10.5.2.0/24); add a router joining them to the rest of the lab, or drop "
        "them",
        "grow.qemulab.yml: segment member lab_host has no router path to segments[2] (br3, 10.5.2.0/24), "
        "segments[3] (br4, 10.5.3.0/24); add a router joining them to the rest of the lab, or drop them",
        "grow.qemulab.yml: nodes.h2 has no router on its segments, so it cannot reach segments[0] (br1, "
        "10.5.0.0/24), segments[1] (br2, 10.5.1.0/24), segments[3] (br4, 10.5.3.0/24); put a router on one of its "
        "segments",
    ]


def test_what_only_the_lab_compiler_knows_is_reported_through_it():
    data = copy.deepcopy(BASE)
    data["nodes"]["r1"]["nat"] = [{"type": "masquerade", "inside": "eth0", "outside": "eth7"}]
    assert compiled(data)["errors"] == [
        "grow.qemulab.yml: the inventory made from it: r1: vm_nat[0].outside 'eth7' is not an addressed tap NIC of "
        "this VM; name one of eth0"]


def test_a_segments_netem_and_link_reach_every_member_nic_and_a_member_overrides_them():
    data = copy.deepcopy(BASE)
    data["segments"][0] = {"members": ["r1", {"r2": {"netem": {"delay": "5ms"}}}], "netem": {"delay": "40ms"},
                           "link": "down"}
    result = compiled(data)
    assert result["errors"] == []
    r1, r2 = result["host_vars"]["r1"]["vm_nics"][0], result["host_vars"]["r2"]["vm_nics"][0]
    assert (r1["netem"], r1["link"]) == ({"delay": "40ms"}, "down")
    assert (r2["netem"], r2["link"]) == ({"delay": "5ms"}, "down")
    assert "netem" not in result["host_vars"]["r2"]["vm_nics"][1]
    bad = errors(lambda d: d["segments"].__setitem__(0, {"members": ["r1", "r2"], "netem": {"loss": "lots"}}))
    assert any("segments[0].netem" in e and "'lots' is not a percentage" in e for e in bad), bad
