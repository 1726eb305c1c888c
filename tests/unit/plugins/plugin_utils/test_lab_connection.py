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


# -- a VM on its own root disk whose inventory does not say: what lab_host_info found in the disk decides -----------

DISK = "/srv/yocto/rt1.ext4"


def own_disk(**rt1):
    return hostvars(vm_kernel="/srv/yocto/bzImage", vm_disk=DISK, **rt1)


def lab_hosts(**seen):
    return {"localhost": {"mem_available_mib": 8192, "cpus": 2, "claim": None, "addresses": [],
                          "dpdk_segments": [], "disks": {DISK: dict({"path": DISK, "found": None}, **seen)}}}


def test_an_own_disk_without_an_ssh_server_is_reached_through_its_console_and_the_plan_says_why():
    seen = lab_hosts(ssh_server=False, reason="has no SSH server (/usr/sbin/sshd, /usr/sbin/dropbear)")
    plan = compile_lab(own_disk(), GROUPS, check_files=False, lab_hosts=seen)
    assert plan["errors"] == []
    assert plan["hosts"]["localhost"]["guests"]["rt1"]["connection"] == "console"
    rt1 = next(vm for vm in plan["vms"] if vm["name"] == "rt1")
    assert rt1["connection_reason"] == "vm_disk %s has no SSH server (/usr/sbin/sshd, /usr/sbin/dropbear)" % DISK
    # the built image's VM is not looked into: SSH
    assert plan["hosts"]["localhost"]["guests"]["h1"]["connection"] == "ssh"


@pytest.mark.parametrize("seen", [dict(ssh_server=True, found="/usr/sbin/dropbear", reason="has /usr/sbin/dropbear"),
                                  dict(ssh_server=None, reason="is not an ext2/3/4 file system debugfs can read"),
                                  None])
def test_an_own_disk_with_an_ssh_server_or_unreadable_or_not_looked_into_keeps_ssh(seen):
    plan = compile_lab(own_disk(), GROUPS, check_files=False, lab_hosts=lab_hosts(**seen) if seen else None)
    assert plan["errors"] == []
    assert plan["hosts"]["localhost"]["guests"]["rt1"]["connection"] == "ssh"


def test_the_inventory_wins_over_what_the_disk_holds():
    seen = lab_hosts(ssh_server=False, reason="has no SSH server")
    plan = compile_lab(own_disk(vm_connection="ssh"), GROUPS, check_files=False, lab_hosts=seen)
    assert plan["hosts"]["localhost"]["guests"]["rt1"]["connection"] == "ssh"


def test_nat_on_a_vm_found_without_ssh_server_names_the_disk_and_the_fix():
    nat = [{"type": "masquerade", "inside": "eth0", "outside": "eth1"}]
    seen = lab_hosts(ssh_server=False, reason="has no SSH server")
    errors = compile_lab(own_disk(vm_nat=nat), GROUPS, check_files=False, lab_hosts=seen)["errors"]
    assert any("rt1: vm_nat" in e and DISK in e and "vm_connection: ssh" in e for e in errors), errors
