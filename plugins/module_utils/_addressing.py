# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Addresses and static routes of a set of interfaces: read, compare with what is wanted, apply the difference.

Used on the lab host (host ports) and inside guests (Debian's pyroute2 0.7 there, 0.9 on the host), so only the
IPRoute calls both versions share are used.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import socket

MAIN_TABLE = 254
RTPROT_KERNEL = 2


def normalize_address(value):
    """'10.20.10.1/24' -> the same in canonical form; raises ValueError naming the value."""
    iface = ipaddress.ip_interface(str(value).strip())
    if iface.version != 4:
        raise ValueError("%s is not an IPv4 address" % value)
    return str(iface)


def normalize_route(route):
    """{'to': ..., 'via': ...} -> (network, gateway) strings; 'default' means 0.0.0.0/0."""
    to = str(route.get("to", "")).strip()
    if to == "default":
        to = "0.0.0.0/0"
    network = ipaddress.ip_network(to, strict=True)
    gateway = ipaddress.ip_address(str(route.get("via", "")).strip())
    if network.version != 4 or gateway.version != 4:
        raise ValueError("route to %s via %s is not IPv4" % (to, route.get("via")))
    return str(network), str(gateway)


def read_state(ipr, names):
    """What the kernel has for `names`: {name: {index, up, addresses}} and the gateway routes leaving them."""
    interfaces = {}
    for name in names:
        indexes = ipr.link_lookup(ifname=name)
        if not indexes:
            continue
        index = indexes[0]
        link = ipr.get_links(index)[0]
        addresses = sorted(
            "%s/%d" % (msg.get_attr("IFA_ADDRESS"), msg["prefixlen"])
            for msg in ipr.get_addr(index=index, family=socket.AF_INET)
        )
        interfaces[name] = {"index": index, "up": bool(link["flags"] & 1), "addresses": addresses}
    by_index = dict((v["index"], k) for k, v in interfaces.items())
    routes = []
    for msg in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        gateway = msg.get_attr("RTA_GATEWAY")
        oif = msg.get_attr("RTA_OIF")
        if not gateway or oif not in by_index or msg["proto"] == RTPROT_KERNEL:
            continue
        dst = msg.get_attr("RTA_DST") or "0.0.0.0"
        routes.append({"to": "%s/%d" % (dst, msg["dst_len"]), "via": gateway, "dev": by_index[oif]})
    routes.sort(key=lambda r: (r["to"], r["via"]))
    return {"interfaces": interfaces, "routes": routes}


def plan(have, want_interfaces, want_routes, purge_addresses=True, purge_routes=True):
    """The smallest set of changes turning `have` into what is wanted, as a list of (action, details) tuples.

    Only listed interfaces are touched: their addresses, and the gateway routes that leave through them.
    """
    changes = []
    for iface in want_interfaces:
        name = iface["name"]
        current = have["interfaces"][name]
        wanted = iface.get("addresses")
        if not current["up"]:
            changes.append(("link_up", {"name": name}))
        if wanted is None:
            continue
        # Deleting a primary address takes its subnet's secondaries with it, so deletions go first.
        if purge_addresses:
            for address in sorted(set(current["addresses"]) - set(wanted)):
                changes.append(("addr_del", {"name": name, "address": address}))
        for address in sorted(set(wanted) - set(current["addresses"])):
            changes.append(("addr_add", {"name": name, "address": address}))
    wanted_keys = set((r["to"], r["via"]) for r in want_routes)
    current_keys = set((r["to"], r["via"]) for r in have["routes"])
    if purge_routes:
        for route in have["routes"]:
            if (route["to"], route["via"]) not in wanted_keys:
                changes.append(("route_del", route))
    for route in want_routes:
        if (route["to"], route["via"]) not in current_keys:
            changes.append(("route_add", route))
    return changes


def apply(ipr, have, changes):
    """Carry out `plan`'s changes in order: links, addresses, then routes (a gateway needs its subnet first)."""
    index = dict((name, v["index"]) for name, v in have["interfaces"].items())
    for action, item in changes:
        if action == "link_up":
            ipr.link("set", index=index[item["name"]], state="up")
        elif action in ("addr_add", "addr_del"):
            iface = ipaddress.ip_interface(item["address"])
            ipr.addr("add" if action == "addr_add" else "del", index=index[item["name"]],
                     address=str(iface.ip), prefixlen=iface.network.prefixlen)
    for action, item in changes:
        if action == "route_del":
            ipr.route("del", dst=item["to"], gateway=item["via"], table=MAIN_TABLE)
        elif action == "route_add":
            kwargs = {"dst": item["to"], "gateway": item["via"], "table": MAIN_TABLE}
            if item.get("dev"):
                kwargs["oif"] = index[item["dev"]]
            ipr.route("add", **kwargs)
