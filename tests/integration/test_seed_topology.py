"""The seed lab from its topology file, live (issues 15 and 22): topologies/seed.qemulab.yml brought up once through
lab.yml, checked against the course's own lab, every planned path traced, and removed without a trace.

What runs is the shipped file's topology; a private copy changes only what lets it run beside anything else on the
host: the lab's name, its namespace, a free block of SSH ports and 256M per guest instead of the seed's 1G. That the
file plans inventories/seed's lab in everything but the routes is proven statically by
tests/unit/plugins/plugin_utils/test_topology_plans.py; here the running lab is compared with the course instead:

- every guest's interfaces (name, MAC, address) as the guest itself reports them, and every tap and the veth on the
  bridge the seed's scripts put it on, each guest MAC learned by its bridge on the tap the seed's scripts give it;
- playbooks/verify_paths.yml: all 98 pairs traced hop by hop as the plan routes them;
- the guest's own traceroute from h1 to h2: rt1, rt2, rt4, h2 (the course's longest path);
- `lab.yml --tags cleanup`: no process, file, namespace, run file or root-namespace object of the lab is left.

The expectations below are the course's facts (its scripts and /etc/network/interfaces files), transcribed here;
they do not come from the topology file or the plan. Seven guests of 256 MiB on the cached default guest image
(never pruned here).
"""
import copy
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from conftest import REPO_ROOT
from faultlab import LAB_STATE_DIR, failure_text
from pyroute2 import netns as pr_netns
from test_topology_lab import HOST_PORT_PINGS, TopologyLab, root_view, summary, timed

sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
from _harness import port_block  # noqa: E402  (the benchmark's: consecutive free 127.0.0.1 ports)

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

SHIPPED = os.path.join(REPO_ROOT, "topologies", "seed.qemulab.yml")

# The course's lab. Each VM's NICs in the order of its -device options (eth0, eth1, ...): the MAC its launch script
# gives, the tap it opens, and the address of its interfaces file. htest: the course starts it on vport13 with its
# MAC but configures no address; 10.20.10.3 is the project's choice (docs/topology-files.md).
SEED = {
    "rt1": [("12:34:56:ab:cd:71", "vport11", "10.20.10.1/24"), ("12:34:56:ab:cd:72", "vport21", "10.20.20.1/24"),
            ("12:34:56:ab:cd:73", "vport31", "10.20.30.1/24")],
    "rt2": [("12:34:56:ab:cd:74", "vport22", "10.20.20.2/24"), ("12:34:56:ab:cd:75", "vport42", "10.20.40.2/24")],
    "rt3": [("12:34:56:ab:cd:76", "vport32", "10.20.30.2/24"), ("12:34:56:ab:cd:77", "vport52", "10.20.50.2/24")],
    "rt4": [("12:34:56:ab:cd:78", "vport41", "10.20.40.1/24"), ("12:34:56:ab:cd:79", "vport51", "10.20.50.1/24"),
            ("12:34:56:ab:cd:7a", "vport61", "10.20.60.1/24")],
    "h1": [("12:34:56:ab:cd:7b", "vport12", "10.20.10.2/24")],
    "h2": [("12:34:56:ab:cd:7c", "vport62", "10.20.60.2/24")],
    "htest": [("12:34:56:ab:cd:7d", "vport13", "10.20.10.3/24")],
}
# The preparation script: vport<i><j> on br<i>, vport13 and veth0 on br1; veth1 carries the host's 10.20.10.4/24.
HOST_PORT = ("veth0", "veth1", "10.20.10.4/24")
# h1 -> h2 by the course's static routes: rt1 (h1's gateway), rt2 (rt1's route to 10.20.60.0/24), rt4 (rt2's), h2.
H1_TO_H2 = ["10.20.10.1", "10.20.20.2", "10.20.40.1", "10.20.60.2"]


class SeedLab(TopologyLab):
    """The shipped seed file under a private name, namespace and port block."""

    net = "10.20."

    def __init__(self):  # pylint: disable=super-init-not-called  (TopologyLab's writes the ring)
        tag = os.getpid() % 100000
        self.name, self.netns = "qseed%d" % tag, "qseedns%d" % tag
        self.dir = tempfile.mkdtemp(prefix="qemulab-seed-topology-")
        self.inventory = os.path.join(self.dir, "seed.qemulab.yml")
        with open(SHIPPED) as handle:
            self.topology = yaml.safe_load(handle)
        # ssh_port_base + the node's position in `nodes`; below the ephemeral range
        self.positions = {node: position for position, node in enumerate(self.topology["nodes"])}
        self.port_base = port_block(len(self.positions), low=20000, high=32000)
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")

    def write_private_copy(self):
        private = copy.deepcopy(self.topology)
        for key, value in (("lab", self.name), ("netns", self.netns), ("ssh_port_base", self.port_base)):
            assert key in private, "the seed file no longer sets %s" % key
            private[key] = value
        assert "memory" in private["defaults"], private["defaults"]
        private["defaults"]["memory"] = "256M"
        with open(self.inventory, "w") as handle:
            yaml.safe_dump(private, handle, sort_keys=False)

    def guest(self, vm, command):
        return self.ssh(self.positions[vm], command)

    def interfaces(self, vm):
        """The guest's own view: [(ifname, MAC, IPv4 address/prefix)] of every interface but lo and mgmt0 (the
        lab's own user-mode NIC that carries SSH, which the course does not have)."""
        listed = json.loads(self.guest(vm, "ip -j addr show"))
        return sorted((link["ifname"], link["address"].lower(), "%s/%d" % (a["local"], a["prefixlen"]))
                      for link in listed if link["ifname"] not in ("lo", "mgmt0")
                      for a in link.get("addr_info", []) if a["family"] == "inet")

    def in_netns(self, *argv):
        proc = subprocess.run(list(argv[:1]) + ["-n", self.netns, "-j"] + list(argv[1:]),
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, (argv, proc.stderr)
        return json.loads(proc.stdout or "[]")


def seed_interfaces(vm):
    return sorted(("eth%d" % index, mac, address) for index, (mac, _tap, address) in enumerate(SEED[vm]))


def test_the_seed_topology_file_runs_the_courses_lab_and_every_path_is_the_planned_one():
    lab = SeedLab()
    timings = []
    before = root_view(lab.name, lab.net)
    assert lab.netns not in pr_netns.listnetns()
    started = time.monotonic()
    try:
        lab.write_private_copy()
        assert sorted(lab.positions) == sorted(SEED)

        up = timed(timings, "lab.yml, 7 guests up", lab.run, extra_vars={"guest_image_prune": False})
        assert up.rc == 0, failure_text(up) or up
        pinged = up.result(HOST_PORT_PINGS)
        assert not pinged.get("skipped") and not pinged.get("failed"), pinged

        # (a) the guests are the course's: interface names, MACs and addresses as each guest reports them
        seen = timed(timings, "the guests' interfaces read", lambda: {vm: lab.interfaces(vm) for vm in SEED})
        assert seen == {vm: seed_interfaces(vm) for vm in SEED}
        # ... on the course's taps and bridges, in the lab's namespace
        masters = {link["ifname"]: link.get("master") for link in lab.in_netns("ip", "link", "show")}
        expected = {tap: "br" + tap[len("vport")] for nics in SEED.values() for _mac, tap, _addr in nics}
        expected[HOST_PORT[0]] = "br1"
        assert {name: masters.get(name) for name in expected} == expected
        veth1 = [(a["local"], a["prefixlen"]) for link in lab.in_netns("ip", "addr", "show", "dev", HOST_PORT[1])
                 for a in link["addr_info"] if a["family"] == "inet"]
        assert ["%s/%d" % address for address in veth1] == [HOST_PORT[2]]

        # (b) every planned path, hop by hop: from each VM and the host port to every address of every other
        addresses = sum(len(nics) for nics in SEED.values()) + 1
        pairs = sum(addresses - len(nics) for nics in SEED.values()) + addresses - 1
        traced = timed(timings, "verify_paths.yml, %d pairs" % pairs, lab.verify_paths)
        assert traced.rc == 0, failure_text(traced) or traced
        assert summary(traced).startswith("%d pair(s) traced hop by hop; 0 pair(s)" % pairs), summary(traced)
        assert sorted(host for task, host, res in traced.tasks() if task.startswith("Ping every planned hop")
                      and not res.get("skipped")) == sorted(list(SEED) + ["localhost"])
        # every NIC has just answered its neighbours: its bridge learned its MAC on the course's tap
        learned = {(entry["mac"], entry["ifname"]) for entry in lab.in_netns("bridge", "fdb", "show")
                   if "master" in entry}
        missing = [(vm, mac, tap) for vm, nics in SEED.items() for mac, tap, _addr in nics if (mac, tap) not in learned]
        assert missing == [], sorted(learned)

        # (c) the guest's own traceroute, one probe at a time (-N 1: no ICMP rate limit turns a hop into a `*`)
        out = timed(timings, "traceroute h1 -> h2", lab.guest, "h1",
                    "traceroute -n -q 1 -w 3 -N 1 -m 8 %s" % H1_TO_H2[-1])
        hops = [line.split()[1] for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
        assert hops == H1_TO_H2, out

        # (d) the cleanup users run leaves nothing
        timed(timings, "lab.yml --tags cleanup", lab.remove_leaving_nothing, before)
    finally:
        timings.append(("total", time.monotonic() - started))
        print("\n".join("%-36s %6.1f s" % item for item in timings))
        lab.discard()
