"""Unit tests: the plan for a lab host whose user is not root (docs/rootless.md). What such a host cannot run is
refused, naming host, field, value and fix; anything else plans as on root's host, marked rootless (the roles then
use the holder); a root lab host's plan is the same byte for byte with or without the roots it reports; a rootless
host's reported roots are where the plan puts its run directory."""
import copy
import json

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _run_paths
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_rootless
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab

pytestmark = pytest.mark.unit

HOSTVARS = {
    "localhost": {"lab_name": "lab1", "lab_netns": "qlab1"},
    "a1": {"ansible_port": 2402, "vm_nics": [{"bridge": "br1", "tap": "t1", "address": "10.9.0.1/24"}]},
    "a2": {"ansible_port": 2403, "vm_nics": [{"bridge": "br1", "tap": "t2", "address": "10.9.0.2/24"}]},
}
GROUPS = {"all": ["localhost", "a1", "a2"], "ungrouped": [], "hypervisors": ["localhost"], "lab": [], "routers": [],
          "hosts": ["a1", "a2"]}
USER_ROOTS = {"run": "/run/user/1000/qemulab", "cache": "/home/ana/.cache/qemulab",
              "state": "/home/ana/.local/share/qemulab"}


def report(rootless=True, **changes):
    """What lab_host_info returns on a lab host of uid 1000 (or root)."""
    info = {"mem_available_mib": 64000, "cpus": 4, "addresses": [], "claim": None, "dpdk_segments": [],
            "euid": 1000 if rootless else 0, "rootless": rootless,
            "roots": dict(USER_ROOTS) if rootless else _lab_rootless.as_dict(_run_paths.ROOT),
            "runtime_dir_problem": None}
    info.update(changes)
    return info


def plan(lab_hosts, hostvars=None, groups=None, **lab):
    hostvars = copy.deepcopy(hostvars or HOSTVARS)
    hostvars["localhost"].update(lab)
    return compile_lab(hostvars, copy.deepcopy(groups or GROUPS), lab_hosts=lab_hosts)


def test_a_rootless_lab_host_plans_marked_rootless_and_a_root_one_not():
    result = plan({"localhost": report()})
    assert result["errors"] == [] and result["cleanup_errors"] == []
    assert result["hosts"]["localhost"]["rootless"] is True
    assert plan({"localhost": report(rootless=False)})["hosts"]["localhost"]["rootless"] is False
    assert plan(None)["hosts"]["localhost"]["rootless"] is False


def test_a_root_lab_host_plans_as_before_byte_for_byte():
    without = plan(None)
    reported = plan({"localhost": report(rootless=False)})
    assert without["errors"] == [] and reported["errors"] == []
    assert json.dumps(reported, sort_keys=True) == json.dumps(without, sort_keys=True)
    assert without["run_dir"] == "/run/qemulab/lab1"
    assert without["hosts"]["localhost"]["roots"] == {"run": "/run/qemulab", "cache": "/var/cache/qemulab",
                                                      "state": "/var/lib/qemulab"}


def test_a_report_without_roots_or_with_bad_ones_means_root_s_paths():
    assert _lab_rootless.roots(None) is _run_paths.ROOT
    assert _lab_rootless.roots({"cpus": 2}) is _run_paths.ROOT
    assert _lab_rootless.roots(report(roots={"run": "relative", "cache": "/c", "state": "/s"})) is _run_paths.ROOT
    assert _lab_rootless.roots(report(rootless=False)) is _run_paths.ROOT
    assert _lab_rootless.roots(report()) == _run_paths.roots(1000, "/home/ana", "/run/user/1000")


def test_a_rootless_host_s_run_directory_is_under_its_reported_run_root():
    result = plan({"localhost": report()})
    assert result["errors"] == []
    assert result["run_dir"] == "/run/user/1000/qemulab/lab1"
    assert result["hosts"]["localhost"]["roots"] == USER_ROOTS
    # the controller's own files stay the controller user's: the guests' connection through a local lab host is
    # unchanged here (the topology inventory names them), and no jump directory is needed
    assert result["hosts"]["localhost"]["jump_dir"] == ""


@pytest.mark.parametrize("lab, start, fix", [
    ({"lab_netns": ""}, "lab_netns is \"\" (the host's own namespace), but this lab host's user is uid 1000",
     "name the lab's namespace, like qemulab-lab1, or run this lab host's part as root"),
    ({"lab_qemu_user": "qemulab"}, "lab_qemu_user is qemulab, but this lab host's user is uid 1000",
     "drop lab_qemu_user, or run this lab host's part as root"),
    ({"lab_capture_ring": True}, "lab_capture_ring is true, but this lab host's user is uid 1000",
     "set lab_capture_ring: false, or run this lab host's part as root"),
])
def test_what_needs_root_is_refused_naming_host_field_value_and_fix(lab, start, fix):
    errors = plan({"localhost": report()}, **lab)["errors"]
    assert len(errors) == 1
    assert errors[0].startswith("localhost: " + start) and errors[0].endswith(fix)
    # the same inventory on a root lab host is fine
    assert plan({"localhost": report(rootless=False)}, **lab)["errors"] == []


def test_lab_netns_empty_is_also_a_cleanup_problem():
    result = plan({"localhost": report()}, lab_netns="")
    assert result["cleanup_errors"][0].startswith("localhost: lab_netns is \"\" (the host's own namespace)")


def test_a_vhost_user_nic_on_a_rootless_host_is_refused_on_the_vm():
    hostvars = copy.deepcopy(HOSTVARS)
    for vm in ("a1", "a2"):
        hostvars[vm]["vm_nics"] = [{"bridge": "dp1", "backend": "vhost-user",
                                    "address": hostvars[vm]["vm_nics"][0]["address"]}]
    errors = plan({"localhost": report()}, hostvars=hostvars)["errors"]
    assert errors[:2] == [
        "%s: vm_nics[0].backend is vhost-user, but lab host localhost's user is uid 1000: a DPDK datapath needs "
        "hugepages and root; use backend tap, or place the VM on a lab host run as root (vm_hypervisor)" % vm
        for vm in ("a1", "a2")]


def test_a_missing_runtime_directory_is_named_with_its_fix_and_stops_a_cleanup():
    problem = "the runtime directory /run/user/1000 does not exist: log in through a session that sets it"
    result = plan({"localhost": report(runtime_dir_problem=problem)})
    assert result["errors"][0] == "localhost: runtime directory of uid 1000: " + problem
    assert result["cleanup_errors"][0] == result["errors"][0]


def test_a_segment_spanning_a_rootless_lab_host_is_refused_and_a_root_one_is_not():
    hostvars = copy.deepcopy(HOSTVARS)
    lab_wide = hostvars.pop("localhost")
    hostvars["hv1"] = dict(lab_wide, ansible_host="192.0.2.11", lab_underlay_address="192.0.2.11")
    hostvars["hv2"] = {"ansible_host": "192.0.2.12", "lab_underlay_address": "192.0.2.12"}
    hostvars["a2"]["vm_hypervisor"] = "hv2"
    groups = copy.deepcopy(GROUPS)
    groups["hypervisors"] = ["hv1", "hv2"]
    groups["all"] = ["hv1", "hv2", "a1", "a2"]
    addresses = {"hv1": [{"address": "192.0.2.11", "interface": "eth0", "mtu": 1500}],
                 "hv2": [{"address": "192.0.2.12", "interface": "eth0", "mtu": 1500}]}

    def compiled(rootless_hosts):
        return compile_lab(copy.deepcopy(hostvars), copy.deepcopy(groups), lab_hosts=dict(
            (host, report(host in rootless_hosts, addresses=addresses[host])) for host in ("hv1", "hv2")))

    assert compiled(())["errors"] == []
    errors = compiled(("hv2",))["errors"]
    assert errors == [
        "hv2: segment br1 spans lab hosts hv1, hv2 over VXLAN, but this lab host's user is uid 1000, who cannot "
        "make a VXLAN port in the host's namespace; put all of the segment's VMs on one lab host (vm_hypervisor), "
        "or run this lab host's part as root"]
    # the lab-wide fields are the first lab host's: a rootless second host does not answer for lab_netns
    hostvars["hv1"]["lab_netns"] = ""
    assert compiled(("hv2",))["errors"] == errors


def test_an_unreachable_host_is_not_judged_rootless():
    found = report()
    found["unreachable"] = True
    assert "rootless" not in " ".join(plan({"localhost": found})["errors"])
