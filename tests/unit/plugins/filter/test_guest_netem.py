"""guest_netem_probe/guest_netem_plan: a guest's qdiscs read with one shell line and compared with the plan, so tc
runs only for a NIC that differs; a down link's tap is planned down so host_prep leaves it so."""
import json

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.qemulab.network.plugins.filter.guest_netem import (
    guest_netem_plan,
    guest_netem_probe,
    netem_text,
)
from ansible_collections.qemulab.network.plugins.filter.plumbing import plumbing_pending

pytestmark = pytest.mark.unit

NETEM = json.dumps([{"kind": "netem", "handle": "8001:", "root": True, "refcnt": 2,
                     "options": {"limit": 1000, "delay": {"delay": 0.05, "jitter": 0, "correlation": 0},
                                 "ecn": False, "gap": 0}}])
MQ = json.dumps([{"kind": "mq", "handle": "0:", "root": True, "options": {}},
                 {"kind": "pfifo_fast", "handle": "0:", "parent": ":1", "options": {}}])


def probe_output(per_dev):
    return "".join("\r\n@@qemulab:qdisc:%s@@\r\n%s\r\n" % (dev, text) for dev, text in per_dev)


def test_probe_is_one_line_with_a_marker_per_nic():
    assert guest_netem_probe([{"dev": "eth0"}, {"dev": "eth1"}]) == (
        "echo; echo '@@qemulab:qdisc:eth0@@'; tc -j qdisc show dev eth0 2>/dev/null; "
        "echo; echo '@@qemulab:qdisc:eth1@@'; tc -j qdisc show dev eth1 2>/dev/null; echo")
    with pytest.raises(AnsibleFilterError):
        guest_netem_probe([{"dev": "eth0; reboot"}])


def test_plan_runs_tc_only_where_the_guest_differs():
    out = probe_output([("eth0", MQ), ("eth1", NETEM)])
    nics = [{"dev": "eth0", "netem": {"loss": 20.0}}, {"dev": "eth1", "netem": {"delay": 50000}}]
    assert guest_netem_plan(out, nics) == [
        {"dev": "eth0", "argv": ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "loss", "20%"],
         "before": "none", "after": "loss 20%"},
        {"dev": "eth1", "argv": None, "before": "delay 50ms", "after": "delay 50ms"}]
    removed = guest_netem_plan(out, [{"dev": "eth0", "netem": {}}, {"dev": "eth1", "netem": {}}])
    assert [item["argv"] for item in removed] == [None, ["tc", "qdisc", "del", "dev", "eth1", "root"]]


def test_a_guest_without_tc_shows_nothing_and_only_wanted_impairment_acts():
    out = probe_output([("eth0", "")])
    assert guest_netem_plan(out, [{"dev": "eth0", "netem": {}}])[0]["argv"] is None
    with pytest.raises(AnsibleFilterError, match="printed nothing for eth1"):
        guest_netem_plan(out, [{"dev": "eth1", "netem": {}}])
    with pytest.raises(AnsibleFilterError, match="does not parse"):
        guest_netem_plan(probe_output([("eth0", "Error: bad")]), [{"dev": "eth0", "netem": {}}])


def test_netem_text():
    assert netem_text({"delay": 50000, "rate": 5000000}) == "delay 50ms rate 5mbit"
    assert netem_text({}) == "none"


def test_a_tap_planned_down_is_not_brought_up_again():
    tap = {"name": "tb1", "kind": "tun", "alias": "qemulab:lk", "master": "brb", "up": False,
           "tun": {"type": "tap", "owner": None}}
    planned = {"name": "tb1", "bridge": "brb", "owner_uid": None}
    assert plumbing_pending([tap], "lk", taps=[dict(planned, up=False)])["taps"] == []
    assert plumbing_pending([tap], "lk", taps=[planned])["taps"] == ["tb1"]
    assert plumbing_pending([dict(tap, up=True)], "lk", taps=[dict(planned, up=False)])["taps"] == ["tb1"]
