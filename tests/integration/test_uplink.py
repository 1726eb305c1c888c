"""The lab's way out (lab_uplink) on real guests, to an "internet" the test makes:

    h1 (10.72.1.10) -- upbrin -- r1 (eth0 10.72.1.1 | eth1 10.72.2.1) -- upbrout -- [qlu-…-l]
                                                                                     |  veth out of the lab namespace
    namespace "wan" (stands for the lab host's root namespace):  [qlu-…-u 10.72.2.254/24]  wan0 198.51.100.2/24
                                                                                            |
    namespace "inet" (stands for the world):                             inet0 198.51.100.1/24, python3 -m http.server

lab_uplink names the wan namespace as `upstream_netns` and wan0 as `upstream`: the lab host's end masquerades the
uplink segment out of wan0, r1 masquerades h1's segment onto it and routes by default to 10.72.2.254, and h1 gets
r1 as its default route from the plan. h1 fetches a page from the HTTP server, which sees the request come from
198.51.100.2. A masquerade rule someone else put in wan's nat table stays through bring-up, re-runs and cleanup;
the lab's chains go with the cleanup. Nothing here touches the root namespace: every address lives in the test's
own namespaces or inside the guests, and the server is ended by its pid.
"""
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import REPO_ROOT, VENV_PYTHON, run_playbook
from faultlab import GUEST_KEY, LAB_STATE_DIR, LAB_YML, _RunnableLab, failure_text, free_port

# In the first lane: the second carries the multi-host labs, and the two lanes end closer together this way.
pytestmark = [pytest.mark.integration]

WORLD, WAN = "198.51.100.1", "198.51.100.2"
UPLINK = "10.72.2.254"
PORT = 8080
# the role reused outside lab.yml (docs/roles.md shows it)
EXAMPLE = os.path.join(REPO_ROOT, "playbooks", "examples", "uplink_by_hand.yml")
FOREIGN = "-A POSTROUTING -s 192.0.2.0/24 -o wan0 -m comment --comment foreign -j MASQUERADE"


def sh(*argv, check=True):
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 or not check, (argv, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


class UplinkLab(_RunnableLab):
    VMS = ("r1", "h1")

    def __init__(self):
        suffix = secrets.token_hex(3)
        self.name, self.netns = "qltup" + suffix, "qltupns" + suffix
        self.wan, self.inet = "qltupwan" + suffix, "qltupinet" + suffix
        self.dir = tempfile.mkdtemp(prefix="qemulab-uplink-")
        self.inventory = os.path.join(self.dir, "inventory")
        self.ports = {vm: free_port() for vm in self.VMS}
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")
        self.server = None
        self.token = secrets.token_hex(8)
        self.removed = False
        files = {
            "hosts.yml": {"all": {"children": {
                "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                        "ansible_python_interpreter": VENV_PYTHON}}},
                "lab": {"children": {"routers": {"hosts": {"r1": None}}, "hosts": {"hosts": {"h1": None}}}},
            }}},
            "group_vars/all.yml": {"lab_name": self.name, "lab_netns": self.netns,
                                   "lab_uplink": {"bridge": "upbrout", "address": UPLINK + "/24", "upstream": "wan0",
                                                  "upstream_netns": self.wan, "router": "r1"}},
            "group_vars/lab.yml": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                                   "ansible_ssh_private_key_file": GUEST_KEY,
                                   "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes"
                                                              % self.known_hosts,
                                   "ansible_python_interpreter": "/usr/bin/python3", "vm_memory": "256M"},
            "host_vars/r1.yml": {"ansible_port": self.ports["r1"],
                                 "vm_nics": [{"bridge": "upbrin", "tap": "upin1", "address": "10.72.1.1/24"},
                                             {"bridge": "upbrout", "tap": "upout1", "address": "10.72.2.1/24"}]},
            # no vm_gateway: the plan gives h1 its default route towards the uplink router
            "host_vars/h1.yml": {"ansible_port": self.ports["h1"],
                                 "vm_nics": [{"bridge": "upbrin", "tap": "upin2", "address": "10.72.1.10/24"}]},
        }
        for rel, data in files.items():
            path = os.path.join(self.inventory, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(data, f)  # JSON is YAML

    def make_world(self):
        """The two namespaces standing for the lab host's upstream and the world, and the world's web server."""
        sh("ip", "netns", "add", self.wan)
        sh("ip", "netns", "add", self.inet)
        sh("ip", "-n", self.wan, "link", "add", "wan0", "type", "veth", "peer", "name", "inet0", "netns", self.inet)
        sh("ip", "-n", self.wan, "address", "add", WAN + "/24", "dev", "wan0")
        sh("ip", "-n", self.inet, "address", "add", WORLD + "/24", "dev", "inet0")
        for ns, dev in ((self.wan, "wan0"), (self.inet, "inet0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # what the host's owner would have done on a real upstream: wan0 forwards (the lab checks, never sets it)
        sh("ip", "netns", "exec", self.wan, "sysctl", "-q", "-w", "net.ipv4.conf.wan0.forwarding=1")
        sh("ip", "netns", "exec", self.wan, "iptables", "-t", "nat", *FOREIGN.split())
        site = os.path.join(self.dir, "site")
        os.makedirs(site)
        with open(os.path.join(site, "hello.txt"), "w") as f:
            f.write(self.token + "\n")
        self.log = open(os.path.join(self.dir, "http.log"), "w")
        self.server = subprocess.Popen(["ip", "netns", "exec", self.inet, "python3", "-m", "http.server", str(PORT),
                                        "--bind", WORLD, "--directory", site], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while sh("ip", "netns", "exec", self.inet, "ss", "-Htln", "sport", "= :%d" % PORT).strip() == "":
            assert time.monotonic() < deadline and self.server.poll() is None, "the test's HTTP server did not start"
            time.sleep(0.2)

    def wan_nat(self):
        return sh("ip", "netns", "exec", self.wan, "iptables", "-t", "nat", "-S").splitlines()

    def requests(self):
        with open(self.log.name) as f:
            return [line for line in f if "GET /hello.txt" in line]

    def ok(self, vm, command):
        argv = ["ssh", "-i", GUEST_KEY, "-p", str(self.ports[vm]), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + self.known_hosts,
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "root@127.0.0.1", command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (vm, command, proc.returncode, proc.stdout, proc.stderr)
        return proc.stdout.strip()

    def fetch(self):
        # the guest's Python (its busybox-static wget crashes on this image)
        return self.ok("h1", "python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], "
                             "timeout=20).read().decode().strip())' http://%s:%d/hello.txt" % (WORLD, PORT))

    def remove(self):
        """Cleanup once (the last test asserts on it); then the test's world, the server first, by its pid."""
        try:
            if not self.removed:
                self.removed = True
                res = self.cleanup()
                left = self.leftovers()
                self.force_remove()
                assert res.rc == 0 and left == {"processes": [], "files": [], "netns": False}, \
                    "cleanup of %s: %s; it left %s" % (self.name, failure_text(res) or res, left)
        finally:
            self.remove_world()

    def remove_world(self):
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=10)
            self.server = None
            self.log.close()
        for ns in (self.wan, self.inet):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def world():
    lab = UplinkLab()
    try:
        lab.make_world()
        yield lab
    finally:
        lab.remove()


@pytest.fixture(scope="module")
def lab(world):
    world.up = world.run()
    assert world.up.rc == 0, failure_text(world.up) or world.up
    return world


def test_an_upstream_that_does_not_forward_stops_the_run_before_anything_changes(world):
    sh("ip", "netns", "exec", world.wan, "sysctl", "-q", "-w", "net.ipv4.conf.wan0.forwarding=0")
    try:
        res = run_playbook(LAB_YML, inventory=world.inventory, tags="prep", expect_failure=True, timeout=300)
    finally:
        sh("ip", "netns", "exec", world.wan, "sysctl", "-q", "-w", "net.ipv4.conf.wan0.forwarding=1")
    messages = " ".join(res.failure_messages())
    assert "lab_uplink.upstream wan0 does not forward" in messages and "forwarding=1" in messages, messages
    # nothing was made: not the lab's namespace, not its run directory, not a rule in wan
    assert world.netns not in sh("ip", "netns", "list")
    assert not os.path.exists(os.path.join("/run/qemulab", world.name))
    assert world.wan_nat() == ["-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P OUTPUT ACCEPT",
                               "-P POSTROUTING ACCEPT", FOREIGN]


def test_a_guest_behind_the_uplink_router_fetches_a_page_from_the_world(lab):
    assert lab.fetch() == lab.token
    # the world saw the lab host's upstream address: the lab host masqueraded the uplink segment
    requests = lab.requests()
    assert len(requests) == 1 and requests[0].startswith(WAN + " "), requests
    # the default routes the plan derived: h1 through r1, r1 through the lab host's end
    assert lab.ok("h1", "ip -4 route show default").startswith("default via 10.72.1.1 dev eth0")
    assert lab.ok("r1", "ip -4 route show default").startswith("default via %s dev eth1" % UPLINK)
    # r1 masqueraded h1's segment onto the uplink segment (its conntrack entry of the fetch says so)
    tracked = lab.ok("r1", "conntrack -L -p tcp --orig-dst %s 2>/dev/null" % WORLD)
    assert "src=10.72.1.10" in tracked and "dst=10.72.2.1 " in tracked, tracked
    chain = "qemulab-%s-post" % lab.name
    table = lab.wan_nat()
    assert FOREIGN in table, table
    assert "-A POSTROUTING -j %s" % chain in table, table
    assert [line for line in table if line.startswith("-A %s " % chain) and "-s 10.72.2.0/24 -o wan0" in line
            and line.endswith("-j MASQUERADE")], table


def test_a_rerun_changes_nothing_and_check_mode_repairs_nothing(lab):
    again = lab.run()
    assert again.rc == 0, failure_text(again) or again
    assert {host: again.changed(host) for host in ("localhost", "r1", "h1")} == {"localhost": 0, "r1": 0, "h1": 0}
    # the lab's chains removed behind its back: check mode reports the change and makes none
    chain = "qemulab-%s" % lab.name
    for argv in (["-D", "POSTROUTING", "-j", chain + "-post"], ["-D", "PREROUTING", "-j", chain + "-pre"],
                 ["-F", chain + "-post"], ["-X", chain + "-post"], ["-X", chain + "-pre"]):
        sh("ip", "netns", "exec", lab.wan, "iptables", "-t", "nat", *argv)
    check = run_playbook(LAB_YML, inventory=lab.inventory, tags="uplink", check=True, diff=True, timeout=300)
    assert check.rc == 0 and check.changed("localhost") == 1, check
    masq = [res for name, _host, res in check.tasks("localhost") if name.endswith("in chains of the lab's own")]
    assert len(masq) == 1 and masq[0]["diff"]["before"]["chains"] == {}, masq
    assert "MASQUERADE" in "".join(masq[0]["diff"]["after"]["chains"][chain + "-post"]), masq
    assert not [line for line in lab.wan_nat() if chain in line]
    # the role reused with the plan written by hand puts back exactly what the lab plans: lab.yml then has nothing
    # left to change
    peer = [line.split()[0].split("@")[0] for line in sh("ip", "-n", lab.wan, "-br", "link").splitlines()
            if line.startswith("qlu-")]
    assert len(peer) == 1, peer
    by_hand = run_playbook(EXAMPLE, extra_vars={
        "example_lab": lab.name, "example_netns": lab.netns, "example_bridge": "upbrout",
        "example_address": UPLINK + "/24", "example_upstream": "wan0", "example_upstream_netns": lab.wan,
        "example_name": peer[0][:-1] + "l", "example_peer": peer[0]}, timeout=300)
    assert by_hand.rc == 0 and by_hand.changed("localhost") == 1, by_hand
    assert lab.fetch() == lab.token
    planned = run_playbook(LAB_YML, inventory=lab.inventory, tags="uplink", timeout=300)
    assert planned.rc == 0 and planned.changed("localhost") == 0, planned


def test_cleanup_removes_the_labs_rules_and_keeps_the_foreign_one(lab):
    peer = [line for line in sh("ip", "-n", lab.wan, "-br", "link").splitlines() if line.startswith("qlu-")]
    assert len(peer) == 1, peer
    lab.removed = True
    res = lab.cleanup()
    left = lab.leftovers()
    assert res.rc == 0 and left == {"processes": [], "files": [], "netns": False}, (failure_text(res) or res, left)
    table = lab.wan_nat()
    assert FOREIGN in table and not [line for line in table if "qemulab" in line], table
    assert not [line for line in sh("ip", "-n", lab.wan, "-br", "link").splitlines() if line.startswith("qlu-")]
    assert not os.path.exists(os.path.join("/run/qemulab", lab.name))
