# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compiler's last stage: a valid plan rendered, per lab host, as the exact arguments of each module and role.

    links        qemulab.network.links   bridges and taps (host_prep runs it for those not already as planned)
    nic_links    qemulab.network.nic_links  each lab NIC's link state and impairment on the running VMs (the
                 `links` stage; never part of what restarts a VM)
    host_ports   qemulab.network.veth    one item per host port; `host_port_routes`: ip_config per port
    datapaths    qemulab.network.dpdk_datapath per user-space (vhost-user) segment, started before the VMs
    vms          qemulab.network.qemu_vm per VM, all but what the lab host decides at run time (the built image's
                 files, accelerator, run and state directories: vm_launch's settings, merged by qemu_vm_specs)
    guests       per VM: guest_network's nics, routes, gateway, forwarding; router_nat's rules; whom it pings
    teardown     the lab and namespace the teardown role removes

Roles pass these through; nothing downstream reshapes a NIC. The guest's configuration files are rendered here too,
once: vm_launch hands them over at boot through fw_cfg and guest_network compares the running guest with them.

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_dpdk
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_serial

INTERFACES_HEADER = ("# /etc/network/interfaces -- configuration file for ifup(8), ifdown(8)\n"
                     "# Written by qemulab from the lab inventory; the next lab run puts back what it says.\n")
# The management NIC's forward: 127.0.0.1:<ansible_port> to the guest's sshd.
SSH_GUEST_PORT = 22


# ------------------------------------------------------------------ the guest's own files

def guest_interfaces_file(nics, routes=None, gateway=None):
    """The guest's /etc/network/interfaces in the seed's format: a static stanza per addressed NIC, its static
    routes as `up route add` lines, and the default route on the NIC whose subnet holds the gateway."""
    routes = routes or []
    lines = [INTERFACES_HEADER, "auto lo" + "".join(" " + nic["dev"] for nic in nics), "", "iface lo inet loopback"]
    for nic in nics:
        lines.append("")
        if nic.get("address"):
            iface = ipaddress.ip_interface(str(nic["address"]))
            lines += ["iface %s inet static" % nic["dev"], "    address %s" % iface.ip,
                      "    netmask %s" % iface.network.netmask, "    broadcast %s" % iface.network.broadcast_address,
                      "    network %s" % iface.network.network_address]
        else:
            lines.append("iface %s inet manual" % nic["dev"])
        if nic.get("mtu"):
            lines.append("    mtu %d" % nic["mtu"])
        nic_routes = [r for r in routes if r.get("dev") == nic["dev"]]
        if nic_routes:
            lines.append("    # static route")
            lines += ["    up route add -net %s gw %s dev %s" % (r["to"], r["via"], nic["dev"]) for r in nic_routes]
        if gateway and nic.get("address"):
            net = ipaddress.ip_interface(str(nic["address"])).network
            if ipaddress.ip_address(str(gateway)) in net:
                lines.append("    up route add default gw %s dev %s" % (gateway, nic["dev"]))
    return "\n".join(lines) + "\n"


def guest_ip_commands(nics, routes=None, gateway=None):
    """What the interfaces file says, as `ip` arguments one command per line (iproute2's -batch format): the
    default image's init runs each line with busybox's `ip` applet at boot. Same addresses, MTUs and routes as
    `ifup -a` on the interfaces file, without ifupdown's shells, hook scripts and dynamically linked binaries,
    which cost ~2 s of a guest's CPU per boot under TCG (bench/README.md). Links and addresses first, then routes:
    a route's gateway must be on a NIC that is up."""
    routes = routes or []
    links, route_lines = [], []
    for nic in nics:
        if nic.get("mtu"):
            links.append("link set dev %s mtu %d" % (nic["dev"], nic["mtu"]))
        if nic.get("address"):
            links.append("address add %s brd + dev %s" % (ipaddress.ip_interface(str(nic["address"])), nic["dev"]))
        links.append("link set dev %s up" % nic["dev"])
        route_lines += ["route add %s via %s dev %s" % (ipaddress.ip_network(str(r["to"]), strict=False), r["via"],
                                                        nic["dev"]) for r in routes if r.get("dev") == nic["dev"]]
        if gateway and nic.get("address") and \
                ipaddress.ip_address(str(gateway)) in ipaddress.ip_interface(str(nic["address"])).network:
            route_lines.append("route add default via %s dev %s" % (gateway, nic["dev"]))
    return "".join(line + "\n" for line in links + route_lines)


def guest_sysctl_file(forwarding):
    """The guest's sysctl file for the lab: IPv4 forwarding on for routers, off for hosts."""
    return "net.ipv4.ip_forward = %d\n" % (1 if forwarding else 0)


# ------------------------------------------------------------------ qemu_vm

def _lab_nic(nic, netns, socket=None):
    if nic["backend"] == "vhost-user":
        # the socket relative to the run root, which vm_launch decides (qemu_vm_specs makes it absolute)
        return {"model": nic["model"], "mac": nic["mac"], "backend": "vhost-user", "socket": socket}
    if nic["backend"] == "user":
        # always restricted: a lab guest reaches SLIRP's gateway and its 127.0.0.1 forwards, nothing beyond
        return {"model": nic["model"], "mac": nic["mac"], "backend": "user", "restrict": True, "net": nic["net"],
                "hostfwd": [dict(fwd) for fwd in nic["hostfwd"]]}
    rendered = {"model": nic["model"], "mac": nic["mac"], "backend": "tap", "ifname": nic["tap"],
                "netns": netns, "vhost": nic["vhost"]}
    if nic.get("mtu"):
        rendered["mtu"] = nic["mtu"]
    return rendered


def qemu_nics(vm, netns, sockets=None):
    """A planned VM's NICs as qemu_vm `nics`: the lab NICs in guest order, the management NIC last (user-mode,
    restricted, forwarding 127.0.0.1:<ssh_port> to the guest's sshd). `sockets`: {dev: vhost-user socket}."""
    nics = [_lab_nic(nic, netns, (sockets or {}).get(nic.get("dev"))) for nic in vm["nics"]]
    nics.append({"model": "virtio-net-pci", "mac": vm["mgmt_mac"], "backend": "user", "restrict": True,
                 "hostfwd": [{"host_port": vm["ssh_port"], "guest_port": SSH_GUEST_PORT, "protocol": "tcp"}]})
    return nics


def qemu_vm(vm, plan, sockets=None):
    """qemu_vm's options for one VM, less vm_launch's settings (see qemu_vm_specs)."""
    built_image = not vm["kernel"]
    return {
        "name": vm["name"],
        "lab": plan["lab_name"],
        "state": "running",
        # None: the built guest image's, filled in by vm_launch once the image exists
        "kernel": vm["kernel"],
        "initrd": vm["initrd"],
        "disk": vm["disk"],
        "append": "qemulab.hostname=%s qemulab.mgmt=%s qemulab.nics=%s" % (
            vm["name"], vm["mgmt_mac"], ",".join(nic["mac"] for nic in vm["nics"])),
        "memory": vm["memory_mb"],
        "vcpus": vm["vcpus"],
        "netns": plan["netns"],
        "nics": qemu_nics(vm, plan["netns"], sockets),
        # the guest boots configured (the default image's init reads these); own images are configured over SSH
        "fw_cfg": [{"name": "opt/qemulab/interfaces",
                    "content": guest_interfaces_file(vm["nics"], vm["routes"], vm["gateway"])},
                   {"name": "opt/qemulab/ip", "content": guest_ip_commands(vm["nics"], vm["routes"], vm["gateway"])},
                   {"name": "opt/qemulab/sysctl", "content": guest_sysctl_file(vm["forwarding"])}]
        + ([{"name": "opt/qemulab/serial", "content": _lab_serial.guest_file(vm)}] if vm.get("serial") else [])
        if built_image else [],
        "serial_ports": _lab_serial.serial_ports(vm),
        "run_as": plan["qemu_user"] or None,
        "console_log_limit": plan["console_log_limit"],
        "ssh_port": vm["ssh_port"],
        # vm_launch's, not a qemu_vm option: clone or boot (None: vm_launch_boot decides)
        "boot": vm.get("boot"),
    }


# ------------------------------------------------------------------ per lab host

def nic_links(vm, netns):
    """The links stage's arguments for one VM's lab NICs: QEMU's netdev id (qemu_vm names them net<index>), the tap,
    the wanted link state and impairment (normalised by the schema: microseconds, percent, bit/s)."""
    return [{"vm": vm["name"], "dev": nic["dev"], "netdev": "net%d" % nic["index"], "tap": nic["tap"],
             "netns": netns, "link": nic["link"] or "up", "netem": nic["netem"] or {}} for nic in vm["nics"]]


def _addresses(nics):
    return [nic["address"].split("/")[0] for nic in nics if nic["bridge"] and nic["address"]]


def render(plan, placement=None, connections=None, dpdk_cores=1):
    """{lab host: arguments} for a plan without errors; `placement` (_lab_placement) says which segments span lab
    hosts, `connections` how guests are reached through their lab host, `dpdk_cores` each user-space segment's
    polling cores (lab_dpdk_cores)."""
    placement = placement or {"segments": [], "underlay": {}, "port": None}
    connections = connections or {}
    netns, lab = plan["netns"], plan["lab_name"]
    # A pulled cable (link: down) breaks paths on purpose: the verify stage's pings would fail, so none are planned.
    links_down = any(nic["link"] == "down" for vm in plan["vms"] for nic in vm["nics"])
    host_addresses = {} if links_down else dict(
        (vm["name"], _addresses(vm["nics"])) for vm in plan["vms"] if vm["kind"] == "host")
    # a tap of a NIC whose link is down stays down (host_prep must not bring it back up)
    tap_up = dict((nic["tap"], nic["link"] != "down") for vm in plan["vms"] for nic in vm["nics"] if nic["tap"])
    # {vm: {dev: socket}} of the vhost-user NICs, each on its segment's datapath
    sockets = {}
    for segment, members in _lab_dpdk.segment_ports(plan["vms"]).items():
        for vm, dev, port in members:
            sockets.setdefault(vm, {})[dev] = _lab_dpdk.socket_path(lab, segment, port)
    rendered = {}
    for hypervisor in plan["hypervisors"]:
        vms = [vm for vm in plan["vms"] if vm["hypervisor"] == hypervisor]
        taps = [tap for tap in plan["taps"] if any(tap["vm"] == vm["name"] for vm in vms)]
        ports = plan["host_ports"] if hypervisor == plan["hypervisor"] else []
        vxlans = vxlan_ports(plan["lab_name"], netns, placement, hypervisor)
        # a segment's bridge is on every lab host with a member of it: a tap, a host port or a tunnel's end
        used = set(tap["bridge"] for tap in taps) | set(p["bridge"] for p in ports) | set(v["bridge"] for v in vxlans)
        if plan.get("uplink") and hypervisor == plan["hypervisor"]:
            used.add(plan["uplink"]["bridge"])
        bridges = [bridge for bridge in plan["bridges"] if bridge["name"] in used]
        rendered[hypervisor] = {
            "lab": lab,
            "netns": netns,
            "qemu_user": plan["qemu_user"],
            "links": {
                # arp_ignore 1: a segment's bridge never answers ARP for a host port's address (see the bridge module)
                "bridges": [dict({"name": b["name"], "arp_ignore": 1}, **({"mtu": b["mtu"]} if b["mtu"] else {}))
                            for b in bridges],
                "taps": [dict({"name": t["name"], "bridge": t["bridge"], "owner": plan["qemu_user"] or None},
                              **dict(([("mtu", t["mtu"])] if t["mtu"] else [])
                                     + ([("up", False)] if not tap_up[t["name"]] else []))) for t in taps],
            },
            "host_ports": [dict({"name": p["name"], "peer": p["peer"], "netns": netns, "bridge": p["bridge"],
                                 "peer_netns": netns, "peer_addresses": [p["address"]] if p["address"] else [],
                                 "lab": lab}, **({"mtu": p["mtu"]} if p.get("mtu") else {})) for p in ports],
            "host_port_routes": [{"peer": p["peer"], "routes": p["routes"]} for p in ports],
            # what each host port pings when the lab is verified: every host's lab addresses
            "host_port_pings": [[p["peer"], address] for p in ports
                                for name in sorted(host_addresses) for address in host_addresses[name]],
            "datapaths": _lab_dpdk.datapaths(lab, vms, dpdk_cores),
            "vms": [qemu_vm(vm, plan, sockets.get(vm["name"])) for vm in vms],
            "nic_links": [link for vm in vms for link in nic_links(vm, netns)],
            "guests": dict((vm["name"], {
                # routes over a serial device come with the line (qemulab-serial), not from ip_config
                "nics": vm["nics"], "gateway": vm["gateway"],
                "routes": [route for route in vm["routes"] if not _lab_serial.is_serial_route(vm, route)],
                "forwarding": vm["forwarding"], "nat": vm["nat"], "connection": vm["connection"],
                "serial": _lab_serial.guest_file(vm),
                "pings": [address for name in sorted(host_addresses) if name != vm["name"]
                          for address in host_addresses[name]] if vm["kind"] == "host" else [],
            }) for vm in vms),
            # the way out (lab_uplink), made by the lab host: the lab_uplink role's arguments
            "uplink": dict(plan["uplink"], lab=lab, netns=netns)
            if plan.get("uplink") and hypervisor == plan["hypervisor"] else None,
            # the segments this host shares with other lab hosts: qemulab.network.vxlan per tunnel end
            "vxlans": vxlans,
            # guests reached through this lab host (its SSH connection): their connection variables
            "connections": dict((vm["name"], connections[vm["name"]]) for vm in vms if vm["name"] in connections),
            # where the controller keeps this host's guest key and known_hosts for them ("" when none is needed)
            "jump_dir": next((connections[vm["name"]]["ansible_ssh_private_key_file"].rsplit("/", 1)[0] for vm in vms
                              if vm["name"] in connections), ""),
            # the segments that span lab hosts, each with its hosts, MTU and tunnels (VNI, port name)
            "segments": [segment for segment in placement["segments"] if hypervisor in segment["hosts"]],
            "teardown": {"lab": lab, "netns": netns},
        }
    return rendered


def vxlan_ports(lab, netns, placement, hypervisor):
    """qemulab.network.vxlan's arguments for this lab host's end of every tunnel of a segment it shares: the port is
    enslaved to the segment's bridge in the lab's namespace, its UDP socket on the host's underlay address."""
    ports = []
    for segment in placement["segments"]:
        for tunnel in segment["tunnels"]:
            if hypervisor not in tunnel["hosts"]:
                continue
            remote = [host for host in tunnel["hosts"] if host != hypervisor][0]
            port = {"lab": lab, "netns": netns, "name": tunnel["name"], "vni": tunnel["vni"],
                    "local": placement["underlay"].get(hypervisor), "remote": placement["underlay"].get(remote),
                    "port": placement["port"], "bridge": segment["bridge"], "remote_host": remote}
            if segment["mtu"]:
                port["mtu"] = segment["mtu"]
            ports.append(port)
    return ports
