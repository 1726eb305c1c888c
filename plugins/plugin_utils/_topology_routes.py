# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Static routes of a topology: shortest paths over the router graph, a documented tie-break, exact summaries.

The model is plain data: `segments` is a list (file order) of {"label", "subnet": IPv4Network, "members":
{member: IPv4Address}}; `routers` the names that forward. A member that is not a router (a host VM, the lab host's
port) is never a transit hop.

Rules (docs/topology-files.md):
- distance: the number of routers a packet crosses; a router on the destination segment is at distance 0.
- a router or the lab host reaches a segment it is not on through the neighbour router (one sharing a segment with
  it) of least distance; ties go to the lowest neighbour name, and `via` is that neighbour's address on the
  lowest-index segment both share. Every next hop is one step closer, so the hop-by-hop path is loop-free and is
  the computed one.
- a host VM gets a default gateway: the router of lowest name on any of its segments.
- routes a person writes win: a computed route whose destination overlaps a written one is dropped.
- the remaining computed routes are summarised only where exact: routes through one next hop whose networks
  together are exactly a larger prefix (ipaddress.collapse_addresses); a summary never covers an address the
  single routes did not.

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress


def member_segments(segments, member):
    return [index for index, segment in enumerate(segments) if member in segment["members"]]


def distances(segments, routers, target):
    """{router: routers crossed to reach segment `target`}, breadth first; unreachable routers are absent."""
    dist = dict((name, 0) for name in segments[target]["members"] if name in routers)
    frontier = sorted(dist)
    while frontier:
        following = []
        for router in frontier:
            for index in member_segments(segments, router):
                for other in sorted(segments[index]["members"]):
                    if other in routers and other not in dist:
                        dist[other] = dist[router] + 1
                        following.append(other)
        frontier = following
    return dist


def next_hop(segments, routers, source, dist):
    """(neighbour, via address) of `source` toward the segment `dist` was computed for, or None."""
    own = member_segments(segments, source)
    candidates = set()
    for index in own:
        for other in segments[index]["members"]:
            if other != source and other in routers and other in dist:
                candidates.add(other)
    if not candidates:
        return None
    best = min(candidates, key=lambda name: (dist[name], name))
    shared = [index for index in own if best in segments[index]["members"]]
    return best, segments[shared[0]]["members"][best]


def computed_routes(segments, routers, source):
    """([(network, via)], [labels of unreachable segments]) for a router or the lab host."""
    own = set(member_segments(segments, source))
    routes, unreachable = [], []
    for target, segment in enumerate(segments):
        if target in own:
            continue
        hop = next_hop(segments, routers, source, distances(segments, routers, target))
        if hop is None:
            unreachable.append(segment["label"])
        else:
            routes.append((segment["subnet"], hop[1]))
    return routes, unreachable


def default_gateway(segments, routers, host):
    """(router, via) of a host VM: the router of lowest name on its segments, or None."""
    own = member_segments(segments, host)
    on_segments = sorted(set(m for index in own for m in segments[index]["members"] if m in routers and m != host))
    if not on_segments:
        return None
    router = on_segments[0]
    shared = [index for index in own if router in segments[index]["members"]]
    return router, segments[shared[0]]["members"][router]


def without_written(routes, written):
    """The computed routes whose destination overlaps no written destination (a person's route wins)."""
    return [(net, via) for net, via in routes if not any(net.overlaps(mine) for mine in written)]


def aggregate(routes):
    """Routes through one next hop merged where their networks are exactly a larger prefix; sorted by network."""
    by_via = {}
    for net, via in routes:
        by_via.setdefault(via, []).append(net)
    merged = []
    for via, nets in by_via.items():
        for net in ipaddress.collapse_addresses(nets):
            merged.append((net, via))
    return sorted(merged, key=lambda item: (item[0].network_address, item[0].prefixlen))


def plan_routes(segments, routers, sources, hosts, written=None):
    """Every source's final routes and every host's gateway, with the problems that make the lab unroutable.

    sources: routers and the lab host; hosts: host VMs; written: {member: [IPv4Network of routes a person wrote]}.
    Returns {"routes": {source: [(network, via)]}, "gateways": {host: via}, "problems": [(member, message)]}."""
    written = written or {}
    result = {"routes": {}, "gateways": {}, "problems": []}
    for source in sources:
        routes, unreachable = computed_routes(segments, routers, source)
        if unreachable:
            result["problems"].append((source, "has no router path to %s; add a router joining %s to the rest of "
                                       "the lab, or drop %s" % (", ".join(unreachable), "them" if len(unreachable)
                                                                > 1 else "it", "them" if len(unreachable) > 1
                                                                else "it")))
        result["routes"][source] = aggregate(without_written(routes, written.get(source, [])))
    for host in hosts:
        own = member_segments(segments, host)
        gateway = default_gateway(segments, routers, host)
        if gateway is not None:
            result["gateways"][host] = gateway[1]
        elif len(own) < len(segments):
            others = [segment["label"] for index, segment in enumerate(segments) if index not in own]
            result["problems"].append((host, "has no router on its segments, so it cannot reach %s; put a router "
                                       "on one of its segments" % ", ".join(others)))
    return result
