# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reachability matrix of a lab plan: every pair's hop-by-hop path as the plan routes it, and a comparison with
the hops the lab really answers from (playbooks/verify_paths.yml).

The plan is read as the kernel routes it. A node is a VM or the lab host (all its host ports share one routing table,
the lab's namespace); it has addresses on bridges, routes, and forwards or not. At each node a packet is
    delivered    when the destination is one of the node's addresses, on any interface (Linux's weak host model);
    forwarded    by the longest prefix match of the node's connected networks, its routes and its default gateway
                 (a connected network first on equal length) to the node holding the next address on that bridge;
    dropped      at a node that does not forward it, has no route, or whose next address nobody holds.
Sources are every VM and the lab host; destinations every lab address of every other node. A pair is checked only
where the plan routes it there and routes every node on the way back to the source's address (each hop's answer
must come home); the rest are listed as unchecked, with the reason - the seed's hand-written routes leave such
gaps, a topology file's computed ones none. A path through a router with NAT rules is unchecked as well (the
answers come from translated addresses).

The hops are probed with TTL-limited pings (`ping -t N`): hop N of a path answers "Time to live exceeded", the
destination an echo reply. The probe's arguments and the reading of its output live here, once.

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

LAB_HOST = "lab_host"
DEFAULT = ipaddress.ip_network("0.0.0.0/0")
# a path longer than this is a loop (the 16-router chain crosses 18 nodes end to end)
WALK_LIMIT = 64


def network(plan):
    """{node: {"ifaces": [(bridge, IPv4Interface, dev)], "routes": [(network, via, dev)], "forwards", "nat"}}."""
    nodes = {}
    for vm in plan["vms"]:
        routes = [(ipaddress.ip_network(r["to"]), ipaddress.ip_address(r["via"]), r.get("dev")) for r in vm["routes"]]
        if vm["gateway"]:
            routes.append((DEFAULT, ipaddress.ip_address(vm["gateway"]), None))
        nodes[vm["name"]] = {
            "ifaces": [(nic["bridge"], ipaddress.ip_interface(nic["address"]), nic["dev"])
                       for nic in vm["nics"] if nic["bridge"] and nic["address"]],
            "routes": routes, "forwards": bool(vm["forwarding"]), "nat": bool(vm.get("nat"))}
    ports = [port for port in plan["host_ports"] if port.get("address")]
    if ports:
        nodes[LAB_HOST] = {
            "ifaces": [(port["bridge"], ipaddress.ip_interface(port["address"]), port["peer"]) for port in ports],
            "routes": [(ipaddress.ip_network(r["to"]), ipaddress.ip_address(r["via"]), port["peer"])
                       for port in ports for r in port.get("routes") or []],
            "forwards": False, "nat": False}
    return nodes


def owners(nodes):
    """{address (str): node} of every lab address."""
    return dict((str(iface.ip), name) for name, node in nodes.items() for _bridge, iface, _dev in node["ifaces"])


def holder(nodes, bridge, address):
    """The node that answers ARP for `address` on `bridge`: the one holding it there, else (weak host model) a node
    on the bridge holding it on another interface; None when nobody does."""
    exact = [name for name, node in sorted(nodes.items())
             if any(b == bridge and iface.ip == address for b, iface, _dev in node["ifaces"])]
    if exact:
        return exact[0]
    weak = [name for name, node in sorted(nodes.items())
            if any(b == bridge for b, _iface, _dev in node["ifaces"])
            and any(iface.ip == address for _b, iface, _dev in node["ifaces"])]
    return weak[0] if weak else None


def lookup(node, address):
    """(bridge, outgoing interface address, next address) of the route `node` takes to `address`, or None."""
    candidates = [(iface.network, None, dev) for _bridge, iface, dev in node["ifaces"]] + list(node["routes"])
    matches = [(index, item) for index, item in enumerate(candidates) if address in item[0]]
    if not matches:
        return None
    _index, (_net, via, dev) = max(matches, key=lambda pair: (pair[1][0].prefixlen, -pair[0]))
    target = address if via is None else via
    ifaces = [(b, iface) for b, iface, d in node["ifaces"] if target in iface.network and (dev is None or d == dev)]
    if not ifaces:
        return None
    bridge, iface = ifaces[0]
    return bridge, iface.ip, target


def walk(nodes, source, address):
    """(the nodes a packet from `source` to `address` visits, None) when delivered, else (them, why it is lost)."""
    path, here = [source], source
    while len(path) <= WALK_LIMIT:
        node = nodes[here]
        if any(iface.ip == address for _b, iface, _dev in node["ifaces"]):
            return path, None
        if here != source and not node["forwards"]:
            return path, "%s does not forward" % here
        route = lookup(node, address)
        if route is None:
            return path, "%s has no route to %s" % (here, address)
        bridge, _src, target = route
        there = holder(nodes, bridge, target)
        if there is None:
            return path, "nobody on %s holds %s, %s's next address" % (bridge, target, here)
        path.append(there)
        here = there
    return path, "a loop: %s" % " > ".join(path[:8] + ["..."])


def source_address(nodes, source, address):
    """The address `source` sends from toward `address`: its own on the outgoing interface (primary address)."""
    route = lookup(nodes[source], address)
    return route[1] if route else None


def matrix(plan):
    """Every pair of the plan: {"pairs": [{source, destination, address, from, path}], "unchecked": [{source,
    destination, address, why, text}], "owners": {address: node}} - in source, destination, address order."""
    nodes = network(plan)
    who = owners(nodes)
    result = {"pairs": [], "unchecked": [], "owners": who}
    for source in sorted(nodes):
        for destination in sorted(nodes):
            if destination == source:
                continue
            for _bridge, iface, _dev in nodes[destination]["ifaces"]:
                pair = {"source": source, "destination": destination, "address": str(iface.ip)}
                why = unchecked_because(nodes, pair, iface.ip)
                if why:
                    pair["why"] = why
                    pair["text"] = "%s -> %s %s: %s" % (source, destination, pair["address"], why)
                    result["unchecked"].append(pair)
                else:
                    path, _why = walk(nodes, source, iface.ip)
                    pair["from"] = str(source_address(nodes, source, iface.ip))
                    pair["path"] = path
                    result["pairs"].append(pair)
    return result


def unchecked_because(nodes, pair, address):
    """Why the plan does not give this pair a path a probe can trace (None when it does)."""
    source = pair["source"]
    path, why = walk(nodes, source, address)
    if why:
        return "the plan does not route it: %s (%s)" % (why, " > ".join(path))
    translating = [name for name in path if nodes[name]["nat"]]
    if translating:
        return "the path crosses NAT on %s (the answers come from translated addresses)" % ", ".join(translating)
    back_to = source_address(nodes, source, address)
    for hop in path[1:]:
        back, why = walk(nodes, hop, back_to)
        if why:
            return "%s's answer to %s cannot come back: %s (%s)" % (hop, back_to, why, " > ".join(back))
    return None


# ------------------------------------------------------------------ probing and reading the probe

def probe_arguments(pairs, source):
    """The probe's arguments for `source`: "<address> <hops>" for each of its pairs, as strings."""
    arguments = []
    for pair in pairs:
        if pair["source"] == source:
            arguments += [pair["address"], str(len(pair["path"]) - 1)]
    return arguments


# iputils ping -n: "64 bytes from 10.61.1.2: icmp_seq=1 ttl=63 time=1.2 ms", "From 10.61.0.2 icmp_seq=1 Time to
# live exceeded", "From 10.61.0.1 icmp_seq=1 Destination Host Unreachable"; ping's own "ping: connect: Network is
# unreachable" (the source has no route)
REPLY = re.compile(r"^\d+ bytes from ([0-9.]+):")
ERROR = re.compile(r"^From ([0-9.]+)(?: icmp_seq=\d+)? (.*)$")


def read_probe(stdout):
    """{address: {ttl: (answer, responder, text)}} from the probe's lines "<address> <ttl> <ping's line>";
    answer is reply, exceeded, error or none (no answer to any try)."""
    hops = {}
    for line in (stdout or "").splitlines():
        parts = line.strip().split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        address, ttl, text = parts[0], int(parts[1]), parts[2].strip() if len(parts) > 2 else ""
        reply, error = REPLY.match(text), ERROR.match(text)
        if reply:
            answer = ("reply", reply.group(1), text)
        elif error and error.group(2).strip().lower() == "time to live exceeded":
            answer = ("exceeded", error.group(1), text)
        elif error:
            answer = ("error", error.group(1), error.group(2).strip())
        elif text.startswith("ping:"):
            answer = ("error", None, text)
        else:
            answer = ("none", None, text)
        hops.setdefault(address, {})[ttl] = answer
    return hops


def describe(who, address):
    if address is None:
        return "the source's own ping"
    return "%s (%s)" % (who.get(address, "no lab node"), address)


def path_problems(stdout, paths, source):
    """One message per pair of `source` whose traced hops differ from the plan's path, naming the pair and the first
    hop that differs; `paths` is matrix()'s result."""
    traced = read_probe(stdout)
    who = paths["owners"]
    problems = []
    for pair in paths["pairs"]:
        if pair["source"] != source:
            continue
        planned = " > ".join(pair["path"])
        name = "%s -> %s %s (from %s, planned %s)" % (source, pair["destination"], pair["address"], pair["from"],
                                                      planned)
        hops = traced.get(pair["address"], {})
        last = len(pair["path"]) - 1
        for ttl in range(1, last + 1):
            expected = pair["path"][ttl]
            answer, responder, text = hops.get(ttl, ("missing", None, ""))
            if answer == "missing":
                problems.append("%s: hop %d was not probed (the probe stopped before it); the plan says %s"
                                % (name, ttl, expected))
            elif answer == "none":
                problems.append("%s: hop %d: no answer; the plan says %s" % (name, ttl, expected))
            elif answer == "error":
                problems.append("%s: hop %d: %s answered '%s'; the plan says %s" % (
                    name, ttl, describe(who, responder), text, expected))
            elif who.get(responder) != expected:
                problems.append("%s: hop %d is %s; the plan says %s" % (
                    name, ttl, describe(who, responder), expected))
            elif ttl == last and answer != "reply":
                # the destination's own node, but it forwarded the packet on instead of taking it
                problems.append("%s: hop %d is %s but it did not answer as the destination (%s)" % (
                    name, ttl, describe(who, responder), text))
            else:
                continue
            break
    return problems
