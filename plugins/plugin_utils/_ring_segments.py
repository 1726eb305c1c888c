# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The segments a failing ping crossed (or should have): whose rings the verify stage saves (lab_capture_ring).

The planned path there and the planned path of the answer back, walked as _lab_paths walks them; a walk that stops
early still names the segments it reached. A source without any route to the address names every segment it is on,
so a failure never saves nothing."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_paths


def _crossed(nodes, source, address, found):
    """Add the bridges a packet from `source` to `address` leaves each node by; the nodes it visits."""
    path, _why = _lab_paths.walk(nodes, source, address)
    for here in path:
        route = _lab_paths.lookup(nodes[here], address)
        if route and route[0] not in found:
            found.append(route[0])
    return path


def segments(plan, source, addresses):
    """The bridges on the paths from `source` to each of `addresses` and back, in the order first met."""
    nodes = _lab_paths.network(plan)
    if source not in nodes:
        return []
    found = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(str(text))
        except ValueError:
            continue
        path = _crossed(nodes, source, address, found)
        back_to = _lab_paths.source_address(nodes, source, address)
        if back_to is not None and len(path) > 1:
            _crossed(nodes, path[-1], back_to, found)
    if not found:
        found = [bridge for bridge, _iface, _dev in nodes[source]["ifaces"]]
    return list(dict.fromkeys(found))
