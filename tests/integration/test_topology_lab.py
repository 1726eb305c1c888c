"""A lab from a topology file, end to end (issue 15): lab.yml brings up a ring written in eighteen lines, its verify
stage passes and verify_paths.yml traces every planned path hop by hop (and fails, naming the pair and the hop, when
a guest's route is bent by hand); one router appended to the ring in the file, the next lab.yml run updates every
router's routes (read with `ip route` in each guest, compared with routes written here by hand), a third run
changes nothing, and `--tags cleanup` leaves nothing behind.

    before                                         after r4 is appended between r3 and r1
    S1 br1 10.87.0.0/24  r1 .1   r2 .2             S1 as before
    S2 br2 10.87.1.0/24  r2 .1   r3 .2             S2 as before
    S3 br3 10.87.2.0/24  r3 .1   r1 .2             S3 br3 10.87.2.0/24  r3 .1   r4 .3 (tap t3-r4)
    S4 br4 10.87.3.0/24  r1 .1   lab host .2       S4, S5 as before
    S5 br5 10.87.4.0/24  r2 .1   h1 .2             S6 br6 10.87.5.0/24  r4 .1   r1 .2

The lab lives in a namespace of its own named after this process, on the cached default guest image (never
pruned here); its SSH ports are a free block found at run time. Four guests, then five, 256 MiB each.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REPO_ROOT, run_playbook
from faultlab import GUEST_KEY, LAB_STATE_DIR, _RunnableLab, failure_text
from hostsnapshot import lab_qemu_processes, snapshot
from pyroute2 import netns as pr_netns

sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
from _harness import port_block  # noqa: E402  (the benchmark's: consecutive free 127.0.0.1 ports)

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

VERIFY_PATHS = os.path.join(REPO_ROOT, "playbooks", "verify_paths.yml")
NET = "10.87."

RING = """\
plugin: qemulab.network.topology
lab: {lab}
netns: {netns}
pool: 10.87.0.0/16
ssh_port_base: {port_base}
defaults: {{memory: 256M}}
vars: {{guest_image_prune: false}}
nodes:
  r1: {{role: router}}
  r2: {{role: router}}
  r3: {{role: router}}
  h1: {{role: host}}
segments:
  - [r1, r2]
  - [r2, r3]
  - [r3, r1]
  - [r1, lab_host]
  - [r2, h1]
"""

# r4 takes r1's place on S3 and joins r1 on a new segment. It gets a tap and an address of its own there: r1's tap
# t3-2 stays held by r1's running QEMU until r1 restarts (its NICs change), and r3's ARP cache still holds r1's MAC
# for 10.87.2.2.
APPENDED = (RING.replace("  - [r3, r1]\n", "  - [r3, {{r4: {{tap: t3-r4, address: 10.87.2.3}}}}]\n")
            .replace("  h1: {{role: host}}\n", "  h1: {{role: host}}\n  r4: {{role: router}}\n")
            + "  - [r4, r1]\n")

# Static routes by hand from the rules of docs/topology-files.md (fewest routers crossed, the lower next-hop name on
# a tie, summaries only where exact); h1's default route goes through r2.
ROUTES_BEFORE = {
    "r1": [("10.87.1.0/24", "10.87.0.2"), ("10.87.4.0/24", "10.87.0.2")],
    "r2": [("10.87.2.0/23", "10.87.0.1")],
    "r3": [("10.87.0.0/24", "10.87.2.2"), ("10.87.3.0/24", "10.87.2.2"), ("10.87.4.0/24", "10.87.1.1")],
    "h1": [("default", "10.87.4.1")],
}
ROUTES_AFTER = {
    "r1": [("10.87.1.0/24", "10.87.0.2"), ("10.87.2.0/24", "10.87.5.1"), ("10.87.4.0/24", "10.87.0.2")],
    "r2": [("10.87.2.0/24", "10.87.1.2"), ("10.87.3.0/24", "10.87.0.1"), ("10.87.5.0/24", "10.87.0.1")],
    "r3": [("10.87.0.0/24", "10.87.1.1"), ("10.87.3.0/24", "10.87.1.1"), ("10.87.4.0/24", "10.87.1.1"),
           ("10.87.5.0/24", "10.87.2.3")],
    "r4": [("10.87.0.0/24", "10.87.5.2"), ("10.87.1.0/24", "10.87.2.1"), ("10.87.3.0/24", "10.87.5.2"),
           ("10.87.4.0/24", "10.87.5.2")],
    "h1": [("default", "10.87.4.1")],
}
HOST_PORT_PINGS = "Ping every host from each host port"


class TopologyLab(_RunnableLab):
    net = NET  # the lab's addresses: none of them may show up in the root namespace

    def __init__(self):
        self.name = "qtopo%d" % (os.getpid() % 100000)
        self.netns = "qtopons%d" % (os.getpid() % 100000)
        self.dir = tempfile.mkdtemp(prefix="qemulab-topology-")
        self.inventory = os.path.join(self.dir, "ring.qemulab.yml")
        # the topology numbers the nodes' SSH ports ssh_port_base + position; below the ephemeral range
        self.port_base = port_block(5, low=20000, high=32000)
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")

    def write(self, template):
        with open(self.inventory, "w") as handle:
            handle.write(template.format(lab=self.name, netns=self.netns, port_base=self.port_base))

    def ssh(self, position, command):
        argv = ["ssh", "-i", GUEST_KEY, "-p", str(self.port_base + position), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + self.known_hosts,
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "root@127.0.0.1", command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (position, command, proc.stdout, proc.stderr)
        return proc.stdout

    def routes(self, position):
        """The guest's routes through a gateway, as (destination, gateway), sorted."""
        listed = json.loads(self.ssh(position, "ip -j -4 route show"))
        return sorted((r["dst"], r["gateway"]) for r in listed if "gateway" in r)

    def qemu_pids(self):
        return dict((argv[argv.index("-name") + 1], pid) for pid, argv in lab_qemu_processes(self.name).items())

    def verify_paths(self, expect_failure=False):
        return run_playbook(VERIFY_PATHS, inventory=self.inventory, timeout=900, expect_failure=expect_failure)

    def remnants(self):
        """Everything of this lab the host could still hold."""
        left = self.leftovers()
        left["run files"] = sorted(p for p in os.listdir("/run/qemulab") if p.startswith(self.name + "."))
        left["namespace owner"] = os.path.exists("/run/qemulab/_netns/%s.owner" % self.netns)
        left["root namespace"] = root_view(self.name, self.net)
        return left

    def remove_leaving_nothing(self, root_before):
        """lab.yml --tags cleanup succeeds and leaves nothing of the lab; the root namespace's view as before."""
        removed = self.cleanup()
        assert removed.rc == 0, failure_text(removed) or removed
        nothing = {"processes": [], "files": [], "netns": False, "run files": [], "namespace owner": False,
                   "root namespace": root_before}
        # the run lock's holder removes the lock file once it sees the playbook end (it polls every 0.2 s)
        deadline = time.monotonic() + 10
        while self.remnants() != nothing and time.monotonic() < deadline:
            time.sleep(0.5)
        assert self.remnants() == nothing

    def discard(self):
        """After the test, passed or not: whatever of the lab is still there."""
        if self.leftovers() != {"processes": [], "files": [], "netns": False}:
            self.cleanup()
        self.force_remove()


def root_view(lab, net=NET):
    """The root namespace's links marked as this lab's, and its addresses and routes in the lab's network."""
    snap = snapshot()
    return {"links": [link for link in snap["links"] if (link[3] or "") == "qemulab:" + lab],
            "addresses": [a for a in snap["addresses"] if str(a[1]).startswith(net)],
            "routes": [r for r in snap["routes"] if str(r[1]).startswith(net) or str(r[3]).startswith(net)],
            "sysctls": snap["sysctls"]}


def timed(timings, label, call, *args, **kwargs):
    started = time.monotonic()
    result = call(*args, **kwargs)
    timings.append((label, time.monotonic() - started))
    return result


def summary(result):
    return result.result("Summarise")["msg"]


def test_a_ring_from_a_topology_file_grows_by_one_router_and_every_path_is_the_planned_one():
    lab = TopologyLab()
    timings = []
    before = root_view(lab.name)
    assert lab.netns not in pr_netns.listnetns()
    positions = {"r1": 0, "r2": 1, "r3": 2, "h1": 3, "r4": 4}
    try:
        lab.write(RING)
        up = timed(timings, "lab.yml, 4 guests up", lab.run)
        assert up.rc == 0, failure_text(up) or up
        # the verify stage ran: the host port pinged h1 across r1 and r2 (h1, the only host VM, has nobody to ping)
        pinged = up.result(HOST_PORT_PINGS)
        assert not pinged.get("skipped") and not pinged.get("failed"), pinged
        assert {vm: lab.routes(positions[vm]) for vm in ROUTES_BEFORE} == ROUTES_BEFORE

        traced = timed(timings, "verify_paths.yml, 40 pairs", lab.verify_paths)
        assert traced.rc == 0, failure_text(traced) or traced
        assert summary(traced).startswith("40 pair(s) traced hop by hop; 0 pair(s)"), summary(traced)
        assert sorted(host for _task, host, res in traced.tasks() if _task.startswith("Ping every planned hop")
                      and not res.get("skipped")) == ["h1", "localhost", "r1", "r2", "r3"]

        # bent by hand: r3 reaches S5 (h1, and r2's address there) through r1 instead of r2 - still delivered, no
        # longer the planned path
        lab.ssh(positions["r3"], "ip route replace 10.87.4.0/24 via 10.87.2.2")
        bent = timed(timings, "verify_paths.yml, one route bent", lab.verify_paths, expect_failure=True)
        assert failure_text(bent).splitlines() == [
            "r3: 2 path(s) differ from the plan:",
            "  - r3 -> h1 10.87.4.2 (from 10.87.1.2, planned r3 > r2 > h1): hop 1 is r1 (10.87.2.2); the plan says r2",
            "  - r3 -> r2 10.87.4.1 (from 10.87.1.2, planned r3 > r2): hop 1 is r1 (10.87.2.2); the plan says r2"]

        pids = lab.qemu_pids()
        lab.write(APPENDED)
        grown = timed(timings, "lab.yml, r4 appended", lab.run)
        assert grown.rc == 0, failure_text(grown) or grown
        assert {vm: lab.routes(positions[vm]) for vm in ROUTES_AFTER} == ROUTES_AFTER
        after = lab.qemu_pids()
        # r2 and r3 keep their NICs: their routes changed in the running guests; r1's NICs changed, so it restarted
        assert after["r2"] == pids["r2"] and after["r3"] == pids["r3"] and after["h1"] == pids["h1"], (pids, after)
        assert after["r1"] != pids["r1"] and "r4" in after and "r4" not in pids
        assert grown.changed("r2") > 0 and grown.changed("r3") > 0, grown

        again = timed(timings, "lab.yml, third run", lab.run)
        assert again.rc == 0, failure_text(again) or again
        assert sorted(again.stats) == ["h1", "localhost", "r1", "r2", "r3", "r4"], again
        assert {host: again.changed(host) for host in again.stats} == dict.fromkeys(again.stats, 0), again

        traced = timed(timings, "verify_paths.yml, 60 pairs", lab.verify_paths)
        assert traced.rc == 0, failure_text(traced) or traced
        assert summary(traced).startswith("60 pair(s) traced hop by hop; 0 pair(s)"), summary(traced)

        timed(timings, "lab.yml --tags cleanup", lab.remove_leaving_nothing, before)
    finally:
        print("\n".join("%-36s %6.1f s" % item for item in timings))
        lab.discard()
