"""Unit tests (no kernel): name, MAC, CIDR, MTU and lab-name checks shared by modules and lab_plan."""
import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _validate as validate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["br1", "vport62", "veth0", "a", "x" * 15, "qemu-br_1.2"])
def test_good_interface_names(name):
    assert validate.check_ifname(name) is None


@pytest.mark.parametrize("name,fragment", [
    ("", "non-empty"), (None, "non-empty"), (".", "'.'"), ("..", "'..'"), ("x" * 16, "16 bytes"),
    ("br/1", "'/'"), ("br:1", "':'"), ("br 1", "' '"), ("br\t1", "'\\t'"), ("é" * 8, "16 bytes"),
])
def test_bad_interface_names_say_why(name, fragment):
    problem = validate.check_ifname(name)
    assert problem is not None and fragment in problem


def test_mac_is_normalised_to_lower_case():
    assert validate.normalize_mac("12:34:56:AB:CD:7B") == "12:34:56:ab:cd:7b"
    assert validate.normalize_mac("52-54-00-12-34-56") == "52:54:00:12:34:56"
    assert validate.check_mac("52:54:00:12:34:56") is None


@pytest.mark.parametrize("mac,fragment", [
    ("01:00:5e:00:00:01", "multicast"), ("ff:ff:ff:ff:ff:ff", "multicast"), ("12:34:56:ab:cd", "six hex pairs"),
    ("12:34:56:ab:cd:zz", "six hex pairs"), (None, "string"),
])
def test_bad_macs(mac, fragment):
    with pytest.raises(ValueError) as err:
        validate.normalize_mac(mac)
    assert fragment in str(err.value)
    assert fragment in validate.check_mac(mac)


def test_cidr_keeps_host_bits_and_prefix():
    assert validate.normalize_cidr("10.20.10.4/24") == "10.20.10.4/24"
    assert validate.parse_cidr("10.20.10.4/24").network.prefixlen == 24
    assert validate.normalize_cidr("fd00::1/64") == "fd00::1/64"


@pytest.mark.parametrize("cidr,fragment", [
    ("10.20.10.4", "prefix length"), ("10.20.10.400/24", "not an IPv4/IPv6"), ("10.20.10.4/33", "not an IPv4/IPv6"),
    (None, "prefix length"),
])
def test_bad_cidrs(cidr, fragment):
    assert fragment in validate.check_cidr(cidr)


@pytest.mark.parametrize("mtu,ok", [(1500, True), (68, True), (65535, True), (67, False), (65536, False),
                                    (True, False), ("1500", False)])
def test_mtu_range(mtu, ok):
    assert (validate.check_mtu(mtu) is None) == ok


@pytest.mark.parametrize("name,ok", [("seed", True), ("lab-1.a_b", True), ("", False), ("-x", False),
                                     ("a b", False), ("a:b", False), ("x" * 65, False)])
def test_lab_names(name, ok):
    assert (validate.check_lab_name(name) is None) == ok


@pytest.mark.parametrize("name,ok", [("qemulab-seed", True), ("", False), ("..", False), ("a/b", False),
                                     ("a b", False)])
def test_netns_names(name, ok):
    assert (validate.check_netns_name(name) is None) == ok
