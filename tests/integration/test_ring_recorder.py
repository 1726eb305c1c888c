"""lab_capture_ring on real guests (the link lab of linklab.py, with the recorder on and the smallest ring, and a
port of the lab host on the first segment):

    lab host port (10.71.1.4) --+
    h1 (10.71.1.10) -- lkbra -- (10.71.1.1) r1 (10.71.2.1) -- lkbrb -- h2 (10.71.2.20)

One bring-up, then in order: a recorder per segment started before any VM, whose ring holds h1's first frames on
its segment (before its first ping) and its pings; a rerun of the prep stage leaves them alone; a verify failure of
the host port alone (h2 drops its answers to the port) saves the rings of its failing path; flooding a segment with
more than the ring's size keeps the ring within its bound; a verify failure (h2's NIC taken down inside the
guest) saves the rings of the failing paths beside the run's logs and names them; cleanup leaves no recorder and no
file."""
import glob
import json
import os
import stat
import subprocess
import time

import pytest

from faultlab import failure_text
from hostsnapshot import lab_qemu_processes
from linklab import ADDRESSES, BRIDGES, MACS, LinkLab

from ansible_collections.qemulab.network.plugins.module_utils import _ring

pytestmark = pytest.mark.integration

SIZE = _ring.SIZE_MIN  # the smallest ring, so the flood below wraps it quickly
RING_TASK = "qemulab.network.host_prep : Keep a ring of each segment's recent packets"
SEGMENTS = sorted(set(BRIDGES.values()))
HOST_PORT = {"name": "lkhp0", "peer": "lkhp1", "bridge": BRIDGES[("h1", 0)], "address": "10.71.1.4/24",
             "routes": [{"to": "10.71.2.0/24", "via": ADDRESSES[("r1", 0)]}]}
HOST_PORT_ADDRESS = HOST_PORT["address"].split("/")[0]


class RingLab(LinkLab):
    def write_inventory(self):
        super().write_inventory()
        path = os.path.join(self.inventory, "group_vars", "all.yml")
        with open(path) as f:
            data = json.load(f)
        data.update({"lab_capture_ring": True, "lab_capture_ring_size": SIZE, "lab_host_ports": [HOST_PORT]})
        with open(path, "w") as f:
            json.dump(data, f)

    @property
    def rings(self):
        return _ring.ring_root("/var/lib/qemulab", self.name)


def boot_time(pid):
    """When a process started, in seconds since the epoch (/proc/<pid>/stat's start time)."""
    with open("/proc/%d/stat" % pid) as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def read_frames(paths):
    """tcpdump's lines (epoch timestamps, MACs) for pcap/pcapng files, in the order given."""
    lines = []
    for path in paths:
        out = subprocess.run(["tcpdump", "-n", "-e", "-tt", "-r", path], capture_output=True, text=True)
        assert out.returncode == 0, (path, out.stderr)
        lines += out.stdout.splitlines()
    return lines


def recorders(lab):
    return dict((bridge, r["pid"]) for bridge, r in _ring.find_recorders(lab.rings).items())


@pytest.fixture
def ring_lab():
    lab = RingLab()
    try:
        lab.up = lab.run()
        yield lab
    finally:
        res = lab.cleanup()
        left = lab.leftovers()
        tcpdumps = recorders(lab)
        lab.force_remove()
        for pid in tcpdumps.values():
            os.kill(pid, 9)
        assert res.rc == 0 and left == {"processes": [], "files": [], "netns": False} and not tcpdumps, \
            "cleanup of %s: %s; it left %s and recorders %s" % (lab.name, failure_text(res) or res, left, tcpdumps)


def test_a_ring_per_segment_holds_boot_traffic_stays_bounded_and_is_saved_when_verify_fails(ring_lab):
    lab = ring_lab
    assert lab.up.rc == 0, failure_text(lab.up) or lab.up

    # a recorder per segment, found in /proc as ours, its pidfile naming it, started before every VM
    running = recorders(lab)
    assert sorted(running) == SEGMENTS, running
    for bridge, pid in running.items():
        with open(os.path.join(lab.rings, bridge + ".pid")) as f:
            assert int(f.read()) == pid
    assert stat.S_IMODE(os.stat(lab.rings).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in glob.glob(lab.rings + "/*"))
    qemus = lab_qemu_processes(lab.name)
    assert len(qemus) == len(lab.VMS), qemus
    recorder_start = max(boot_time(pid) for pid in running.values())
    for pid in qemus:
        assert boot_time(pid) > recorder_start, "QEMU %d started before the recorders" % pid

    # boot-time traffic: h1's first frames on its segment precede its first ping, and its pings are there (the
    # recorder buffers a few KB: have it write them out first, as ring_save does)
    time.sleep(_ring.HANDOVER_SECONDS)
    assert all(_ring.flush(r) for r in _ring.find_recorders(lab.rings).values())
    time.sleep(1)
    lines = read_frames(_ring.ring_files(lab.rings, BRIDGES[("h1", 0)]))
    h1 = [line for line in lines if " %s > " % MACS[("h1", 0)] in line]
    pings = [i for i, line in enumerate(h1) if "ICMP echo request" in line]
    assert pings, lines
    assert "ICMP echo request" not in h1[0] and any(w in h1[0] for w in ("ARP", "IPv6")), h1[:5]
    assert float(h1[0].split()[0]) > recorder_start

    # a rerun of the prep stage leaves the running recorders alone
    rerun = lab.run(tags="prep")
    assert rerun.rc == 0, failure_text(rerun) or rerun
    assert rerun.result(RING_TASK)["changed"] is False
    assert recorders(lab) == running

    # a failing path from the lab host's port alone: h2 drops its answers to the port (the guests still reach each
    # other, so the guests' verify passes and the host ports' runs); the rings of that path are saved and named
    lab.ok("h2", "ip route add blackhole %s/32" % HOST_PORT_ADDRESS)
    blackholed = time.time()
    failed = lab.run(tags="verify")
    lab.ok("h2", "ip route del blackhole %s/32" % HOST_PORT_ADDRESS)
    assert failed.rc != 0
    assert not [m for m in failed.failure_messages() if m.startswith(("h1: ", "h2: "))], failed
    messages = [m for m in failed.failure_messages() if m.startswith("localhost (lab host ports): ")]
    assert len(messages) == 1 and messages[0].startswith("localhost (lab host ports): no answer from %s via %s"
                                                         % (ADDRESSES[("h2", 0)], HOST_PORT["peer"])), failed
    port_dir = "/run/qemulab/%s/verify-rings/lab_host" % lab.name
    port_saved = dict((b, os.path.join(port_dir, b + ".pcapng")) for b in SEGMENTS)
    for path in port_saved.values():
        assert path in messages[0], messages
        assert open(path, "rb").read(4) == b"\x0a\x0d\x0d\x0a" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    port_h2 = "%s > %s" % (HOST_PORT_ADDRESS, ADDRESSES[("h2", 0)])
    for bridge in SEGMENTS:  # the port's pings cross both segments (r1 forwards them) and no answer comes back
        every = read_frames([port_saved[bridge]])
        lines = [line for line in every if float(line.split()[0]) > blackholed + 1]
        assert any("ICMP echo request" in line and port_h2 in line for line in lines), (bridge, blackholed, every[-20:])
        assert not any("ICMP echo reply" in line and "%s > %s" % (ADDRESSES[("h2", 0)], HOST_PORT_ADDRESS) in line
                       for line in lines), (bridge, lines[-20:])

    # more than the ring holds: 1400 pings of 1400 bytes each way across lkbrb (about 4 MB); the ring stays bounded
    lab.ok("h1", "ping -q -i 0.002 -s 1400 -c 1400 -W 5 %s > /dev/null || true" % ADDRESSES[("h2", 0)], timeout=300)
    time.sleep(_ring.HANDOVER_SECONDS)
    assert all(_ring.flush(r) for r in _ring.find_recorders(lab.rings).values())
    time.sleep(1)
    files = _ring.ring_files(lab.rings, BRIDGES[("h2", 0)])
    assert len(files) == SIZE, files
    total = sum(os.path.getsize(p) for p in files)
    assert _ring.FILE_BYTES < total <= _ring.bound_bytes(SIZE), (total, files)

    # a forced verify failure: h2's NIC down inside the guest, so h1's pings to it go unanswered
    lab.ok("h2", "ip link set eth0 down")
    downed = time.time()
    failed = lab.run(tags="verify")
    assert failed.rc != 0
    messages = [m for m in failed.failure_messages() if m.startswith("h1: ")]
    assert messages, failed
    saved_dir = "/run/qemulab/%s/verify-rings/h1" % lab.name
    saved = dict((b, os.path.join(saved_dir, b + ".pcapng")) for b in SEGMENTS)
    assert "no answer from %s" % ADDRESSES[("h2", 0)] in messages[0], messages
    for path in saved.values():
        assert path in messages[0], messages
        assert open(path, "rb").read(4) == b"\x0a\x0d\x0d\x0a" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    there = [line for line in read_frames([saved[BRIDGES[("h1", 0)]]]) if float(line.split()[0]) > downed + 1]
    assert any("ICMP echo request" in line and "%s > %s" % (ADDRESSES[("h1", 0)], ADDRESSES[("h2", 0)]) in line
               for line in there), there[-20:]
    # behind r1 the pings reach the last segment and find nobody: r1 forwards them to h2's MAC (still known from the
    # flood) or asks for h2's address; no answer comes back
    behind = [line for line in read_frames([saved[BRIDGES[("h2", 0)]]]) if float(line.split()[0]) > downed + 1]
    h1_h2 = "%s > %s" % (ADDRESSES[("h1", 0)], ADDRESSES[("h2", 0)])
    forwarded = [line for line in behind if " %s > %s," % (MACS[("r1", 1)], MACS[("h2", 0)]) in line
                 and h1_h2 in line and "ICMP echo request" in line]
    asked = [line for line in behind if "Request who-has %s tell %s" % (ADDRESSES[("h2", 0)], ADDRESSES[("r1", 1)])
             in line]
    assert forwarded or asked, behind[-20:]
    assert not any("ICMP echo reply" in line and "%s > %s" % (ADDRESSES[("h2", 0)], ADDRESSES[("h1", 0)]) in line
                   for line in behind), behind[-20:]
