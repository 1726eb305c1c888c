# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Serial links between VMs (`lab_serial_links`), a stage of the lab compiler and what it renders.

    plan     read each link, check it (VMs of the lab, not a VM with itself, at most three per VM, addresses for
             ppp/slip on no segment and used by nobody else), and give each VM its ports in list order: ttyS1,
             ttyS2, ttyS3 with the interface its guest names (ppp<n>, sl<n> counted per VM and protocol)
    render   per VM: qemu_vm's `serial_ports` (the cable: the link's first VM serves the socket, the second
             connects) and the guest's /etc/qemulab/serial (fw_cfg opt/qemulab/serial, read by qemulab-serial),
             with the routes through each link (vm_routes via its peer: the compiler's resolve_routes counts the
             links as attached networks, see `attached`)

Every problem names the lab host, the field, the value and the fix (the compiler's `_Problems`).

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

FIELD = "lab_serial_links"
# qemu_vm's limit: the guest kernel's legacy UARTs ttyS1-ttyS3 beside the console
PORTS_PER_VM = 3
PREFIXES = {"ppp": "ppp", "slip": "sl"}


def plan(compiler, value, owner, vms):
    """Fill each VM's `serial` (its ports in order) from the links; returns the links as read."""
    problems = compiler.problems
    by_name = dict((vm["name"], vm) for vm in vms)
    for vm in vms:
        vm["serial"] = []
    links = []
    for index, label, raw in compiler.item_mappings("serial_link", value, owner, FIELD):
        between = compiler.read("serial_link", "between", raw, owner, label + ".between")
        protocol = compiler.read("serial_link", "protocol", raw, owner, label + ".protocol")
        addresses = compiler.read("serial_link", "addresses", raw, owner, label + ".addresses")
        if between is None or protocol is None:
            continue
        unknown = [name for name in between if name not in by_name]
        if unknown:
            problems.add(owner, label + ".between", "%s is not a VM of this lab (%s); name two of them"
                         % (unknown[0], ", ".join(sorted(by_name)) or "none"))
            continue
        if between[0] == between[1]:
            problems.add(owner, label + ".between", "joins %s to itself; a serial link joins two different VMs"
                         % between[0])
            continue
        if protocol == "raw":
            if addresses is not None:
                problems.add(owner, label + ".addresses", "a raw link carries no IP; drop addresses or use "
                             "protocol ppp or slip")
                continue
        elif addresses is None:
            if raw.get("addresses") is None:
                problems.add(owner, label + ".addresses", "is not set; protocol %s needs the two ends' addresses, "
                             "like [10.99.0.1, 10.99.0.2]" % protocol)
            continue
        elif not _addresses_ok(compiler, owner, label, addresses):
            continue
        own = [name for name in between if by_name[name].get("kernel")] if protocol != "raw" else []
        if own:
            problems.add(owner, label + ".protocol", "%s on %s, which boots its own image (vm_kernel): only the "
                         "default image's guests run pppd/slattach for the lab; use protocol raw and configure the "
                         "line yourself" % (protocol, own[0]))
            continue
        full = [name for name in between if len(by_name[name]["serial"]) >= PORTS_PER_VM]
        if full:
            problems.add(owner, label + ".between", "%s already has %d serial links (ttyS1-ttyS%d); join it by "
                         "at most %d" % (full[0], PORTS_PER_VM, PORTS_PER_VM, PORTS_PER_VM))
            continue
        for end, name in enumerate(between):
            vm = by_name[name]
            same = sum(1 for port in vm["serial"] if port["protocol"] == protocol)
            vm["serial"].append({
                "link": index, "tty": "ttyS%d" % (len(vm["serial"]) + 1), "protocol": protocol,
                "dev": "%s%d" % (PREFIXES[protocol], same) if protocol in PREFIXES else None,
                "peer_vm": between[1 - end], "server": end == 0,
                "local": str(addresses[end]) if addresses else None,
                "peer": str(addresses[1 - end]) if addresses else None,
            })
        links.append({"between": between, "protocol": protocol,
                      "addresses": [str(a) for a in addresses] if addresses else None})
    return links


def _addresses_ok(compiler, owner, label, addresses):
    """Two different addresses, on no segment of the lab, used by nobody else (claimed for the lab)."""
    field = label + ".addresses"
    if addresses[0] == addresses[1]:
        compiler.problems.add(owner, field, "gives both ends %s; give each end its own address" % addresses[0])
        return False
    for address in addresses:
        for bridge, subnet in sorted((b, n) for b, n in compiler.subnets.items() if n is not None):
            if address in subnet:
                compiler.problems.add(owner, field, "%s is in %s, the subnet of bridge %s; a point-to-point link "
                                      "needs addresses on no segment, like 10.99.0.1" % (address, subnet, bridge))
                return False
    before = len(compiler.problems.messages)
    for address in addresses:
        compiler.claim_address(ipaddress.ip_interface("%s/32" % address), owner, field)
    return len(compiler.problems.messages) == before


def attached(vm):
    """The VM's ppp/slip links as the point-to-point networks its routes may use: [(dev, the peer's /32)]."""
    return [(port["dev"], ipaddress.ip_network("%s/32" % port["peer"])) for port in vm.get("serial") or []
            if port["peer"]]


def own_addresses(vm):
    """The VM's own ends of its ppp/slip links (a route's gateway is never one of them)."""
    return [ipaddress.ip_address(port["local"]) for port in vm.get("serial") or [] if port["local"]]


def raw_hint(vm):
    """What a route's refusal adds for a VM with raw links: they carry no IP, so no gateway is on them."""
    raw = [port for port in vm.get("serial") or [] if port["protocol"] == "raw"]
    if not raw:
        return ""
    return " (%s's %s to %s is a raw serial link: it carries no IP; make it protocol ppp or slip with addresses " \
           "to route over it)" % (vm["name"], raw[0]["tty"], raw[0]["peer_vm"])


def is_serial_route(vm, route):
    """True for a route over one of the VM's serial devices: qemulab-serial installs it when the line is up, not the
    boot's ip commands or ip_config (the device may not exist yet)."""
    return route.get("dev") in set(dev for dev, _net in attached(vm))


def serial_ports(vm):
    """qemu_vm's `serial_ports` for a planned VM."""
    return [{"peer": port["peer_vm"], "link": port["link"], "server": port["server"]}
            for port in vm.get("serial") or []]


def guest_file(vm):
    """The guest's /etc/qemulab/serial (qemulab-serial's format): `<tty> <protocol> <dev> <local> <peer>
    [<destination>...]` (the vm_routes via the peer, in the inventory's order), or `<tty> raw`; "" for a VM without
    serial links."""
    lines = []
    for port in vm.get("serial") or []:
        if port["protocol"] == "raw":
            lines.append("%s raw" % port["tty"])
        else:
            routes = [route["to"] for route in vm.get("routes") or [] if route.get("dev") == port["dev"]]
            lines.append(" ".join([port["tty"], port["protocol"], port["dev"], port["local"], port["peer"]] + routes))
    return "".join(line + "\n" for line in lines)
