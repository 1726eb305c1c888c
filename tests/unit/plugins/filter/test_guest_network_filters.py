"""Unit tests: filters used to launch VMs and render the seed's interfaces format."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.qemulab.network.plugins.filter.guest_network import cidr_parts, ip_config_interfaces
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_render import qemu_nics

pytestmark = pytest.mark.unit


def test_cidr_parts_gives_the_seed_stanza_fields():
    assert cidr_parts("10.20.10.1/24") == {"address": "10.20.10.1", "netmask": "255.255.255.0",
                                           "broadcast": "10.20.10.255", "network": "10.20.10.0", "prefix": 24}
    with pytest.raises(AnsibleFilterError):
        cidr_parts("10.20.10.1/33")


def test_ip_config_interfaces_keeps_guest_order_and_empty_addresses():
    nics = [{"dev": "eth0", "address": "10.20.10.1/24"}, {"dev": "eth1", "address": None}]
    assert ip_config_interfaces(nics) == [{"name": "eth0", "addresses": ["10.20.10.1/24"]},
                                          {"name": "eth1", "addresses": []}]


def test_qemu_nics_puts_the_management_nic_last_bound_to_loopback_port():
    vm = {"name": "rt2", "ssh_port": 2202, "mgmt_mac": "52:54:00:00:00:02",
          "nics": [{"backend": "tap", "tap": "vport22", "mac": "12:34:56:ab:cd:74", "model": "e1000", "vhost": "off",
                    "mtu": None},
                   {"backend": "tap", "tap": "vport42", "mac": "12:34:56:ab:cd:75", "model": "virtio-net-pci",
                    "vhost": "auto", "mtu": None}]}
    nics = qemu_nics(vm, "qemulab-seed")
    assert [n["backend"] for n in nics] == ["tap", "tap", "user"]
    assert nics[0] == {"model": "e1000", "mac": "12:34:56:ab:cd:74", "backend": "tap", "ifname": "vport22",
                       "netns": "qemulab-seed", "vhost": "off"}
    assert nics[1]["model"] == "virtio-net-pci" and nics[1]["vhost"] == "auto"
    assert nics[2]["restrict"] is True
    assert nics[2]["hostfwd"] == [{"host_port": 2202, "guest_port": 22, "protocol": "tcp"}]


# --- the running-state comparison (guest_network_probe's output, as a bookworm guest's iproute2 prints it) -----

from ansible_collections.qemulab.network.plugins.filter.guest_network import (  # noqa: E402
    guest_interfaces_file, guest_network_drift, guest_network_probe, guest_sysctl_file)

H1_NICS = [{"dev": "eth0", "address": "10.20.10.10/24"}]
# What the plan wants on h1 (rendered as the role renders it) ...
H1_INTERFACES = guest_interfaces_file(H1_NICS, [], "10.20.10.1")
H1_SYSCTL = guest_sysctl_file(False)
# ... and what h1, booted from the default image, holds: vm_launch hands it these files through fw_cfg and the
# guest's init copies them into place. Written out here as a guest holds them, in the seed's interfaces format.
BOOTED_INTERFACES = """\
# /etc/network/interfaces -- configuration file for ifup(8), ifdown(8)
# Written by qemulab from the lab inventory; the next lab run puts back what it says.

auto lo eth0

iface lo inet loopback

iface eth0 inet static
    address 10.20.10.10
    netmask 255.255.255.0
    broadcast 10.20.10.255
    network 10.20.10.0
    up route add default gw 10.20.10.1 dev eth0
"""
BOOTED_SYSCTL = "net.ipv4.ip_forward = 0\n"
ADDRESSES = ('[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet",'
             '"local":"127.0.0.1","prefixlen":8}]},{"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST",'
             '"UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"10.20.10.10","prefixlen":24},{"family":'
             '"inet6","local":"fe80::1034:56ff:feab:cd81","prefixlen":64}]},{"ifindex":3,"ifname":"mgmt0","flags":'
             '["UP"],"addr_info":[{"family":"inet","local":"10.0.2.15","prefixlen":24}]}]')
ROUTES = ('[{"dst":"default","gateway":"10.20.10.1","dev":"eth0","flags":[]},{"dst":"10.0.2.0/24","dev":"mgmt0",'
          '"protocol":"kernel","scope":"link","prefsrc":"10.0.2.15","flags":[]},{"dst":"10.20.10.0/24","dev":"eth0",'
          '"protocol":"kernel","scope":"link","prefsrc":"10.20.10.10","flags":[]}]')


def _probe(addresses=ADDRESSES, routes=ROUTES, forwarding="0", interfaces=BOOTED_INTERFACES, sysctl=BOOTED_SYSCTL,
           tty=False):
    """What the probe command prints, built the way the shell runs it: echo; marker; command output; ..."""
    out = ""
    for name, body in (("addresses", addresses + "\n"), ("routes", routes + "\n"), ("forwarding", forwarding + "\n"),
                       ("interfaces_file", interfaces), ("sysctl_file", sysctl), ("end", "")):
        out += "\n@@qemulab:%s@@\n%s" % (name, body)
    out += "Shared connection to 127.0.0.1 closed.\n"
    return out.replace("\n", "\r\n") if tty else out


def _drift(stdout, **kw):
    return guest_network_drift(stdout, H1_NICS, [], "10.20.10.1", False, H1_INTERFACES, H1_SYSCTL, **kw)


NO_DRIFT = {"known": True, "live": [], "forwarding": False, "interfaces_file": False, "sysctl_file": False}


@pytest.mark.parametrize("tty", [False, True])
def test_a_guest_configured_at_boot_shows_no_drift(tty):
    assert _drift(_probe(tty=tty)) == NO_DRIFT


@pytest.mark.parametrize("guest_file,wanted", [
    ("interfaces_file", BOOTED_INTERFACES.replace("address 10.20.10.10", "address 10.20.10.11")),
    ("interfaces_file", BOOTED_INTERFACES.replace("    up route add default gw 10.20.10.1 dev eth0\n", "")),
    ("interfaces_file", BOOTED_INTERFACES.replace("auto lo eth0", "auto lo")),
    ("interfaces_file", BOOTED_INTERFACES + "\niface eth1 inet static\n    address 10.20.20.10\n"),
    ("sysctl_file", "net.ipv4.ip_forward = 1\n"),
    ("sysctl_file", ""),
], ids=["other-address", "no-gateway-line", "eth0-not-auto", "extra-stanza", "forwarding-on", "no-sysctl-file"])
def test_a_guest_file_that_differs_from_the_plan_is_drift(guest_file, wanted):
    """The guest holds an edited file (its addresses and routes still as planned): only that file is drift."""
    stdout = _probe(**{{"interfaces_file": "interfaces", "sysctl_file": "sysctl"}[guest_file]: wanted})
    assert _drift(stdout) == dict(NO_DRIFT, **{guest_file: True})


def test_a_plan_that_differs_from_the_booted_guest_is_drift():
    """The other way round: the guest as booted, the plan changed since (another address, another gateway, forwarding
    on): the files, the live state and forwarding all differ."""
    nics = [{"dev": "eth0", "address": "10.20.10.11/24"}]
    wanted_file = guest_interfaces_file(nics, [], "10.20.10.254")
    drift = guest_network_drift(_probe(), nics, [], "10.20.10.254", True, wanted_file, guest_sysctl_file(True))
    assert drift["known"] is True
    assert sorted(drift["live"]) == ["addr_add 10.20.10.11/24 eth0", "addr_del 10.20.10.10/24 eth0",
                                     "route_add 0.0.0.0/0 10.20.10.254", "route_del 0.0.0.0/0 10.20.10.1 eth0"]
    assert drift["forwarding"] and drift["interfaces_file"] and drift["sysctl_file"]


def test_drift_names_the_missing_route_the_wrong_address_and_the_files():
    routes = ROUTES.replace('{"dst":"default","gateway":"10.20.10.1","dev":"eth0","flags":[]},', "")
    addresses = ADDRESSES.replace('"local":"10.20.10.10"', '"local":"10.20.10.99"')
    drift = _drift(_probe(addresses=addresses, routes=routes, forwarding="1", interfaces="", sysctl="x\n"))
    assert drift["known"] is True
    assert sorted(drift["live"]) == ["addr_add 10.20.10.10/24 eth0", "addr_del 10.20.10.99/24 eth0",
                                     "route_add 0.0.0.0/0 10.20.10.1"]
    assert drift["forwarding"] and drift["interfaces_file"] and drift["sysctl_file"]


def test_a_route_via_another_gateway_and_a_down_link_are_drift():
    routes = ROUTES.replace('"gateway":"10.20.10.1"', '"gateway":"10.20.10.2"')
    assert len(_drift(_probe(routes=routes))["live"]) == 2
    down = ADDRESSES.replace('"flags":["BROADCAST","MULTICAST","UP","LOWER_UP"]', '"flags":["BROADCAST"]')
    assert _drift(_probe(addresses=down))["live"] == ["link_up eth0"]


def test_an_unreadable_probe_means_every_step_runs():
    # busybox's ip has no -j: nothing to compare, so the Python modules decide.
    for stdout in ("", _probe(addresses="ip: invalid option -- 'j'"), _probe(addresses=ADDRESSES.replace("eth0", "eth7"))):
        drift = _drift(stdout)
        assert drift["known"] is False and drift["interfaces_file"] and drift["sysctl_file"]


def test_files_are_not_compared_when_not_persisted():
    drift = guest_network_drift(_probe(interfaces="", sysctl=""), H1_NICS, [], "10.20.10.1", False, None, None)
    assert drift["interfaces_file"] is False and drift["sysctl_file"] is False


def test_probe_reads_the_files_it_is_given_and_ends_with_the_marker():
    command = guest_network_probe("/etc/network/interfaces", "/etc/sysctl.d/90-qemulab.conf")
    assert "cat /etc/network/interfaces 2>/dev/null" in command and "ip -j address show" in command
    assert command.endswith("echo '@@qemulab:end@@'")


def test_booted_as_planned_only_for_exactly_the_plan_handed_over_at_boot():
    """Unit: the fw_cfg files a guest was started with against what guest_network would apply."""
    from ansible_collections.qemulab.network.plugins.filter.guest_network import guest_network_booted_as_planned
    from ansible_collections.qemulab.network.plugins.plugin_utils._lab_render import (
        guest_interfaces_file, guest_ip_commands, guest_sysctl_file)
    nics = [{"dev": "eth0", "address": "10.20.10.1/24"}, {"dev": "eth1", "address": "10.20.20.1/24", "mtu": 1400}]
    routes = [{"to": "10.20.30.0/24", "via": "10.20.20.2", "dev": "eth1"}]
    boot = {"opt/qemulab/ip": guest_ip_commands(nics, routes), "opt/qemulab/sysctl": guest_sysctl_file(True),
            "opt/qemulab/interfaces": guest_interfaces_file(nics, routes)}
    assert guest_network_booted_as_planned(boot, nics, routes, None, True) is True
    # not started by this run, or without the lab's configuration (own image, vm_launch_boot_config false)
    assert guest_network_booted_as_planned({}, nics, routes, None, True) is False
    assert guest_network_booted_as_planned(None, nics, routes, None, True) is False
    # any difference from the plan: forwarding, a route, an address, a missing file
    assert guest_network_booted_as_planned(boot, nics, routes, None, False) is False
    assert guest_network_booted_as_planned(boot, nics, [], None, True) is False
    assert guest_network_booted_as_planned(boot, [dict(nics[0], address="10.20.10.9/24"), nics[1]], routes, None,
                                           True) is False
    no_file = dict((k, v) for k, v in boot.items() if k != "opt/qemulab/interfaces")
    assert guest_network_booted_as_planned(no_file, nics, routes, None, True) is False
    # the interfaces file matters only where the role persists it
    assert guest_network_booted_as_planned(no_file, nics, routes, None, True, persist=False) is True
