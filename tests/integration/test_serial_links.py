"""Serial links between two VMs (lab_serial_links, docs/serial-links.md): a PPP link and a SLIP link between two
routers on the default image, real guests brought up by lab.yml, one bring-up for every check.

rt1 and rt2 share an Ethernet segment (br) and two null-modem cables: ttyS1 carries PPP (10.99.0.1 - 10.99.0.2),
ttyS2 SLIP (10.99.1.1 - 10.99.1.2). rt1's QEMU serves both sockets in its run directory, rt2's connects. Both are
clones of a template with the two extra UARTs (the layout includes them).
"""
import json
import os
import re
import secrets
import subprocess
import tempfile
import time

import pytest
import yaml

from conftest import VENV_PYTHON
from faultlab import GUEST_KEY, LAB_STATE_DIR, _RunnableLab, failure_text, free_port

pytestmark = pytest.mark.integration

PPP = ("10.99.0.1", "10.99.0.2")
SLIP = ("10.99.1.1", "10.99.1.2")


class SerialLab(_RunnableLab):
    VMS = ("rt1", "rt2")

    def __init__(self):
        suffix = secrets.token_hex(3)
        self.name, self.netns = "qls" + suffix, "qlsns" + suffix
        self.dir = tempfile.mkdtemp(prefix="qemulab-serial-")
        self.ports = dict((vm, free_port()) for vm in self.VMS)
        routers = dict((vm, {"ansible_port": self.ports[vm],
                             "vm_nics": [{"bridge": "br" + suffix, "tap": "t%d%s" % (i, suffix),
                                          "address": "10.98.0.%d/24" % (i + 1)}]})
                       for i, vm in enumerate(self.VMS))
        inventory = {"all": {
            "vars": {"lab_name": self.name, "lab_netns": self.netns, "lab_serial_links": [
                {"between": ["rt1", "rt2"], "protocol": "ppp", "addresses": list(PPP)},
                {"between": ["rt1", "rt2"], "protocol": "slip", "addresses": list(SLIP)}]},
            "children": {
                "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                        "ansible_python_interpreter": VENV_PYTHON}}},
                "lab": {"vars": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                                 "ansible_ssh_private_key_file": GUEST_KEY,
                                 "ansible_python_interpreter": "/usr/bin/python3", "vm_memory": "256M"},
                        "children": {"routers": {"hosts": routers}}}}}}
        self.inventory = os.path.join(self.dir, "hosts.yml")
        with open(self.inventory, "w") as f:
            yaml.safe_dump(inventory, f)
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")

    def ssh(self, vm, command, timeout=120):
        return subprocess.run(["ssh", "-i", GUEST_KEY, "-p", str(self.ports[vm]), "-o", "BatchMode=yes",
                               "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + self.known_hosts,
                               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "root@127.0.0.1", command],
                              capture_output=True, text=True, timeout=timeout)

    def run_dir(self, vm=None):
        return os.path.join("/run/qemulab", self.name, *([vm] if vm else []))


@pytest.fixture(scope="module")
def lab():
    lab = SerialLab()
    try:
        lab.up = lab.run()
        assert lab.up.rc == 0, failed_tasks(lab.up)
        yield lab
    finally:
        res = lab.cleanup()
        left = lab.leftovers()
        lab.force_remove()
        assert res.rc == 0 and left == {"processes": [], "files": [], "netns": False}, \
            "cleanup of %s: %s; it left %s" % (lab.name, failure_text(res) or res, left)


def failed_tasks(res):
    """Each failed task's name, host, message and output (a raw task's "non-zero return code" says nothing alone)."""
    return "\n".join("%s on %s: %s %s %s" % (name, host, result.get("msg", ""), result.get("stdout", "")[-500:],
                                            result.get("stderr", "")[-500:])
                     for name, host, result in res.tasks() if result.get("failed")) or res


def wait_ping(lab, vm, address, timeout=90):
    """PPP negotiates once both ends run: ping until the first answer, then the proof is a clean 3-packet ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.ssh(vm, "ping -c 1 -W 2 %s" % address).returncode == 0:
            break
        time.sleep(2)
    return lab.ssh(vm, "ping -c 3 -W 3 %s" % address)


def test_the_cable_is_a_unix_socket_served_by_the_first_vm_and_both_are_clones(lab):
    sockets = sorted(os.listdir(lab.run_dir("rt1")))
    assert "serial0.sock" in sockets and "serial1.sock" in sockets, sockets
    assert not [name for name in os.listdir(lab.run_dir("rt2")) if name.startswith("serial")]
    for vm in lab.VMS:
        with open(os.path.join(lab.run_dir(vm), "fingerprint.json")) as f:
            stored = json.load(f)
        argv = " ".join(stored["argv"])
        assert "isa-serial,chardev=serial1,index=1" in argv and "isa-serial,chardev=serial2,index=2" in argv, argv
        # the template's layout has the two UARTs: the VM was restored from it, not booted
        assert stored["boot"] == "clone", (vm, stored.get("boot_reason"))
    assert "reconnect=1" in " ".join(json.load(open(os.path.join(lab.run_dir("rt2"), "fingerprint.json")))["argv"])


def test_ppp_carries_ip_between_the_routers(lab):
    link = lab.ssh("rt1", "ip -d link show ppp0; ip -4 addr show dev ppp0")
    assert link.returncode == 0 and "link/ppp" in link.stdout, (link.stdout, link.stderr)
    assert "inet %s peer %s/32" % PPP in link.stdout, link.stdout
    ping = wait_ping(lab, "rt1", PPP[1])
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, (ping.stdout, ping.stderr)
    # the other end is rt2's ttyS1, its own pppd
    peer = lab.ssh("rt2", "ip -d link show ppp0; ip -4 addr show dev ppp0; cat /etc/qemulab/serial")
    assert "inet %s peer %s/32" % (PPP[1], PPP[0]) in peer.stdout and "ttyS1 ppp ppp0" in peer.stdout, peer.stdout


def test_slip_carries_ip_between_the_routers(lab):
    link = lab.ssh("rt2", "ip -d link show sl0; ip -4 addr show dev sl0")
    assert link.returncode == 0 and "link/slip" in link.stdout, (link.stdout, link.stderr)
    assert "inet %s peer %s/32" % (SLIP[1], SLIP[0]) in link.stdout, link.stdout
    ping = wait_ping(lab, "rt2", SLIP[0])
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, (ping.stdout, ping.stderr)
    # it is the serial line: the packets leave by sl0, not the Ethernet segment
    route = lab.ssh("rt2", "ip route get %s" % SLIP[0])
    assert re.search(r"dev sl0\b", route.stdout), route.stdout


def test_a_second_run_changes_nothing(lab):
    again = lab.run()
    assert again.rc == 0, failure_text(again) or again
    assert {host: again.changed(host) for host in again.stats} == dict((host, 0) for host in again.stats), again


def test_a_link_whose_daemon_died_is_brought_back_by_a_run(lab):
    killed = lab.ssh("rt2", "read pid prog < /run/qemulab-serial/ttyS2.pid && kill $pid && sleep 1 && "
                            "ip link show sl0 2>&1 | head -1")
    assert killed.returncode == 0, (killed.stdout, killed.stderr)
    again = lab.run(tags="config")
    assert again.rc == 0, failure_text(again) or again
    result = again.result("qemulab.network.guest_network : Bring the serial links up as listed", "rt2")
    assert result.get("changed") and "started ttyS2 sl0" in result.get("stdout", ""), result
    ping = wait_ping(lab, "rt2", SLIP[0])
    assert ping.returncode == 0, (ping.stdout, ping.stderr)
