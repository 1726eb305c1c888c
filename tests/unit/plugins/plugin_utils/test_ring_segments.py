"""_ring_segments (lab_capture_ring): the segments whose rings a failed verify saves - those on the planned path to
each address that did not answer and on the answer's path back, on topologies/ring.qemulab.yml (br1-br5 the ring
r1-r2, r2-r3, r3-r4, r4-r5, r5-r1; br6 r1/h1/lab host; br7 r3/h3)."""
import os

import pytest
import yaml

from ansible.errors import AnsibleFilterError
from ansible_collections.qemulab.network.plugins.filter.lab_ring_segments import lab_ring_segments
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_paths
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab
from ansible_collections.qemulab.network.plugins.plugin_utils._topology import compile_topology, flatten

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


@pytest.fixture(scope="module")
def ring():
    with open(os.path.join(REPO, "topologies", "ring.qemulab.yml")) as handle:
        inventory = compile_topology(yaml.safe_load(handle), "ring.qemulab.yml")
    plan = compile_lab(*flatten(inventory), check_files=False)
    assert plan["errors"] == []
    return plan


def address(plan, vm, bridge):
    nic = next(n for v in plan["vms"] if v["name"] == vm for n in v["nics"] if n["bridge"] == bridge)
    return nic["address"].split("/")[0]


def bridge_of(plan, a, b):
    """The one segment VMs a and b share."""
    nics = dict((v["name"], set(n["bridge"] for n in v["nics"])) for v in plan["vms"])
    (shared,) = nics[a] & nics[b]
    return shared


def test_the_segments_are_those_of_the_planned_path_there_and_back(ring):
    h3 = next(n for v in ring["vms"] if v["name"] == "h3" for n in v["nics"])
    target = h3["address"].split("/")[0]
    path = next(p for p in _lab_paths.matrix(ring)["pairs"] if p["source"] == "h1" and p["address"] == target)["path"]
    assert path == ["h1", "r1", "r2", "r3", "h3"]
    expected = [bridge_of(ring, a, b) for a, b in zip(path, path[1:])]
    got = lab_ring_segments(ring, "h1", [target])
    # the answer comes back the same way here, so no other segment joins
    assert got == expected, got


def test_each_failing_address_adds_its_segments_once(ring):
    h3 = address(ring, "h3", bridge_of(ring, "r3", "h3"))
    r1 = address(ring, "r1", bridge_of(ring, "h1", "r1"))
    got = lab_ring_segments(ring, "h1", [r1, h3, "not an address"])
    assert got[0] == bridge_of(ring, "h1", "r1") and len(got) == len(set(got)) == 4


def test_a_source_without_a_route_names_its_own_segments(ring):
    # h1's default route reaches r1, which has no route there: the walk names the segment it reached
    assert lab_ring_segments(ring, "h1", ["192.0.2.1"]) == [bridge_of(ring, "h1", "r1")]
    for vm in ring["vms"]:
        if vm["name"] == "r4":
            routes, vm["routes"] = vm["routes"], []
            try:
                got = lab_ring_segments(ring, "r4", ["10.99.0.1"])
            finally:
                vm["routes"] = routes
            assert sorted(got) == sorted(n["bridge"] for n in vm["nics"] if n["bridge"])


def test_a_non_plan_is_refused():
    with pytest.raises(AnsibleFilterError, match="not a plan"):
        lab_ring_segments({}, "h1", [])
    assert lab_ring_segments({"vms": [], "host_ports": []}, "h1", ["10.0.0.1"]) == []
