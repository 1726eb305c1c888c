"""playbooks/capture.yml (qemulab.network.capture) on a running lab: a capture on a bridge holds the ICMP packets a
guest sent across it, with the MACs of the two NICs, in a pcapng file read back with tcpdump; a segment the plan
does not have stops the run before anything is captured."""
import glob
import os
import subprocess
import time

import pytest

from conftest import run_playbook
from linklab import ADDRESSES, BRIDGES, MACS, TAPS, shared_link_lab

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
