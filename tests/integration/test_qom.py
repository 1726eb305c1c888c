"""QEMU's object model, on show (issue 19): the link lab of linklab.py (clones, vm_launch's default) read through
QMP by qemu_vm_info's `qom` option, which the status play asks for, and the status table built from it.

    h1 (10.71.1.10) -- lkbra -- (10.71.1.1) r1 (10.71.2.1) -- lkbrb -- h2 (10.71.2.20)

One bring-up, then in order: every lab NIC is reported from QOM with the inventory's MAC (its device's and the one
it filters on: a clone's guest moved it there from its template's), link up and its netdev, and the management NIC
with the MAC its guest set after the restore; `link: down` on r1's eth1 (applied with --tags links) reads down in QEMU, as the guest's carrier
does; the plan changed back to up without applying it is flagged by the status table; applying it reads up again."""
import pytest

from faultlab import failure_text
from hostsnapshot import lab_qemu_processes
from linklab import MACS, own_link_lab

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

READ = "Read the lab's VMs and their NICs from QMP"
STATUS = "Show each VM, its state, addresses, SSH and console"


@pytest.fixture(scope="module")
def qom_lab():
    yield from own_link_lab()


def status(lab):
    """(qemu_vm_info's VMs by name, the status table's lines) of a --tags status run."""
    res = lab.run(tags="status")
    assert res.rc == 0, failure_text(res) or res
    return dict((vm["name"], vm) for vm in res.result(READ)["vms"]), res.result(STATUS)["msg"]


def lab_nic(vm_info, index):
    nics = [n for n in vm_info["qom_nics"] if n["netdev"] == "net%d" % index]
    assert len(nics) == 1, vm_info["qom_nics"]
    return nics[0]


def vm_lines(table, vm):
    """The table's lines of one VM: its first line (the name in the first column) up to the next VM's."""
    out, inside = [], False
    for line in table:
        first = line.split(" ", 1)[0]
        if first:
            inside = first == vm
        if inside:
            out.append(line)
    return out


def apply_links(lab):
    pids = sorted(lab_qemu_processes(lab.name))
    res = lab.run(tags="links")
    assert res.rc == 0, failure_text(res) or res
    assert sorted(lab_qemu_processes(lab.name)) == pids, "a VM restarted"


def test_each_nic_is_reported_as_qemu_sees_it(qom_lab):
    lab = qom_lab
    vms, table = status(lab)
    for vm in lab.VMS:
        info = vms[vm]
        assert info["state"] == "running" and info["qom_error"] is None, info
        count = 2 if vm == "r1" else 1
        for index in range(count):
            nic = lab_nic(info, index)
            assert nic["qom_path"].startswith("/machine/peripheral-anon/"), nic  # on the command line
            assert nic["type"] == "virtio-net-pci", nic
            assert nic["mac"] == nic["main_mac"] == MACS[(vm, index)], nic
            assert (nic["link"], nic["link_source"]) == ("up", "virtio-net config status (legacy I/O BAR)"), nic
            assert nic["vhost"] is not None and nic["vhost_source"] in ("argv", "record"), nic
        # the management NIC (the netdev after the lab's): QEMU's rx-filter holds the MAC the guest uses
        mgmt = lab_nic(info, count)
        assert mgmt["main_mac"] == lab.ok(vm, "cat /sys/class/net/mgmt0/address"), mgmt
        lines = vm_lines(table, vm)
        reported = [line for line in lines if "QEMU reports" in line]
        assert len(reported) == 1, lines
        for index in range(count):
            assert "eth%d=%s link up" % (index, MACS[(vm, index)]) in reported[0], lines
        assert not any("DIFFERS" in line for line in lines), lines


def test_a_link_down_reads_down_in_qemu_and_a_plan_that_differs_is_flagged(qom_lab):
    lab = qom_lab
    lab.set_nic("r1", 1, link="down")
    apply_links(lab)
    assert lab.ok("r1", "cat /sys/class/net/eth1/carrier") == "0"
    vms, table = status(lab)
    assert lab_nic(vms["r1"], 1)["link"] == "down", vms["r1"]["qom_nics"]
    assert lab_nic(vms["r1"], 0)["link"] == "up", vms["r1"]["qom_nics"]
    lines = vm_lines(table, "r1")
    assert any("eth1=%s link down" % MACS[("r1", 1)] in line for line in lines if "QEMU reports" in line), lines
    assert not any("DIFFERS" in line for line in lines), lines  # down, as planned

    # the plan says up again, not applied yet: QEMU still has it down, and the table says so
    lab.set_nic("r1", 1, link=None)
    vms, table = status(lab)
    assert lab_nic(vms["r1"], 1)["link"] == "down"
    lines = vm_lines(table, "r1")
    assert any("DIFFERS" in line and "eth1 link down in QEMU, plan up" in line for line in lines), lines
    assert not any("DIFFERS" in line for vm in ("h1", "h2") for line in vm_lines(table, vm)), table

    apply_links(lab)
    assert lab.ok("r1", "cat /sys/class/net/eth1/carrier") == "1"
    vms, table = status(lab)
    assert lab_nic(vms["r1"], 1)["link"] == "up"
    assert not any("DIFFERS" in line for line in table), table
