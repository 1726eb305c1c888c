"""The compiler on user-space (vhost-user) segments: two NICs per segment on one lab host, no tap keys, virtio-net
only, not also a Linux bridge, QEMU as root, enough CPUs for lab_dpdk_cores and memory for the hugepages; and the
rendered datapath (dpdk_datapath's arguments) and vhost-user NICs (qemu_vm's) of a good one."""
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


def plan(cpus=2, memory=None, **changes):
    hostvars = copy.deepcopy(HOSTVARS)
    for host, values in changes.items():
        hostvars[host].update(values)
    resources = {"cpus": cpus}
    if memory is not None:
        resources["mem_available_mib"] = memory
    return compile_lab(hostvars, copy.deepcopy(GROUPS), host_resources=resources)


def errors(cpus=2, **changes):
    return plan(cpus, **changes)["errors"]


def test_a_good_segment_renders_its_datapath_and_the_nics_on_its_sockets():
    good = plan()
    assert good["errors"] == []
    host = good["hosts"]["localhost"]
    assert host["datapaths"] == [{"lab": "lab1", "segment": "dp1", "ports": ["a1-eth0", "a2-eth0"], "cores": 1,
                                  "hugepages": 80}]
    nics = dict((vm["name"], vm["nics"][0]) for vm in host["vms"])
    assert nics["a1"] == {"model": "virtio-net-pci", "mac": nics["a1"]["mac"], "backend": "vhost-user",
                          "socket": "lab1.dpdk/dp1/a1-eth0.sock"}
    assert nics["a2"]["socket"] == "lab1.dpdk/dp1/a2-eth0.sock"
    # no bridge or tap for a user-space segment, and its addresses are pinged by the verify stage
    assert host["links"] == {"bridges": [], "taps": []}
    assert host["guests"]["a1"]["pings"] == ["10.9.0.2"]
    assert plan(localhost={"lab_name": "lab1", "lab_netns": "qlab1", "lab_dpdk_cores": 2},
                cpus=4)["hosts"]["localhost"]["datapaths"][0]["cores"] == 2


def test_ports_whose_names_break_the_rule_are_numbered():
    long_name = "v" * 30
    hostvars = {"a1": {"ansible_port": 2402, "vm_nics": [{"bridge": "dp1", "backend": "vhost-user"}]}}
    groups = dict(GROUPS, all=["localhost", "a1", long_name], hosts=["a1", long_name])
    hostvars.update({"localhost": HOSTVARS["localhost"], long_name: hostvars["a1"]})
    hostvars[long_name] = {"ansible_port": 2403, "vm_nics": [{"bridge": "dp1", "backend": "vhost-user"}]}
    result = compile_lab(hostvars, groups, host_resources={"cpus": 2})
    assert result["errors"] == []
    assert result["hosts"]["localhost"]["datapaths"][0]["ports"] == ["port0", "port1"]


def test_the_specs_put_the_socket_under_the_lab_hosts_run_root():
    from ansible_collections.qemulab.network.plugins.filter.vm_specs import qemu_vm_specs
    vm = plan()["hosts"]["localhost"]["vms"][0]
    spec = qemu_vm_specs([vm], {"state_dir": "/var/lib/q", "run_root": "/run/q", "custom_append": "",
                                "default_kernel": "k", "default_initrd": "i", "default_disk": "d",
                                "default_append": "", "accelerator": "tcg", "tb_size": 64})[0]
    assert spec["nics"][0]["socket"] == "/run/q/lab1.dpdk/dp1/a1-eth0.sock"
    assert spec["nics"][1]["backend"] == "user"


def test_the_hugepages_count_in_the_memory_check_before_anything_changes():
    # two VMs of 256 MiB plus QEMU's overhead (2 x 96 + 128) is 832 MiB; the datapath's 80 hugepages are 160 more
    sized = dict((vm, dict(HOSTVARS[vm], vm_memory=256)) for vm in ("a1", "a2"))
    assert plan(memory=1000, **sized)["errors"] == []
    short = plan(memory=900, **sized)["errors"]
    assert len(short) == 1 and "and 160 MiB of hugepages for the DPDK datapaths" in short[0], short


def test_an_unprivileged_qemu_user_is_refused():
    bad = errors(localhost={"lab_name": "lab1", "lab_netns": "qlab1", "lab_qemu_user": "qemulab"})
    assert any(e.startswith("localhost: lab_qemu_user qemulab: the datapath's vhost-user sockets are root's")
               for e in bad), bad


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


def test_a_segment_over_two_lab_hosts_is_refused():
    hostvars = copy.deepcopy(HOSTVARS)
    hostvars["h2"] = {}
    hostvars["a2"]["vm_hypervisor"] = "h2"
    groups = dict(copy.deepcopy(GROUPS), all=["localhost", "h2", "a1", "a2"], hypervisors=["localhost", "h2"])
    bad = compile_lab(hostvars, groups, host_resources={"cpus": 2})["errors"]
    assert any("segment dp1 joins VMs on lab hosts h2, localhost" in e for e in bad), bad
