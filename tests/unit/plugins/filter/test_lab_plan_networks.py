"""Unit tests: the plan's user-mode (SLIRP) NICs and router NAT (vm_nat), and what qemu_nics makes of them."""
import pytest

from ansible_collections.qemulab.network.plugins.filter.lab_plan import lab_plan
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_render import qemu_nics

pytestmark = pytest.mark.unit


def small_lab():
    """Router r1 between br-a (a1) and br-b (b1); the same base lab as test_lab_plan's."""
    hostvars = {
        "localhost": {"lab_name": "unit", "lab_netns": "qlab-unit"},
        "r1": {"ansible_port": 2301,
               "vm_nics": [{"bridge": "br-a", "tap": "ta1", "address": "10.1.1.1/24"},
                           {"bridge": "br-b", "tap": "tb1", "address": "10.1.2.1/24"}]},
        "a1": {"ansible_port": 2302, "vm_gateway": "10.1.1.1",
               "vm_nics": [{"bridge": "br-a", "tap": "ta2", "address": "10.1.1.2/24"}]},
        "b1": {"ansible_port": 2303,
               "vm_nics": [{"bridge": "br-b", "tap": "tb2", "address": "10.1.2.2/24"}]},
    }
    groups = {"all": ["localhost", "r1", "a1", "b1"], "hypervisors": ["localhost"], "lab": ["r1", "a1", "b1"],
              "routers": ["r1"], "hosts": ["a1", "b1"]}
    return hostvars, groups


def vm_of(plan, name):
    return next(vm for vm in plan["vms"] if vm["name"] == name)


def errors_with(host, field, value):
    hostvars, groups = small_lab()
    hostvars[host][field] = value
    return lab_plan(hostvars, groups, check_files=False)["errors"]


# -- user-mode NICs ------------------------------------------------------------------------------------------------
def test_user_nic_defaults_to_its_own_network_and_slirps_first_address():
    hostvars, groups = small_lab()
    hostvars["a1"]["vm_nics"].append({"backend": "user", "hostfwd": [{"host_port": 8022, "guest_port": 22}]})
    plan = lab_plan(hostvars, groups, check_files=False)
    assert plan["errors"] == []
    nic = vm_of(plan, "a1")["nics"][1]
    assert nic["dev"] == "eth1" and nic["backend"] == "user" and nic["bridge"] is None and nic["tap"] is None
    assert nic["net"] == "10.0.3.0/24" and nic["address"] == "10.0.3.15/24" and nic["vhost"] is None
    assert nic["hostfwd"] == [{"host_port": 8022, "guest_port": 22, "protocol": "tcp"}]
    assert nic["mac"].startswith("02:")
    # no tap, no bridge: the host side has nothing to create for it
    assert [t["name"] for t in plan["taps"]] == ["ta1", "tb1", "ta2", "tb2"]
    assert [b["name"] for b in plan["bridges"]] == ["br-a", "br-b"]
    launched = qemu_nics(vm_of(plan, "a1"), plan["netns"])
    assert launched[1] == {"model": "virtio-net-pci", "mac": nic["mac"], "backend": "user", "restrict": True,
                           "net": "10.0.3.0/24", "hostfwd": [{"host_port": 8022, "guest_port": 22, "protocol": "tcp"}]}
    assert launched[2]["hostfwd"][0]["guest_port"] == 22 and launched[2]["mac"] == vm_of(plan, "a1")["mgmt_mac"]


@pytest.mark.parametrize("nic,fragment", [
    ({"backend": "slirp"}, "a1: vm_nics[1].backend 'slirp' is not one of tap, user, vhost-user; use one of them"),
    ({"backend": "user", "bridge": "br-a"}, "a1: vm_nics[1].bridge does not apply to a user-mode NIC"),
    ({"backend": "user", "vhost": "on"}, "a1: vm_nics[1].vhost does not apply to a user-mode NIC"),
    ({"backend": "user", "net": "10.0.2.0/24"}, "a1: vm_nics[1].net 10.0.2.0/24 overlaps 10.0.2.0/24, the management"),
    ({"backend": "user", "net": "10.1.2.0/24"}, "a1: vm_nics[1].net 10.1.2.0/24 overlaps 10.1.2.0/24 of bridge br-b"),
    ({"backend": "user", "net": "10.0.3.0/30"}, "a1: vm_nics[1].net 10.0.3.0/30 is too small"),
    ({"backend": "user", "address": "10.0.4.15/24"}, "a1: vm_nics[1].address 10.0.4.15/24 is not in the user-mode"),
    ({"backend": "user", "address": "10.0.3.2/24"}, "a1: vm_nics[1].address 10.0.3.2/24 is SLIRP's own gateway"),
    ({"backend": "user", "address": "10.0.3.20/24", "hostfwd": [{"host_port": 8080, "guest_port": 80}]},
     "a1: vm_nics[1].address 10.0.3.20/24 is not 10.0.3.15, where QEMU delivers the forwards"),
    ({"backend": "user", "hostfwd": [{"host_port": 80, "guest_port": 80}]},
     "a1: vm_nics[1].hostfwd[0].host_port 80 is outside 1024-65535; pick an unprivileged port"),
    ({"backend": "user", "hostfwd": [{"host_port": "http", "guest_port": 80}]},
     "a1: vm_nics[1].hostfwd[0].host_port 'http' is not a port number; use an integer 1024-65535"),
    ({"backend": "user", "hostfwd": [{"host_port": 8080, "guest_port": 0}]},
     "a1: vm_nics[1].hostfwd[0].guest_port 0 (an integer) is not a port from 1 to 65535"),
    ({"backend": "user", "hostfwd": [{"host_port": 8080}]},
     "a1: vm_nics[1].hostfwd[0].guest_port is not set; give it (1-65535), like 80"),
    ({"backend": "user", "hostfwd": [{"host_port": 8080, "guest_port": 80, "protocol": "sctp"}]},
     "a1: vm_nics[1].hostfwd[0].protocol 'sctp' is not one of tcp, udp; use one of them"),
    ({"backend": "user", "hostfwd": [{"host_port": 2303, "guest_port": 80}]},
     "b1: ansible_port 2303 is also forwarded by a1 vm_nics[1].hostfwd[0]"),
    ({"backend": "user", "hostfwd": [{"host_port": 8080, "guest_port": 80}, {"host_port": 8080, "guest_port": 81}]},
     "a1: vm_nics[1].hostfwd[1].host_port 8080/tcp is already forwarded by a1 vm_nics[1].hostfwd[0]"),
    ({"bridge": "br-c", "tap": "tc2", "hostfwd": []}, "a1: vm_nics[1].hostfwd only applies to backend user"),
])
def test_user_nic_checks_name_host_field_and_fix(nic, fragment):
    hostvars, groups = small_lab()
    hostvars["a1"]["vm_nics"].append(nic)
    errors = lab_plan(hostvars, groups, check_files=False)["errors"]
    assert any(error.startswith(fragment) for error in errors), errors
    assert all(";" in error for error in errors), errors


def test_a_user_mode_nics_mtu_is_refused_or_reaches_qemu():
    hostvars, groups = small_lab()
    hostvars["a1"]["vm_nics"].append({"backend": "user", "mtu": 9000})
    plan = lab_plan(hostvars, groups, check_files=False)
    if plan["errors"]:
        assert [e for e in plan["errors"] if e.startswith("a1: vm_nics[1].mtu ")], plan["errors"]
    else:
        launched = next(vm for vm in plan["hosts"]["localhost"]["vms"] if vm["name"] == "a1")
        assert launched["nics"][1]["backend"] == "user" and launched["nics"][1].get("mtu") == 9000


# -- NAT ---------------------------------------------------------------------------------------------------------------
NAT = [{"type": "masquerade", "inside": "eth0", "outside": "eth1"},
       {"type": "static", "inside": "eth0", "outside": "eth1", "inside_address": "10.1.1.2",
        "outside_address": "10.1.2.10"}]


def test_nat_is_planned_with_the_inside_subnet_and_the_published_address():
    hostvars, groups = small_lab()
    hostvars["r1"]["vm_nat"] = NAT
    plan = lab_plan(hostvars, groups, check_files=False)
    assert plan["errors"] == []
    assert vm_of(plan, "r1")["nat"] == [
        {"type": "masquerade", "inside": "eth0", "outside": "eth1", "inside_subnet": "10.1.1.0/24"},
        {"type": "static", "inside": "eth0", "outside": "eth1", "inside_address": "10.1.1.2",
         "outside_address": "10.1.2.10"}]
    assert vm_of(plan, "a1")["nat"] == []


@pytest.mark.parametrize("host,value,fragment", [
    ("a1", NAT[:1], "a1: vm_nat is set on a VM that does not forward; NAT runs on a router"),
    ("r1", {"type": "masquerade"}, "r1: vm_nat {'type': 'masquerade'} (a mapping) is not a list"),
    ("r1", [{"type": "snat", "inside": "eth0", "outside": "eth1"}],
     "r1: vm_nat[0].type 'snat' is not one of masquerade, pool, static; use one of them"),
    ("r1", [{"inside": "eth0", "outside": "eth1"}], "r1: vm_nat[0].type is not set; give it, like masquerade"),
    ("r1", [{"type": "masquerade", "inside": "eth0", "outside": "eth7"}],
     "r1: vm_nat[0].outside 'eth7' is not an addressed tap NIC of this VM; name one of eth0, eth1"),
    ("r1", [{"type": "masquerade", "inside": "eth0", "outside": "eth0"}], "r1: vm_nat[0].outside is the inside NIC"),
    ("r1", [dict(NAT[0], to="x")], "r1: vm_nat[0].to is not a known key"),
    ("r1", [dict(NAT[0], inside=["eth0"])],
     "r1: vm_nat[0].inside ['eth0'] (a list) is not an addressed tap NIC of this VM; name one of eth0, eth1"),
    ("r1", [dict(NAT[0], outside={"dev": "eth1"})], "r1: vm_nat[0].outside {'dev': 'eth1'} (a mapping) is not an"),
    ("r1", [dict(NAT[1], inside_address="10.1.2.2")], "r1: vm_nat[0].inside_address 10.1.2.2 is not on eth0's segment"),
    ("r1", [dict(NAT[1], outside_address="10.1.2.255")], "r1: vm_nat[0].outside_address 10.1.2.255 is the network or"),
    ("r1", [dict(NAT[1], outside_address=None)], "r1: vm_nat[0].outside_address is not set"),
    ("r1", [dict(NAT[1], inside_address="10.1.1.1")], "r1: vm_nat[0].inside_address 10.1.1.1 is the router's own"),
    ("r1", [dict(NAT[1], outside_address="10.1.2.2")], "r1: vm_nat[0].outside_address 10.1.2.2 is already used by b1"),
])
def test_nat_checks_name_host_field_and_fix(host, value, fragment):
    errors = errors_with(host, "vm_nat", value)
    assert any(error.startswith(fragment) for error in errors), errors
    assert all(";" in error for error in errors), errors


# -- NAT from a pool -----------------------------------------------------------------------------------------------
POOL = {"type": "pool", "inside": "eth0", "outside": "eth1"}


@pytest.mark.parametrize("pool", ["10.1.2.100-10.1.2.109", "203.0.113.10-203.0.113.20", "10.1.2.254-10.1.2.254",
                                  " 10.1.2.100 - 10.1.2.101 "])
def test_a_pool_on_the_outside_segment_or_off_every_segment_is_planned_normalised(pool):
    hostvars, groups = small_lab()
    hostvars["r1"]["vm_nat"] = [dict(POOL, pool=pool)]
    plan = lab_plan(hostvars, groups, check_files=False)
    assert plan["errors"] == []
    assert vm_of(plan, "r1")["nat"] == [dict(POOL, inside_subnet="10.1.1.0/24", pool=pool.replace(" ", ""))]
    assert plan["guests"]["r1"]["nat"] == vm_of(plan, "r1")["nat"]


@pytest.mark.parametrize("value,fragment", [
    ([POOL], "r1: vm_nat[0].pool is not set; give the addresses to translate onto as first-last, on eth1's segment"),
    ([dict(POOL, pool="10.1.2.100")], "r1: vm_nat[0].pool '10.1.2.100' is not a range; write it as first-last"),
    ([dict(POOL, pool="10.1.2.109-10.1.2.100")], "r1: vm_nat[0].pool '10.1.2.109-10.1.2.100' runs backwards; put"),
    ([dict(POOL, pool="2001:db8::1-2001:db8::9")], "r1: vm_nat[0].pool '2001:db8::1-2001:db8::9' is not an IPv4"),
    ([dict(POOL, pool="10.1.2.1-2001:db8::9")], "r1: vm_nat[0].pool '10.1.2.1-2001:db8::9' is not an IPv4 range"),
    ([dict(POOL, pool="198.51.100.0-198.51.101.0")], "r1: vm_nat[0].pool '198.51.100.0-198.51.101.0' holds 257"),
    ([dict(POOL, pool="10.1.2.0-10.1.2.9")], "r1: vm_nat[0].pool 10.1.2.0-10.1.2.9 holds the network or broadcast"),
    ([dict(POOL, pool="10.1.2.250-10.1.3.5")], "r1: vm_nat[0].pool 10.1.2.250-10.1.3.5 overlaps 10.1.2.0/24 of "
                                               "bridge br-b; keep it within eth1's segment"),
    ([dict(POOL, pool="10.1.1.100-10.1.1.109")], "r1: vm_nat[0].pool 10.1.1.100-10.1.1.109 lies in 10.1.1.0/24, the "
                                                 "inside segment itself"),
    ([dict(POOL, pool="10.0.2.100-10.0.2.109")], "r1: vm_nat[0].pool 10.0.2.100-10.0.2.109 overlaps 10.0.2.0/24 of "
                                                 "the management NIC's user-mode network"),
    ([dict(POOL, pool="10.1.2.1-10.1.2.5")], "r1: vm_nat[0].pool 10.1.2.1-10.1.2.5 holds 10.1.2.1, which r1 "
                                             "vm_nics[1].address uses; pick a range of free addresses"),
    ([dict(POOL, pool="10.1.2.100-10.1.2.109"), dict(NAT[1], outside_address="10.1.2.105")],
     "r1: vm_nat[1].outside_address 10.1.2.105 is already used by r1 vm_nat[0].pool"),
    ([dict(NAT[1], outside_address="10.1.2.105"), dict(POOL, pool="10.1.2.100-10.1.2.109")],
     "r1: vm_nat[1].pool 10.1.2.100-10.1.2.109 holds 10.1.2.105, which r1 vm_nat[0].outside_address uses"),
    ([dict(POOL, pool="10.1.2.100-10.1.2.109", inside_address="10.1.1.2")],
     "r1: vm_nat[0].inside_address only applies to type static; drop it or use type static"),
    ([dict(NAT[0], pool="10.1.2.100-10.1.2.109")], "r1: vm_nat[0].pool only applies to type pool; drop it or use"),
])
def test_a_bad_pool_names_host_field_value_and_fix(value, fragment):
    errors = errors_with("r1", "vm_nat", value)
    assert any(error.startswith(fragment) for error in errors), errors
    assert all(";" in error for error in errors), errors


def test_a_pool_on_a_user_mode_network_is_refused():
    hostvars, groups = small_lab()
    hostvars["a1"]["vm_nics"].append({"backend": "user", "net": "10.0.3.0/24"})
    hostvars["r1"]["vm_nat"] = [dict(POOL, pool="10.0.3.100-10.0.3.101")]
    errors = lab_plan(hostvars, groups, check_files=False)["errors"]
    assert any(e.startswith("r1: vm_nat[0].pool 10.0.3.100-10.0.3.101 overlaps 10.0.3.0/24 of a1 vm_nics[1].net")
               for e in errors), errors
