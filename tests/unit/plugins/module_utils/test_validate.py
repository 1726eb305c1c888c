"""Unit tests (no kernel): the one name rule, MAC, CIDR, MTU, memory and QEMU option escaping shared by modules and
the lab plan."""
import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _validate as validate

pytestmark = pytest.mark.unit

KINDS = ("lab", "vm", "netns", "bridge", "tap", "veth", "interface")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,fragment", [
    ("../x", "contains '.', '/'"), ("a,b", "contains ','"), ("$(x)", "contains '$', '(', ')'"),
    ("br.10", "contains '.'"), ("T1", "contains 'T'"), ("", "non-empty"), (None, "non-empty"), (7, "non-empty"),
    ("-x", "starts with '-'"), ("a b", "contains ' '"), ("a_b", "contains '_'"), ("a=b", "contains '='"),
    ("a\nb", "contains '\\n'"), ("é", "contains 'é'"), ("x/", "contains '/'"), ("..", "contains '.'"),
])
def test_the_name_rule_refuses_saying_why(kind, name, fragment):
    problem = validate.check_name(name, kind)
    assert problem is not None and fragment in problem, problem
    if name:
        assert problem.startswith("%r is not a" % name), problem


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["a", "0", "br1", "vport62", "qemulab-seed", "r1-eth0", "9lives", "a--b", "x-"])
def test_the_name_rule_accepts(kind, name):
    assert validate.check_name(name, kind) is None


@pytest.mark.parametrize("kind,limit,what", [("lab", 15, "a lab"), ("vm", 32, "a VM"), ("netns", 32, "a namespace"),
                                             ("bridge", 15, "a bridge"), ("tap", 15, "a tap"), ("veth", 15, "a veth"),
                                             ("interface", 15, "an interface")])
def test_each_kind_has_its_length_limit(kind, limit, what):
    assert validate.check_name("x" * limit, kind) is None
    assert validate.check_name("x" * (limit + 1), kind) == (
        "%r is %d characters long; %s name has at most %d, pick a shorter one" % ("x" * (limit + 1), limit + 1, what,
                                                                                 limit))


def test_a_16_byte_interface_name_is_refused_by_the_wrappers_too():
    assert "has at most 15" in validate.check_ifname("vport1234567890a")
    assert validate.check_ifname("vport1234567890") is None
    assert "has at most 15" in validate.check_lab_name("l" * 16)
    assert "has at most 32" in validate.check_netns_name("n" * 33)
    assert "contains '.'" in validate.check_netns_name("..")


@pytest.mark.parametrize("value,text", [("plain", "plain"), ("a,b", "a,,b"), (",", ",,"), ("a,,b", "a,,,,b"),
                                        (64, "64"), ("/tmp/a,b/vmlinux", "/tmp/a,,b/vmlinux"), ("", "")])
def test_qemu_opt_doubles_commas(value, text):
    assert validate.qemu_opt(value) == text


@pytest.mark.parametrize("value,mib", [(64, 64), ("64M", 64), ("64MiB", 64), ("1G", 1024), ("1GiB", 1024),
                                       (" 512m ", 512), ("1T", 1024 * 1024), (1024 * 1024, 1024 * 1024)])
def test_parse_memory(value, mib):
    assert validate.parse_memory(value) == mib


@pytest.mark.parametrize("value,fragment", [
    (63, "below 64 MiB"), ("63M", "below 64 MiB"), (0, "below 64 MiB"), ("1024K", "not a memory size"),
    (1024 * 1024 + 1, "over 1048576 MiB"), ("2T", "over 1048576 MiB"), (True, "not a memory size"),
    (1.5, "not a memory size"), ("1.5G", "not a memory size"), ("", "not a memory size"), (None, "not a memory size"),
    ("-1G", "not a memory size"),
])
def test_parse_memory_floor_cap_and_form(value, fragment):
    with pytest.raises(ValueError) as err:
        validate.parse_memory(value)
    assert fragment in str(err.value)


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


@pytest.mark.parametrize("name,ok", [("seed", True), ("lab-1", True), ("lab-1.a_b", False), ("", False),
                                     ("-x", False), ("a b", False), ("a:b", False), ("x" * 16, False)])
def test_lab_names(name, ok):
    assert (validate.check_lab_name(name) is None) == ok


@pytest.mark.parametrize("name,ok", [("qemulab-seed", True), ("", False), ("..", False), ("a/b", False),
                                     ("a b", False), ("Qemulab", False)])
def test_netns_names(name, ok):
    assert (validate.check_netns_name(name) is None) == ok
