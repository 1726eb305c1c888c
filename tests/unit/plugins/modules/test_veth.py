"""Unit tests (no kernel): veth pair recognition, namespaces of the two ends, pair errors."""
import pytest

from ansible_collections.qemulab.network.plugins.modules import veth

pytestmark = pytest.mark.unit


def end(index, peer_index, kind="veth"):
    return {"index": index, "peer_index": peer_index, "kind": kind}


def test_pair_is_recognised_by_mutual_peer_indexes():
    assert veth.is_pair(end(4, 2), end(2, 4))
    assert not veth.is_pair(end(4, 2), end(2, 5))
    assert not veth.is_pair(end(4, 2), end(2, 4, kind="bridge"))
    assert not veth.is_pair(None, end(2, 4))


@pytest.mark.parametrize("netns,peer_netns,expected", [
    ("lab", None, ("lab", "lab")),
    ("lab", "host", ("lab", "host")),
    ("lab", "", ("lab", None)),
    (None, None, (None, None)),
])
def test_peer_namespace_defaults_to_the_first_ends(netns, peer_netns, expected):
    assert veth.namespaces({"netns": netns, "peer_netns": peer_netns}) == expected


def test_pair_errors_name_both_ends_and_where():
    assert veth.pair_error("veth0", "veth1", end(4, 2), end(2, 4), "lab", "host") is None
    assert veth.pair_error("veth0", "veth1", None, None, "lab", "host") is None
    message = veth.pair_error("veth0", "veth1", end(4, 2), end(2, 9), "lab", None)
    assert "veth0 (in namespace lab) and veth1 (in the host namespace)" in message and "not one veth pair" in message
    message = veth.pair_error("veth0", "veth1", end(4, 2), None, "lab", "host")
    assert "peer veth1 is not in namespace host" in message and "state: absent" in message
    message = veth.pair_error("veth0", "veth1", None, end(2, 4), "lab", "host")
    assert "peer veth1 exists in namespace host without veth0" in message
