"""lab_capture: a capture resolved against the plan (bridge or NIC's tap, namespace, path) and every bad value
listed with its fix."""
import pytest

from ansible_collections.qemulab.network.plugins.filter.lab_capture import lab_capture

pytestmark = pytest.mark.unit

PLAN = {"lab_name": "seed", "netns": "qemulab-seed", "errors": [],
        "bridges": [{"name": "br1"}, {"name": "br2"}],
        "vms": [{"name": "rt1", "nics": [{"tap": "vport11", "backend": "tap"}, {"tap": "vport21", "backend": "tap"},
                                         {"tap": None, "backend": "user"}]}]}


def test_a_segment_is_its_bridge_in_the_labs_namespace():
    got = lab_capture(PLAN, segment="br2", seconds="30", expression="icmp and host 10.20.20.1",
                      stamp="20261127T131500Z")
    assert got == {"errors": [], "netns": "qemulab-seed", "interface": "br2", "seconds": 30,
                   "filter": "icmp and host 10.20.20.1",
                   "path": "/var/lib/qemulab/labs/seed/captures/br2-20261127T131500Z.pcapng",
                   "follow_command": "ip netns exec qemulab-seed tcpdump -i br2 -U -n -w - -- "
                                     "'icmp and host 10.20.20.1'",
                   "follow": False}


def test_a_nic_is_its_tap_and_a_filter_stays_one_argument():
    got = lab_capture(PLAN, nic="rt1:eth1", expression="'; reboot", follow="true", stamp="1")
    assert got["interface"] == "vport21" and got["follow"] is True
    assert got["path"].endswith("/captures/rt1-eth1-1.pcapng")
    assert got["follow_command"].endswith("-- ''\"'\"'; reboot'")


@pytest.mark.parametrize("kwargs,words", [
    ({"segment": "br9"}, "segment 'br9' is not a bridge of lab seed; use one of br1, br2"),
    ({}, "give exactly one of -e segment=<bridge> (one of br1, br2) or -e nic=<vm>:eth<N>"),
    ({"segment": "br1", "nic": "rt1:eth0"}, "give exactly one of"),
    ({"nic": "rt9:eth0"}, "nic 'rt9:eth0' is not <vm>:eth<N> for a VM of the lab (rt1); write it like rt1:eth0"),
    ({"nic": "rt1:eth3"}, "nic 'rt1:eth3': VM rt1 has eth0 to eth2; pick one of them"),
    ({"nic": "rt1:eth2"}, "nic 'rt1:eth2' has no tap (backend user); capture a tap NIC or a segment"),
    ({"segment": "br1", "seconds": "0"}, "seconds '0' is not a number from 1 to 3600"),
    ({"segment": "br1", "seconds": "1; rm"}, "seconds '1; rm' is not a number"),
    ({"segment": "br1", "expression": "icmp\nor arp"}, "spans lines"),
])
def test_bad_values_are_listed_with_the_fix(kwargs, words):
    got = lab_capture(PLAN, **kwargs)
    assert any(words in e for e in got["errors"]), got


def test_an_invalid_plan_is_not_captured():
    assert lab_capture(dict(PLAN, errors=["VM rt1: bad"]), segment="br1")["errors"][0] == "inventory: VM rt1: bad"
