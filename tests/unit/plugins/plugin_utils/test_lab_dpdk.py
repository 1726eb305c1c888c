"""The compiler on user-space (vhost-user) segments: two NICs per segment, no tap keys, virtio-net only, not also a
Linux bridge, enough CPUs for lab_dpdk_cores; and lab.yml refuses them until its roles run a datapath."""
import copy

import pytest

from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab

pytestmark = pytest.mark.unit

HOSTVARS = {
    "localhost": {"lab_name": "lab1", "lab_netns": "qlab1"},
    "a1": {"ansible_port": 2402, "vm_nics": [{"bridge": "dp1", "backend": "vhost-user", "address": "10.9.0.1/24"}]},
    "a2": {"ansible_port": 2403, "vm_nics": [{"bridge": "dp1", "backend": "vhost-user", "address": "10.9.0.2/24"}]},
}
GROUPS = {"all": ["localhost", "a1", "a2"], "ungrouped": [], "hypervisors": ["localhost"], "lab": [], "routers": [],
          "hosts": ["a1", "a2"]}
NOT_WIRED = "backend vhost-user is not run by lab.yml yet"


def errors(cpus=2, **changes):
    hostvars = copy.deepcopy(HOSTVARS)
    for host, values in changes.items():
        hostvars[host].update(values)
    return compile_lab(hostvars, copy.deepcopy(GROUPS), host_resources={"cpus": cpus})["errors"]


def test_a_good_segment_is_refused_only_because_lab_yml_runs_no_datapath_yet():
    assert [e.split(": ", 1)[1].split(" (")[0] for e in errors()] == ["vm_nics[0]." + NOT_WIRED] * 2


@pytest.mark.parametrize("cpus, cores, refused", [(2, 1, False), (1, 1, True), (2, 2, True), (4, 3, False)])
def test_the_plan_refuses_a_host_with_too_few_cores(cpus, cores, refused):
    found = [e for e in errors(cpus, localhost={"lab_name": "lab1", "lab_netns": "qlab1", "lab_dpdk_cores": cores})
             if "lab_dpdk_cores" in e]
    assert bool(found) is refused
    if refused:
        assert found[0].startswith("localhost: lab_dpdk_cores %d: 1 user-space segment(s)" % cores)
        assert "the lab host has %d" % cpus in found[0]


def test_tap_keys_another_model_a_third_member_and_a_shared_bridge_name_are_errors():
    bad = errors(a1={"vm_nics": [{"bridge": "dp1", "backend": "vhost-user", "tap": "t1", "model": "e1000"}]})
    assert any("a1: vm_nics[0].tap does not apply to backend vhost-user" in e for e in bad)
    assert any("a1: vm_nics[0].model is e1000 but vhost-user serves virtio queues only" in e for e in bad)
    third = errors(a2={"vm_nics": [{"bridge": "dp1", "backend": "vhost-user"},
                                   {"bridge": "dp1", "backend": "vhost-user"}]})
    assert any("segment dp1 has 3 vhost-user NIC(s)" in e for e in third)
    shared = errors(a2={"vm_nics": [{"bridge": "dp1", "tap": "t2", "address": "10.9.0.2/24"}]})
    assert any("dp1 is a user-space (vhost-user) segment but also a Linux bridge" in e for e in shared)


def test_lab_dpdk_cores_is_read_by_the_schema():
    bad = errors(localhost={"lab_name": "lab1", "lab_netns": "qlab1", "lab_dpdk_cores": 0})
    assert any(e.startswith("localhost: lab_dpdk_cores") for e in bad)
