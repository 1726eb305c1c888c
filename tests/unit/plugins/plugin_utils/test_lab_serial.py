"""Unit tests: serial links (lab_serial_links) as the compiler plans and renders them - each VM's ttyS1.. in list
order, the cable's two ends (server, reconnecting client), the guest's link list, and every bad value named with its
fix before anything changes."""
import copy

import pytest

from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import build_argv, serial_args
from ansible_collections.qemulab.network.plugins.module_utils._qemu_clone import template_config, template_key
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError, normalise_config
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab

pytestmark = pytest.mark.unit

#   r1 (10.1.1.1) -- br-a -- r2 (10.1.1.2);  r1 ==ppp/slip== r2;  h1 on br-a, own image
LINKS = [{"between": ["r1", "r2"], "protocol": "ppp", "addresses": ["10.99.0.1", "10.99.0.2"]},
         {"between": ["r2", "r1"], "protocol": "slip", "addresses": ["10.99.1.2", "10.99.1.1"]},
         {"between": ["r1", "r2"], "protocol": "raw"}]
HOSTVARS = {
    "localhost": {"lab_name": "lab1", "lab_netns": "qlab1", "lab_serial_links": LINKS},
    "r1": {"ansible_port": 2401, "vm_nics": [{"bridge": "br-a", "tap": "ta1", "address": "10.1.1.1/24"}]},
    "r2": {"ansible_port": 2402, "vm_nics": [{"bridge": "br-a", "tap": "ta2", "address": "10.1.1.2/24"}]},
    "h1": {"ansible_port": 2403, "vm_nics": [{"bridge": "br-a", "tap": "ta3", "address": "10.1.1.3/24"}],
           "vm_kernel": "/srv/own/bzImage", "vm_disk": "/srv/own/h1.ext4"},
}
GROUPS = {"all": ["localhost", "r1", "r2", "h1"], "ungrouped": [], "hypervisors": ["localhost"], "lab": [],
          "routers": ["r1", "r2"], "hosts": ["h1"]}


def compiled(links):
    hostvars = copy.deepcopy(HOSTVARS)
    hostvars["localhost"]["lab_serial_links"] = links
    return compile_lab(hostvars, copy.deepcopy(GROUPS), check_files=False)


def rendered_vm(plan, name):
    return next(vm for vm in plan["hosts"]["localhost"]["vms"] if vm["name"] == name)


def test_each_vm_gets_its_links_as_ttys1_on_in_list_order_with_the_first_vm_serving_the_socket():
    plan = compiled(LINKS)
    assert plan["errors"] == []
    r1, r2 = rendered_vm(plan, "r1"), rendered_vm(plan, "r2")
    assert r1["serial_ports"] == [{"peer": "r2", "link": 0, "server": True}, {"peer": "r2", "link": 1, "server": False},
                                  {"peer": "r2", "link": 2, "server": True}]
    assert [p["server"] for p in r2["serial_ports"]] == [False, True, False]
    files = dict((item["name"], item["content"]) for item in r1["fw_cfg"])
    assert files["opt/qemulab/serial"] == "ttyS1 ppp ppp0 10.99.0.1 10.99.0.2\nttyS2 slip sl0 10.99.1.1 10.99.1.2\n" \
                                          "ttyS3 raw\n"
    assert plan["guests"]["r2"]["serial"] == "ttyS1 ppp ppp0 10.99.0.2 10.99.0.1\n" \
                                             "ttyS2 slip sl0 10.99.1.2 10.99.1.1\nttyS3 raw\n"
    # a VM without links keeps its arguments as before (no fw_cfg item, no ports: no restart on upgrade)
    h1 = plan["guests"]["h1"]
    assert h1["serial"] == "" and rendered_vm(plan, "h1")["serial_ports"] == []


def test_the_socket_lies_in_the_serving_vms_run_directory_and_the_other_end_reconnects():
    plan = compiled(LINKS[:1])
    configs = {}
    for name in ("r1", "r2"):
        args = dict(rendered_vm(plan, name), qemu_binary="qemu-system-x86_64", disks=[])
        args["nics"] = [dict(nic, hostfwd=nic.get("hostfwd") or []) for nic in args["nics"]]
        configs[name] = normalise_config(args)
    assert configs["r1"]["serial_ports"][0]["socket"] == "/run/qemulab/lab1/r1/serial0.sock"
    assert configs["r2"]["serial_ports"][0]["socket"] == "/run/qemulab/lab1/r1/serial0.sock"
    assert serial_args(configs["r1"]["serial_ports"]) == [
        "-chardev", "socket,id=serial1,path=/run/qemulab/lab1/r1/serial0.sock,server=on,wait=off",
        "-device", "isa-serial,chardev=serial1,index=1"]
    assert serial_args(configs["r2"]["serial_ports"])[1].endswith(",reconnect=1")
    argv = build_argv(configs["r2"], "tcg")
    # the console stays ttyS0: its -serial comes before the link's UART (index 1)
    assert argv.index("chardev:console") < argv.index("isa-serial,chardev=serial1,index=1")


@pytest.mark.parametrize("links, message", [
    ([{"between": ["r1", "r9"], "protocol": "ppp", "addresses": ["10.99.0.1", "10.99.0.2"]}],
     "localhost: lab_serial_links[0].between r9 is not a VM of this lab (h1, r1, r2); name two of them"),
    ([{"between": ["r1", "r1"], "protocol": "slip", "addresses": ["10.99.0.1", "10.99.0.2"]}],
     "localhost: lab_serial_links[0].between joins r1 to itself"),
    ([{"between": ["r1", "r2"], "protocol": "ppp", "addresses": ["10.1.1.9", "10.99.0.2"]}],
     "localhost: lab_serial_links[0].addresses 10.1.1.9 is in 10.1.1.0/24, the subnet of bridge br-a"),
    ([{"between": ["r1", "r2"], "protocol": "ppp", "addresses": ["10.99.0.1", "10.99.0.1"]}],
     "localhost: lab_serial_links[0].addresses gives both ends 10.99.0.1"),
    ([{"between": ["r1", "r2"], "protocol": "ppp", "addresses": ["10.99.0.1", "10.99.0.2"]},
      {"between": ["r1", "r2"], "protocol": "slip", "addresses": ["10.99.0.2", "10.99.0.3"]}],
     "localhost: lab_serial_links[1].addresses 10.99.0.2 is already used by localhost lab_serial_links[0]"),
    ([{"between": ["r1", "r2"], "protocol": "hdlc", "addresses": ["10.99.0.1", "10.99.0.2"]}],
     "localhost: lab_serial_links[0].protocol 'hdlc' is not one of ppp, slip, raw"),
    ([{"between": ["r1", "r2"], "protocol": "slip"}],
     "localhost: lab_serial_links[0].addresses is not set; protocol slip needs the two ends' addresses"),
    ([{"between": ["r1", "r2"], "protocol": "raw", "addresses": ["10.99.0.1", "10.99.0.2"]}],
     "localhost: lab_serial_links[0].addresses a raw link carries no IP"),
    ([{"between": ["r1"], "protocol": "raw"}],
     "localhost: lab_serial_links[0].between ['r1'] (a list) is not a list of two VM names"),
    ([{"between": ["r1", "h1"], "protocol": "ppp", "addresses": ["10.99.0.1", "10.99.0.2"]}],
     "localhost: lab_serial_links[0].protocol ppp on h1, which boots its own image"),
    ([{"between": ["r1", "r2"], "protocol": "raw"}] * 4,
     "localhost: lab_serial_links[3].between r1 already has 3 serial links"),
    ([{"between": ["r1", "r2"], "protocol": "raw", "speed": 9600}],
     "localhost: lab_serial_links[0].speed is not a known key"),
])
def test_a_bad_link_is_named_with_its_fix_before_anything_changes(links, message):
    plan = compiled(links)
    assert any(error.startswith(message) for error in plan["errors"]), plan["errors"]
    assert plan["hosts"] == {}


def _config(ports, name="r1"):
    return normalise_config({"name": name, "lab": "lab1", "kernel": "/k", "disks": [
        {"file": "/d.qcow2", "format": "qcow2", "interface": "virtio", "readonly": False}],
        "nics": [{"backend": "user", "model": "virtio-net-pci", "mac": "52:54:00:00:00:09"}], "serial_ports": ports})


def test_qemu_vm_refuses_a_bad_port_naming_the_field():
    with pytest.raises(QemuConfigError, match=r"serial_ports\[0\].peer: '../x' is not a VM name"):
        _config([{"peer": "../x", "link": 0, "server": True}])
    with pytest.raises(QemuConfigError, match=r"serial_ports\[0\].peer is the VM itself"):
        _config([{"peer": "r1", "link": 0, "server": True}])
    with pytest.raises(QemuConfigError, match=r"serial_ports has 4 ports; the guest has ttyS1 to ttyS3"):
        _config([{"peer": "r2", "link": n, "server": True} for n in range(4)])


def test_a_template_has_the_clones_uarts_with_null_backends_and_its_key_counts_them():
    config = _config([{"peer": "r2", "link": 0, "server": True}, {"peer": "r2", "link": 1, "server": False}])
    template = template_config(config, "/img/disk.ext4", "/tmp/t")
    argv = " ".join(build_argv(template, "tcg", layout="clone"))
    assert "-chardev null,id=serial1 -device isa-serial,chardev=serial1,index=1" in argv
    assert "index=2" in argv and "serial0.sock" not in argv
    with_ports, inputs = template_key(config, "/img/disk.ext4", "tcg", "7.2")
    without, plain = template_key(_config([]), "/img/disk.ext4", "tcg", "7.2")
    assert inputs["serial_ports"] == 2 and "serial_ports" not in plain and with_ports != without


# -- routes through a serial link (vm_routes via the peer's address) -------------------------------------------------
def routed(routes, links=LINKS, name="r1", gateway=None):
    hostvars = copy.deepcopy(HOSTVARS)
    hostvars["localhost"]["lab_serial_links"] = links
    hostvars[name]["vm_routes"] = routes
    if gateway:
        hostvars[name]["vm_gateway"] = gateway
    return compile_lab(hostvars, copy.deepcopy(GROUPS), check_files=False)


def test_a_route_via_the_serial_peer_goes_over_its_device_and_comes_with_the_line_not_the_boot():
    plan = routed([{"to": "10.20.60.0/24", "via": "10.99.0.2"}, {"to": "10.20.70.0/24", "via": "10.99.1.2"},
                   {"to": "0.0.0.0/0", "via": "10.99.0.2"}, {"to": "10.20.80.0/24", "via": "10.1.1.2"}])
    assert plan["errors"] == []
    r1 = next(vm for vm in plan["vms"] if vm["name"] == "r1")
    assert r1["routes"] == [{"to": "10.20.60.0/24", "via": "10.99.0.2", "dev": "ppp0"},
                            {"to": "10.20.70.0/24", "via": "10.99.1.2", "dev": "sl0"},
                            {"to": "0.0.0.0/0", "via": "10.99.0.2", "dev": "ppp0"},
                            {"to": "10.20.80.0/24", "via": "10.1.1.2", "dev": "eth0"}]
    # qemulab-serial installs the serial ones when their line is up: they are in its list, after the link's peer
    guest = plan["guests"]["r1"]
    assert guest["serial"] == "ttyS1 ppp ppp0 10.99.0.1 10.99.0.2 10.20.60.0/24 0.0.0.0/0\n" \
                              "ttyS2 slip sl0 10.99.1.1 10.99.1.2 10.20.70.0/24\nttyS3 raw\n"
    # ... and nowhere else: ip_config, the boot's ip commands and the interfaces file know only the NIC's route
    assert guest["routes"] == [{"to": "10.20.80.0/24", "via": "10.1.1.2", "dev": "eth0"}]
    files = dict((item["name"], item["content"]) for item in rendered_vm(plan, "r1")["fw_cfg"])
    assert "ppp0" not in files["opt/qemulab/ip"] and "10.99." not in files["opt/qemulab/ip"]
    assert "route add 10.20.80.0/24 via 10.1.1.2 dev eth0" in files["opt/qemulab/ip"]
    assert "10.99." not in files["opt/qemulab/interfaces"]
    assert files["opt/qemulab/serial"] == guest["serial"]


def test_the_peers_own_routes_use_its_own_device_names():
    # r2 is the link's second VM: its ppp0 has the addresses the other way round
    plan = routed([{"to": "10.20.50.0/24", "via": "10.99.0.1"}], name="r2")
    assert plan["errors"] == []
    assert plan["guests"]["r2"]["serial"].startswith("ttyS1 ppp ppp0 10.99.0.2 10.99.0.1 10.20.50.0/24\n")
    assert plan["guests"]["r2"]["routes"] == []


@pytest.mark.parametrize("routes, links, message", [
    # the VM's own end of the link
    ([{"to": "10.20.60.0/24", "via": "10.99.0.1"}], LINKS,
     "r1: vm_routes[0].via 10.99.0.1 is the VM's own address; route via a neighbour's address"),
    # an address near the link's but not its peer: a point-to-point link reaches only the peer
    ([{"to": "10.20.60.0/24", "via": "10.99.0.3"}], LINKS,
     "r1: vm_routes[0].via 10.99.0.3 is on no segment of the VM's NICs and serial links (10.1.1.0/24, "
     "10.99.0.2/32, 10.99.1.2/32); use a gateway on one of them (r1's ttyS3 to r2 is a raw serial link: it carries "
     "no IP; make it protocol ppp or slip with addresses to route over it)"),
    # the peer itself is reached directly over the line
    ([{"to": "10.99.0.2/32", "via": "10.99.0.2"}], LINKS,
     "r1: vm_routes[0].to 10.99.0.2/32 is a segment of the VM's NICs and serial links, reached directly"),
    # a raw link alone gives no gateway, and the message says why
    ([{"to": "10.20.60.0/24", "via": "10.99.0.2"}], [{"between": ["r1", "r2"], "protocol": "raw"}],
     "r1: vm_routes[0].via 10.99.0.2 is on no segment of the VM's NICs (10.1.1.0/24); use a gateway on one of them "
     "(r1's ttyS1 to r2 is a raw serial link: it carries no IP; make it protocol ppp or slip"),
    # one destination, two routes (one over the line, one over the NIC)
    ([{"to": "10.20.60.0/24", "via": "10.99.0.2"}, {"to": "10.20.60.0/24", "via": "10.1.1.2"}], LINKS,
     "r1: vm_routes[1].to 10.20.60.0/24 is already routed by vm_routes[0]"),
])
def test_a_bad_route_over_a_serial_link_is_named_with_its_fix(routes, links, message):
    plan = routed(routes, links)
    assert any(error.startswith(message) for error in plan["errors"]), plan["errors"]
    assert plan["hosts"] == {}


def test_a_default_gateway_on_the_serial_peer_points_to_a_default_route():
    plan = routed([], gateway="10.99.0.2")
    assert any(error.startswith("r1: vm_gateway 10.99.0.2 is on no segment of the VM's NICs (10.1.1.0/24); use an "
                                "address on one of them; through its serial link (ppp0) write vm_routes "
                                "[{to: 0.0.0.0/0, via: 10.99.0.2}]") for error in plan["errors"]), plan["errors"]
