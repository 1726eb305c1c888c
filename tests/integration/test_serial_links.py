"""Serial links between two VMs (lab_serial_links, docs/serial-links.md): a PPP link and a SLIP link between two
routers on the default image, real guests brought up by lab.yml, one bring-up for every check.

rt1 and rt2 share an Ethernet segment (br, 10.98.0.0/24) and two null-modem cables: ttyS1 carries PPP (10.99.0.1 -
10.99.0.2), ttyS2 SLIP (10.99.1.1 - 10.99.1.2). rt1's QEMU serves both sockets in its run directory, rt2's connects.
Both are clones of a template with the two extra UARTs (the layout includes them). h1 (10.98.1.2) sits behind rt1,
h2 (10.98.2.2) behind rt2; the routers route each other's host segment over the Ethernet segment at first.

The tests run in file order on one bring-up: the route test moves the routers' routes onto the PPP link (an
inventory change), so the second run after it proves that state unchanged too, and the last test drops the link.
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
ETH = ("10.98.0.1", "10.98.0.2")
H1, H2 = "10.98.1.2", "10.98.2.2"
H1_NET, H2_NET = "10.98.1.0/24", "10.98.2.0/24"


class SerialLab(_RunnableLab):
    VMS = ("rt1", "rt2", "h1", "h2")

    def __init__(self):
        suffix = secrets.token_hex(3)
        self.name, self.netns = "qls" + suffix, "qlsns" + suffix
        self.dir = tempfile.mkdtemp(prefix="qemulab-serial-")
        self.ports = dict((vm, free_port()) for vm in self.VMS)

        def nic(bridge, tap, address):
            return {"bridge": bridge + suffix, "tap": tap + suffix, "address": address}

        routers = dict((vm, {"ansible_port": self.ports[vm],
                             "vm_nics": [nic("br", "t%d" % i, "%s/24" % ETH[i]),
                                         nic("bh%d" % (i + 1), "r%d" % i, "10.98.%d.1/24" % (i + 1))]})
                       for i, vm in enumerate(self.VMS[:2]))
        # at first over the Ethernet segment
        routers["rt1"]["vm_routes"] = [{"to": H2_NET, "via": ETH[1]}]
        routers["rt2"]["vm_routes"] = [{"to": H1_NET, "via": ETH[0]}]
        hosts = dict((vm, {"ansible_port": self.ports[vm], "vm_gateway": "10.98.%d.1" % (i + 1),
                           "vm_nics": [nic("bh%d" % (i + 1), "h%d" % i, "10.98.%d.2/24" % (i + 1))]})
                     for i, vm in enumerate(self.VMS[2:]))
        self.hosts = {"all": {
            "vars": {"lab_name": self.name, "lab_netns": self.netns, "lab_serial_links": [
                {"between": ["rt1", "rt2"], "protocol": "ppp", "addresses": list(PPP)},
                {"between": ["rt1", "rt2"], "protocol": "slip", "addresses": list(SLIP)}]},
            "children": {
                "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                        "ansible_python_interpreter": VENV_PYTHON}}},
                "lab": {"vars": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                                 "ansible_ssh_private_key_file": GUEST_KEY,
                                 "ansible_python_interpreter": "/usr/bin/python3", "vm_memory": "256M"},
                        "children": {"routers": {"hosts": routers}, "hosts": {"hosts": hosts}}}}}}
        self.inventory = os.path.join(self.dir, "hosts.yml")
        self.write()
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")

    def write(self):
        with open(self.inventory, "w") as f:
            yaml.safe_dump(self.hosts, f)

    def set_routes(self, vm, routes):
        self.hosts["all"]["children"]["lab"]["children"]["routers"]["hosts"][vm]["vm_routes"] = routes
        self.write()

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
    for vm in ("rt1", "rt2"):
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


def hops(lab, source, address):
    """The addresses a traceroute from `source` to `address` meets, in order ("*" for a hop that did not answer)."""
    out = lab.ssh(source, "traceroute -n -w 2 -q 1 -m 5 %s" % address, timeout=120)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return [line.split()[1] for line in out.stdout.splitlines()[1:] if len(line.split()) > 1]


def wait_route(lab, vm, to, want, timeout=90):
    """`ip route show <to>` on the VM until `want` is in it (a PPP link's routes come when pppd is up again)."""
    deadline = time.monotonic() + timeout
    shown = None
    while time.monotonic() < deadline:
        shown = lab.ssh(vm, "ip route show %s" % to).stdout
        if want in shown:
            return shown
        time.sleep(2)
    return shown


def test_a_route_via_the_ppp_peer_carries_h1_to_h2_over_the_line(lab):
    # over the Ethernet segment: h1's router, rt2's Ethernet address, h2
    assert hops(lab, "h1", H2) == ["10.98.1.1", ETH[1], H2]
    # the inventory drops the Ethernet route and routes via the PPP peer instead, both ways
    lab.set_routes("rt1", [{"to": H2_NET, "via": PPP[1]}])
    lab.set_routes("rt2", [{"to": H1_NET, "via": PPP[0]}])
    # a whole run: the lab host rewrites the guests' fw_cfg files (the next boot's routes) as well
    moved = lab.run()
    assert moved.rc == 0, failed_tasks(moved)
    result = moved.result("qemulab.network.guest_network : Bring the serial links up as listed", "rt1")
    assert result.get("changed") and "routed %s via %s dev ppp0" % (H2_NET, PPP[1]) in result.get("stdout", ""), \
        result
    shown = lab.ssh("rt1", "ip route show %s" % H2_NET).stdout
    assert "via %s dev ppp0" % PPP[1] in shown and ETH[1] not in shown, shown
    # the PPP hop: rt2 answers from its end of the line (its route back to h1 leaves by ppp0)
    assert hops(lab, "h1", H2) == ["10.98.1.1", PPP[1], H2]
    ping = lab.ssh("h1", "ping -c 3 -W 3 %s" % H2)
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, (ping.stdout, ping.stderr)
    # the boot's ip commands leave the serial routes to qemulab-serial: no failed ip line on the console at boot
    assert "ppp0" not in open(os.path.join(lab.run_dir("rt1"), "fw_cfg", "qemulab_ip")).read()


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


# signal rt1's pppd (ttyS1) and wait up to 10 s for the route through ppp0 to go: "gone" when it went
SIGNAL_AND_WAIT = ("read pid prog < /run/qemulab-serial/ttyS1.pid && kill %s $pid && for i in $(seq 100); do "
                   "ip route show %s | grep -q ppp0 || { echo gone; break; }; sleep 0.1; done")


def test_the_ppp_routes_come_back_whenever_the_link_does(lab):
    # a dropped line (SIGHUP: pppd hangs up, and with persist opens it again): the ip-up hook routes again, no run
    hup = lab.ssh("rt1", SIGNAL_AND_WAIT % ("-HUP", H2_NET))
    assert hup.returncode == 0 and "gone" in hup.stdout, (hup.stdout, hup.stderr)
    for vm, to, peer in (("rt1", H2_NET, PPP[1]), ("rt2", H1_NET, PPP[0])):
        shown = wait_route(lab, vm, to, "via %s dev ppp0" % peer)
        assert "via %s dev ppp0" % peer in shown, (vm, shown)
    # a pppd that died: the next run starts it, and its routes come with the device
    killed = lab.ssh("rt1", SIGNAL_AND_WAIT % ("-TERM", H2_NET))
    assert killed.returncode == 0 and "gone" in killed.stdout, (killed.stdout, killed.stderr)
    again = lab.run(tags="config")
    assert again.rc == 0, failed_tasks(again)
    result = again.result("qemulab.network.guest_network : Bring the serial links up as listed", "rt1")
    assert "started ttyS1 ppp0" in result.get("stdout", ""), result
    for vm, to, peer in (("rt1", H2_NET, PPP[1]), ("rt2", H1_NET, PPP[0])):
        shown = wait_route(lab, vm, to, "via %s dev ppp0" % peer)
        assert "via %s dev ppp0" % peer in shown, (vm, shown)
    assert hops(lab, "h1", H2) == ["10.98.1.1", PPP[1], H2]
