"""Unit tests: plumbing_pending sends every bridge and tap that is not exactly as planned to its module."""
import pytest

from ansible_collections.qemulab.network.plugins.filter.plumbing import plumbing_pending

pytestmark = pytest.mark.unit


def _bridge(name, alias="qemulab:seed", up=True):
    return {"name": name, "kind": "bridge", "master": None, "alias": alias, "up": up, "tun": None}


def _tap(name, master, alias="qemulab:seed", up=True, tun_type="tap", owner=None):
    return {"name": name, "kind": "tun", "master": master, "alias": alias, "up": up,
            "tun": {"type": tun_type, "owner": owner, "group": None}}


BRIDGES = [{"name": "br1"}, {"name": "br2"}]
TAPS = [{"name": "vport11", "bridge": "br1", "vm": "rt1"}, {"name": "vport12", "bridge": "br2", "vm": "rt1"}]


def test_a_lab_that_is_up_needs_no_module_run():
    links = [_bridge("br1"), _bridge("br2"), _tap("vport11", "br1"), _tap("vport12", "br2"), _bridge("docker0", None)]
    assert plumbing_pending(links, "seed", BRIDGES, TAPS) == {"bridges": [], "taps": []}


@pytest.mark.parametrize("links, bridges, taps", [
    ([], ["br1", "br2"], ["vport11", "vport12"]),                                   # nothing yet
    ([_bridge("br1", alias=None)], ["br1", "br2"], ["vport11", "vport12"]),         # a foreign br1: the module refuses
    ([_bridge("br1", alias="qemulab:other")], ["br1", "br2"], ["vport11", "vport12"]),  # another lab's
    ([_bridge("br1", up=False), _bridge("br2")], ["br1"], ["vport11", "vport12"]),  # down
    ([_bridge("br1"), _bridge("br2"), _tap("vport11", "br2"), _tap("vport12", "br2")], [], ["vport11"]),  # wrong bridge
    ([_bridge("br1"), _bridge("br2"), _tap("vport11", "br1", tun_type="tun"), _tap("vport12", "br2")], [],
     ["vport11"]),                                                                  # a tun, not a tap
    ([_bridge("br1"), _bridge("br2"), _tap("vport11", "br1", owner=1000), _tap("vport12", "br2")], [],
     ["vport11"]),                                                                  # owner not as planned
    ([_bridge("br1"), _tap("br2", None), _tap("vport11", "br1"), _tap("vport12", "br2")], ["br2"], []),  # br2 a tap
])
def test_anything_not_as_planned_goes_to_the_module(links, bridges, taps):
    assert plumbing_pending(links, "seed", BRIDGES, TAPS) == {"bridges": bridges, "taps": taps}
