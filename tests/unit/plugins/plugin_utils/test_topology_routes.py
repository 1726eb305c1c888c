"""Unit tests: the static routes a topology file gets, against routes worked out by hand for a ring, a star, a
chain and the issue's triangle (the expected tables below are written out, not computed), the tie-break and
the exactness of summaries."""
import ipaddress

import pytest
import yaml

from ansible_collections.qemulab.network.plugins.plugin_utils._topology import compile_topology
from ansible_collections.qemulab.network.plugins.plugin_utils._topology_routes import aggregate

pytestmark = pytest.mark.unit


def compiled(text):
    result = compile_topology(yaml.safe_load(text), "t.qemulab.yml")
    assert result["errors"] == []
    return result


def routes_of(result):
    """{node: [(to, via)]} of every VM with routes, and the lab host's ports as 'lab_host'."""
    table = dict((name, [(r["to"], r["via"]) for r in values.get("vm_routes", [])])
                 for name, values in result["host_vars"].items() if "vm_nics" in values)
    for port in result["group_vars"]["all"].get("lab_host_ports", []):
        table.setdefault("lab_host", []).extend((r["to"], r["via"]) for r in port.get("routes", []))
    return table


def gateways_of(result):
    return dict((name, values["vm_gateway"]) for name, values in result["host_vars"].items() if "vm_gateway" in values)


RING = """
plugin: qemulab.network.topology
lab: ring
pool: 10.9.0.0/16
nodes: {r1: {role: router}, r2: {role: router}, r3: {role: router}, r4: {role: router}}
segments: [[r1, r2], [r2, r3], [r3, r4], [r4, r1]]
"""


def test_ring_of_four_each_router_reaches_the_far_segments_through_the_neighbour_on_them():
    # s0 10.9.0.0 r1 .1 r2 .2 | s1 10.9.1.0 r2 .1 r3 .2 | s2 10.9.2.0 r3 .1 r4 .2 | s3 10.9.3.0 r4 .1 r1 .2
    assert routes_of(compiled(RING)) == {
        "r1": [("10.9.1.0/24", "10.9.0.2"), ("10.9.2.0/24", "10.9.3.1")],
        "r2": [("10.9.2.0/24", "10.9.1.2"), ("10.9.3.0/24", "10.9.0.1")],
        "r3": [("10.9.0.0/24", "10.9.1.1"), ("10.9.3.0/24", "10.9.2.2")],
        "r4": [("10.9.0.0/24", "10.9.3.2"), ("10.9.1.0/24", "10.9.2.1")],
    }


STAR = """
plugin: qemulab.network.topology
lab: star
pool: 10.8.0.0/16
nodes:
  hub: {role: router}
  r1: {role: router}
  r2: {role: router}
  r3: {role: router}
  h1: {role: host}
  h2: {role: host}
  h3: {role: host}
segments: [[hub, r1], [hub, r2], [hub, r3], [r1, h1], [r2, h2], [r3, h3]]
"""


def test_star_leaves_route_through_the_hub_with_only_exact_summaries():
    # s0 10.8.0 hub .1 r1 .2 | s1 10.8.1 hub .1 r2 .2 | s2 10.8.2 hub .1 r3 .2 | s3 10.8.3 r1 .1 h1 .2 | s4, s5 alike
    result = compiled(STAR)
    assert routes_of(result) == {
        "hub": [("10.8.3.0/24", "10.8.0.2"), ("10.8.4.0/24", "10.8.1.2"), ("10.8.5.0/24", "10.8.2.2")],
        # 1, 2, 4, 5 via the hub: 4+5 is exactly a /23; 2 is not merged with 3 (r1's own segment)
        "r1": [("10.8.1.0/24", "10.8.0.1"), ("10.8.2.0/24", "10.8.0.1"), ("10.8.4.0/23", "10.8.0.1")],
        "r2": [("10.8.0.0/24", "10.8.1.1"), ("10.8.2.0/23", "10.8.1.1"), ("10.8.5.0/24", "10.8.1.1")],
        "r3": [("10.8.0.0/23", "10.8.2.1"), ("10.8.3.0/24", "10.8.2.1"), ("10.8.4.0/24", "10.8.2.1")],
        "h1": [], "h2": [], "h3": [],
    }
    assert gateways_of(result) == {"h1": "10.8.3.1", "h2": "10.8.4.1", "h3": "10.8.5.1"}


CHAIN = """
plugin: qemulab.network.topology
lab: chain
pool: 10.7.0.0/16
nodes: {r1: {role: router}, r2: {role: router}, r3: {role: router}, h1: {role: host}}
segments: [[lab_host, r1], [r1, r2], [r2, r3], [r3, h1]]
"""


def test_chain_and_the_lab_hosts_port_get_routes_to_every_segment_they_are_not_on():
    # s0 10.7.0 lab_host .1 r1 .2 | s1 10.7.1 r1 .1 r2 .2 | s2 10.7.2 r2 .1 r3 .2 | s3 10.7.3 r3 .1 h1 .2
    result = compiled(CHAIN)
    assert routes_of(result) == {
        "lab_host": [("10.7.1.0/24", "10.7.0.2"), ("10.7.2.0/23", "10.7.0.2")],
        "r1": [("10.7.2.0/23", "10.7.1.2")],
        "r2": [("10.7.0.0/24", "10.7.1.1"), ("10.7.3.0/24", "10.7.2.2")],
        "r3": [("10.7.0.0/23", "10.7.2.1")],
        "h1": [],
    }
    assert gateways_of(result) == {"h1": "10.7.3.1"}
    port, = result["group_vars"]["all"]["lab_host_ports"]
    assert (port["name"], port["peer"], port["bridge"], port["address"]) == ("hp1", "hp1-host", "br1", "10.7.0.1/24")


TRI = """
plugin: qemulab.network.topology
lab: tri
netns: qltri
pool: 172.31.0.0/16
nodes:
  ra: {role: router}
  rb: {role: router, memory: 512M}
  rc: {role: router}
  hb: {role: host}
  hc: {role: host}
segments:
  - [ra, rb]
  - [rb, rc]
  - {members: [rc, ra], model: e1000}
  - {members: [ra, lab_host], subnet: 172.31.1.0/24}
  - [rb, hb]
  - [rc, hc]
"""


def test_the_issues_triangle():
    # s0 172.31.0 ra .1 rb .2 | s1 .2 (skips .1, given to s3) rb .1 rc .2 | s2 .3 rc .1 ra .2 | s3 .1 ra .1 lab .2
    # s4 .4 rb .1 hb .2 | s5 .5 rc .1 hc .2; ties on s0/s1/s2 (both ends at distance 0) go to the lower name
    result = compiled(TRI)
    assert routes_of(result) == {
        "ra": [("172.31.2.0/24", "172.31.0.2"), ("172.31.4.0/24", "172.31.0.2"), ("172.31.5.0/24", "172.31.3.1")],
        "rb": [("172.31.1.0/24", "172.31.0.1"), ("172.31.3.0/24", "172.31.0.1"), ("172.31.5.0/24", "172.31.2.2")],
        "rc": [("172.31.0.0/23", "172.31.3.2"), ("172.31.4.0/24", "172.31.2.1")],
        "lab_host": [("172.31.0.0/24", "172.31.1.1"), ("172.31.2.0/23", "172.31.1.1"),
                     ("172.31.4.0/23", "172.31.1.1")],
        "hb": [], "hc": [],
    }
    assert gateways_of(result) == {"hb": "172.31.4.1", "hc": "172.31.5.1"}


def test_ties_go_to_the_lowest_next_hop_name_not_the_first_listed():
    # a ring of five: from src, the opposite segment [m1, m2] is two routers away both ways (via zz or via aa)
    text = """
plugin: qemulab.network.topology
lab: tie
pool: 10.6.0.0/16
nodes: {src: {role: router}, zz: {role: router}, m1: {role: router}, m2: {role: router}, aa: {role: router}}
segments: [[src, zz], [zz, m1], [m1, m2], [m2, aa], [aa, src]]
"""
    # s0 10.6.0 src .1 zz .2 | s1 10.6.1 zz .1 m1 .2 | s2 10.6.2 m1 .1 m2 .2 | s3 10.6.3 m2 .1 aa .2 | s4 10.6.4 aa .1 src .2
    routes = routes_of(compiled(text))
    # s2 is the tie (zz-m1 or aa-m2): aa wins, and with s3 (aa's neighbour m2 is on it) makes exactly 10.6.2.0/23
    assert routes["src"] == [("10.6.1.0/24", "10.6.0.2"), ("10.6.2.0/23", "10.6.4.1")]
    # renaming aa to zzz moves the tie to zz; 10.6.1 and 10.6.2 via zz are no exact /23
    routes = routes_of(compiled(text.replace("aa", "zzz")))
    assert routes["src"] == [("10.6.1.0/24", "10.6.0.2"), ("10.6.2.0/24", "10.6.0.2"), ("10.6.3.0/24", "10.6.4.1")]


@pytest.mark.parametrize("nets, expected", [
    (["10.0.0.0/24", "10.0.1.0/24"], ["10.0.0.0/23"]),
    (["10.0.1.0/24", "10.0.2.0/24"], ["10.0.1.0/24", "10.0.2.0/24"]),  # adjacent but no /23 holds exactly both
    (["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"], ["10.0.0.0/23", "10.0.2.0/24"]),
    (["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"], ["10.0.0.0/22"]),
    (["10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24"], ["10.0.0.0/23"]),
])
def test_a_summary_covers_exactly_the_routes_it_replaces(nets, expected):
    via = ipaddress.ip_address("10.1.0.1")
    merged = aggregate([(ipaddress.ip_network(n), via) for n in nets])
    assert [str(net) for net, _via in merged] == expected
    covered = set(a for net, _via in merged for a in net)
    assert covered == set(a for n in nets for a in ipaddress.ip_network(n))


def test_routes_through_different_next_hops_are_never_merged():
    a, b = ipaddress.ip_address("10.1.0.1"), ipaddress.ip_address("10.1.0.2")
    merged = aggregate([(ipaddress.ip_network("10.0.0.0/24"), a), (ipaddress.ip_network("10.0.1.0/24"), b)])
    assert [(str(n), str(v)) for n, v in merged] == [("10.0.0.0/24", "10.1.0.1"), ("10.0.1.0/24", "10.1.0.2")]


def test_a_written_route_wins_and_a_host_with_a_written_gateway_keeps_it():
    text = RING.replace("r1: {role: router}", "r1: {role: router, routes: [{to: 10.9.2.0/24, via: 10.9.0.2}]}")
    routes = routes_of(compiled(text))
    assert routes["r1"] == [("10.9.2.0/24", "10.9.0.2"), ("10.9.1.0/24", "10.9.0.2")]
    text = STAR.replace("h1: {role: host}", "h1: {role: host, gateway: 10.8.3.1}")
    assert gateways_of(compiled(text))["h1"] == "10.8.3.1"
