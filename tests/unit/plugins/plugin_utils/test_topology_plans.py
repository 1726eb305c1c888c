"""Unit tests: the example topologies (topologies/*.qemulab.yml) as the lab compiler plans them.

A route walker of its own (longest prefix match over each plan's routes and gateways, hop by hop, only through
VMs that forward) sends a packet from every VM and the lab host's port to every address of every other, both
ways, and checks it crosses no more routers than the plan's segments need to reach the address's segment (a
breadth-first search of its own over the plan's bridges). The seed file's plan equals inventories/seed's in everything but the routes, and its
routes reach everything the seed's hand-written routes reach."""
import copy
import ipaddress
import json
import os
import subprocess

import pytest
import yaml

from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab
from ansible_collections.qemulab.network.plugins.plugin_utils._topology import compile_topology, flatten

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
TOPOLOGIES = os.path.join(REPO, "topologies")
PORT = "lab host"


def topology_plan(name):
    with open(os.path.join(TOPOLOGIES, name)) as handle:
        inventory = compile_topology(yaml.safe_load(handle), name)
    assert inventory["errors"] == []
    plan = compile_lab(*flatten(inventory), check_files=False)
    assert plan["errors"] == []
    return plan


def inventory_plan(source):
    """The plan of an inventory as `ansible-inventory --list` gives it (the real plugin for a topology file)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible-inventory"), "-i", source, "--list"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    hostvars = listed.pop("_meta")["hostvars"]

    def members(group):
        entry = listed.get(group, {})
        return entry.get("hosts", []) + [h for child in entry.get("children", []) for h in members(child)]
    groups = dict((group, members(group)) for group in listed)
    groups.setdefault("ungrouped", [])
    return compile_lab(hostvars, groups, check_files=False)


# -- an independent model of the planned network -------------------------------------------------------------------
def nodes_of(plan):
    """{node: {"ifaces": [(bridge, IPv4Interface)], "routes": [(net, via)], "forwards": bool}}"""
    nodes = {}
    for vm in plan["vms"]:
        routes = [(ipaddress.ip_network(r["to"]), ipaddress.ip_address(r["via"])) for r in vm["routes"]]
        if vm["gateway"]:
            routes.append((ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address(vm["gateway"])))
        nodes[vm["name"]] = {"ifaces": [(n["bridge"], ipaddress.ip_interface(n["address"])) for n in vm["nics"]
                                        if n["bridge"] and n["address"]],
                             "routes": routes, "forwards": vm["forwarding"]}
    for port in plan["host_ports"]:
        node = nodes.setdefault(PORT, {"ifaces": [], "routes": [], "forwards": False})
        node["ifaces"].append((port["bridge"], ipaddress.ip_interface(port["address"])))
        node["routes"] += [(ipaddress.ip_network(r["to"]), ipaddress.ip_address(r["via"]))
                           for r in port.get("routes", [])]
    return nodes


def owner(nodes, bridge, address):
    return next((name for name, node in nodes.items() for b, iface in node["ifaces"]
                 if b == bridge and iface.ip == address), None)


def walk(nodes, source, destination, limit=64):
    """The nodes a packet from `source` to `destination` visits, or (path, why it stops)."""
    path, here = [source], source
    while len(path) < limit:
        node = nodes[here]
        if any(iface.ip == destination for _b, iface in node["ifaces"]):
            return path, None
        attached = [(b, iface) for b, iface in node["ifaces"] if destination in iface.network]
        if attached:
            there = owner(nodes, attached[0][0], destination)
            return (path + [there], None) if there else (path, "nobody holds %s on %s" % (destination, attached[0][0]))
        matches = [(net, via) for net, via in node["routes"] if destination in net]
        if not matches:
            return path, "%s has no route to %s" % (here, destination)
        _net, via = max(matches, key=lambda item: item[0].prefixlen)
        bridge = next((b for b, iface in node["ifaces"] if via in iface.network), None)
        there = owner(nodes, bridge, via) if bridge else None
        if there is None:
            return path, "%s's next hop %s is on none of its segments" % (here, via)
        if there != destination and not nodes[there]["forwards"] and not any(
                iface.ip == destination for _b, iface in nodes[there]["ifaces"]):
            return path + [there], "%s does not forward" % there
        path.append(there)
        here = there
    return path, "loop: %s" % " > ".join(path)


def fewest_routers(nodes, source, reached):
    """Routers crossed on a shortest path from `source` to a node for which reached(its bridges) holds, by
    breadth-first search over shared bridges."""
    bridges_of = dict((name, set(b for b, _i in node["ifaces"])) for name, node in nodes.items())
    seen, frontier, crossed = {source}, [source], 0
    while frontier:
        if any(reached(bridges_of[n]) for n in frontier):
            return crossed
        following = []
        for name in frontier:
            for other, bridges in bridges_of.items():
                if other not in seen and nodes[other]["forwards"] and bridges & bridges_of[name]:
                    seen.add(other)
                    following.append(other)
        frontier, crossed = following, crossed + 1
    return None


def delivered(nodes):
    """{(source, destination address): path} of every packet that arrives."""
    result = {}
    for source in nodes:
        for target, node in nodes.items():
            for _bridge, iface in node["ifaces"]:
                if target != source:
                    path, why = walk(nodes, source, iface.ip)
                    if why is None:
                        result[(source, iface.ip)] = path
    return result


@pytest.mark.parametrize("name", ["seed.qemulab.yml", "ring.qemulab.yml", "star.qemulab.yml",
                                  "chain16.qemulab.yml"])
def test_every_node_reaches_every_address_of_every_other_on_a_shortest_path(name):
    nodes = nodes_of(topology_plan(name))
    failures = []
    for source in nodes:
        for target, node in nodes.items():
            if target == source:
                continue
            for bridge, iface in node["ifaces"]:
                path, why = walk(nodes, source, iface.ip)
                if why is not None:
                    failures.append("%s -> %s (%s): %s via %s" % (source, target, iface.ip, why, " > ".join(path)))
                    continue
                # routes lead to a segment on a shortest path; the packet may meet the address's owner sooner
                onto_segment = fewest_routers(nodes, source, lambda bridges: bridge in bridges)
                to_owner = fewest_routers(nodes, source, lambda bridges: bridges & set(b for b, _i in node["ifaces"]))
                if not to_owner <= len(path) - 2 <= onto_segment:
                    failures.append("%s -> %s: %s is not a shortest path" % (source, target, " > ".join(path)))
    assert failures == []
    print("%s: %d nodes, every pair reachable" % (name, len(nodes)))


def test_the_walker_finds_a_missing_route():
    plan = topology_plan("ring.qemulab.yml")
    r1 = [vm for vm in plan["vms"] if vm["name"] == "r1"][0]
    r1["routes"] = r1["routes"][1:]
    nodes = nodes_of(plan)
    assert any(why for source in nodes for target in nodes for _b, iface in nodes[target]["ifaces"]
               if target != source for _path, why in [walk(nodes, source, iface.ip)])


def test_the_chain_crosses_sixteen_routers_end_to_end():
    nodes = nodes_of(topology_plan("chain16.qemulab.yml"))
    hz = nodes["hz"]["ifaces"][0][1].ip
    path, why = walk(nodes, "ha", hz)
    assert why is None and path == ["ha"] + ["c%02d" % i for i in range(1, 17)] + ["hz"]
    path, why = walk(nodes, PORT, hz)
    assert why is None and len(path) == 18


def without_routes(plan):
    plan = copy.deepcopy(plan)
    for vm in plan["vms"]:
        vm.pop("routes")
    for port in plan["host_ports"]:
        port.pop("routes")
    # the rendered per-host arguments carry the routes (route lists, the guests' interfaces files)
    plan.pop("hosts")
    plan.pop("guests")
    return plan


@pytest.fixture(scope="module")
def seed_plans():
    return inventory_plan(os.path.join(REPO, "inventories", "seed")), inventory_plan(
        os.path.join(TOPOLOGIES, "seed.qemulab.yml"))


def test_the_seed_topology_plans_the_seed_inventorys_lab_but_for_the_routes(seed_plans):
    by_hand, from_topology = seed_plans
    assert by_hand["errors"] == [] and from_topology["errors"] == []
    assert without_routes(from_topology) == without_routes(by_hand)
    # and the parts left out are there in both
    assert all(vm["routes"] for vm in from_topology["vms"] if vm["kind"] == "router")


def test_the_seed_topologys_routes_reach_everything_the_seed_inventorys_reach(seed_plans):
    by_hand, from_topology = (nodes_of(plan) for plan in seed_plans)
    reached_by_hand, reached = set(delivered(by_hand)), set(delivered(from_topology))
    assert reached_by_hand <= reached
    # the hand-written routes leave gaps (rt2 has none to 10.20.30.0/24); the computed ones leave none
    assert (("rt2", ipaddress.ip_address("10.20.30.2")) in reached
            and ("rt2", ipaddress.ip_address("10.20.30.2")) not in reached_by_hand)
    everything = set((s, iface.ip) for s in from_topology for t, node in from_topology.items() if t != s
                     for _b, iface in node["ifaces"])
    assert reached == everything
