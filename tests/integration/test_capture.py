"""playbooks/capture.yml (qemulab.network.capture) on a running lab: a capture on a bridge holds the ICMP packets a
guest sent across it, with the MACs of the two NICs, in a pcapng file read back with tcpdump; a segment the plan
does not have stops the run before anything is captured. With -e follow=true and the pcap stdout callback the
packets stream to the stdout of ansible-playbook while it runs (and nothing else does); stopping it by its pid leaves
no tcpdump and no file."""
import glob
import json
import os
import select
import signal
import struct
import subprocess
import tempfile
import time

import pytest

from conftest import ANSIBLE_PLAYBOOK, REPO_ROOT, playbook_env, run_playbook
from linklab import ADDRESSES, BRIDGES, MACS, TAPS, shared_link_lab

from ansible_collections.qemulab.network.plugins.module_utils import _pcapng

pytestmark = pytest.mark.integration

CAPTURE = "qemulab.network.capture"


@pytest.fixture
def link_lab(request):
    yield from shared_link_lab(request)


def _captures(lab):
    return sorted(glob.glob("/var/lib/qemulab/labs/%s/captures/*.pcapng" % lab.name))


def _ping_in_background(lab, source, address, seconds):
    return subprocess.Popen(lab.ssh_argv(source, "ping -c %d -i 0.25 %s" % (seconds * 4, address)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read(path):
    out = subprocess.run(["tcpdump", "-n", "-e", "-r", path], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.parametrize("where", ["segment", "nic"])
def test_a_capture_holds_the_pings_across_the_bridge_with_both_macs(link_lab, where):
    lab = link_lab
    before = set(_captures(lab))
    ping = _ping_in_background(lab, "h1", ADDRESSES[("r1", 0)], 20)
    try:
        time.sleep(1)
        extra = {"seconds": 5, "filter": "icmp"}
        extra.update({"segment": BRIDGES[("r1", 0)]} if where == "segment" else {"nic": "r1:eth0"})
        res = run_playbook(CAPTURE, inventory=lab.inventory, extra_vars=extra, timeout=300)
    finally:
        ping.wait(timeout=60)
    assert res.rc == 0, res
    new = sorted(set(_captures(lab)) - before)
    assert len(new) == 1, new
    shown = res.result("Show where the capture is and how to open it")["msg"]
    assert new[0] in shown[0] and ("tcpdump -n -e -r %s" % new[0]) in shown[1], shown
    interface = BRIDGES[("r1", 0)] if where == "segment" else TAPS[("r1", 0)]
    assert "%s:" % interface in shown[0]
    assert open(new[0], "rb").read(4) == b"\x0a\x0d\x0d\x0a"  # a pcapng section header block
    assert oct(os.stat(new[0]).st_mode & 0o777) == "0o600"
    lines = _read(new[0])
    h1, r1 = MACS[("h1", 0)], MACS[("r1", 0)]
    requests = [line for line in lines if "%s > %s" % (h1, r1) in line and "ICMP echo request" in line
                and "%s > %s" % (ADDRESSES[("h1", 0)], ADDRESSES[("r1", 0)]) in line]
    replies = [line for line in lines if "%s > %s" % (r1, h1) in line and "ICMP echo reply" in line]
    # 5 s of pings every 0.25 s, less tcpdump's start: well over ten each way; nothing but ICMP passed the filter
    assert len(requests) >= 10 and len(replies) >= 10, lines
    assert all("ICMP" in line for line in lines), lines


def test_a_segment_the_plan_does_not_have_is_refused_before_capturing(link_lab):
    lab = link_lab
    before = set(_captures(lab))
    res = run_playbook(CAPTURE, inventory=lab.inventory, extra_vars={"segment": "br9", "seconds": 1},
                       timeout=300, expect_failure=True)
    assert any("segment 'br9' is not a bridge of lab %s; use one of lkbra, lkbrb" % lab.name in m
               for m in res.failure_messages()), res
    res = run_playbook(CAPTURE, inventory=lab.inventory, extra_vars={"nic": "h1:eth3", "seconds": 0},
                       timeout=300, expect_failure=True)
    text = " ".join(res.failure_messages())
    assert "VM h1 has eth0 to eth0" in text and "is not a number from 1 to 3600" in text, res
    assert set(_captures(lab)) == before


def _mac(raw):
    return ":".join("%02x" % b for b in raw)


def _icmp(record):
    """(source MAC, destination MAC, ICMP type) of a pcap record holding an Ethernet IPv4 ICMP frame, else None."""
    frame = record[16:]
    if len(frame) < 35 or frame[12:14] != b"\x08\x00" or frame[23] != 1:
        return None
    return _mac(frame[6:12]), _mac(frame[0:6]), frame[14 + (frame[14] & 0x0F) * 4]


def _streaming_tcpdumps(lab, interface):
    """pids of the tcpdump processes streaming `interface` of the lab's namespace to stdout (packet_stream's)."""
    netns = os.stat("/run/netns/%s" % lab.netns).st_ino
    wanted = ["tcpdump", "-i", interface, "-U", "-n", "-w", "-", "--", "icmp"]
    found = []
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().decode("utf-8", "replace").split("\0")[:-1]
            if argv == wanted and os.stat("/proc/%d/ns/net" % pid).st_ino == netns:
                found.append(pid)
        except OSError:
            continue
    return found


def test_follow_streams_the_pings_to_stdout_while_it_runs_and_a_stop_by_pid_leaves_nothing(link_lab):
    lab = link_lab
    before = set(_captures(lab))
    bridge = BRIDGES[("r1", 0)]
    h1, r1 = MACS[("h1", 0)], MACS[("r1", 0)]
    argv = [ANSIBLE_PLAYBOOK, CAPTURE, "-i", lab.inventory,
            "-e", json.dumps({"segment": bridge, "follow": True, "filter": "icmp"})]
    env = playbook_env({"ANSIBLE_STDOUT_CALLBACK": "qemulab.network.pcap"})
    ping = _ping_in_background(lab, "h1", ADDRESSES[("r1", 0)], 60)
    data, seen, running_at_icmp, tcpdumps = b"", [], None, []
    with tempfile.TemporaryFile() as stderr:
        stream = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and stream.poll() is None:
                ready, _, _ = select.select([stream.stdout], [], [], 1)
                if ready:
                    data += os.read(stream.stdout.fileno(), 65536)
                if len(data) < 24:
                    continue
                order = "<" if struct.unpack("<I", data[:4])[0] == 0xA1B2C3D4 else ">"
                seen = [_icmp(r) for r in _pcapng.records(data, order)]
                requests = [s for s in seen if s == (h1, r1, 8)]
                replies = [s for s in seen if s == (r1, h1, 0)]
                if len(requests) >= 3 and len(replies) >= 3:
                    # the packets came while ansible-playbook still runs: a stream, not a file at the end
                    running_at_icmp = stream.poll() is None
                    tcpdumps = _streaming_tcpdumps(lab, bridge)
                    break
        finally:
            stream.send_signal(signal.SIGTERM)
            try:
                stream.wait(timeout=60)
            finally:
                ping.kill()
                ping.wait()
                data += stream.stdout.read()
                stream.stdout.close()
        stderr.seek(0)
        ansible_output = stderr.read().decode("utf-8", "replace")
    assert running_at_icmp is True, (stream.returncode, seen[-10:], ansible_output[-3000:])
    assert len(tcpdumps) == 1, tcpdumps
    # stdout held a pcap stream and nothing else: its header, then whole records to its last byte
    assert struct.unpack("<I", data[:4])[0] == 0xA1B2C3D4, data[:64]
    order = "<"
    assert 24 + sum(len(r) for r in _pcapng.records(data, order)) == len(data)
    assert all(_icmp(r) is not None for r in _pcapng.records(data, order))
    # Ansible's own output went to stderr
    assert "TASK [Stream the packets to stdout]" in ansible_output, ansible_output[-3000:]
    # stopped by its pid: no tcpdump of it is left, and a stream writes no file
    time.sleep(1)
    assert stream.returncode == -signal.SIGTERM, stream.returncode
    assert not [pid for pid in tcpdumps if os.path.exists("/proc/%d" % pid) and _state(pid) != "Z"]
    assert _streaming_tcpdumps(lab, bridge) == []
    assert set(_captures(lab)) == before


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_follow_without_the_pcap_callback_is_refused_before_capturing(link_lab):
    lab = link_lab
    res = run_playbook(CAPTURE, inventory=lab.inventory, extra_vars={"segment": BRIDGES[("r1", 0)], "follow": True},
                       timeout=300, expect_failure=True)
    assert any("ANSIBLE_STDOUT_CALLBACK=qemulab.network.pcap" in m for m in res.failure_messages()), res
    assert _streaming_tcpdumps(lab, BRIDGES[("r1", 0)]) == []
