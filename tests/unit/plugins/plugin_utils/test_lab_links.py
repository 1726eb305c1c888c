"""A NIC's `netem` and `link` in the plan: checked by the schema's rules (each problem naming VM, field, value and
fix), normalised, rendered into the links stage's arguments and the guest's NICs, and never into qemu_vm's NICs
(which decide when a VM restarts)."""
import copy

import pytest

from ansible_collections.qemulab.network.plugins.filter.lab_plan import lab_plan

pytestmark = pytest.mark.unit

HOSTVARS = {
    "localhost": {"lab_name": "lk", "lab_netns": "lkns"},
    "r1": {"lab_name": "lk", "lab_netns": "lkns", "ansible_port": 2301,
           "vm_nics": [{"bridge": "bra", "tap": "ta1", "address": "10.9.1.1/24"},
                       {"bridge": "brb", "tap": "tb1", "address": "10.9.2.1/24",
                        "netem": {"delay": "50ms", "loss": "0%", "rate": "5mbit"}, "link": "down"}]},
    "h1": {"lab_name": "lk", "lab_netns": "lkns", "ansible_port": 2302, "vm_gateway": "10.9.1.1",
           "vm_nics": [{"bridge": "bra", "tap": "ta2", "address": "10.9.1.10/24"}]},
}
GROUPS = {"all": ["localhost", "r1", "h1"], "hypervisors": ["localhost"], "lab": ["r1", "h1"],
          "routers": ["r1"], "hosts": ["h1"]}


def plan_of(change=None):
    hostvars = copy.deepcopy(HOSTVARS)
    if change:
        change(hostvars)
    return lab_plan(hostvars, copy.deepcopy(GROUPS), check_files=False)


def test_netem_and_link_are_rendered_for_the_links_stage_and_the_guest():
    plan = plan_of()
    assert plan["errors"] == []
    host = plan["hosts"]["localhost"]
    assert host["nic_links"] == [
        {"vm": "r1", "dev": "eth0", "netdev": "net0", "tap": "ta1", "netns": "lkns", "link": "up", "netem": {}},
        {"vm": "r1", "dev": "eth1", "netdev": "net1", "tap": "tb1", "netns": "lkns", "link": "down",
         "netem": {"delay": 50000, "rate": 5000000}},
        {"vm": "h1", "dev": "eth0", "netdev": "net0", "tap": "ta2", "netns": "lkns", "link": "up", "netem": {}}]
    nic = plan["guests"]["r1"]["nics"][1]
    assert (nic["netem"], nic["link"]) == ({"delay": 50000, "rate": 5000000}, "down")


def test_netem_and_link_never_reach_qemu_vm_so_changing_them_restarts_nothing():
    def impair(hostvars):
        hostvars["r1"]["vm_nics"][1]["netem"] = {"delay": "10ms"}
        hostvars["r1"]["vm_nics"][1]["link"] = "up"
    assert plan_of()["hosts"]["localhost"]["vms"] == plan_of(impair)["hosts"]["localhost"]["vms"]


@pytest.mark.parametrize("netem,link,words", [
    ({"delay": "fast"}, "up", "r1: vm_nics[1].netem delay: 'fast' is not a time; write a number with us, ms "
                              "or s, like 40ms"),
    ({"loss": "2"}, "up", "loss: '2' is not a percentage; write a number from 0 to 100 with %, like 2%"),
    ({"rate": "10mbps"}, "up", "tc reads 'bps' as bytes per second"),
    ({"jitter": "5ms"}, "up", "jitter needs a delay"),
    ("40ms", "up", "'40ms' is not a mapping"),
    ({}, "sideways", "r1: vm_nics[1].link 'sideways' is not one of up, down"),
])
def test_bad_values_are_refused_naming_vm_field_value_and_fix(netem, link, words):
    def change(hostvars):
        hostvars["r1"]["vm_nics"][1].update(netem=netem, link=link)
    plan = plan_of(change)
    assert any(words in error for error in plan["errors"]), plan["errors"]
    assert plan["hosts"] == {}


def test_a_bare_yaml_boolean_link_reads_as_up_or_down():
    def change(hostvars):
        hostvars["r1"]["vm_nics"][1]["link"] = False
    assert plan_of(change)["hosts"]["localhost"]["nic_links"][1]["link"] == "down"


def test_a_down_link_keeps_its_tap_down_and_plans_no_pings_across_the_lab():
    down = plan_of()["hosts"]["localhost"]
    assert [t.get("up", True) for t in down["links"]["taps"]] == [True, False, True]
    assert down["guests"]["h1"]["pings"] == [] and down["host_port_pings"] == []

    def up(hostvars):
        hostvars["r1"]["vm_nics"][1]["link"] = "up"
    assert "up" not in str(plan_of(up)["hosts"]["localhost"]["links"]["taps"])
