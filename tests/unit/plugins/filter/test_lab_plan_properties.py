"""Property tests: any inventory, valid or mutated, gives either a complete plan with no errors or a non-empty error
list - never an exception - and a valid generated lab is always accepted and planned faithfully."""
import copy

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ansible_collections.qemulab.network.plugins.filter.lab_plan import lab_plan

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PLAN_KEYS = {"lab_name", "netns", "qemu_user", "run_dir", "hypervisor", "bridges", "taps", "host_ports", "vms", "errors"}
VM_KEYS = {"name", "kind", "hypervisor", "ssh_port", "memory_mb", "vcpus", "kernel", "initrd", "disk", "forwarding",
           "gateway", "routes", "nics", "mgmt_mac", "nat"}
NIC_KEYS = {"index", "dev", "backend", "bridge", "tap", "mac", "address", "model", "vhost", "net", "hostfwd"}


@st.composite
def valid_labs(draw):
    """A lab that must be accepted: distinct /24 segments, unique names, MACs, addresses and ports."""
    segment_count = draw(st.integers(1, 5))
    thirds = draw(st.lists(st.integers(0, 255), min_size=segment_count, max_size=segment_count, unique=True))
    segments = [("seg%d" % i, "10.77.%d" % third) for i, third in enumerate(thirds)]
    vm_count = draw(st.integers(1, 6))
    hostvars = {"localhost": {
        "lab_name": draw(st.from_regex(r"\A[a-z0-9-]{1,15}\Z")),
        "lab_netns": draw(st.sampled_from(["", "qlab-prop"])),
        "inventory_dir": "/srv/prop",
    }}
    groups = {"all": ["localhost"], "ungrouped": [], "hypervisors": ["localhost"], "lab": [], "routers": [],
              "hosts": []}
    next_host = {name: 1 for name, _ in segments}
    mac_counter = [0]
    used_segments = set()
    for index in range(vm_count):
        name = "vm%d" % index
        kind = draw(st.sampled_from(["routers", "hosts"]))
        groups[kind].append(name)
        groups["lab"].append(name)
        groups["all"].append(name)
        attached = draw(st.lists(st.sampled_from(segments), min_size=1, max_size=3, unique=True))
        nics = []
        for nic_index, (bridge, prefix) in enumerate(attached):
            used_segments.add(bridge)
            host_number = next_host[bridge]
            next_host[bridge] += 1
            nic = {"bridge": bridge, "tap": "t%d-%d" % (index, nic_index),
                   "address": "%s.%d/24" % (prefix, host_number)}
            if draw(st.booleans()):
                mac_counter[0] += 1
                nic["mac"] = "12:34:56:00:%02x:%02x" % divmod(mac_counter[0], 256)
            nic["model"] = draw(st.sampled_from(["virtio-net-pci", "e1000", "rtl8139"]))
            nic["vhost"] = draw(st.sampled_from(["auto", "off"] + (["on"] if nic["model"] == "virtio-net-pci" else [])))
            nics.append(nic)
        hostvars[name] = {
            "ansible_port": 3000 + index,
            "vm_nics": nics,
            "vm_memory": draw(st.sampled_from([256, "512M", "1G", "2048"])),
            "vm_vcpus": draw(st.integers(1, 4)),
        }
    # routes: from any VM to some other network via a neighbour's address on one of its segments
    by_segment = {}
    for name in groups["lab"]:
        for nic in hostvars[name]["vm_nics"]:
            by_segment.setdefault(nic["bridge"], []).append((name, nic["address"].split("/")[0]))
    for name in groups["lab"]:
        neighbours = [(seg, addr) for nic in hostvars[name]["vm_nics"] for seg, addr in
                      ((nic["bridge"], a) for n, a in by_segment[nic["bridge"]] if n != name)]
        if neighbours and draw(st.booleans()):
            seg, via = draw(st.sampled_from(neighbours))
            hostvars[name]["vm_routes"] = [{"to": "10.99.%d.0/24" % draw(st.integers(0, 255)), "via": via}]
            if name in groups["hosts"] and draw(st.booleans()):
                hostvars[name]["vm_gateway"] = via
    bridge, prefix = draw(st.sampled_from([s for s in segments if s[0] in used_segments]))
    if draw(st.booleans()):
        hostvars["localhost"]["lab_host_ports"] = [{"name": "hp0", "peer": "hp1", "bridge": bridge,
                                                    "address": "%s.250/24" % prefix, "routes": []}]
    return hostvars, groups


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=20) | st.sampled_from(
        ["10.77.0.1/24", "10.77.0.1", "12:34:56:00:00:01", "1G", "br1", "x" * 16, "default", "0.0.0.0/0"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)


def assert_complete_or_refused(plan):
    assert set(plan) == PLAN_KEYS
    assert isinstance(plan["errors"], list)
    assert all(isinstance(error, str) and error for error in plan["errors"])
    if plan["errors"]:
        return
    assert plan["vms"], "an accepted plan has VMs"
    for vm in plan["vms"]:
        assert set(vm) == VM_KEYS
        assert isinstance(vm["ssh_port"], int) and 1024 <= vm["ssh_port"] <= 65535
        assert vm["mgmt_mac"] and vm["memory_mb"] > 0 and vm["vcpus"] > 0
        for nic in vm["nics"]:
            assert set(nic) == NIC_KEYS
            assert nic["mac"]
            assert (nic["bridge"] and nic["tap"]) if nic["backend"] == "tap" else (nic["net"] and nic["address"])
        for route in vm["routes"]:
            assert route["dev"] in [nic["dev"] for nic in vm["nics"]]
    macs = [nic["mac"] for vm in plan["vms"] for nic in vm["nics"]] + [vm["mgmt_mac"] for vm in plan["vms"]]
    assert len(macs) == len(set(macs))
    taps = [tap["name"] for tap in plan["taps"]]
    assert len(taps) == len(set(taps))


@SETTINGS
@given(valid_labs())
def test_a_valid_lab_is_accepted_and_planned_faithfully(lab):
    hostvars, groups = lab
    plan = lab_plan(copy.deepcopy(hostvars), groups)
    assert plan["errors"] == []
    assert_complete_or_refused(plan)
    assert [vm["name"] for vm in plan["vms"]] == groups["lab"]
    for vm in plan["vms"]:
        wanted = hostvars[vm["name"]]["vm_nics"]
        assert [(n["bridge"], n["tap"], n["address"]) for n in vm["nics"]] == [
            (n["bridge"], n["tap"], n["address"]) for n in wanted]
        assert vm["kind"] == ("router" if vm["name"] in groups["routers"] else "host")
        assert vm["forwarding"] is (vm["kind"] == "router")
    assert [b["name"] for b in plan["bridges"]] == sorted({n["bridge"] for vm in plan["vms"] for n in vm["nics"]})
    # stable: the same inventory gives the same plan
    assert lab_plan(copy.deepcopy(hostvars), groups) == plan


FIELDS_OF_A_VM = ["vm_nics", "vm_routes", "vm_gateway", "vm_memory", "vm_vcpus", "ansible_port", "vm_forwarding",
                  "vm_kernel", "vm_initrd", "vm_disk", "vm_hypervisor"]
FIELDS_OF_A_NIC = ["bridge", "tap", "mac", "address", "model", "vhost"]
LAB_FIELDS = ["lab_name", "lab_netns", "lab_host_ports"]


@SETTINGS
@given(valid_labs(), st.data())
def test_a_mutated_lab_gives_a_complete_plan_or_errors_never_an_exception(lab, data):
    hostvars, groups = copy.deepcopy(lab)
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(["vm", "nic", "lab", "group"]))
        junk = data.draw(JUNK)
        if where == "lab":
            hostvars["localhost"][data.draw(st.sampled_from(LAB_FIELDS))] = junk
        elif where == "group":
            groups[data.draw(st.sampled_from(["routers", "hosts", "lab", "hypervisors"]))] = junk
        else:
            name = data.draw(st.sampled_from([n for n in hostvars if n != "localhost"]))
            if where == "vm":
                hostvars[name][data.draw(st.sampled_from(FIELDS_OF_A_VM))] = junk
            else:
                current = hostvars[name].get("vm_nics")
                nics = [nic for nic in current if isinstance(nic, dict)] if isinstance(current, list) else []
                if nics:  # an earlier mutation may have replaced the NIC list itself
                    nic = nics[data.draw(st.integers(0, len(nics) - 1))]
                    nic[data.draw(st.sampled_from(FIELDS_OF_A_NIC))] = junk
    plan = lab_plan(hostvars, groups)
    event("refused" if plan["errors"] else "accepted")
    assert_complete_or_refused(plan)
    owners = set(hostvars) | {"lab"} | {name for members in groups.values() if isinstance(members, list)
                                        for name in members if isinstance(name, str)}
    for error in plan["errors"]:
        assert error.split(": ", 1)[0] in owners, "%r names no host" % error
        assert ";" in error, "%r offers no fix" % error


@SETTINGS
@given(valid_labs(), st.sampled_from(["mac", "tap", "address", "port"]))
def test_a_duplicated_identity_is_always_refused(lab, what):
    hostvars, groups = copy.deepcopy(lab)
    names = groups["lab"]
    first = hostvars[names[0]]
    # a second VM copying the first VM's first NIC identity (or its port) must be caught
    copier = {"ansible_port": 3999, "vm_nics": [dict(first["vm_nics"][0], tap="tcopy", mac="12:34:56:ff:ff:fe")]}
    copier["vm_nics"][0]["address"] = first["vm_nics"][0]["address"].rsplit(".", 1)[0] + ".249/24"
    if what == "mac":
        first["vm_nics"][0]["mac"] = "12:34:56:ff:ff:fe"
    elif what == "tap":
        copier["vm_nics"][0]["tap"] = first["vm_nics"][0]["tap"]
    elif what == "address":
        copier["vm_nics"][0]["address"] = first["vm_nics"][0]["address"]
    else:
        copier["ansible_port"] = first["ansible_port"]
    hostvars["copier"] = copier
    for group in ("all", "lab", "hosts"):
        groups[group].append("copier")
    assert lab_plan(hostvars, groups)["errors"]


@SETTINGS
@given(st.dictionaries(st.text(max_size=6), JUNK, max_size=4), st.dictionaries(
    st.sampled_from(["all", "lab", "routers", "hosts", "hypervisors"]), JUNK | st.lists(st.text(max_size=4)),
    max_size=5))
def test_arbitrary_junk_never_raises(hostvars, groups):
    assert_complete_or_refused(lab_plan(hostvars, groups))
