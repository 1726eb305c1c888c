"""Clones (docs/clones.md) on real guests: the link lab of linklab.py brought up with vm_launch's default
(vm_launch_boot: clone), every VM restored from the booted template of its machine and NIC layout.

    h1 (10.71.1.10) -- lkbra -- (10.71.1.1) r1 (10.71.2.1) -- lkbrb -- h2 (10.71.2.20)

One bring-up, then in order: each VM was restored (its QEMU loaded the template's state: -incoming, boot "clone";
its RAM a private mapping of the template's RAM file, pages shared with the other clones of that template) and came
out as itself (hostname, the inventory's MACs on ethN, its own management MAC, its own SSH host key, the right time, a
reseeded RNG) configured by its ip commands, routes across r1; a re-run changes nothing; a VM whose QEMU ends is
started again from its own disk (booted, not cloned: the disk is newer than any template, and the status says so); cleanup leaves
nothing."""
import json
import os
import signal
import time

import pytest

from faultlab import failure_text
from hostsnapshot import lab_qemu_processes
from linklab import ADDRESSES, MACS, own_link_lab

from ansible_collections.qemulab.network.plugins.module_utils import _qemu_clone

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

NAT_TASK = "Keep the router's NAT rules and the addresses it translates onto as planned"


def stored(lab, vm):
    """What qemu_vm recorded at the VM's last start (its run directory's fingerprint.json)."""
    with open(os.path.join("/run/qemulab", lab.name, vm, "fingerprint.json")) as f:
        return json.load(f)


def ram_mapping_shared_kib(pid, path):
    """KiB of QEMU `pid`'s mapping of the file `path` that other processes map too (smaps Shared_Clean/Dirty)."""
    total, current = 0, False
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and ":" not in head[0]:
                current = len(head) >= 6 and head[5] == path
            elif current and head[0] in ("Shared_Clean:", "Shared_Dirty:"):
                total += int(head[1])
    return total


@pytest.fixture(scope="module")
def clone_lab():
    yield from own_link_lab()


def test_every_vm_is_a_clone_that_comes_out_as_itself(clone_lab):
    lab = clone_lab
    templates, rams = set(), {}
    for vm in lab.VMS:
        record = stored(lab, vm)
        assert record["boot"] == "clone", (vm, record.get("boot_reason"))
        argv = record["argv"]
        # its RAM is the template's `ram` file mapped privately; the state (device state only) is loaded after
        # x-ignore-shared is set over QMP
        assert "-incoming" in argv and argv[argv.index("-incoming") + 1] == "defer", argv
        backend = argv[argv.index("-object") + 1]
        assert backend.startswith("memory-backend-file,id=ram,size=%dM," % record["config"]["memory"]), backend
        assert backend.endswith(",share=off") and argv[argv.index("-machine") + 1] == "memory-backend=ram", argv
        ram = backend.split("mem-path=")[1].split(",share=")[0]
        template_dir = os.path.dirname(ram)
        assert os.path.basename(ram) == _qemu_clone.RAM and os.path.isfile(os.path.join(template_dir, "state"))
        rams[vm] = ram
        # every NIC is a device on the command line with the VM's own MAC (its template has the same devices)
        nic_macs = [arg.split("mac=")[1].split(",")[0] for arg in argv if arg.startswith("virtio-net-pci,")]
        assert nic_macs[:-1] == [MACS[(vm, i)] for i in range(2 if vm == "r1" else 1)], argv
        templates.add(record["config"]["disks"][0]["file"])
    assert len(templates) == len(lab.VMS)  # each its own overlay
    # the hosts (one NIC each) are clones of one template: one RAM file, pages in the page cache both map
    assert rams["h1"] == rams["h2"] != rams["r1"], rams
    for ram in set(rams.values()):
        st = os.stat(ram)
        manifest = json.load(open(os.path.join(os.path.dirname(ram), "manifest.json")))
        assert manifest["inputs"]["ram"] == "file" and st.st_size == manifest["inputs"]["memory"] * 2 ** 20
        assert st.st_blocks * 512 < st.st_size // 2, (ram, st)  # sparse: only the pages the template touched
        assert os.path.getsize(os.path.join(os.path.dirname(ram), "state")) < 8 * 2 ** 20  # no RAM pages in it
    shared = {}
    for vm in ("h1", "h2"):
        pid = int(open(os.path.join("/run/qemulab", lab.name, vm, "qemu.pid")).read())
        shared[vm] = ram_mapping_shared_kib(pid, rams[vm])
    assert all(kib > 1024 for kib in shared.values()), shared

    mgmt_macs, host_keys, randoms = set(), set(), set()
    for vm in lab.VMS:
        assert lab.ok(vm, "hostname") == vm
        for index in range(2 if vm == "r1" else 1):
            assert lab.ok(vm, "cat /sys/class/net/eth%d/address" % index) == MACS[(vm, index)]
        mgmt_macs.add(lab.ok(vm, "cat /sys/class/net/mgmt0/address"))
        host_keys.add(lab.ok(vm, "ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key | cut -d' ' -f2"))
        guest_now = int(lab.ok(vm, "date +%s"))
        assert abs(guest_now - time.time()) < 10, (vm, guest_now, time.time())
        randoms.add(lab.ok(vm, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"))
    assert _qemu_clone.TEMPLATE_MGMT_MAC not in mgmt_macs and len(mgmt_macs) == len(lab.VMS), mgmt_macs
    assert len(host_keys) == len(lab.VMS), host_keys
    assert len(randoms) == len(lab.VMS), randoms

    out = lab.ok("h1", "ping -c 3 -W 2 %s" % ADDRESSES[("h2", 0)])
    assert " 0% packet loss" in out, out


def test_every_vm_came_up_configured_by_its_ip_commands(clone_lab):
    """The init applied the lab's configuration as busybox ip commands (fw_cfg opt/qemulab/ip), not with ifup -a,
    and got it exactly right: the bring-up's config stage found nothing to change on any guest."""
    lab = clone_lab
    for vm in lab.VMS:
        assert lab.ok(vm, "test -s /run/qemulab-ip && test ! -e /run/network/ifup.log && echo by-ip") == "by-ip", vm
        steps = [line.split()[1] for line in lab.ok(vm, "cat /run/qemulab-init.times").splitlines()]
        assert steps[-3:] == ["fw_cfg", "network", "sshd"] and "go" in steps, (vm, steps)
        # started by this run with exactly its plan in fw_cfg: not even read over SSH
        for task in ("Read the guest's addresses, routes, forwarding and configuration files",
                     "Apply addresses, routes and forwarding to the running guest",
                     "Write the guest's interfaces file in the seed's format", "Persist IP forwarding"):
            res = lab.up.result("qemulab.network.guest_network : " + task, vm)
            assert res.get("skipped") is True, (vm, task, res)
    # a router this run started holds no NAT rules, and none are planned: its nat table is not read
    res = lab.up.result("qemulab.network.router_nat : " + NAT_TASK, "r1")
    assert res.get("skipped") is True, res


def test_a_rerun_changes_nothing(clone_lab):
    again = clone_lab.run()
    assert again.rc == 0, failure_text(again) or again
    assert {host: again.changed(host) for host in again.stats} == dict((host, 0) for host in again.stats), again
    # guests this run did not start are read and compared, never trusted
    for vm in clone_lab.VMS:
        res = again.result("qemulab.network.guest_network : Read the guest's addresses, routes, forwarding and "
                           "configuration files", vm)
        assert not res.get("skipped") and res.get("rc") == 0, (vm, res)
    res = again.result("qemulab.network.router_nat : " + NAT_TASK, "r1")
    assert not res.get("skipped") and res.get("rules") == {}, res


def test_a_vm_started_again_boots_from_its_own_disk_and_says_why(clone_lab):
    lab = clone_lab
    lab.ok("h2", "echo kept > /root/mark && sync")
    before = set(lab_qemu_processes(lab.name))
    pid = int(open(os.path.join("/run/qemulab", lab.name, "h2", "qemu.pid")).read())
    assert pid in before
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while os.path.exists("/proc/%d" % pid) and time.time() < deadline:
        time.sleep(0.1)

    again = lab.run()
    assert again.rc == 0, failure_text(again) or again
    record = stored(lab, "h2")
    assert record["boot"] == "boot" and "wrote since it first started" in record["boot_reason"], record
    assert "-incoming" not in record["argv"]
    assert lab.ok("h2", "cat /root/mark") == "kept"
    assert lab.ok("h2", "hostname") == "h2"
    out = lab.ok("h1", "ping -c 3 -W 2 %s" % ADDRESSES[("h2", 0)])
    assert " 0% packet loss" in out, out
    # the others kept running, untouched
    for vm in ("r1", "h1"):
        assert stored(lab, vm)["boot"] == "clone"
    status = lab.run(tags="status")
    text = json.dumps(status.data)
    assert "h2 booted instead of being cloned: its disk holds what it wrote since it first started" in text, text[-3000:]
