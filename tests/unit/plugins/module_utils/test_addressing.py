"""Unit tests (no kernel): planning address and route changes for ip_config."""
import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _addressing as addressing

pytestmark = pytest.mark.unit


def have(addresses=None, routes=None, up=True):
    return {
        "interfaces": {"eth0": {"index": 2, "up": up, "addresses": addresses or []},
                       "eth1": {"index": 3, "up": True, "addresses": ["10.20.40.2/24"]}},
        "routes": routes or [],
    }


def test_normalize_address_and_route():
    assert addressing.normalize_address(" 10.20.10.1/24") == "10.20.10.1/24"
    assert addressing.normalize_route({"to": "default", "via": "10.20.10.1"}) == ("0.0.0.0/0", "10.20.10.1")
    with pytest.raises(ValueError):
        addressing.normalize_route({"to": "10.20.60.1/24", "via": "10.20.20.2"})  # a host bit set: not a network
    with pytest.raises(ValueError):
        addressing.normalize_address("10.20.10.300/24")


def test_nothing_to_do_when_state_matches():
    state = have(["10.20.20.2/24"], [{"to": "10.20.60.0/24", "via": "10.20.40.1", "dev": "eth1"}])
    changes = addressing.plan(state, [{"name": "eth0", "addresses": ["10.20.20.2/24"]}],
                              [{"to": "10.20.60.0/24", "via": "10.20.40.1"}])
    assert changes == []


def test_deletions_come_before_additions_so_secondaries_survive():
    changes = addressing.plan(have(["10.20.20.9/24"]), [{"name": "eth0", "addresses": ["10.20.20.2/24"]}], [])
    assert [c[0] for c in changes] == ["addr_del", "addr_add"]


def test_purge_can_be_turned_off():
    changes = addressing.plan(have(["10.20.20.9/24"], [{"to": "10.1.0.0/16", "via": "10.20.20.1", "dev": "eth0"}]),
                              [{"name": "eth0", "addresses": ["10.20.20.2/24"]}], [],
                              purge_addresses=False, purge_routes=False)
    assert changes == [("addr_add", {"name": "eth0", "address": "10.20.20.2/24"})]


def test_a_removed_route_is_deleted_and_a_new_one_added():
    state = have(["10.20.20.2/24"], [{"to": "10.20.10.0/24", "via": "10.20.20.1", "dev": "eth0"}])
    changes = addressing.plan(state, [{"name": "eth0", "addresses": ["10.20.20.2/24"]}],
                              [{"to": "10.20.60.0/24", "via": "10.20.40.1"}])
    assert changes == [("route_del", {"to": "10.20.10.0/24", "via": "10.20.20.1", "dev": "eth0"}),
                       ("route_add", {"to": "10.20.60.0/24", "via": "10.20.40.1"})]


def test_a_down_link_is_brought_up_and_unlisted_addresses_untouched():
    changes = addressing.plan(have([], up=False), [{"name": "eth0", "addresses": None}], [])
    assert changes == [("link_up", {"name": "eth0"})]
