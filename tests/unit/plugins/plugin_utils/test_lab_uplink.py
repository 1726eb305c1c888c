"""Unit tests: the lab's way out (lab_uplink) as the compiler plans it - the lab host's veth and masquerade, the
uplink router's default route and masquerade, the hosts' default routes, and every bad value named with its fix."""
import copy

import pytest

from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_uplink import default_names

pytestmark = pytest.mark.unit

#   a1 (10.1.1.2) -- br-a -- r1 (10.1.1.1 | 10.1.2.1) -- br-b -- [uplink 10.1.2.254, b1 10.1.2.5]
HOSTVARS = {
    "localhost": {"lab_name": "lab1", "lab_netns": "qlab1",
                  "lab_uplink": {"bridge": "br-b", "address": "10.1.2.254/24", "upstream": "wan0",
                                 "upstream_netns": "inet", "router": "r1"}},
    "r1": {"ansible_port": 2401,
           "vm_nics": [{"bridge": "br-a", "tap": "ta1", "address": "10.1.1.1/24"},
                       {"bridge": "br-b", "tap": "tb1", "address": "10.1.2.1/24"}]},
    "a1": {"ansible_port": 2402, "vm_nics": [{"bridge": "br-a", "tap": "ta2", "address": "10.1.1.2/24"}]},
    "b1": {"ansible_port": 2403, "vm_nics": [{"bridge": "br-b", "tap": "tb2", "address": "10.1.2.5/24"}]},
}
GROUPS = {"all": ["localhost", "r1", "a1", "b1"], "ungrouped": [], "hypervisors": ["localhost"], "lab": [],
          "routers": ["r1"], "hosts": ["a1", "b1"]}


def lab(uplink=None, **changes):
    hostvars, groups = copy.deepcopy(HOSTVARS), copy.deepcopy(GROUPS)
    if uplink is not None:
        hostvars["localhost"]["lab_uplink"] = uplink
    for host, values in changes.items():
        hostvars[host].update(values)
    return hostvars, groups


def uplink_with(**keys):
    value = dict(HOSTVARS["localhost"]["lab_uplink"])
    for key, item in keys.items():
        if item is None:
            value.pop(key, None)
        else:
            value[key] = item
    return value


def test_the_lab_host_masquerades_the_segment_and_the_router_and_hosts_route_towards_it():
    plan = compile_lab(*lab())
    assert plan["errors"] == []
    name, peer = default_names("lab1")
    assert (name, peer) == ("qlu-%s-l" % name[4:12], "qlu-%s-u" % name[4:12]) and len(peer) <= 15
    host = plan["hosts"]["localhost"]
    assert host["uplink"] == {
        "bridge": "br-b", "address": "10.1.2.254/24", "subnet": "10.1.2.0/24", "upstream": "wan0",
        "upstream_netns": "inet", "router": "r1", "name": name, "peer": peer, "owner": "qemulab-lab1",
        "rules": [{"type": "masquerade", "inside": peer, "outside": "wan0", "inside_subnet": "10.1.2.0/24"}],
        "lab": "lab1", "netns": "qlab1"}
    guests = plan["guests"]
    # the router leaves through the uplink and masquerades its other segment onto br-b
    assert guests["r1"]["gateway"] == "10.1.2.254"
    assert guests["r1"]["nat"] == [{"type": "masquerade", "inside": "eth0", "outside": "eth1",
                                    "inside_subnet": "10.1.1.0/24"}]
    # a host next to the router goes through it; a host on the uplink's segment straight out
    assert guests["a1"]["gateway"] == "10.1.1.1" and guests["b1"]["gateway"] == "10.1.2.254"
    r1 = [vm for vm in host["vms"] if vm["name"] == "r1"][0]
    assert "up route add default gw 10.1.2.254 dev eth1" in r1["fw_cfg"][0]["content"]


def test_without_lab_uplink_nothing_changes():
    hostvars, groups = lab()
    del hostvars["localhost"]["lab_uplink"]
    plan = compile_lab(hostvars, groups)
    assert plan["errors"] == [] and plan["uplink"] is None and plan["hosts"]["localhost"]["uplink"] is None
    assert all(plan["guests"][vm]["gateway"] is None for vm in ("r1", "a1", "b1"))
    assert plan["guests"]["r1"]["nat"] == []


def test_without_a_router_only_the_segment_gets_out_and_given_gateways_and_rules_stay():
    hostvars, groups = lab(uplink_with(router=None), a1={"vm_gateway": "10.1.1.1"})
    hostvars["r1"]["vm_nat"] = [{"type": "masquerade", "inside": "eth0", "outside": "eth1"}]
    plan = compile_lab(hostvars, groups)
    assert plan["errors"] == []
    assert plan["guests"]["r1"]["gateway"] is None and plan["guests"]["b1"]["gateway"] == "10.1.2.254"
    assert plan["guests"]["a1"]["gateway"] == "10.1.1.1"
    assert len(plan["guests"]["r1"]["nat"]) == 1
    # with the router named, its own equal masquerade is not doubled
    hostvars["localhost"]["lab_uplink"] = uplink_with()
    assert compile_lab(hostvars, groups)["guests"]["r1"]["nat"] == [
        {"type": "masquerade", "inside": "eth0", "outside": "eth1", "inside_subnet": "10.1.1.0/24"}]


@pytest.mark.parametrize("uplink,message", [
    ("eth0", "localhost: lab_uplink 'eth0' is not a mapping; write {bridge, address, upstream, "
             "upstream_netns, router, name, peer}"),
    (uplink_with(address=None), "localhost: lab_uplink.address is not set; give it, like 10.20.20.254/24"),
    (uplink_with(upstream="eth0;reboot"), "localhost: lab_uplink.upstream 'eth0;reboot' is not an interface name (it contains ';'); use "),
    (uplink_with(upstream_netns="../x"), "localhost: lab_uplink.upstream_netns '../x' is not a namespace name (it contains '.', '/'); use "),
    (uplink_with(bridge="br-z"), "localhost: lab_uplink.bridge br-z is used by no VM NIC; give the way out a bridge "
                                 "of the lab (br-a, br-b)"),
    (uplink_with(address="10.1.3.254/24"), "localhost: lab_uplink.address 10.1.3.254/24 is not in 10.1.2.0/24, the "
                                           "subnet of bridge br-b"),
    (uplink_with(address="10.1.2.5/24"), "localhost: lab_uplink.address 10.1.2.5 is already used by b1"),
    (uplink_with(router="a1"), "localhost: lab_uplink.router a1 is not a VM of group routers that forwards; name a "
                               "router on br-b (r1)"),
    (uplink_with(name="tb1"), "localhost: lab_uplink.name tb1 is already used by r1"),
    (uplink_with(peer="wan0"), "localhost: lab_uplink.peer wan0 is the upstream interface itself"),
    (uplink_with(gateway="x"), "localhost: lab_uplink.gateway is not a known key; use only bridge, address, "
                               "upstream, upstream_netns, router, name, peer"),
])
def test_a_bad_uplink_is_named_with_its_fix_before_anything_changes(uplink, message):
    plan = compile_lab(*lab(uplink))
    assert any(error.startswith(message) for error in plan["errors"]), plan["errors"]
    assert plan["hosts"] == {}


def test_a_router_with_another_default_route_is_refused():
    hostvars, groups = lab()
    hostvars["r1"]["vm_gateway"] = "10.1.2.7"
    errors = compile_lab(hostvars, groups)["errors"]
    assert errors == ["r1: vm_gateway 10.1.2.7 is the router's default route, but lab_uplink.router sends it out "
                      "through 10.1.2.254; drop vm_gateway (and any `to: default` route) of r1"]


def two_hosts(b1_host):
    """The lab over two lab hosts (hv1 first, holding the way out), b1 on `b1_host`."""
    hostvars, groups = lab()
    hostvars["hv1"] = dict(hostvars.pop("localhost"), ansible_connection="local", lab_underlay_address="192.0.2.11")
    hostvars["hv2"] = {"ansible_connection": "local", "lab_underlay_address": "192.0.2.12"}
    hostvars["b1"]["vm_hypervisor"] = b1_host
    groups.update(all=["hv1", "hv2", "r1", "a1", "b1"], hypervisors=["hv1", "hv2"])
    return hostvars, groups


def test_the_veth_of_a_segment_spanning_lab_hosts_carries_the_mtu_vxlan_leaves():
    plan = compile_lab(*two_hosts("hv2"))
    assert plan["errors"] == []
    # br-b spans hv1 (r1, the way out) and hv2 (b1): 1500 less VXLAN's 50 bytes, like its NICs and bridge
    assert plan["hosts"]["hv1"]["uplink"]["mtu"] == 1450
    assert plan["guests"]["b1"]["nics"][0]["mtu"] == 1450
    assert plan["hosts"]["hv2"]["uplink"] is None


def test_the_veth_of_a_segment_on_one_lab_host_keeps_the_default_mtu():
    plan = compile_lab(*two_hosts("hv1"))
    assert plan["errors"] == [] and "mtu" not in plan["hosts"]["hv1"]["uplink"]
    # a larger underlay leaves a larger overlay
    hostvars, groups = two_hosts("hv2")
    hostvars["hv1"]["lab_underlay_mtu"] = 9000
    assert compile_lab(hostvars, groups)["hosts"]["hv1"]["uplink"]["mtu"] == 8950


# -- a lab host run without root: slirp4netns in the lab's namespace (docs/rootless.md) -----------------------------

USER_ROOTS = {"run": "/run/user/1000/qemulab", "cache": "/home/ana/.cache/qemulab",
              "state": "/home/ana/.local/share/qemulab"}


def rootless_report(rootless=True):
    return {"localhost": {"mem_available_mib": 64000, "cpus": 4, "addresses": [], "claim": None,
                          "dpdk_segments": [], "euid": 1000 if rootless else 0, "rootless": rootless,
                          "roots": USER_ROOTS if rootless else {"run": "/run/qemulab", "cache": "/var/cache/qemulab",
                                                                  "state": "/var/lib/qemulab"},
                          "runtime_dir_problem": None}}


def test_a_rootless_lab_host_gets_slirp4netns_and_the_guests_the_same_routes_and_nat():
    hostvars, groups = lab(uplink=uplink_with(upstream_netns=None))
    plan = compile_lab(hostvars, groups, lab_hosts=rootless_report())
    assert plan["errors"] == []
    tap = "qlu-%s-s" % default_names("lab1")[0][4:12]
    assert plan["hosts"]["localhost"]["uplink"] == {
        "bridge": "br-b", "address": "10.1.2.254/24", "subnet": "10.1.2.0/24", "router": "r1",
        "owner": "qemulab-lab1", "lab": "lab1", "netns": "qlab1",
        "slirp4netns": {"tap": tap, "mtu": 65520, "network": "10.0.4.0/24", "gateway": "10.0.4.2"}}
    root = compile_lab(*lab(uplink=uplink_with(upstream_netns=None)), lab_hosts=rootless_report(rootless=False))
    # the guests' side is the root plan's, route for route
    assert plan["guests"] == root["guests"]
    assert root["hosts"]["localhost"]["uplink"]["peer"] == default_names("lab1")[1]


def test_a_rootless_uplink_with_an_upstream_namespace_is_refused_with_its_fix():
    plan = compile_lab(*lab(), lab_hosts=rootless_report())
    assert plan["hosts"] == {}
    assert plan["errors"] == ["localhost: lab_uplink.upstream_netns is inet, but lab host localhost runs the lab "
                              "without root: the way out is slirp4netns in the lab's own namespace and a user enters "
                              "no other; drop upstream_netns (docs/uplink.md)"]


def test_a_segment_overlapping_slirp4netns_s_network_is_refused_only_rootless():
    hostvars, groups = lab(uplink=uplink_with(upstream_netns=None),
                           a1={"vm_nics": [{"bridge": "br-a", "tap": "ta2", "address": "10.0.2.7/16"}]},
                           r1={"vm_nics": [{"bridge": "br-a", "tap": "ta1", "address": "10.0.2.1/16"},
                                           {"bridge": "br-b", "tap": "tb1", "address": "10.1.2.1/24"}]})
    plan = compile_lab(copy.deepcopy(hostvars), copy.deepcopy(groups), lab_hosts=rootless_report())
    assert plan["errors"] == ["localhost: lab_uplink needs slirp4netns on this rootless lab host, whose own network "
                              "is 10.0.4.0/24, which segment br-a overlap(s); give them other subnets"]
    assert compile_lab(hostvars, groups, lab_hosts=rootless_report(rootless=False))["errors"] == []


def test_the_slirp_tap_s_name_is_claimed_in_the_lab_s_namespace():
    tap = "qlu-%s-s" % default_names("lab1")[0][4:12]
    hostvars, groups = lab(uplink=uplink_with(upstream_netns=None),
                           b1={"vm_nics": [{"bridge": "br-b", "tap": tap, "address": "10.1.2.5/24"}]})
    plan = compile_lab(hostvars, groups, lab_hosts=rootless_report())
    assert len(plan["errors"]) == 1 and tap in plan["errors"][0], plan["errors"]


def test_upstream_is_required_on_a_root_lab_host_only():
    hostvars, groups = lab(uplink=uplink_with(upstream=None, upstream_netns=None))
    assert compile_lab(copy.deepcopy(hostvars), copy.deepcopy(groups), lab_hosts=rootless_report())["errors"] == []
    errors = compile_lab(hostvars, groups, lab_hosts=rootless_report(rootless=False))["errors"]
    assert len(errors) == 1 and errors[0].startswith("localhost: lab_uplink.upstream is not set; give it ("), errors
    assert "like eth0 (only a lab host run without root needs none" in errors[0]


def test_a_user_mode_nic_overlapping_slirp4netns_s_network_is_refused_rootless():
    hostvars, groups = lab(uplink=uplink_with(upstream_netns=None),
                           a1={"vm_nics": [{"bridge": "br-a", "tap": "ta2", "address": "10.1.1.7/24"},
                                           {"backend": "user", "net": "10.0.4.0/29"}]})
    errors = compile_lab(hostvars, groups, lab_hosts=rootless_report())["errors"]
    assert any("whose own network is 10.0.4.0/24, which a1 " in e and "overlap(s)" in e for e in errors), errors
