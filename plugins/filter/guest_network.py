# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn a planned VM into its guest network configuration: the seed's interfaces format, the sysctl
file, ip_config's arguments, and the comparison of a guest's running state with the plan."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import shlex

from ansible.errors import AnsibleFilterError

# rendered once, by the lab compiler; the filters of the same names show them to playbooks
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_render import (  # noqa: F401
    guest_interfaces_file,
    guest_ip_commands,
    guest_sysctl_file,
)
from ansible_collections.qemulab.network.plugins.module_utils._addressing import (
    normalize_address,
    normalize_route,
    plan,
)


def cidr_parts(cidr):
    """'10.20.10.1/24' -> the fields of an ifupdown static stanza (address, netmask, broadcast, network, prefix)."""
    try:
        iface = ipaddress.ip_interface(str(cidr))
    except ValueError as exc:
        raise AnsibleFilterError("cidr_parts: %s is not an address in CIDR form (%s)" % (cidr, exc))
    net = iface.network
    return {
        "address": str(iface.ip),
        "netmask": str(net.netmask),
        "broadcast": str(net.broadcast_address),
        "network": str(net.network_address),
        "prefix": net.prefixlen,
    }


def ip_config_interfaces(nics):
    """Planned NICs -> qemulab.network.ip_config `interfaces` (name and the addresses it should carry)."""
    return [{"name": nic["dev"], "addresses": [nic["address"]] if nic.get("address") else []} for nic in nics]


PROBE_SECTIONS = ("addresses", "routes", "forwarding", "interfaces_file", "sysctl_file")


def guest_network_probe(interfaces_file, sysctl_file):
    """A shell command (no Python needed in the guest) printing what guest_network_drift compares: addresses and
    gateway routes as iproute2 JSON, IPv4 forwarding, and the two files, each section after a marker line."""
    parts = {
        "addresses": "ip -j address show 2>/dev/null",
        "routes": "ip -j -4 route show table main 2>/dev/null",
        "forwarding": "cat /proc/sys/net/ipv4/ip_forward",
        # raw takes a shell line: the role's paths go in quoted
        "interfaces_file": "cat %s 2>/dev/null" % shlex.quote(str(interfaces_file)),
        "sysctl_file": "cat %s 2>/dev/null" % shlex.quote(str(sysctl_file)),
    }
    return "; ".join("echo; echo '@@qemulab:%s@@'; %s" % (name, parts[name]) for name in PROBE_SECTIONS) + \
        "; echo; echo '@@qemulab:end@@'"


def _probe_sections(stdout):
    # Through a pseudo-terminal (raw may get one) lines end in \r\n, and SSH may add a line after the command's.
    text = str(stdout).replace("\r\n", "\n").rpartition("\n@@qemulab:end@@")[0]
    sections = {}
    for name in reversed(PROBE_SECTIONS):
        marker = "\n@@qemulab:%s@@\n" % name
        head, found, body = text.rpartition(marker)
        if not found:
            return None
        sections[name], text = body, head
    return sections


def _running_state(sections, names):
    """The probe's addresses and routes in the shape _addressing.read_state gives, or None when unreadable."""
    try:
        links = json.loads(sections["addresses"])
        routes = json.loads(sections["routes"])
    except ValueError:
        return None
    interfaces = {}
    for link in links:
        if link.get("ifname") in names:
            interfaces[link["ifname"]] = {
                "up": "UP" in (link.get("flags") or []),
                "addresses": sorted("%s/%s" % (a["local"], a["prefixlen"]) for a in link.get("addr_info") or []
                                    if a.get("family") == "inet"),
            }
    have_routes = []
    for route in routes:
        if route.get("gateway") and route.get("dev") in interfaces:
            dst = route.get("dst", "default")
            to = "0.0.0.0/0" if dst == "default" else str(ipaddress.ip_network(dst, strict=False))
            have_routes.append({"to": to, "via": route["gateway"], "dev": route["dev"]})
    return {"interfaces": interfaces, "routes": have_routes}


def guest_network_drift(probe_stdout, nics, routes=None, gateway=None, forwarding=False, interfaces_file=None,
                        sysctl_file=None):
    """How a guest's running state (the output of guest_network_probe's command) differs from its plan.

    Returns {known, live, forwarding, interfaces_file, sysctl_file}: `known` is false when the probe could not be
    read (a guest without iproute2's JSON output, say), and then every step must run; `live` lists the address and
    route changes ip_config would make (the same comparison: _addressing.plan); the others are true when they differ.
    """
    sections = _probe_sections(probe_stdout)
    want_interfaces = [{"name": i["name"], "addresses": sorted(set(normalize_address(a) for a in i["addresses"]))}
                       for i in ip_config_interfaces(nics)]
    names = set(i["name"] for i in want_interfaces)
    have = _running_state(sections, names) if sections else None
    if have is None or set(have["interfaces"]) != names:
        return {"known": False, "live": [], "forwarding": True, "interfaces_file": True, "sysctl_file": True}
    want_routes = []
    for route in list(routes or []) + ([{"to": "0.0.0.0/0", "via": gateway}] if gateway else []):
        to, via = normalize_route(route)
        want_routes.append({"to": to, "via": via, "dev": route.get("dev")})
    live = ["%s %s" % (action, " ".join(str(v) for v in sorted(item.values(), key=str) if v))
            for action, item in plan(have, want_interfaces, want_routes)]
    return {
        "known": True,
        "live": live,
        "forwarding": sections["forwarding"].strip() != ("1" if forwarding else "0"),
        "interfaces_file": interfaces_file is not None and sections["interfaces_file"] != interfaces_file,
        "sysctl_file": sysctl_file is not None and sections["sysctl_file"] != sysctl_file,
    }


def guest_network_booted_as_planned(boot_config, nics, routes=None, gateway=None, forwarding=False,
                                    persist=True):
    """Whether a guest this run started was handed exactly this plan at boot ({fw_cfg name: content}, vm_launch's
    vm_launch_boot_configs): the ip commands its init ran, its sysctl file and, when the role persists them, its
    interfaces file. Then its running network is the plan's and reading it over SSH tells nothing new (a TCG guest's
    SSH round trip costs seconds); anything missing or different, and it is read."""
    if not isinstance(boot_config, dict) or not boot_config:
        return False
    wanted = {"opt/qemulab/ip": guest_ip_commands(nics, routes, gateway),
              "opt/qemulab/sysctl": guest_sysctl_file(forwarding)}
    if persist:
        wanted["opt/qemulab/interfaces"] = guest_interfaces_file(nics, routes, gateway)
    return all(boot_config.get(name) == content for name, content in wanted.items())


class FilterModule(object):
    def filters(self):
        return {"cidr_parts": cidr_parts, "ip_config_interfaces": ip_config_interfaces,
                "guest_interfaces_file": guest_interfaces_file, "guest_sysctl_file": guest_sysctl_file,
                "guest_network_probe": guest_network_probe, "guest_network_drift": guest_network_drift,
                "guest_network_booted_as_planned": guest_network_booted_as_planned}
