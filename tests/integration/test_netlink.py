"""The netlink layer against the kernel, in a throwaway namespace: addresses, routes, readable errors."""
import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _netlink as nl

pytestmark = pytest.mark.integration


def test_addresses_routes_and_errors_in_a_namespace(netns):
    with nl.netlink(netns) as ipr:
        nl.add_bridge(ipr, "qlbr0", stp=True)
        nl.set_link(ipr, "qlbr0", up=True, mtu=1400, alias="qemulab:unit")
        link = nl.get_link(ipr, "qlbr0")
        observed = (link["kind"], link["stp"], link["mtu"], link["alias"], link["up"])
        assert observed == ("bridge", True, 1400, "qemulab:unit", True)
        nl.add_address(ipr, "qlbr0", "10.20.70.1/24")
        assert nl.get_addresses(ipr, "qlbr0") == ["10.20.70.1/24"]
        nl.add_route(ipr, "10.20.80.0/24", "10.20.70.2", dev="qlbr0")
        assert {"to": "10.20.80.0/24", "via": "10.20.70.2", "dev": "qlbr0"} in nl.get_routes(ipr)
        nl.delete_route(ipr, "10.20.80.0/24", "10.20.70.2")
        assert nl.get_routes(ipr) == []
        nl.delete_address(ipr, "qlbr0", "10.20.70.1/24")
        assert nl.get_addresses(ipr, "qlbr0") == []

        with pytest.raises(nl.NetlinkError) as err:
            nl.add_bridge(ipr, "qlbr0")
        assert str(err.value) == "bridge qlbr0: create: it already exists (EEXIST)"
        with pytest.raises(nl.NetlinkError) as err:
            nl.set_link(ipr, "qlnone0", up=True)
        assert str(err.value) == "qlnone0: no such interface"

        nl.add_tap(ipr, "qltap0", owner=65534, multi_queue=True)
        tap = nl.get_link(ipr, "qltap0")
        assert tap["kind"] == "tun" and tap["tun"]["type"] == "tap" and tap["tun"]["owner"] == 65534
        assert tap["tun"]["group"] is None and tap["tun"]["multi_queue"] and tap["tun"]["persist"]
        nl.delete_link(ipr, "qltap0")
        assert nl.get_link(ipr, "qltap0") is None


def test_missing_namespace_is_named():
    with pytest.raises(nl.NetlinkError) as err:
        with nl.netlink("qlt-no-such-ns"):
            pass
    assert "network namespace qlt-no-such-ns does not exist" in str(err.value)
