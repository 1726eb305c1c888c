"""Unit tests: vm_connection is ssh unless a VM says console, reaches guest_network's arguments, and a console VM's
vm_nat is refused by the plan (NAT is configured over SSH)."""
import pytest

from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab

pytestmark = pytest.mark.unit

GROUPS = {"all": ["localhost", "rt1", "h1"], "ungrouped": [], "hypervisors": ["localhost"], "lab": ["rt1", "h1"],
          "routers": ["rt1"], "hosts": ["h1"]}


def hostvars(**rt1):
    return {
        "localhost": {"lab_name": "cons", "lab_netns": "", "inventory_dir": "/srv/x"},
        "rt1": dict({"ansible_port": 3001, "vm_memory": 256,
                     "vm_nics": [{"bridge": "ba", "tap": "ta1", "address": "10.77.0.1/24"},
                                 {"bridge": "bb", "tap": "tb1", "address": "10.77.1.1/24"}]}, **rt1),
        "h1": {"ansible_port": 3002, "vm_memory": 256, "vm_gateway": "10.77.0.1",
               "vm_nics": [{"bridge": "ba", "tap": "ta2", "address": "10.77.0.2/24"}]},
    }


def test_console_reaches_the_guest_arguments_and_ssh_is_the_default():
    plan = compile_lab(hostvars(vm_connection="console"), GROUPS, check_files=False)
    assert plan["errors"] == []
    guests = plan["hosts"]["localhost"]["guests"]
    assert guests["rt1"]["connection"] == "console" and guests["h1"]["connection"] == "ssh"


@pytest.mark.parametrize("value", ["telnet", "", 1, True])
def test_an_unknown_connection_is_refused_naming_vm_and_field(value):
    plan = compile_lab(hostvars(vm_connection=value), GROUPS, check_files=False)
    assert value == "" and plan["errors"] == [] or any("rt1" in e and "vm_connection" in e for e in plan["errors"])


def test_nat_on_a_console_vm_is_refused():
    nat = [{"type": "masquerade", "inside": "eth0", "outside": "eth1"}]
    assert compile_lab(hostvars(vm_nat=nat), GROUPS, check_files=False)["errors"] == []
    errors = compile_lab(hostvars(vm_nat=nat, vm_connection="console"), GROUPS, check_files=False)["errors"]
    assert any("rt1" in e and "vm_nat" in e and "vm_connection console" in e for e in errors), errors
