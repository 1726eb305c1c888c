"""Unit tests: the reachability matrix (plugins/plugin_utils/_lab_paths.py) - every pair's planned path, the pairs
it cannot trace and why, the probe script's output read back and compared with the plan (the probe runs here
against a fake `ping` on PATH; the real one runs in tests/integration/test_topology_lab.py)."""
import copy
import os
import stat
import subprocess

import pytest
import yaml

from ansible_collections.qemulab.network.plugins.filter.lab_paths import lab_paths
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_paths
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab
from ansible_collections.qemulab.network.plugins.plugin_utils._topology import compile_topology, flatten
# the plan of an inventory as `ansible-inventory --list` shows it (a real ansible run)
from test_topology_plans import inventory_plan

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
PROBE = os.path.join(REPO, "playbooks", "files", "path_probe.sh")


def plan_of(name):
    with open(os.path.join(REPO, "topologies", name)) as handle:
        inventory = compile_topology(yaml.safe_load(handle), name)
    plan = compile_lab(*flatten(inventory), check_files=False)
    assert plan["errors"] == []
    return plan


@pytest.fixture(scope="module")
def ring():
    # r1-r2-r3-r4-r5-r1 on 10.61.0-4.0/24 (br1-br5), h1 and the lab host with r1 on 10.61.5.0/24, h3 with r3 on
    # 10.61.6.0/24 (topologies/ring.qemulab.yml)
    return plan_of("ring.qemulab.yml")


def pair(paths, source, address):
    return next(p for p in paths["pairs"] if p["source"] == source and p["address"] == address)


def vm(plan, name):
    return next(v for v in plan["vms"] if v["name"] == name)


def test_the_rings_paths_are_the_ones_its_routes_give(ring):
    paths = _lab_paths.matrix(ring)
    # written by hand from the ring's routes (ties to the lower next-hop name)
    assert pair(paths, "h1", "10.61.6.2")["path"] == ["h1", "r1", "r2", "r3", "h3"]
    assert pair(paths, "h3", "10.61.5.2")["path"] == ["h3", "r3", "r2", "r1", "h1"]
    assert pair(paths, "lab_host", "10.61.3.1")["path"] == ["lab_host", "r1", "r5", "r4"]
    # r4's address on br3 is reached over br3's nearest router r2 (a tie with r5, lower name), so through r3
    assert pair(paths, "h1", "10.61.2.2")["path"] == ["h1", "r1", "r2", "r3", "r4"]
    assert pair(paths, "r4", "10.61.5.3")["path"] == ["r4", "r5", "r1", "lab_host"]
    assert pair(paths, "h1", "10.61.5.3")["path"] == ["h1", "lab_host"]
    assert pair(paths, "h1", "10.61.5.3")["from"] == "10.61.5.2"
    assert pair(paths, "r2", "10.61.6.2")["from"] == "10.61.1.1"


def test_every_pair_of_every_example_topology_is_traceable():
    for name in ("ring.qemulab.yml", "star.qemulab.yml", "seed.qemulab.yml", "chain16.qemulab.yml"):
        plan = plan_of(name)
        paths = _lab_paths.matrix(plan)
        nodes = _lab_paths.network(plan)
        every = [(s, a) for s in nodes for d in nodes if d != s for _b, iface, _dev in nodes[d]["ifaces"]
                 for a in [str(iface.ip)]]
        assert paths["unchecked"] == [], name
        assert sorted((p["source"], p["address"]) for p in paths["pairs"]) == sorted(every), name
        assert all(p["path"][0] == p["source"] and p["path"][-1] == p["destination"] for p in paths["pairs"])


def test_the_probe_arguments_are_each_address_and_its_hop_count(ring):
    paths = lab_paths(ring)
    arguments = paths["arguments"]["h1"]
    assert arguments[:2] == ["10.61.6.2", "4"] and all(isinstance(a, str) for a in arguments)
    assert len(arguments) == 2 * len([p for p in paths["pairs"] if p["source"] == "h1"])
    assert set(paths["arguments"]) == set(["h1", "h3", "r1", "r2", "r3", "r4", "r5", "lab_host"])


def test_a_pair_the_plan_does_not_route_is_unchecked_with_the_reason(ring):
    plan = copy.deepcopy(ring)
    # r2 loses its route to r3-r4's segment: h1's packets to h3 still go r1 > r2, which drops them
    vm(plan, "r2")["routes"] = [r for r in vm(plan, "r2")["routes"] if r["to"] != "10.61.6.0/24"]
    paths = _lab_paths.matrix(plan)
    lost = [u for u in paths["unchecked"] if u["source"] == "h1" and u["address"] == "10.61.6.2"]
    assert lost and "r2 has no route to 10.61.6.2" in lost[0]["why"] and "h1 > r1 > r2" in lost[0]["why"]
    assert lost[0]["text"].startswith("h1 -> h3 10.61.6.2: the plan does not route it")
    assert not any(p["source"] == "h1" and p["address"] == "10.61.6.2" for p in paths["pairs"])


def test_a_hop_that_cannot_answer_home_makes_the_pair_unchecked(ring):
    plan = copy.deepcopy(ring)
    # r3 forgets the way back to h1's segment (10.61.4.0/23 covers 10.61.5.0/24): h1 -> h3 is still delivered
    r3 = vm(plan, "r3")
    assert [r["via"] for r in r3["routes"] if r["to"] == "10.61.4.0/23"] == ["10.61.1.1"]
    r3["routes"] = [r for r in r3["routes"] if r["to"] != "10.61.4.0/23"]
    assert _lab_paths.walk(_lab_paths.network(plan), "h1", _lab_paths.ipaddress.ip_address("10.61.6.2"))[1] is None
    paths = _lab_paths.matrix(plan)
    lost = [u for u in paths["unchecked"] if u["source"] == "h1" and u["address"] == "10.61.6.2"]
    assert lost and lost[0]["why"].startswith("r3's answer to 10.61.5.2 cannot come back")


def test_a_path_through_nat_is_unchecked(ring):
    plan = copy.deepcopy(ring)
    vm(plan, "r5")["nat"] = [{"type": "masquerade", "inside": "eth0", "outside": "eth1"}]
    paths = _lab_paths.matrix(plan)
    assert any(u["source"] == "lab_host" and u["address"] == "10.61.3.1" and "NAT on r5" in u["why"]
               for u in paths["unchecked"])
    assert pair(paths, "h1", "10.61.6.2")["path"] == ["h1", "r1", "r2", "r3", "h3"]


def test_the_longest_prefix_wins_and_a_connected_network_beats_a_route_of_equal_length(ring):
    plan = copy.deepcopy(ring)
    r1 = vm(plan, "r1")
    # a /16 through r5 and a /24 of its own segment through r5 again: neither may take what r1 reaches better
    r1["routes"] = [{"to": "10.61.0.0/16", "via": "10.61.4.1", "dev": "eth1"},
                    {"to": "10.61.0.0/24", "via": "10.61.4.1", "dev": "eth1"}] + r1["routes"]
    nodes = _lab_paths.network(plan)
    walk = _lab_paths.walk
    address = _lab_paths.ipaddress.ip_address
    assert walk(nodes, "r1", address("10.61.0.2")) == (["r1", "r2"], None)
    assert walk(nodes, "r1", address("10.61.6.2")) == (["r1", "r2", "r3", "h3"], None)
    assert walk(nodes, "r1", address("10.61.99.1")) == (["r1", "r5"], "r5 has no route to 10.61.99.1")


def test_a_host_does_not_forward_and_a_loop_is_named(ring):
    plan = copy.deepcopy(ring)
    nodes = _lab_paths.network(plan)
    address = _lab_paths.ipaddress.ip_address
    nodes["r1"]["routes"].insert(0, (_lab_paths.ipaddress.ip_network("10.61.6.2/32"), address("10.61.5.2"), "eth2"))
    assert _lab_paths.walk(nodes, "r1", address("10.61.6.2")) == (["r1", "h1"], "h1 does not forward")
    nodes["r2"]["routes"].insert(0, (_lab_paths.ipaddress.ip_network("10.61.6.0/24"), address("10.61.0.1"), "eth0"))
    nodes["r1"]["routes"].pop(0)
    path, why = _lab_paths.walk(nodes, "r1", address("10.61.6.2"))
    assert why.startswith("a loop: r1 > r2 > r1 > r2")


def test_the_seed_inventorys_gaps_are_listed_not_traced():
    """The classic seed inventory: rt2 and rt3 have no routes to two segments each (hand-written); every other pair
    is traced, and the hosts' paths are the seed's."""
    plan = inventory_plan(os.path.join(REPO, "inventories", "seed"))
    paths = _lab_paths.matrix(plan)
    assert sorted((u["source"], u["address"]) for u in paths["unchecked"]) == sorted(
        [("rt2", a) for a in ("10.20.30.1", "10.20.30.2", "10.20.50.1", "10.20.50.2")]
        + [("rt3", a) for a in ("10.20.20.1", "10.20.20.2", "10.20.40.1", "10.20.40.2")])
    assert all("has no route to" in u["why"] for u in paths["unchecked"])
    assert pair(paths, "h1", "10.20.60.2")["path"] == ["h1", "rt1", "rt2", "rt4", "h2"]
    assert pair(paths, "lab_host", "10.20.60.2")["path"] == ["lab_host", "rt1", "rt2", "rt4", "h2"]
    assert pair(paths, "h2", "10.20.10.2")["path"] == ["h2", "rt4", "rt2", "rt1", "h1"]
    assert len(paths["pairs"]) + len(paths["unchecked"]) == 98


# -- the probe's output read back ---------------------------------------------------------------------------------
def exceeded(address, ttl, router):
    return "%s %d From %s icmp_seq=1 Time to live exceeded" % (address, ttl, router)


def reply(address, ttl):
    return "%s %d 64 bytes from %s: icmp_seq=1 ttl=61 time=1.52 ms" % (address, ttl, address)


H1_TO_H3 = [exceeded("10.61.6.2", 1, "10.61.5.1"), exceeded("10.61.6.2", 2, "10.61.1.1"),
            exceeded("10.61.6.2", 3, "10.61.6.1"), reply("10.61.6.2", 4)]


def h1_paths(ring):
    paths = _lab_paths.matrix(ring)
    paths["pairs"] = [p for p in paths["pairs"] if p["source"] == "h1" and p["address"] == "10.61.6.2"]
    return paths


def test_a_trace_as_planned_has_no_problems(ring):
    # the routers answer from whichever of their addresses faces h1: only the node counts
    assert _lab_paths.path_problems("\n".join(H1_TO_H3), h1_paths(ring), "h1") == []


def test_the_first_differing_hop_is_named_with_the_pair(ring):
    trace = list(H1_TO_H3)
    trace[1] = exceeded("10.61.6.2", 2, "10.61.4.1")
    trace[2] = exceeded("10.61.6.2", 3, "10.61.4.1")
    problems = _lab_paths.path_problems("\n".join(trace), h1_paths(ring), "h1")
    assert problems == ["h1 -> h3 10.61.6.2 (from 10.61.5.2, planned h1 > r1 > r2 > r3 > h3): hop 2 is r5 "
                        "(10.61.4.1); the plan says r2"]


@pytest.mark.parametrize("trace, why", [
    (H1_TO_H3[:1] + ["10.61.6.2 2 "] + H1_TO_H3[2:], "hop 2: no answer; the plan says r2"),
    (H1_TO_H3[:1] + ["10.61.6.2 2 From 10.61.0.2 icmp_seq=1 Destination Net Unreachable"],
     "hop 2: r2 (10.61.0.2) answered 'Destination Net Unreachable'; the plan says r2"),
    (["10.61.6.2 1 ping: connect: Network is unreachable"],
     "hop 1: the source's own ping answered 'ping: connect: Network is unreachable'; the plan says r1"),
    (H1_TO_H3[:2] + [reply("10.61.6.2", 3)], "hop 3 is h3 (10.61.6.2); the plan says r3"),
    (H1_TO_H3[:3] + [exceeded("10.61.6.2", 4, "10.61.9.9")], "hop 4 is no lab node (10.61.9.9); the plan says h3"),
    (H1_TO_H3[:3], "hop 4 was not probed"),
    ([], "hop 1 was not probed"),
])
def test_each_way_a_trace_can_differ_is_named(ring, trace, why):
    problems = _lab_paths.path_problems("\n".join(trace), h1_paths(ring), "h1")
    assert len(problems) == 1 and why in problems[0], problems


def test_only_the_sources_own_pairs_are_compared(ring):
    paths = _lab_paths.matrix(ring)
    assert _lab_paths.path_problems("\n".join(H1_TO_H3), paths, "r9") == []
    assert len(_lab_paths.path_problems("", paths, "h3")) == len([p for p in paths["pairs"] if p["source"] == "h3"])


# -- the probe script itself, against a fake ping ------------------------------------------------------------------
FAKE_PING = r"""#!/bin/sh
# ping -n -c 1 -W 1 -t TTL ADDRESS; answers from $FAKE_HOPS: "ADDRESS:hop1,hop2,...,reply" ("-" = silent,
# "!text" = an error from the previous hop); every call is logged
while [ $# -gt 1 ]; do [ "$1" = -t ] && ttl=$2; shift; done
address=$1
echo "$ttl $address" >> "$FAKE_LOG"
hops=$(printf '%s\n' $FAKE_HOPS | sed -n "s/^$address://p")
hop=$(echo "$hops" | cut -d, -f"$ttl")
echo "PING $address ($address) 56(84) bytes of data."
case $hop in
  -) exit 1 ;;
  reply) echo "64 bytes from $address: icmp_seq=1 ttl=60 time=0.5 ms"; exit 0 ;;
  !*) echo "From 10.0.0.254 icmp_seq=1 ${hop#!}"; exit 1 ;;
  *) echo "From $hop icmp_seq=1 Time to live exceeded"; exit 1 ;;
esac
"""


def run_probe(tmp_path, hops, arguments):
    fake = tmp_path / "ping"
    fake.write_text(FAKE_PING)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "log"
    log.write_text("")
    env = dict(os.environ, PATH="%s:%s" % (tmp_path, os.environ["PATH"]), FAKE_HOPS=" ".join(hops),
               FAKE_LOG=str(log))
    result = subprocess.run(["sh", PROBE] + arguments, env=env, capture_output=True, text=True, timeout=30,
                            check=True)
    return result.stdout, log.read_text().split("\n")[:-1]


def test_the_probe_stops_at_the_reply_and_its_output_reads_back(tmp_path, ring):
    stdout, calls = run_probe(tmp_path, ["10.61.6.2:10.61.5.1,10.61.1.1,10.61.6.1,reply"], ["10.61.6.2", "4"])
    assert calls == ["1 10.61.6.2", "2 10.61.6.2", "3 10.61.6.2", "4 10.61.6.2"]
    assert stdout.splitlines() == H1_TO_H3[:3] + ["10.61.6.2 4 64 bytes from 10.61.6.2: icmp_seq=1 ttl=60 time=0.5 ms"]
    assert _lab_paths.path_problems(stdout, h1_paths(ring), "h1") == []


def test_the_probe_asks_a_silent_hop_three_times_then_goes_on(tmp_path):
    stdout, calls = run_probe(tmp_path, ["10.1.2.3:10.1.0.1,-,reply"], ["10.1.2.3", "3"])
    assert calls == ["1 10.1.2.3", "2 10.1.2.3", "2 10.1.2.3", "2 10.1.2.3", "3 10.1.2.3"]
    assert _lab_paths.read_probe(stdout) == {"10.1.2.3": {
        1: ("exceeded", "10.1.0.1", "From 10.1.0.1 icmp_seq=1 Time to live exceeded"),
        2: ("none", None, ""),
        3: ("reply", "10.1.2.3", "64 bytes from 10.1.2.3: icmp_seq=1 ttl=60 time=0.5 ms")}}


def test_the_probe_stops_an_address_at_an_error_and_goes_on_with_the_next(tmp_path):
    stdout, calls = run_probe(tmp_path, ["10.1.2.3:10.1.0.1,!Destination_Net_Unreachable,reply", "10.1.0.1:reply"],
                              ["10.1.2.3", "3", "10.1.0.1", "1"])
    assert calls == ["1 10.1.2.3", "2 10.1.2.3", "1 10.1.0.1"]
    read = _lab_paths.read_probe(stdout)
    assert read["10.1.2.3"][2] == ("error", "10.0.0.254", "Destination_Net_Unreachable")
    assert read["10.1.0.1"][1][0] == "reply"


def test_the_probe_takes_addresses_as_arguments_never_as_script_text():
    with open(PROBE) as handle:
        text = handle.read()
    assert "{{" not in text and "$1" in text
    with open(os.path.join(REPO, "playbooks", "verify_paths.yml")) as handle:
        playbook = yaml.safe_load(handle)
    guest_task = playbook[1]["tasks"][0]
    assert "| quote" in guest_task["ansible.builtin.raw"] and "map('quote')" in guest_task["ansible.builtin.raw"]
