"""A NIC's netem and link on real guests (issue 16), all on one running lab (linklab.LinkLab):

    h1 -- lkbra -- r1 (eth0) | r1 (eth1) -- lkbrb -- h2

r1's eth1 carries the impairment, so h1 -> h2 crosses it and h1 -> r1's eth0 does not. Each change is made by a
re-run of lab.yml (--tags links, or a plain run) on the running lab, with every QEMU's pid unchanged; a run after it
changes nothing. This host's kernel has no sch_netem, so the impairment lives in the guest (the status table and
nic_links say so); the host path is test_links_host.py's.
"""
import json
import re

import pytest

from hostsnapshot import lab_qemu_processes
from linklab import ADDRESSES, shared_link_lab

pytestmark = pytest.mark.integration

LINKS = "Take NIC links down or up and impair the taps"
STATUS = "Show each VM, its state, addresses, SSH and console"
H2, R1_ETH0 = ADDRESSES[("h2", 0)], ADDRESSES[("r1", 0)]


@pytest.fixture
def link_lab(request):
    yield from shared_link_lab(request)


def _min_rtt(lab, source, address, count=20):
    out = lab.ok(source, "ping -q -c %d -i 0.2 -W 2 %s" % (count, address))
    match = re.search(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)/", out)
    assert match, out
    return float(match.group(1))


def _apply(lab, tags="links", check=False, diff=False):
    """A re-run of lab.yml on the running lab; no QEMU may restart."""
    pids = sorted(lab_qemu_processes(lab.name))
    res = lab.run(tags=tags, check=check) if not diff else _run_diff(lab, tags, check)
    assert res.rc == 0, res
    assert sorted(lab_qemu_processes(lab.name)) == pids, "a VM restarted"
    return res


def _run_diff(lab, tags, check):
    from conftest import run_playbook
    from faultlab import LAB_YML
    return run_playbook(LAB_YML, inventory=lab.inventory, tags=tags, check=check, diff=True)


def _unchanged(lab, tags="links"):
    again = _apply(lab, tags)
    assert {host: again.changed(host) for host in again.stats} == dict((host, 0) for host in again.stats), again


def _guest_qdisc(lab, vm, dev):
    return json.loads(lab.ok(vm, "tc -j qdisc show dev %s" % dev))[0]


def test_delay_on_one_router_nic_adds_its_delay_only_to_paths_that_cross_it(link_lab):
    lab = link_lab
    base_far, base_near = _min_rtt(lab, "h1", H2), _min_rtt(lab, "h1", R1_ETH0)
    lab.set_nic("r1", 1, netem={"delay": "50ms"})
    # check mode with --diff: the change is shown per NIC and nothing changes in the guest
    shown = _apply(lab, check=True, diff=True)
    links = shown.result(LINKS)
    assert links["diff"]["after"]["r1:eth1"] == {"link": "up"}
    assert [item for item in links["links"] if item["vm"] == "r1" and item["dev"] == "eth1"] == [
        {"vm": "r1", "dev": "eth1", "link": "up", "netem_where": "guest", "netem": "delay 50ms"}]
    shown_guest = [res for name, host, res in shown.tasks("r1") if name.endswith("Show each NIC's impairment change")]
    assert "r1 eth1: none -> delay 50ms" in json.dumps(shown_guest), shown_guest
    assert _guest_qdisc(lab, "r1", "eth1")["kind"] != "netem"
    applied = _apply(lab)
    assert applied.changed("r1") == 1, applied
    assert _guest_qdisc(lab, "r1", "eth1")["kind"] == "netem"
    far, near = _min_rtt(lab, "h1", H2), _min_rtt(lab, "h1", R1_ETH0)
    print("min RTT h1->h2 %.1f -> %.1f ms, h1->r1 eth0 %.1f -> %.1f ms" % (base_far, far, base_near, near))
    assert 40 <= far - base_far <= 60, (base_far, far)
    assert abs(near - base_near) < 10, (base_near, near)
    _unchanged(lab)
    lab.delay_baseline = base_far
    # the status table says where the impairment lives (this host's kernel has no netem: in the guest)
    status = lab.run(tags="status")
    table = status.result(STATUS)["msg"]
    assert any("eth1: link up, netem delay 50ms on the guest's eth1" in line for line in table), table


def test_loss_of_20_percent_loses_10_to_30_percent_of_200_pings(link_lab):
    lab = link_lab
    lab.set_nic("r1", 1, netem={"loss": "20%"})
    _apply(lab)
    out = lab.ssh("h1", "ping -q -c 200 -i 0.05 -W 1 %s" % H2, timeout=300).stdout
    lost = float(re.search(r"([0-9.]+)% packet loss", out).group(1))
    print("loss over 200 pings: %.1f%%" % lost)
    assert 10 <= lost <= 30, out
    _unchanged(lab)


def test_rate_of_5mbit_caps_iperf3_and_removing_netem_restores_the_baseline(link_lab):
    lab = link_lab
    lab.set_nic("r1", 1, netem={"rate": "5mbit"})
    _apply(lab)
    lab.ok("h2", "iperf3 -s -D -1 -p 5201")
    report = json.loads(lab.ok("h1", "sleep 1; iperf3 -J -c %s -p 5201 -t 5" % H2, timeout=120))
    received = report["end"]["sum_received"]["bits_per_second"]
    print("iperf3 h1->h2 with rate 5mbit: %.2f Mbit/s" % (received / 1e6))
    assert 1e6 < received <= 5.5e6, received
    lab.set_nic("r1", 1, netem=None)
    removed = _apply(lab)
    assert removed.changed("r1") == 1, removed
    assert _guest_qdisc(lab, "r1", "eth1")["kind"] != "netem"
    far = _min_rtt(lab, "h1", H2)
    baseline = getattr(lab, "delay_baseline", None)
    if baseline is not None:
        assert abs(far - baseline) < 10, (baseline, far)
    _unchanged(lab)


def test_link_down_is_carrier_loss_in_the_guest_and_up_restores_it(link_lab):
    lab = link_lab
    assert lab.ssh("h1", "ping -c 2 -W 2 %s" % H2).returncode == 0
    lab.set_nic("r1", 1, link="down")
    down = _apply(lab)
    assert down.changed("localhost") >= 1, down
    shown = lab.ok("r1", "ip link show eth1")
    assert "NO-CARRIER" in shown, shown
    assert lab.ssh("h1", "ping -c 3 -W 2 %s" % H2).returncode != 0
    # a traceroute from h1 stops at r1: the first hop answers, nothing beyond the pulled cable does
    hops = lab.ssh("h1", "traceroute -n -w 1 -q 1 -m 4 %s" % H2, timeout=120).stdout.splitlines()[1:]
    assert hops and hops[0].split()[1] == R1_ETH0 and not any(H2 in hop for hop in hops), hops
    # its connected route is gone with the carrier, as with a pulled cable
    assert "linkdown" in lab.ok("r1", "ip route show dev eth1")
    _unchanged(lab)
    # a plain run (every stage) leaves it down and changes nothing either
    _unchanged(lab, tags=None)
    lab.set_nic("r1", 1, link="up")
    _apply(lab)
    assert "NO-CARRIER" not in lab.ok("r1", "ip link show eth1")
    lab.ok("h1", "for i in $(seq 20); do ping -c 1 -W 1 %s && exit 0; sleep 0.5; done; exit 1" % H2)
    _unchanged(lab)


def test_cleanup_of_a_lab_with_a_link_down_leaves_nothing(link_lab):
    lab = link_lab
    lab.set_nic("r1", 1, link="down", netem={"delay": "5ms"})
    _apply(lab)
    from linklab import _remove
    _remove()  # lab.yml --tags cleanup; asserts no process, file or namespace is left
