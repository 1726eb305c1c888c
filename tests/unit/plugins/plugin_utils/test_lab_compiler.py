"""Unit tests: what the compiler adds beyond the old plan - a NIC option carried to every module that uses it, an
inventory without a hypervisors group, the capacity check, and the errors a cleanup stops for."""
import copy

import pytest

from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import (
    QEMU_OVERHEAD_MIB, QEMU_SHARED_MIB, compile_lab)

pytestmark = pytest.mark.unit

HOSTVARS = {
    "localhost": {"lab_name": "lab1", "lab_netns": "qlab1"},
    "r1": {"ansible_port": 2401, "vm_memory": "512M",
           "vm_nics": [{"bridge": "br-a", "tap": "ta1", "address": "10.1.1.1/24", "mtu": 4000},
                       {"bridge": "br-b", "tap": "tb1", "address": "10.1.2.1/24"}]},
    "a1": {"ansible_port": 2402, "vm_gateway": "10.1.1.1",
           "vm_nics": [{"bridge": "br-a", "tap": "ta2", "address": "10.1.1.2/24", "mtu": 4000, "model": "e1000"}]},
}
GROUPS = {"all": ["localhost", "r1", "a1"], "ungrouped": [], "hypervisors": ["localhost"], "lab": [],
          "routers": ["r1"], "hosts": ["a1"]}


def lab(**changes):
    hostvars, groups = copy.deepcopy(HOSTVARS), copy.deepcopy(GROUPS)
    for host, values in changes.items():
        hostvars[host].update(values)
    return hostvars, groups


def test_a_nic_mtu_reaches_the_tap_the_bridge_qemu_and_the_guest_file():
    plan = compile_lab(*lab())
    assert plan["errors"] == []
    host = plan["hosts"]["localhost"]
    taps = dict((t["name"], t) for t in host["links"]["taps"])
    assert taps["ta1"]["mtu"] == 4000 and taps["ta2"]["mtu"] == 4000 and "mtu" not in taps["tb1"]
    assert [b for b in host["links"]["bridges"] if b["name"] == "br-a"] == [
        {"name": "br-a", "arp_ignore": 1, "mtu": 4000}]
    r1 = [vm for vm in host["vms"] if vm["name"] == "r1"][0]
    assert r1["nics"][0]["mtu"] == 4000 and "mtu" not in r1["nics"][1]
    interfaces = r1["fw_cfg"][0]["content"]
    assert "iface eth0 inet static" in interfaces and "    mtu 4000" in interfaces
    assert interfaces.count("mtu") == 1


def test_nics_of_one_bridge_must_agree_on_the_mtu():
    hostvars, groups = lab()
    del hostvars["a1"]["vm_nics"][0]["mtu"]
    errors = compile_lab(hostvars, groups)["errors"]
    assert errors == ["a1: vm_nics[0].mtu 1500 (unset) differs from 4000 on bridge br-a (set by r1 vm_nics[0].mtu); "
                      "give every NIC of a segment the same mtu"]


def test_without_a_hypervisors_group_the_lab_host_is_localhost_and_lab_vars_come_from_all():
    hostvars, groups = lab()
    del groups["hypervisors"]
    lab_wide = hostvars.pop("localhost")
    groups["all"].remove("localhost")
    for name in ("r1", "a1"):  # group_vars/all reach every host
        hostvars[name].update(lab_wide)
    plan = compile_lab(hostvars, groups)
    assert plan["errors"] == []
    assert plan["hypervisor"] == "localhost" and list(plan["hosts"]) == ["localhost"]
    assert plan["lab_name"] == "lab1" and plan["netns"] == "qlab1"


def test_capacity_is_checked_with_qemus_overhead_and_lab_overcommit_lifts_it():
    hostvars, groups = lab()
    wanted = 512 + 1024 + 2 * QEMU_OVERHEAD_MIB + QEMU_SHARED_MIB
    assert compile_lab(hostvars, groups, host_resources={"mem_available_mib": wanted, "cpus": 2})["errors"] == []
    errors = compile_lab(hostvars, groups, host_resources={"mem_available_mib": wanted - 1, "cpus": 2})["errors"]
    assert errors == ["localhost: vm_memory of the lab's 2 VMs adds up to 1536 MiB, plus %d MiB for QEMU itself (%d "
                      "MiB per VM and %d shared), but the lab host has %d MiB available; give the VMs less "
                      "vm_memory, run fewer VMs, or set lab_overcommit: true to start them anyway"
                      % (2 * QEMU_OVERHEAD_MIB + QEMU_SHARED_MIB, QEMU_OVERHEAD_MIB, QEMU_SHARED_MIB, wanted - 1)]
    hostvars["r1"]["vm_vcpus"] = 3
    errors = compile_lab(hostvars, groups, host_resources={"mem_available_mib": wanted, "cpus": 2})["errors"]
    assert errors == ["r1: vm_vcpus 3 is more than the 2 CPUs of the lab host; give at most 2, or set "
                      "lab_overcommit: true"]
    hostvars["localhost"]["lab_overcommit"] = True
    assert compile_lab(hostvars, groups, host_resources={"mem_available_mib": 10, "cpus": 1})["errors"] == []


@pytest.mark.parametrize("name", ["", ".", "..", "../../etc", "a/b", "x$(touch /tmp/x)", "Seed", "a" * 16])
def test_a_cleanup_stops_for_a_bad_lab_name_only(name):
    hostvars, groups = lab(localhost={"lab_name": name}, a1={"vm_memory": "8M"})
    plan = compile_lab(hostvars, groups)
    assert len(plan["cleanup_errors"]) == 1 and plan["cleanup_errors"][0].startswith("localhost: lab_name ")
    assert plan["hosts"] == {}
    # a broken VM does not stop the cleanup of a well-named lab
    hostvars["localhost"]["lab_name"] = "lab1"
    plan = compile_lab(hostvars, groups)
    assert plan["cleanup_errors"] == [] and plan["errors"]


@pytest.mark.parametrize("force", [False, True])
def test_a_cleanup_honours_another_inventorys_claim_unless_forced(force):
    """Issue 14: an inventory may clean up only a lab it claims; lab_cleanup_force lets it, a bring-up never."""
    hostvars, groups = lab(localhost={"inventory_dir": "/srv/mine", "lab_cleanup_force": force})
    plan = compile_lab(hostvars, groups, claims={"lab1": "/srv/theirs"})
    claimed = "localhost: lab_name lab1 is already claimed by the running lab of inventory /srv/theirs"
    assert [error for error in plan["errors"] if error.startswith(claimed)] != []
    assert "lab_cleanup_force: true" in plan["errors"][0]
    assert plan["cleanup_errors"] == ([] if force else [plan["errors"][0]])
    # its own claim, or none, stops nothing
    for claims in ({"lab1": "/srv/mine/"}, {}, {"other": "/srv/theirs"}):
        plan = compile_lab(hostvars, groups, claims=claims)
        assert plan["errors"] == [] and plan["cleanup_errors"] == []


def test_lab_cleanup_force_must_be_a_boolean_and_then_forces_nothing():
    hostvars, groups = lab(localhost={"inventory_dir": "/srv/mine", "lab_cleanup_force": "yes"})
    plan = compile_lab(hostvars, groups, claims={"lab1": "/srv/theirs"})
    assert any(error.startswith("localhost: lab_cleanup_force ") for error in plan["errors"])
    assert len(plan["cleanup_errors"]) == 1 and "already claimed" in plan["cleanup_errors"][0]


def test_a_plan_refused_only_for_a_claim_is_still_rendered_for_a_forced_cleanup():
    hostvars, groups = lab(localhost={"inventory_dir": "/srv/mine", "lab_cleanup_force": True})
    plan = compile_lab(hostvars, groups, claims={"lab1": "/srv/theirs"})
    assert len(plan["errors"]) == 1 and list(plan["hosts"]) == ["localhost"]
    hostvars["a1"]["vm_memory"] = "8M"  # a defect of the inventory: nothing is rendered
    assert compile_lab(hostvars, groups, claims={"lab1": "/srv/theirs"})["hosts"] == {}
