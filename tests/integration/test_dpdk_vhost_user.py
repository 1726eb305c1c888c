"""Two guests of the default image on one user-space (DPDK) segment, twice:

- with the modules alone: dpdk_datapath runs dpdk-testpmd between two vhost-user sockets, qemu_vm starts each guest
  with a backend vhost-user NIC on one of them, and the guests ping and run iperf3 across it (the only path between
  them), driven over their serial console (qemulab-init leaves a root shell there: they have no other NIC). The
  datapath is idempotent, and state=absent gives back exactly the hugepages it added and leaves no process, mount or
  DPDK runtime directory behind.
- through lab.yml, from an inventory with `backend: vhost-user`: the bring-up starts the datapath before the VMs
  (which boot, not clone, and say why), its verify stage pings across the segment, the guests run iperf3 over SSH,
  the status names the datapath, a re-run changes nothing, and the cleanup stops testpmd and gives back exactly the
  hugepages the lab reserved (nr_hugepages as before), leaving no file; a second cleanup changes nothing.

Alone in `make test` (marker `alone`): hugepages are the whole machine's (the tests compare nr_hugepages before and
after), and testpmd polls one of the host's CPUs at 100 % while it runs.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import VENV_PYTHON, unique_name
from faultlab import GUEST_KEY, LAB_STATE_DIR, _RunnableLab, failure_text, free_port

pytestmark = [pytest.mark.integration, pytest.mark.alone]

RUN_ROOT = "/run/qemulab"
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
MACS = ("52:54:00:d1:00:01", "52:54:00:d1:00:02")
ADDRS = ("10.251.0.1", "10.251.0.2")
needs_testpmd = pytest.mark.skipif(shutil.which("dpdk-testpmd") is None,
                                   reason="dpdk-testpmd is not installed (Debian package dpdk-dev)")


def _hugepages():
    with open(NR_HUGEPAGES) as f:
        return int(f.read())


def _interfaces(address):
    return "auto lo eth0\niface lo inet loopback\n\niface eth0 inet static\n    address %s\n    netmask 255.255.255.0\n" % (
        address)


IMAGE_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: The default guest image (cached after the first build)
      ansible.builtin.include_role:
        name: qemulab.network.guest_image
      vars:
        guest_image_prune: false
    - name: Its paths
      ansible.builtin.debug:
        msg: "{{ {'kernel': guest_image_kernel, 'initrd': guest_image_initrd, 'disk': guest_image_disk,
                  'append': guest_image_append} }}"
"""


def _datapath_play(lab, state="present"):
    return """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: datapath
      qemulab.network.dpdk_datapath:
        lab: %s
        segment: dp1
        ports: [a-eth0, b-eth0]
        state: %s
""" % (lab, state)


def _vm_task(lab, name, image, overlay, sock, mac, address, state="running"):
    return """
    - name: vm %(name)s
      qemulab.network.qemu_vm:
        name: %(name)s
        lab: %(lab)s
        state: %(state)s
        accelerator: tcg
        memory: 256
        kernel: %(kernel)s
        initrd: %(initrd)s
        append: "%(append)s qemulab.hostname=%(name)s qemulab.nics=%(mac)s"
        disks: [{file: %(overlay)s, format: qcow2}]
        nics: [{backend: vhost-user, socket: %(sock)s, mac: "%(mac)s"}]
        fw_cfg: [{name: opt/qemulab/interfaces, content: %(interfaces)s}]
""" % dict(name=name, lab=lab, state=state, kernel=image["kernel"], initrd=image["initrd"], append=image["append"],
           overlay=overlay, sock=sock, mac=mac, interfaces=json.dumps(_interfaces(address)))


class Console:
    """The guest's serial root shell through QEMU's console socket; commands end with a marker and their status."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(0.5)

    def run(self, command, timeout):
        marker = "QLEND%d" % int(time.monotonic() * 1000)
        # the marker split in the echoed command line, whole only in the output
        self.sock.sendall(("%s; echo %s''%s $?\n" % (command, marker[:3], marker[3:])).encode())
        buf, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(marker.encode() + rb" (\d+)", buf)
            if m:
                return int(m.group(1)), buf.decode(errors="replace")
            try:
                buf += self.sock.recv(65536)
            except socket.timeout:
                pass
        return None, buf.decode(errors="replace")


def _wait_shell(console_log, timeout=120):
    """qemulab-init starts the console shell last, after ifup -a: its banner means eth0 is configured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(console_log, "rb") as f:
                if b"Enter 'help'" in f.read():
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _pids(wanted):
    """PIDs of the processes whose argv (a list of bytes) `wanted` accepts."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if wanted(argv):
                pids.append(int(entry))
    return pids


def _qemu_pids(path):
    return _pids(lambda argv: b"qemu" in argv[0] and any(path.encode() in arg for arg in argv))


@needs_testpmd
def test_two_vms_on_a_vhost_user_segment_ping_and_run_iperf3(playbook, tmp_path):
    lab = unique_name("qdp")
    lab_dir = os.path.join(RUN_ROOT, lab)
    pages_before = _hugepages()
    image = playbook(IMAGE_PLAY)
    assert image.rc == 0, image
    image = image.result("Its paths")["msg"]
    overlays = [str(tmp_path / ("%s.qcow2" % name)) for name in ("a", "b")]
    socks = [os.path.join(lab_dir + ".dpdk", "dp1", "%s-eth0.sock" % name) for name in ("a", "b")]
    try:
        first = playbook(_datapath_play(lab))
        assert first.rc == 0 and first.changed() == 1, first
        sockets = first.result("datapath")["sockets"]
        assert sockets == {"a-eth0": socks[0], "b-eth0": socks[1]}
        assert _hugepages() == pages_before + 80
        for check in (True, False):
            again = playbook(_datapath_play(lab), check=check)
            assert again.rc == 0 and again.changed() == 0, again
        for overlay in overlays:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image["disk"], "-F", "raw", overlay],
                           check=True)
        vms = playbook("- hosts: localhost\n  gather_facts: false\n  tasks:" + "".join(
            _vm_task(lab, name, image, overlays[i], socks[i], MACS[i], ADDRS[i])
            for i, name in enumerate(("a", "b"))))
        assert vms.rc == 0, vms
        for name in ("a", "b"):
            assert _wait_shell(os.path.join(lab_dir, name, "console", "console.log")), (
                "guest %s never reached its console shell; QEMU log: %s" % (name, open(
                    os.path.join(lab_dir, name, "qemu.log")).read()[-2000:]))
        a, b = (Console(os.path.join(lab_dir, name, "console.sock")) for name in ("a", "b"))
        rc, out = a.run("ping -c 5 -W 3 %s" % ADDRS[1], 60)
        assert rc == 0 and "5 packets received" in out, out
        b.run("iperf3 -s -D -1", 20)
        time.sleep(1)
        rc, out = a.run("iperf3 -c %s -t 5 -f m" % ADDRS[1], 90)
        assert rc == 0, out
        received = [float(m) for m in re.findall(r"([\d.]+) Mbits/sec\s+receiver", out)]
        assert received and received[0] > 1, out
        # both QEMUs still run: the TCG vhost-user crash (docs/dpdk.md) would have ended them at link-up
        assert len(_qemu_pids(lab_dir)) == 2
    finally:
        stop = playbook("- hosts: localhost\n  gather_facts: false\n  tasks:" + "".join(
            _vm_task(lab, name, image, overlays[i], socks[i], MACS[i], ADDRS[i], state="absent")
            for i, name in enumerate(("a", "b"))))
        for pid in _qemu_pids(lab_dir):
            os.kill(pid, signal.SIGKILL)
        gone = playbook(_datapath_play(lab, "absent"))
        prefix = "qemulab-%s-dp1" % lab
        leftovers = _pids(lambda argv: prefix.encode() in argv)
        shutil.rmtree(lab_dir, ignore_errors=True)
    assert stop.rc == 0, stop
    assert not os.path.exists(lab_dir + ".dpdk")
    assert gone.rc == 0 and gone.changed() == 1, gone
    assert _hugepages() == pages_before
    assert leftovers == []
    assert not os.path.exists(os.path.join("/var/run/dpdk", prefix))
    with open("/proc/mounts") as f:
        assert lab_dir not in f.read()


class DpdkLab(_RunnableLab):
    """Hosts a and b, each with one vhost-user NIC on segment dpa and the management NIC lab.yml gives every VM."""

    VMS = ("a", "b")

    def __init__(self, tmp_path):
        self.name, self.netns = unique_name("qdl"), unique_name("qdlns")
        self.dir = str(tmp_path)
        self.inventory = os.path.join(self.dir, "inventory")
        self.ports = dict((vm, free_port()) for vm in self.VMS)
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")
        files = {
            "hosts.yml": {"all": {"children": {
                "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                        "ansible_python_interpreter": VENV_PYTHON}}},
                "lab": {"children": {"routers": {"hosts": {}}, "hosts": {"hosts": {"a": None, "b": None}}}},
            }}},
            "group_vars/all.yml": {"lab_name": self.name, "lab_netns": self.netns},
            "group_vars/lab.yml": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                                   "ansible_ssh_private_key_file": GUEST_KEY,
                                   "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes"
                                                              % self.known_hosts,
                                   "ansible_python_interpreter": "/usr/bin/python3", "vm_memory": "256M"},
        }
        for index, vm in enumerate(self.VMS):
            files["host_vars/%s.yml" % vm] = {"ansible_port": self.ports[vm], "vm_nics": [
                {"bridge": "dpa", "backend": "vhost-user", "address": ADDRS[index] + "/24"}]}
        for rel, data in files.items():
            path = os.path.join(self.inventory, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(data, f)  # JSON is YAML

    def ssh(self, vm, command, timeout=120):
        argv = ["ssh", "-i", GUEST_KEY, "-p", str(self.ports[vm]), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + self.known_hosts,
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "root@127.0.0.1", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def testpmds(self):
        prefix = ("qemulab-%s-" % self.name).encode()
        return _pids(lambda argv: any(arg.startswith(prefix) for arg in argv) and b"testpmd" in argv[0])


def _status_lines(run):
    return run.result("Show each VM, its state, addresses, SSH and console")["msg"]


@needs_testpmd
def test_lab_yml_runs_a_vhost_user_segment_and_its_cleanup_gives_the_hugepages_back(tmp_path):
    pages_before = _hugepages()
    lab = DpdkLab(tmp_path)
    datapath_dir = os.path.join(RUN_ROOT, lab.name + ".dpdk")
    cleaned = False
    try:
        up = lab.run()
        assert up.rc == 0, failure_text(up) or up
        # the verify stage pinged b's vhost-user address from a and a's from b (the segment is their only path)
        assert _hugepages() == pages_before + 80
        assert len(lab.testpmds()) == 1
        status = _status_lines(up)
        assert [line for line in status if line.startswith("segment dpa: DPDK datapath dpdk-testpmd pid %d, 1 polling "
                                                           "core(s), 80 hugepages" % lab.testpmds()[0])], status
        # the template's RAM is not shared memory (_qemu_clone.clone_problem): both guests booted, none was cloned
        assert len([line for line in status if line.split()[:1] == ["(boot)"]]) == 2, status
        assert len([line for line in status if "booted instead of being cloned: a vhost-user NIC needs guest memory "
                    "in a shared memory backend" in line]) == 2, status
        ping = lab.ssh("a", "ping -c 3 -W 3 %s" % ADDRS[1])
        assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping
        server = lab.ssh("b", "iperf3 -s -D -1")
        assert server.returncode == 0, server
        time.sleep(1)
        iperf = lab.ssh("a", "iperf3 -c %s -t 3 -f m" % ADDRS[1])
        received = [float(m) for m in re.findall(r"([\d.]+) Mbits/sec\s+receiver", iperf.stdout)]
        assert iperf.returncode == 0 and received and received[0] > 1, iperf
        again = lab.run()
        assert again.rc == 0, failure_text(again) or again
        assert dict((host, again.changed(host)) for host in ("localhost",) + lab.VMS) == {
            "localhost": 0, "a": 0, "b": 0}
        gone = lab.cleanup()
        left = lab.leftovers()
        assert gone.rc == 0, failure_text(gone) or gone
        assert left == {"processes": [], "files": [], "netns": False}, left
        assert lab.testpmds() == [] and _hugepages() == pages_before
        assert not os.path.exists(datapath_dir)
        assert not os.path.exists(os.path.join("/var/run/dpdk", "qemulab-%s-dpa" % lab.name))
        second = lab.cleanup()
        assert second.rc == 0 and second.changed() == 0, failure_text(second) or second
        cleaned = True
    finally:
        if not cleaned:
            lab.cleanup()  # a failed case's lab: the playbook's own cleanup first, then what it could not remove
        for pid in lab.testpmds():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while lab.testpmds() and time.monotonic() < deadline:
            time.sleep(0.2)  # a killed testpmd holds its hugetlbfs until it is gone
        lab.force_remove()
        shutil.rmtree(os.path.join("/var/run/dpdk", "qemulab-%s-dpa" % lab.name), ignore_errors=True)
        with open("/proc/mounts") as f:
            mounted = [line.split()[1] for line in f if datapath_dir in line]
        for path in mounted:
            subprocess.run(["umount", "-l", path], capture_output=True)
        shutil.rmtree(datapath_dir, ignore_errors=True)
        # a failed cleanup's hugepages: given back only down to what the machine had before this test
        if _hugepages() > pages_before:
            with open(NR_HUGEPAGES, "w") as f:
                f.write("%d\n" % pages_before)
