"""Unit tests: qemulab.network.lab_plan turns the inventory into the plan the roles act on, listing every problem.

The seed inventory's plan is checked against the seed lab's facts as the course session writes them (its scripts and
network notes), transcribed below: the plan computed here and the plan a real `ansible` run computes alike.
"""
import copy
import json
import os
import subprocess

import pytest

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager

from ansible_collections.qemulab.network.plugins.filter.lab_plan import FilterModule, lab_plan
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import derived_mac

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
SEED_INVENTORY = os.path.join(REPO, "inventories", "seed")

# The seed, transcribed from the course session's "Setting Up a Complex Network with Six VMs" (MACs, taps, `-m 1G`;
# vport<i><j> is a port of br<i>) and "Network Configuration Notes" (addresses, routes, gateways, forwarding on the
# routers). The seed leaves htest unconfigured: its address and gateway are ours (inventories/seed/host_vars/htest.yml).
SEED_NICS = {
    "rt1": [("vport11", "br1", "12:34:56:ab:cd:71", "10.20.10.1/24"),
            ("vport21", "br2", "12:34:56:ab:cd:72", "10.20.20.1/24"),
            ("vport31", "br3", "12:34:56:ab:cd:73", "10.20.30.1/24")],
    "rt2": [("vport22", "br2", "12:34:56:ab:cd:74", "10.20.20.2/24"),
            ("vport42", "br4", "12:34:56:ab:cd:75", "10.20.40.2/24")],
    "rt3": [("vport32", "br3", "12:34:56:ab:cd:76", "10.20.30.2/24"),
            ("vport52", "br5", "12:34:56:ab:cd:77", "10.20.50.2/24")],
    "rt4": [("vport41", "br4", "12:34:56:ab:cd:78", "10.20.40.1/24"),
            ("vport51", "br5", "12:34:56:ab:cd:79", "10.20.50.1/24"),
            ("vport61", "br6", "12:34:56:ab:cd:7a", "10.20.60.1/24")],
    "h1": [("vport12", "br1", "12:34:56:ab:cd:7b", "10.20.10.2/24")],
    "h2": [("vport62", "br6", "12:34:56:ab:cd:7c", "10.20.60.2/24")],
    "htest": [("vport13", "br1", "12:34:56:ab:cd:7d", "10.20.10.3/24")],
}
SEED_ROUTES = {
    "rt1": [("10.20.60.0/24", "10.20.20.2", "eth1"), ("10.20.40.0/24", "10.20.20.2", "eth1"),
            ("10.20.50.0/24", "10.20.30.2", "eth2")],
    "rt2": [("10.20.10.0/24", "10.20.20.1", "eth0"), ("10.20.60.0/24", "10.20.40.1", "eth1")],
    "rt3": [("10.20.10.0/24", "10.20.30.1", "eth0"), ("10.20.60.0/24", "10.20.50.1", "eth1")],
    "rt4": [("10.20.10.0/24", "10.20.40.2", "eth0"), ("10.20.20.0/24", "10.20.40.2", "eth0"),
            ("10.20.30.0/24", "10.20.50.2", "eth1")],
    "h1": [], "h2": [], "htest": [],
}
SEED_GATEWAYS = {"h1": "10.20.10.1", "h2": "10.20.60.1", "htest": "10.20.10.1"}


def load_inventory(path):
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[path])
    variables = VariableManager(loader=loader, inventory=inventory)
    hostvars = {host.name: variables.get_vars(host=host, include_hostvars=False) for host in inventory.get_hosts()}
    return hostvars, inventory.get_groups_dict()


@pytest.fixture(scope="module", params=["in-process", "real-ansible-run"])
def seed_plan(request):
    """The seed inventory's plan, computed here from the loaded inventory, or by a real `ansible` run from Ansible's
    own (lazy, templated on access) hostvars; every seed test checks both against the transcribed facts."""
    if request.param == "real-ansible-run":
        return plan_from_ansible(SEED_INVENTORY)
    hostvars, groups = load_inventory(SEED_INVENTORY)
    return lab_plan(hostvars, groups)


def vm_of(plan, name):
    return next(vm for vm in plan["vms"] if vm["name"] == name)


# -- a small valid lab built in Python, mutated by each test -------------------------------------------------------
def small_lab():
    hostvars = {
        "localhost": {"ansible_connection": "local", "lab_name": "unit", "lab_netns": "qlab-unit",
                      "inventory_dir": "/srv/labs/unit",
                      "lab_host_ports": [{"name": "hp0", "peer": "hp1", "bridge": "br-a", "address": "10.1.1.9/24",
                                          "routes": [{"to": "10.1.2.0/24", "via": "10.1.1.1"}]}]},
        "r1": {"ansible_port": 2301, "vm_routes": [],
               "vm_nics": [{"bridge": "br-a", "tap": "ta1", "mac": "12:34:56:00:00:01", "address": "10.1.1.1/24"},
                           {"bridge": "br-b", "tap": "tb1", "mac": "12:34:56:00:00:02", "address": "10.1.2.1/24"}]},
        "a1": {"ansible_port": 2302, "vm_gateway": "10.1.1.1",
               "vm_nics": [{"bridge": "br-a", "tap": "ta2", "mac": "12:34:56:00:00:03", "address": "10.1.1.2/24"}]},
        "b1": {"ansible_port": 2303, "vm_gateway": "10.1.2.1",
               "vm_nics": [{"bridge": "br-b", "tap": "tb2", "mac": "12:34:56:00:00:04", "address": "10.1.2.2/24"}]},
    }
    groups = {"all": ["localhost", "r1", "a1", "b1"], "ungrouped": [], "hypervisors": ["localhost"],
              "lab": ["r1", "a1", "b1"], "routers": ["r1"], "hosts": ["a1", "b1"]}
    return hostvars, groups


def errors_of(hostvars, groups, **kwargs):
    return lab_plan(hostvars, groups, **kwargs)["errors"]


def only_error(hostvars, groups, **kwargs):
    errors = errors_of(hostvars, groups, **kwargs)
    assert len(errors) == 1, errors
    return errors[0]


# -- the seed ------------------------------------------------------------------------------------------------------
def test_seed_plan_has_no_errors_and_the_lab_wide_values(seed_plan):
    assert seed_plan["errors"] == []
    assert (seed_plan["lab_name"], seed_plan["netns"], seed_plan["run_dir"], seed_plan["hypervisor"]) == (
        "seed", "qemulab-seed", "/run/qemulab/seed", "localhost")


def test_seed_plan_nics_are_the_seeds_taps_bridges_macs_and_addresses(seed_plan):
    planned = {vm["name"]: [(n["tap"], n["bridge"], n["mac"], n["address"]) for n in vm["nics"]]
               for vm in seed_plan["vms"]}
    assert planned == SEED_NICS
    for vm in seed_plan["vms"]:
        assert [n["dev"] for n in vm["nics"]] == ["eth%d" % i for i in range(len(vm["nics"]))]
        assert {(n["model"], n["vhost"]) for n in vm["nics"]} == {("virtio-net-pci", "auto")}


def test_seed_plan_routes_gateways_forwarding_and_memory(seed_plan):
    assert {vm["name"]: [(r["to"], r["via"], r["dev"]) for r in vm["routes"]] for vm in seed_plan["vms"]} == SEED_ROUTES
    assert {vm["name"]: vm["gateway"] for vm in seed_plan["vms"] if vm["gateway"]} == SEED_GATEWAYS
    assert {vm["name"] for vm in seed_plan["vms"] if vm["forwarding"]} == {"rt1", "rt2", "rt3", "rt4"}
    assert {vm["name"]: vm["kind"] for vm in seed_plan["vms"]} == {
        "rt1": "router", "rt2": "router", "rt3": "router", "rt4": "router", "h1": "host", "h2": "host", "htest": "host"}
    assert {vm["memory_mb"] for vm in seed_plan["vms"]} == {1024}
    assert {vm["vcpus"] for vm in seed_plan["vms"]} == {1}
    assert [vm["ssh_port"] for vm in seed_plan["vms"]] == list(range(2201, 2208))


def test_seed_plan_bridges_taps_and_host_port(seed_plan):
    assert seed_plan["bridges"] == [{"name": "br%d" % i, "subnet": "10.20.%d0.0/24" % i, "mtu": None}
                                    for i in range(1, 7)]
    # the seed's preparation script: vport<i><j> for i in 1..6, j in 1..2 on br<i>, plus vport13 for htest
    expected_taps = {("vport%d%d" % (i, j), "br%d" % i) for i in range(1, 7) for j in (1, 2)} | {("vport13", "br1")}
    assert {(t["name"], t["bridge"]) for t in seed_plan["taps"]} == expected_taps
    assert len(seed_plan["taps"]) == 13
    port, = seed_plan["host_ports"]
    assert (port["name"], port["peer"], port["bridge"], port["address"]) == ("veth0", "veth1", "br1", "10.20.10.4/24")
    assert {r["to"] for r in port["routes"]} == {"10.20.%d0.0/24" % i for i in range(2, 7)}
    assert {r["via"] for r in port["routes"]} == {"10.20.10.1"}


def test_seed_plan_management_macs_are_qemus_range_and_unique(seed_plan):
    mgmt = [vm["mgmt_mac"] for vm in seed_plan["vms"]]
    assert all(mac.startswith("52:54:00:") for mac in mgmt)
    lab_macs = [n["mac"] for vm in seed_plan["vms"] for n in vm["nics"]]
    assert len(set(mgmt + lab_macs)) == len(mgmt) + len(lab_macs)


def plan_from_ansible(inventory):
    """The plan as a real `ansible` run computes it from Ansible's own (lazy, templated on access) hostvars."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-i", inventory, "-m",
         "ansible.builtin.debug", "-a", "msg={{ hostvars | qemulab.network.lab_plan(groups) | to_json }}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # ad hoc output: "localhost | SUCCESS => {...}"
    msg = json.loads(result.stdout.split("=>", 1)[1])["msg"]
    return json.loads(msg) if isinstance(msg, str) else msg


def test_an_undefined_variable_deep_in_a_nic_is_an_error_in_a_real_ansible_run(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  vars: {lab_name: undef}\n  children:\n"
        "    hypervisors: {hosts: {localhost: {ansible_connection: local}}}\n"
        "    lab: {children: {hosts: {hosts: {h1: {ansible_port: 2401, vm_nics: [\n"
        "      {bridge: br-u, tap: tu1, address: '{{ nowhere_defined }}'}]}}}}}\n")
    plan = plan_from_ansible(str(inventory))
    assert plan["errors"] == ["h1: vm_nics cannot be rendered ('nowhere_defined' is undefined); fix the variable's "
                              "template"]


def test_the_filter_is_registered_under_its_name():
    assert FilterModule().filters()["lab_plan"] is lab_plan


# -- defaults and normalisation ------------------------------------------------------------------------------------
def test_small_lab_is_valid_and_fills_defaults():
    plan = lab_plan(*small_lab())
    assert plan["errors"] == []
    r1 = vm_of(plan, "r1")
    assert (r1["memory_mb"], r1["vcpus"], r1["forwarding"], r1["kernel"], r1["disk"]) == (1024, 1, True, None, None)
    assert vm_of(plan, "a1")["forwarding"] is False
    assert plan["bridges"] == [{"name": "br-a", "subnet": "10.1.1.0/24", "mtu": None},
                               {"name": "br-b", "subnet": "10.1.2.0/24", "mtu": None}]


@pytest.mark.parametrize("value,expected", [(512, 512), ("512M", 512), ("1G", 1024), ("2g", 2048), ("768", 768),
                                            ("1GiB", 1024), ("256MB", 256), ("64M", 64),
                                            ("1X", None), ("1024B", None), ("1.5G", None), (0, None), (True, None),
                                            ("", None), (1.5, None), ("8M", None), (63, None), ("4096G", None)])
def test_memory_sizes_are_the_modules_own_rule(value, expected):
    """vm_memory is read with _validate.parse_memory, the function qemu_vm uses: the plan never accepts a size the
    launch would refuse (8M passed the plan and failed at launch before)."""
    hostvars, groups = small_lab()
    hostvars["a1"]["vm_memory"] = value
    plan = lab_plan(hostvars, groups)
    if expected is None:
        assert [e for e in plan["errors"] if e.startswith("a1: vm_memory ")], plan["errors"]
    else:
        assert plan["errors"] == [] and vm_of(plan, "a1")["memory_mb"] == expected


def test_missing_mac_gets_a_stable_locally_administered_one():
    hostvars, groups = small_lab()
    del hostvars["a1"]["vm_nics"][0]["mac"]
    first = vm_of(lab_plan(hostvars, groups), "a1")["nics"][0]["mac"]
    again = vm_of(lab_plan(copy.deepcopy(hostvars), groups), "a1")["nics"][0]["mac"]
    assert first == again == derived_mac("unit", "a1", 0)
    assert int(first[:2], 16) & 0b11 == 0b10  # locally administered, unicast
    hostvars["localhost"]["lab_name"] = "other"
    assert vm_of(lab_plan(hostvars, groups), "a1")["nics"][0]["mac"] != first


def test_macs_are_lower_case_and_yaml_on_off_mean_vhost_on_off():
    hostvars, groups = small_lab()
    hostvars["a1"]["vm_nics"][0].update(mac="12:34:56:AB:CD:EF", vhost=True, model="virtio-net-pci")
    hostvars["b1"]["vm_nics"][0].update(vhost=False, model="rtl8139")
    plan = lab_plan(hostvars, groups)
    assert plan["errors"] == []
    assert vm_of(plan, "a1")["nics"][0]["mac"] == "12:34:56:ab:cd:ef"
    assert vm_of(plan, "a1")["nics"][0]["vhost"] == "on"
    assert (vm_of(plan, "b1")["nics"][0]["vhost"], vm_of(plan, "b1")["nics"][0]["model"]) == ("off", "rtl8139")


def test_keyword_arguments_override_the_hypervisors_variables():
    hostvars, groups = small_lab()
    plan = lab_plan(hostvars, groups, lab_name="other", lab_netns="", lab_host_ports=[])
    assert (plan["lab_name"], plan["netns"], plan["host_ports"], plan["errors"]) == ("other", "", [], [])


def test_no_lab_netns_means_the_root_namespace():
    hostvars, groups = small_lab()
    del hostvars["localhost"]["lab_netns"]
    assert lab_plan(hostvars, groups)["netns"] == ""


@pytest.mark.parametrize("value,planned", [
    (None, ""), ("", ""), ("root", ""), ("qemulab", "qemulab"), ("_qemu-lab1", "_qemu-lab1"), (1001, "1001")])
def test_qemu_user_is_planned_root_means_none(value, planned):
    hostvars, groups = small_lab()
    hostvars["localhost"]["lab_qemu_user"] = value
    plan = lab_plan(hostvars, groups)
    assert (plan["qemu_user"], plan["errors"]) == (planned, [])


@pytest.mark.parametrize("value", ["Lab User", "qemu/lab", "x" * 33, ["qemulab"], True, "-lab"])
def test_qemu_user_that_is_not_a_user_name_is_refused(value):
    hostvars, groups = small_lab()
    hostvars["localhost"]["lab_qemu_user"] = value
    plan = lab_plan(hostvars, groups)
    assert plan["qemu_user"] == ""
    assert [e for e in plan["errors"] if e.startswith("localhost: lab_qemu_user")], plan["errors"]


def test_default_route_and_routes_get_the_nic_holding_their_gateway():
    hostvars, groups = small_lab()
    hostvars["r1"]["vm_routes"] = [{"to": "10.9.0.0/16", "via": "10.1.2.2"}, {"to": "default", "via": "10.1.1.2"}]
    plan = lab_plan(hostvars, groups)
    assert plan["errors"] == []
    assert vm_of(plan, "r1")["routes"] == [{"to": "10.9.0.0/16", "via": "10.1.2.2", "dev": "eth1"},
                                           {"to": "0.0.0.0/0", "via": "10.1.1.2", "dev": "eth0"}]


def test_own_kernel_and_disk_that_exist_are_planned(tmp_path):
    hostvars, groups = small_lab()
    for name in ("bzImage", "initrd", "r1.ext4"):
        (tmp_path / name).write_text("x")
    hostvars["r1"].update(vm_kernel=str(tmp_path / "bzImage"), vm_initrd=str(tmp_path / "initrd"),
                          vm_disk=str(tmp_path / "r1.ext4"))
    plan = lab_plan(hostvars, groups)
    assert plan["errors"] == []
    r1 = vm_of(plan, "r1")
    assert (r1["kernel"], r1["initrd"], r1["disk"]) == tuple(str(tmp_path / n)
                                                             for n in ("bzImage", "initrd", "r1.ext4"))


def test_check_files_false_leaves_existence_to_the_lab_host():
    hostvars, groups = small_lab()
    hostvars["r1"].update(vm_kernel="/nonexistent/bzImage", vm_disk="/nonexistent/r1.ext4")
    assert errors_of(hostvars, groups, check_files=False) == []
    assert len(errors_of(hostvars, groups)) == 2


def test_claim_by_the_same_inventory_is_accepted_and_by_another_refused():
    hostvars, groups = small_lab()
    assert errors_of(hostvars, groups, claims={"unit": "/srv/labs/unit/"}) == []
    assert errors_of(hostvars, groups, claims={"someone-else": "/srv/x"}) == []
    error = only_error(hostvars, groups, claims={"unit": "/srv/labs/other"})
    assert error.startswith("localhost: lab_name unit is already claimed by the running lab of inventory "
                            "/srv/labs/other")


# -- one test per check (the corpus in tests/bad_inventories repeats them through real inventory files) -------------
@pytest.mark.parametrize("host,field,value,fragment", [
    ("a1", "vm_nics", {"bridge": "br-a"}, "a1: vm_nics {'bridge': 'br-a'} (a mapping) is not a list"),
    ("a1", "vm_memory", "1X", "a1: vm_memory '1X' is not a memory size"),
    ("a1", "vm_vcpus", -1, "a1: vm_vcpus -1 (an integer) is not a number of CPUs from 1 to 255"),
    ("a1", "vm_vcpus", "two", "a1: vm_vcpus 'two' is not a number of CPUs from 1 to 255"),
    ("a1", "vm_forwarding", "yes please", "a1: vm_forwarding 'yes please' is not a boolean"),
    ("a1", "ansible_port", 70000, "a1: ansible_port 70000 is outside 1024-65535"),
    ("a1", "ansible_port", 2301, "a1: ansible_port 2301 is already used by r1"),
    ("a1", "vm_hypervisor", "elsewhere", "a1: vm_hypervisor 'elsewhere' is not a host of group hypervisors"),
    ("a1", "vm_gateway", "10.1.2.1", "a1: vm_gateway 10.1.2.1 is on no segment of the VM's NICs (10.1.1.0/24)"),
    ("a1", "vm_gateway", "10.1.1.2", "a1: vm_gateway 10.1.1.2 is the VM's own address"),
    ("a1", "vm_gateway", "gateway", "a1: vm_gateway 'gateway' is not an IPv4 address"),
    ("r1", "vm_routes", [{"to": "10.9.0.0/24", "via": "10.7.0.1"}], "r1: vm_routes[0].via 10.7.0.1 is on no segment"),
    ("r1", "vm_routes", [{"to": "10.9.0.5", "via": "10.1.1.2"}], "r1: vm_routes[0].to 10.9.0.5 is an address, not a"),
    ("r1", "vm_routes", [{"to": "10.9.0.5/24", "via": "10.1.1.2"}], "r1: vm_routes[0].to 10.9.0.5/24 has host bits"),
    ("r1", "vm_routes", [{"to": "10.9.0.0/24", "gw": "10.1.1.2"}], "r1: vm_routes[0].gw is not a known key"),
    ("r1", "vm_routes", "10.9.0.0/24", "r1: vm_routes '10.9.0.0/24' is not a list"),
    ("r1", "vm_routes", [{"via": "10.1.1.2"}], "r1: vm_routes[0].to is not set; give it, like 10.20.60.0/24"),
    ("r1", "vm_routes", [{"to": "10.9.0.0/24", "via": "10.1.1.1"}], "r1: vm_routes[0].via 10.1.1.1 is the VM's own"),
    ("r1", "vm_routes", [{"to": "10.1.2.0/24", "via": "10.1.1.2"}],
     "r1: vm_routes[0].to 10.1.2.0/24 is a segment of the VM's NICs, reached directly; drop this route"),
    ("r1", "vm_routes", [{"to": "10.9.0.0/24", "via": "10.1.1.2"}, {"to": "10.9.0.0/24", "via": "10.1.2.2"}],
     "r1: vm_routes[1].to 10.9.0.0/24 is already routed by vm_routes[0]; keep one route per destination"),
    ("a1", "vm_routes", [{"to": "default", "via": "10.1.1.1"}], "a1: vm_gateway 10.1.1.1 duplicates the default"),
    ("r1", "vm_kernel", "relative/bzImage", "r1: vm_kernel 'relative/bzImage' is not an absolute path"),
])
def test_each_vm_check_names_host_field_and_fix(host, field, value, fragment):
    hostvars, groups = small_lab()
    hostvars[host][field] = value
    errors = errors_of(hostvars, groups)
    assert any(error.startswith(fragment) for error in errors), errors
    assert all(";" in error for error in errors), errors


@pytest.mark.parametrize("host,field,value", [("a1", "vm_vcpus", "\u00b2"), ("a1", "ansible_port", "\u00b9"),
                                              ("localhost", "lab_lock_timeout", "\u00b3")])
def test_unicode_digits_are_refused_not_raised(host, field, value):
    hostvars, groups = small_lab()
    hostvars[host][field] = value
    assert only_error(hostvars, groups).startswith("%s: %s %r is not " % (host, field, value))


@pytest.mark.parametrize("field,value", [("vm_gateway", "10.1.1.255"), ("vm_gateway", "10.1.1.0"),
                                         ("vm_routes", [{"to": "10.9.0.0/24", "via": "10.1.1.255"}])])
def test_a_gateway_at_the_network_or_broadcast_address_is_refused(field, value):
    hostvars, groups = small_lab()
    hostvars["a1"][field] = value
    assert [e for e in errors_of(hostvars, groups) if e.startswith("a1: " + field)]


@pytest.mark.parametrize("field,value,fragment", [
    ("address", "10.1.1.0/24", "a1: vm_nics[0].address 10.1.1.0/24 is the network or broadcast address"),
    ("address", "fe80::1/64", "a1: vm_nics[0].address fe80::1/64 is not IPv4"),
    ("address", 42, "a1: vm_nics[0].address 42 (an integer) is not an address with prefix length"),
    ("mac", "00:00:00:00:00:00", "a1: vm_nics[0].mac 00:00:00:00:00:00 is not usable"),
    ("mac", "12:34:56:00:00:01", "a1: vm_nics[0].mac 12:34:56:00:00:01 is already used by r1 vm_nics[0].mac"),
    ("tap", "a" * 16, "a1: vm_nics[0].tap 'aaaaaaaaaaaaaaaa' is 16 characters long; a tap name has at most 15"),
    ("tap", "tap one", "a1: vm_nics[0].tap 'tap one' is not a tap name (it contains ' ')"),
    ("tap", "ta1", "a1: vm_nics[0].tap ta1 is already used by r1 vm_nics[0].tap"),
    ("tap", "br-b", "a1: vm_nics[0].tap br-b is also the name of a bridge"),
    ("model", "virtio", "a1: vm_nics[0].model 'virtio' is not one of virtio-net-pci, e1000, rtl8139"),
    ("vhost", "maybe", "a1: vm_nics[0].vhost 'maybe' is not one of auto, on, off"),
])
def test_each_nic_check_names_host_field_and_fix(field, value, fragment):
    hostvars, groups = small_lab()
    hostvars["a1"]["vm_nics"][0][field] = value
    if field == "address":
        del hostvars["a1"]["vm_gateway"]
    assert any(error.startswith(fragment) for error in errors_of(hostvars, groups)), errors_of(hostvars, groups)


def test_nic_without_bridge_or_tap_and_nic_that_is_no_mapping():
    hostvars, groups = small_lab()
    hostvars["r1"]["vm_nics"] = [{"address": "10.1.1.1/24"}, "eth1"]
    errors = errors_of(hostvars, groups)
    assert "r1: vm_nics[0].bridge is not set; name the bridge of eth0" in errors
    assert "r1: vm_nics[0].tap is not set; name the tap of eth0" in errors
    assert any(e.startswith("r1: vm_nics[1] 'eth1' is not a mapping") for e in errors)


def test_addresses_on_one_bridge_share_a_subnet_and_bridges_do_not_overlap():
    hostvars, groups = small_lab()
    hostvars["b1"]["vm_nics"][0]["address"] = "10.1.3.2/24"
    del hostvars["b1"]["vm_gateway"]
    assert only_error(hostvars, groups).startswith(
        "b1: vm_nics[0].address 10.1.3.2/24 is not in 10.1.2.0/24, the subnet of bridge br-b (set by r1 "
        "vm_nics[1].address)")
    hostvars, groups = small_lab()
    hostvars["r1"]["vm_nics"][1]["address"] = "10.1.2.1/16"
    hostvars["b1"]["vm_nics"][0]["address"] = "10.1.2.2/16"
    assert "overlaps 10.1.1.0/24 of bridge br-a" in only_error(hostvars, groups)


def test_host_port_checks():
    hostvars, groups = small_lab()
    hostvars["localhost"]["lab_host_ports"] = [
        {"name": "veth-with-a-long-name", "peer": "ta1", "bridge": "br-q", "address": "10.1.1.2/24",
         "routes": [{"to": "10.1.2.0/24", "via": "10.1.2.1"}], "mtu": 1500}]
    errors = errors_of(hostvars, groups)
    for fragment in ("localhost: lab_host_ports[0].name 'veth-with-a-long-name' is 21 characters long",
                     "localhost: lab_host_ports[0].peer ta1 is already used by r1 vm_nics[0].tap",
                     "localhost: lab_host_ports[0].bridge br-q is used by no VM NIC",
                     "localhost: lab_host_ports[0].address 10.1.1.2 is already used by a1 vm_nics[0].address",
                     "localhost: lab_host_ports[0].routes[0].via 10.1.2.1 is on no segment of the port's address",
                     "localhost: lab_host_ports[0].mtu is not a known key"):
        assert any(e.startswith(fragment) for e in errors), (fragment, errors)
    hostvars["localhost"]["lab_host_ports"] = {"name": "hp0"}
    assert only_error(hostvars, groups).startswith(
        "localhost: lab_host_ports {'name': 'hp0'} (a mapping) is not a list")


def test_host_port_address_outside_its_bridges_subnet():
    hostvars, groups = small_lab()
    hostvars["localhost"]["lab_host_ports"][0].update(address="10.1.7.9/24", routes=[])
    assert only_error(hostvars, groups).startswith(
        "localhost: lab_host_ports[0].address 10.1.7.9/24 is not in 10.1.1.0/24, the subnet of bridge br-a")


def test_lab_wide_checks():
    hostvars, groups = small_lab()
    hostvars["localhost"].update(lab_name="x" * 16, lab_netns="ns/with/slash")
    errors = errors_of(hostvars, groups)
    assert errors == [
        "localhost: lab_name 'xxxxxxxxxxxxxxxx' is 16 characters long; a lab name has at most 15, pick a shorter one",
        "localhost: lab_netns 'ns/with/slash' is not a namespace name (it contains '/'); use lower-case letters, "
        "digits and '-', starting with a letter or digit, at most 32 characters"]
    # both are what a cleanup must stop for (it needs only a valid lab name and namespace)
    assert lab_plan(hostvars, groups)["cleanup_errors"] == errors
    hostvars["localhost"].update(lab_name="seed\n", lab_netns="")
    assert only_error(hostvars, groups).startswith("localhost: lab_name 'seed\\n' is not a lab name (it contains "
                                                   "'\\n')")
    for bad in ("Seed", "-seed", "se.ed", "se_ed"):
        hostvars["localhost"]["lab_name"] = bad
        assert only_error(hostvars, groups).startswith("localhost: lab_name %r is not a lab name" % bad)
    hostvars["localhost"].update(lab_name="x" * 15, lab_netns="n" * 32)
    assert errors_of(hostvars, groups) == []
    hostvars["localhost"]["lab_netns"] = "n" * 33
    assert only_error(hostvars, groups).startswith("localhost: lab_netns '%s' is 33 characters long; a namespace "
                                                   "name has at most 32" % ("n" * 33))


def test_group_checks():
    hostvars, groups = small_lab()
    groups["routers"].append("a1")
    groups["lab"].append("c1")
    hostvars["c1"] = {"ansible_port": 2304, "vm_nics": [{"bridge": "br-b", "tap": "tb3", "address": "10.1.2.3/24"}]}
    hostvars["stray"] = {"ansible_port": 2305, "vm_nics": [{"bridge": "br-b", "tap": "tb4"}]}
    groups["all"] += ["c1", "stray"]
    groups["ungrouped"].append("stray")
    errors = errors_of(hostvars, groups)
    assert "a1: groups is in both routers and hosts; put it in exactly one" in errors
    assert "c1: groups is in neither routers nor hosts; put it in exactly one" in errors
    assert "stray: groups is in neither routers nor hosts; put it in exactly one" in errors


def test_no_hypervisor_no_vms_and_a_hypervisor_in_the_lab():
    hostvars, groups = small_lab()
    groups["hypervisors"] = []
    plan = lab_plan(hostvars, groups)
    # no hypervisors: the controller itself is the lab host
    assert (plan["errors"], plan["hypervisor"], plan["hypervisors"]) == ([], "localhost", ["localhost"])
    assert plan["lab_name"] == "unit" and list(plan["hosts"]) == ["localhost"]
    assert {vm["hypervisor"] for vm in plan["vms"]} == {"localhost"}
    del groups["hypervisors"]
    assert lab_plan(hostvars, groups) == plan
    hostvars, groups = small_lab()
    groups.update(all=["localhost"], lab=[], routers=[], hosts=[])
    hostvars["localhost"]["lab_host_ports"] = []
    assert only_error(hostvars, groups).startswith("lab: groups define no VMs")
    hostvars, groups = small_lab()
    groups["hosts"].append("localhost")
    groups["lab"].append("localhost")
    assert [e for e in errors_of(hostvars, groups) if e.startswith("localhost: groups")] == [
        "localhost: groups is both a hypervisor and a lab VM; keep the lab host out of routers, hosts and lab"]


def test_without_hypervisors_the_lab_wide_variables_come_from_group_all():
    """An inventory of VMs only: group_vars/all gives every VM the lab-wide variables, localhost is the lab host."""
    hostvars, groups = small_lab()
    lab_wide = hostvars.pop("localhost")
    lab_wide.pop("ansible_connection")
    for name in ("r1", "a1", "b1"):
        hostvars[name].update(copy.deepcopy(lab_wide))
    del groups["hypervisors"]
    groups["all"].remove("localhost")
    plan = lab_plan(hostvars, groups)
    assert plan["errors"] == []
    assert (plan["hypervisor"], plan["lab_name"], plan["netns"]) == ("localhost", "unit", "qlab-unit")
    assert [(p["name"], p["address"]) for p in plan["host_ports"]] == [("hp0", "10.1.1.9/24")]
    assert plan["hosts"]["localhost"]["teardown"] == {"lab": "unit", "netns": "qlab-unit"}


def test_a_second_hypervisor_is_planned_once_its_segments_have_underlay_addresses():
    """Issue 17 lifted the single-hypervisor rule: a VM on a second lab host is planned there, and the segment it
    shares with the first host needs both hosts' underlay addresses (docs/multi-host.md)."""
    hostvars, groups = small_lab()
    groups["hypervisors"].append("rack2")
    hostvars["rack2"] = {}
    hostvars["b1"]["vm_hypervisor"] = "rack2"
    assert errors_of(hostvars, groups) == [
        "%s: lab_underlay_address is not set, but segment br-b spans lab hosts localhost, rack2; give the address "
        "this host's VXLAN tunnels use, one the other lab hosts reach, like 192.0.2.11" % host
        for host in ("localhost", "rack2")]
    hostvars["localhost"]["lab_underlay_address"] = "192.0.2.11"
    hostvars["rack2"]["lab_underlay_address"] = "192.0.2.12"
    plan = lab_plan(hostvars, groups)
    assert plan["errors"] == []
    assert [vm["name"] for vm in plan["hosts"]["rack2"]["vms"]] == ["b1"]


def test_every_problem_is_listed_not_just_the_first():
    hostvars, groups = small_lab()
    hostvars["a1"]["vm_memory"] = "lots"
    hostvars["b1"]["vm_nics"][0]["mac"] = "nope"
    hostvars["r1"]["ansible_port"] = 1
    hostvars["localhost"]["lab_name"] = "Bad Name"
    assert len(errors_of(hostvars, groups)) == 4


class ExplodingVars(dict):
    """A hostvars entry whose variables fail to template, as Ansible's lazy hostvars do on access."""

    def __getitem__(self, key):
        raise RuntimeError("'undefined_thing' is undefined\nmore detail")


def test_unrenderable_variables_become_errors_not_tracebacks():
    hostvars, groups = small_lab()
    hostvars["a1"] = ExplodingVars(hostvars["a1"])
    errors = errors_of(hostvars, groups)
    assert "a1: vm_nics cannot be rendered ('undefined_thing' is undefined); fix the variable's template" in errors
    assert not any(e.startswith("a1: vm_nics is not set") for e in errors)


@pytest.mark.parametrize("hostvars,groups", [(None, None), ({}, {}), ([], []), ({"x": 1}, {"lab": "x"})])
def test_garbage_in_gives_errors_not_exceptions(hostvars, groups):
    assert lab_plan(hostvars, groups)["errors"]


def test_each_seed_guest_boots_with_exactly_what_guest_network_would_apply(seed_plan):
    """Unit: the fw_cfg files the plan hands each VM at boot and the guest entry guest_network configures it from
    agree, so a guest this run started is not read again (guest_network_booted_as_planned)."""
    from ansible_collections.qemulab.network.plugins.filter.guest_network import guest_network_booted_as_planned
    checked = 0
    for host in seed_plan["hosts"].values():
        for vm in host["vms"]:
            boot = dict((item["name"], item["content"]) for item in vm["fw_cfg"])
            guest = seed_plan["guests"][vm["name"]]
            assert guest_network_booted_as_planned(boot, guest["nics"], guest["routes"], guest["gateway"],
                                                   guest["forwarding"]) is True, vm["name"]
            # and a guest planned otherwise is not taken for it
            assert guest_network_booted_as_planned(boot, guest["nics"], guest["routes"], guest["gateway"],
                                                   not guest["forwarding"]) is False, vm["name"]
            checked += 1
    assert checked == 7
