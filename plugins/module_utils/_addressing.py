# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Addresses and static routes of a set of interfaces: read, compare with what is wanted, apply the difference.

Used on the lab host (host ports) and inside guests (Debian's pyroute2 0.7 there, 0.9 on the host); every kernel
call goes through the netlink layer's helpers, which use only what both versions share.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    add_address,
    add_route,
    delete_address,
    delete_route,
    get_addresses,
    get_link,
    get_routes,
    set_link,
)


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
    """What the kernel has for `names`: {name: {up, addresses}} and the gateway routes leaving them."""
    interfaces = {}
    for name in names:
        link = get_link(ipr, name)
        if link is None:
            continue
        addresses = [a for a in get_addresses(ipr, name) if ipaddress.ip_interface(a).version == 4]
        interfaces[name] = {"up": link["up"], "addresses": addresses}
    routes = [dict(route, to="0.0.0.0/0" if route["to"] == "default" else route["to"])
              for route in get_routes(ipr) if route["dev"] in interfaces]
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


def apply(ipr, changes):
    """Carry out `plan`'s changes in order: links, addresses, then routes (a gateway needs its subnet first)."""
    for action, item in changes:
        if action == "link_up":
            set_link(ipr, item["name"], up=True)
        elif action == "addr_add":
            add_address(ipr, item["name"], item["address"])
        elif action == "addr_del":
            delete_address(ipr, item["name"], item["address"])
    for action, item in changes:
        if action == "route_del":
            delete_route(ipr, item["to"], item["via"])
        elif action == "route_add":
            add_route(ipr, item["to"], item["via"], item.get("dev"))
