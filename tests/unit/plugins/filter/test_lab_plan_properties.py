"""Property tests: any inventory, valid or mutated, gives either a complete plan with no errors or a non-empty error
list - never an exception - and a valid generated lab is always accepted and planned faithfully.

The schema round trip (issue 13): values drawn for every field the lab schema declares either make the plan refuse
the lab, or the plan renders arguments that the modules' own validation accepts (qemu_vms, qemu_vm's normalisation
and command line, links' bridges and taps, veth), with the value as its field's reader reads it."""
import copy

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ansible_collections.qemulab.network.plugins.filter.lab_plan import lab_plan
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_schema

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PLAN_KEYS = {"lab_name", "netns", "qemu_user", "lock_timeout", "run_dir", "hypervisor", "hypervisors", "bridges",
             "taps", "host_ports", "vms", "errors", "cleanup_errors", "hosts", "guests", "console_log_limit",
             "capture_ring", "capture_ring_size", "uplink"}
VM_KEYS = {"name", "kind", "hypervisor", "ssh_port", "memory_mb", "vcpus", "kernel", "initrd", "disk", "forwarding", "boot",
           "connection", "connection_reason",
           "gateway", "routes", "nics", "mgmt_mac", "nat", "serial"}
NIC_KEYS = {"index", "dev", "backend", "bridge", "tap", "mac", "address", "model", "vhost", "mtu", "net", "hostfwd",
            "netem", "link"}
# the one name rule (_validate.NAME_RE) with the lab's length limit
LAB_NAMES = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,14}\Z")


@st.composite
def valid_labs(draw):
    """A lab that must be accepted: distinct /24 segments, unique names, MACs, addresses and ports."""
    segment_count = draw(st.integers(1, 5))
    thirds = draw(st.lists(st.integers(0, 255), min_size=segment_count, max_size=segment_count, unique=True))
    segments = [("seg%d" % i, "10.77.%d" % third) for i, third in enumerate(thirds)]
    vm_count = draw(st.integers(1, 6))
    hostvars = {"localhost": {
        "lab_name": draw(LAB_NAMES),
        "lab_netns": draw(st.sampled_from(["", "qlab-prop"])),
        "inventory_dir": "/srv/prop",
    }}
    groups = {"all": ["localhost"], "ungrouped": [], "hypervisors": ["localhost"], "lab": [], "routers": [],
              "hosts": []}
    next_host = {name: 1 for name, _ in segments}
    # one MTU per segment (a bridge forwards at its smallest port's MTU), mostly unset
    mtus = dict((name, draw(st.sampled_from([None, None, 1500, 9000, 68, 65535]))) for name, _ in segments)
    mac_counter = [0]
    used_segments = set()
    for index in range(vm_count):
        name = "vm%d" % index
        kind = draw(st.sampled_from(["routers", "hosts"]))
        groups[kind].append(name)
        groups["lab"].append(name)
        groups["all"].append(name)
        attached = draw(st.lists(st.sampled_from(segments), min_size=1, max_size=3, unique=True))
        nics = []
        for nic_index, (bridge, prefix) in enumerate(attached):
            used_segments.add(bridge)
            host_number = next_host[bridge]
            next_host[bridge] += 1
            nic = {"bridge": bridge, "tap": "t%d-%d" % (index, nic_index),
                   "address": "%s.%d/24" % (prefix, host_number)}
            if draw(st.booleans()):
                mac_counter[0] += 1
                nic["mac"] = "12:34:56:00:%02x:%02x" % divmod(mac_counter[0], 256)
            if mtus[bridge] is not None:
                nic["mtu"] = mtus[bridge]
            nic["model"] = draw(st.sampled_from(["virtio-net-pci", "e1000", "rtl8139"]))
            nic["vhost"] = draw(st.sampled_from(["auto", "off"] + (["on"] if nic["model"] == "virtio-net-pci" else [])))
            nics.append(nic)
        hostvars[name] = {
            "ansible_port": 3000 + index,
            "vm_nics": nics,
            "vm_memory": draw(st.sampled_from([256, "512M", "1G", "2048"])),
            "vm_vcpus": draw(st.integers(1, 4)),
        }
    # routes: from any VM to some other network via a neighbour's address on one of its segments
    by_segment = {}
    for name in groups["lab"]:
        for nic in hostvars[name]["vm_nics"]:
            by_segment.setdefault(nic["bridge"], []).append((name, nic["address"].split("/")[0]))
    for name in groups["lab"]:
        neighbours = [(seg, addr) for nic in hostvars[name]["vm_nics"] for seg, addr in
                      ((nic["bridge"], a) for n, a in by_segment[nic["bridge"]] if n != name)]
        if neighbours and draw(st.booleans()):
            seg, via = draw(st.sampled_from(neighbours))
            hostvars[name]["vm_routes"] = [{"to": "10.99.%d.0/24" % draw(st.integers(0, 255)), "via": via}]
            if name in groups["hosts"] and draw(st.booleans()):
                hostvars[name]["vm_gateway"] = via
    bridge, prefix = draw(st.sampled_from([s for s in segments if s[0] in used_segments]))
    if draw(st.booleans()):
        hostvars["localhost"]["lab_host_ports"] = [{"name": "hp0", "peer": "hp1", "bridge": bridge,
                                                    "address": "%s.250/24" % prefix, "routes": []}]
    return hostvars, groups


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=20) | st.sampled_from(
        ["10.77.0.1/24", "10.77.0.1", "12:34:56:00:00:01", "1G", "br1", "x" * 16, "default", "0.0.0.0/0"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)


def assert_complete_or_refused(plan):
    assert set(plan) == PLAN_KEYS
    assert isinstance(plan["errors"], list)
    assert all(isinstance(error, str) and error for error in plan["errors"])
    assert all(error in plan["errors"] for error in plan["cleanup_errors"])
    if plan["errors"]:
        assert plan["hosts"] == plan["guests"] == {}, "nothing is rendered for a refused lab"
        return
    assert sorted(plan["hosts"]) == sorted(set(plan["hypervisors"]))
    # every VM's guest arguments, by its name, are those of the lab host it runs on
    assert plan["guests"] == dict((vm["name"], plan["hosts"][vm["hypervisor"]]["guests"][vm["name"]])
                                  for vm in plan["vms"])
    assert plan["vms"], "an accepted plan has VMs"
    for vm in plan["vms"]:
        assert set(vm) == VM_KEYS
        assert isinstance(vm["ssh_port"], int) and 1024 <= vm["ssh_port"] <= 65535
        assert vm["mgmt_mac"] and vm["memory_mb"] > 0 and vm["vcpus"] > 0
        for nic in vm["nics"]:
            assert set(nic) == NIC_KEYS
            assert nic["mac"]
            assert (nic["bridge"] and nic["tap"]) if nic["backend"] == "tap" else (nic["net"] and nic["address"])
        for route in vm["routes"]:
            assert route["dev"] in [nic["dev"] for nic in vm["nics"]]
    macs = [nic["mac"] for vm in plan["vms"] for nic in vm["nics"]] + [vm["mgmt_mac"] for vm in plan["vms"]]
    assert len(macs) == len(set(macs))
    taps = [tap["name"] for tap in plan["taps"]]
    assert len(taps) == len(set(taps))


@SETTINGS
@given(valid_labs())
def test_a_valid_lab_is_accepted_and_planned_faithfully(lab):
    hostvars, groups = lab
    plan = lab_plan(copy.deepcopy(hostvars), groups)
    assert plan["errors"] == []
    assert_complete_or_refused(plan)
    assert [vm["name"] for vm in plan["vms"]] == groups["lab"]
    for vm in plan["vms"]:
        wanted = hostvars[vm["name"]]["vm_nics"]
        assert [(n["bridge"], n["tap"], n["address"]) for n in vm["nics"]] == [
            (n["bridge"], n["tap"], n["address"]) for n in wanted]
        assert vm["kind"] == ("router" if vm["name"] in groups["routers"] else "host")
        assert vm["forwarding"] is (vm["kind"] == "router")
    assert [b["name"] for b in plan["bridges"]] == sorted({n["bridge"] for vm in plan["vms"] for n in vm["nics"]})
    # the segment's MTU on its bridge, on each of its taps and on each NIC QEMU is given
    mtu_of = dict((n["bridge"], n.get("mtu")) for name in groups["lab"] for n in hostvars[name]["vm_nics"])
    assert [(b["name"], b["mtu"]) for b in plan["bridges"]] == sorted(mtu_of.items())
    assert all(t["mtu"] == mtu_of[t["bridge"]] for t in plan["taps"])
    rendered = plan["hosts"]["localhost"]
    assert [(b["name"], b.get("mtu")) for b in rendered["links"]["bridges"]] == sorted(mtu_of.items())
    assert all(t.get("mtu") == mtu_of[t["bridge"]] for t in rendered["links"]["taps"])
    assert [[nic.get("mtu") for nic in vm["nics"][:-1]] for vm in rendered["vms"]] == [
        [n.get("mtu") for n in hostvars[name]["vm_nics"]] for name in groups["lab"]]
    # stable: the same inventory gives the same plan
    assert lab_plan(copy.deepcopy(hostvars), groups) == plan


# every field the schema declares (the VM's name is its inventory host name, not a variable)
FIELDS_OF_A_VM = [f.name for f in _lab_schema.fields("vm") if f.name != "inventory_hostname"]
FIELDS_OF_A_NIC = [f.name for f in _lab_schema.fields("nic")]
LAB_FIELDS = [f.name for f in _lab_schema.fields("lab")]


@SETTINGS
@given(valid_labs(), st.data())
def test_a_mutated_lab_gives_a_complete_plan_or_errors_never_an_exception(lab, data):
    hostvars, groups = copy.deepcopy(lab)
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(["vm", "nic", "lab", "group"]))
        junk = data.draw(JUNK)
        if where == "lab":
            hostvars["localhost"][data.draw(st.sampled_from(LAB_FIELDS))] = junk
        elif where == "group":
            groups[data.draw(st.sampled_from(["routers", "hosts", "lab", "hypervisors"]))] = junk
        else:
            name = data.draw(st.sampled_from([n for n in hostvars if n != "localhost"]))
            if where == "vm":
                hostvars[name][data.draw(st.sampled_from(FIELDS_OF_A_VM))] = junk
            else:
                current = hostvars[name].get("vm_nics")
                nics = [nic for nic in current if isinstance(nic, dict)] if isinstance(current, list) else []
                if nics:  # an earlier mutation may have replaced the NIC list itself
                    nic = nics[data.draw(st.integers(0, len(nics) - 1))]
                    nic[data.draw(st.sampled_from(FIELDS_OF_A_NIC))] = junk
    plan = lab_plan(hostvars, groups)
    event("refused" if plan["errors"] else "accepted")
    assert_complete_or_refused(plan)
    owners = set(hostvars) | {"lab"} | {name for members in groups.values() if isinstance(members, list)
                                        for name in members if isinstance(name, str)}
    for error in plan["errors"]:
        assert error.split(": ", 1)[0] in owners, "%r names no host" % error
        assert ";" in error, "%r offers no fix" % error


@SETTINGS
@given(valid_labs(), st.sampled_from(["mac", "tap", "address", "port"]))
def test_a_duplicated_identity_is_always_refused(lab, what):
    hostvars, groups = copy.deepcopy(lab)
    first_name = groups["lab"][0]
    first = hostvars[first_name]
    # a second VM copying the first VM's first NIC identity (or its port) must be caught, and only that
    copier = {"ansible_port": 3999, "vm_nics": [dict(first["vm_nics"][0], tap="tcopy", mac="12:34:56:ff:ff:fe")]}
    copier["vm_nics"][0]["address"] = first["vm_nics"][0]["address"].rsplit(".", 1)[0] + ".249/24"
    if what == "mac":
        first["vm_nics"][0]["mac"] = "12:34:56:ff:ff:fe"
    elif what == "tap":
        copier["vm_nics"][0]["tap"] = first["vm_nics"][0]["tap"]
    elif what == "address":
        copier["vm_nics"][0]["address"] = first["vm_nics"][0]["address"]
    else:
        copier["ansible_port"] = first["ansible_port"]
    hostvars["copier"] = copier
    for group in ("all", "lab", "hosts"):
        groups[group].append("copier")
    # the copier comes last, so the error is its own: field, the duplicated value, and who holds it already
    nic = "vm_nics[0].%s" % what
    expected = {
        "mac": "copier: %s 12:34:56:ff:ff:fe is already used by %s %s; give every NIC its own MAC"
               % (nic, first_name, nic),
        "tap": "copier: %s %s is already used by %s %s; give every tap its own name"
               % (nic, first["vm_nics"][0]["tap"], first_name, nic),
        "address": "copier: %s %s is already used by %s %s; give every interface its own address"
                   % (nic, first["vm_nics"][0]["address"].split("/")[0], first_name, nic),
        "port": "copier: ansible_port %d is already used by %s; give every VM its own port"
                % (first["ansible_port"], first_name),
    }[what]
    assert lab_plan(hostvars, groups)["errors"] == [expected]


@SETTINGS
@given(st.dictionaries(st.text(max_size=6), JUNK, max_size=4), st.dictionaries(
    st.sampled_from(["all", "lab", "routers", "hosts", "hypervisors"]), JUNK | st.lists(st.text(max_size=4)),
    max_size=5))
def test_arbitrary_junk_never_raises(hostvars, groups):
    assert_complete_or_refused(lab_plan(hostvars, groups))


# -- the schema round trip (issue 13) ------------------------------------------------------------------------------
# Values for the fields of the schema, drawn from each field's declared type (valid and not), put into a small valid
# lab: the plan either refuses the lab or renders arguments that the modules' own validation accepts, and a value the
# plan accepts is one its field's reader accepts and reaches the rendered arguments as the reader reads it.
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # noqa: E402

from ansible_collections.qemulab.network.plugins.filter.vm_specs import qemu_vm_args, qemu_vm_specs  # noqa: E402
from ansible_collections.qemulab.network.plugins.module_utils import _validate  # noqa: E402
from ansible_collections.qemulab.network.plugins.module_utils._link import param_errors  # noqa: E402
from ansible_collections.qemulab.network.plugins.module_utils._link_kinds import (  # noqa: E402
    bridge_argument_spec,
    tap_argument_spec,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import build_argv  # noqa: E402
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import normalise_config  # noqa: E402
from ansible_collections.qemulab.network.plugins.modules import veth  # noqa: E402
from ansible_collections.qemulab.network.plugins.modules.qemu_vms import validated  # noqa: E402

ROUND_TRIP = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RUN_ROOT = "/run/qemulab"
VM_LAUNCH = {"run_root": RUN_ROOT, "state_dir": "/var/lib/qemulab", "default_kernel": "/img/vmlinux",
             "default_initrd": "/img/initrd.img", "default_disk": "/img/disk.ext4",
             "default_append": "root=/dev/vda rw init=/sbin/qemulab-init", "custom_append": "root=/dev/vda rw",
             "accelerator": "auto", "tb_size": 64, "extra_args": [], "boot_config": True}


def schema_lab():
    """Router r1 between br-a and br-b with NAT; host a1 on br-a with a user-mode NIC and a forward; host b1 on br-b
    with a route; a lab host port on br-a with a route. Every item scope of the schema has an item here."""
    hostvars = {
        "localhost": {"lab_name": "unit", "lab_netns": "qlab-unit", "lab_qemu_user": "",
                      "lab_host_ports": [{"name": "hp0", "peer": "hp1", "bridge": "br-a", "address": "10.1.1.9/24",
                                          "routes": [{"to": "10.1.2.0/24", "via": "10.1.1.1"}]}]},
        "r1": {"ansible_port": 2301,
               "vm_nics": [{"bridge": "br-a", "tap": "ta1", "address": "10.1.1.1/24"},
                           {"bridge": "br-b", "tap": "tb1", "address": "10.1.2.1/24"}],
               "vm_nat": [{"type": "masquerade", "inside": "eth0", "outside": "eth1"}]},
        "a1": {"ansible_port": 2302, "vm_gateway": "10.1.1.1",
               "vm_nics": [{"bridge": "br-a", "tap": "ta2", "address": "10.1.1.2/24"},
                           {"backend": "user", "hostfwd": [{"host_port": 8080, "guest_port": 80}]}]},
        "b1": {"ansible_port": 2303, "vm_routes": [{"to": "10.1.1.0/24", "via": "10.1.2.1"}],
               "vm_nics": [{"bridge": "br-b", "tap": "tb2", "address": "10.1.2.2/24"}]},
    }
    groups = {"all": ["localhost", "r1", "a1", "b1"], "ungrouped": [], "hypervisors": ["localhost"],
              "lab": ["r1", "a1", "b1"], "routers": ["r1"], "hosts": ["a1", "b1"]}
    return hostvars, groups


# every choice word of the schema (valid for one field, invalid for the others) and the strings other fields expect
WORDS = ["tap", "user", "auto", "on", "off", "virtio-net-pci", "e1000", "rtl8139", "tcp", "udp", "masquerade",
         "pool", "static", "", "root", "0", "qemulab", "1001", "localhost", "elsewhere", "eth0", "eth1", "eth2",
         "default"]
NAMES = (st.from_regex(_validate.NAME_RE) | st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,15}\Z") | st.text(max_size=20)
         | st.sampled_from(["ta1", "tb2", "br-a", "br-b", "hp1", "x" * 15, "x" * 16, "x" * 32, "x" * 33, "-x", "X1"]))
INTS = st.integers() | st.integers(-2, 70000) | st.from_regex(r"\A ?[0-9]{1,6} ?\Z") | st.booleans() | st.floats()
OCTET = st.integers(0, 255).map(str)
IPV4 = st.builds("10.1.{}.{}".format, st.sampled_from(["0", "1", "2", "3"]), OCTET) | st.builds(
    "{}.{}.{}.{}".format, OCTET, OCTET, OCTET, OCTET)
STRATEGIES = {
    "name": NAMES,
    "int": INTS,
    "int (port)": INTS,
    "int (MiB) or str": INTS | st.from_regex(r"\A\s?[0-9]{1,7}\s?([kKmMgGtTbB]([iI]?[bB])?)?\s?\Z"),
    "str (size) or int (bytes)": INTS | st.from_regex(r"\A\s?[0-9]{1,10}\s?([kKmMgGtTbB]([iI]?[bB])?)?\s?\Z"),
    "bool": st.booleans() | st.sampled_from(["yes", "true", 1, 0]),
    "str": st.sampled_from(WORDS) | st.text(max_size=20),
    "str (MAC)": st.from_regex(r"\A[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z") | st.text(max_size=20),
    "str (CIDR)": st.builds("{}/{}".format, IPV4, st.integers(0, 33)) | st.sampled_from(["default", "fe80::1/64"])
    | st.text(max_size=20),
    "str (IPv4)": IPV4 | st.sampled_from(["fe80::1", "10.1.1.1/24"]) | st.text(max_size=20),
    # a NAT pool: ranges on the outside segment, off every segment, backwards, too long, IPv6, and junk
    "str (IPv4 range)": st.builds("{}-{}".format, IPV4, IPV4) | st.sampled_from(
        ["10.1.2.100-10.1.2.109", "203.0.113.10-203.0.113.20", "10.0.0.0-10.0.1.0", "fe80::1-fe80::2"])
    | st.text(max_size=20),
    "str (absolute path)": st.from_regex(r"\A/[ -~]{0,30}\Z") | st.text(max_size=20),
    # a NIC's netem mapping: its keys (and one that is not) with times, percentages, rates and junk
    "dict": st.dictionaries(st.sampled_from(["delay", "jitter", "loss", "duplicate", "reorder", "corrupt", "rate",
                                             "lag"]),
                            st.sampled_from(["40ms", "500us", "2%", "0%", "101%", "10mbit", "10mbps", "x"])
                            | st.text(max_size=8), max_size=4),
    # a serial link's ends and addresses: pairs, and lists of other lengths
    "list of two VM names": st.lists(NAMES | st.sampled_from(["vm0", "vm1", "vm2"]), max_size=3),
    "list of two IPv4 addresses": st.lists(IPV4 | st.sampled_from(["10.99.0.1", "10.99.0.2"]), max_size=3),
}
# every scope of the schema: the lab-wide variables, a VM's, and the items of their lists
MUTABLE_SCOPES = ("lab", "vm", "nic", "hostfwd", "route", "nat", "host_port")


def field_values(decl):
    """Values for one schema field: its own example, values of its declared type (valid and not), and junk."""
    example = decl.example.strip("`")
    own = STRATEGIES.get(decl.type_text)
    if own is None:  # a list of items: items of the item scope's fields, drawn the same way
        item = st.fixed_dictionaries({}, optional=dict(
            (f.name, st.deferred(lambda f=f: field_values(f))) for f in _lab_schema.fields(decl.read.item_scope)))
        own = st.lists(item, max_size=3)
    return st.just(example) | own | st.none() | JUNK


def mutations():
    """("scope.field", value) pairs over the fields of every scope, each value drawn for its field."""
    every = ["%s.%s" % (f.scope, f.name) for scope in MUTABLE_SCOPES for f in _lab_schema.fields(scope)]
    return st.sampled_from(every).flatmap(
        lambda where: st.tuples(st.just(where), field_values(_lab_schema.field(*where.split(".")))))


def dicts_in(value):
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def items_of(hostvars, groups, scope):
    """[(vm or None, mapping)] of the `scope` mappings the inventory holds now (earlier changes may have replaced
    some)."""
    vms = [(name, hostvars[name]) for name in groups["lab"] if isinstance(hostvars.get(name), dict)]
    lab = hostvars["localhost"]
    if scope == "lab":
        return [(None, lab)]
    if scope == "vm":
        return vms
    if scope == "host_port":
        return [(None, port) for port in dicts_in(lab.get("lab_host_ports"))]
    if scope == "nat":
        return [(name, rule) for name, vm in vms for rule in dicts_in(vm.get("vm_nat"))]
    nics = [(name, nic) for name, vm in vms for nic in dicts_in(vm.get("vm_nics"))]
    if scope == "nic":
        return nics
    if scope == "hostfwd":
        return [(name, fwd) for name, nic in nics for fwd in dicts_in(nic.get("hostfwd"))]
    return ([(name, route) for name, vm in vms for route in dicts_in(vm.get("vm_routes"))]
            + [(None, route) for _none, port in items_of(hostvars, groups, "host_port")
               for route in dicts_in(port.get("routes"))])


def rename(hostvars, groups, old, new):
    hostvars[new] = hostvars.pop(old)
    for members in groups.values():
        members[:] = [new if member == old else member for member in members]


def apply_change(hostvars, groups, decl, value, data):
    """Put `value` into one `decl.scope` mapping of the inventory; the mapping, or None when nothing was changed."""
    if decl.name == "inventory_hostname":
        # the VM's name is its inventory host name: rename the host in hostvars and in its groups
        if isinstance(value, str) and value and value not in hostvars:
            rename(hostvars, groups, data.draw(st.sampled_from(groups["lab"]), label="vm"), value)
        return None
    candidates = items_of(hostvars, groups, decl.scope)
    if not candidates:
        return None
    _vm, target = candidates[data.draw(st.integers(0, len(candidates) - 1), label=decl.scope)]
    target[decl.name] = value
    if decl.name == "mtu" and data.draw(st.booleans(), label="whole segment"):
        # one MTU per segment: the same value on every NIC of this bridge
        for _name, nic in items_of(hostvars, groups, "nic"):
            if nic.get("bridge") == target.get("bridge"):
                nic["mtu"] = value
    if decl.name in ("vm_kernel", "vm_initrd", "vm_disk") and data.draw(st.booleans(), label="own images"):
        # a kernel and a root disk go together (an initrd only with them)
        target.setdefault("vm_kernel", "/srv/own/bzImage")
        target.setdefault("vm_disk", "/srv/own/root.ext4")
    return target


def round_trips(plan):
    """The rendered arguments of every lab host, validated as each module validates its own arguments."""
    assert plan["hosts"] and sorted(plan["hosts"]) == sorted(plan["hypervisors"])
    for host in plan["hosts"].values():
        lab, netns = host["lab"], host["netns"]
        assert _validate.check_lab_name(lab) is None
        assert netns == "" or _validate.check_netns_name(netns) is None
        assert host["teardown"] == {"lab": lab, "netns": netns}
        # links: each item gets the task's netns and lab when it names none, then the module's spec and checks
        for kind, spec, items in (("bridge", bridge_argument_spec(), host["links"]["bridges"]),
                                  ("tap", tap_argument_spec(), host["links"]["taps"])):
            for item in items:
                assert _validate.check_ifname(item["name"]) is None
                item = dict(item, **dict((k, v) for k, v in (("netns", netns), ("lab", lab)) if item.get(k) is None))
                checked = ArgumentSpecValidator(spec).validate(item)
                assert not checked.error_messages, (kind, item, checked.error_messages)
                assert param_errors(kind, item["name"], checked.validated_parameters) == [], item
        for item in host["host_ports"]:
            assert _validate.check_ifname(item["name"]) is None and _validate.check_ifname(item["peer"]) is None
            checked = ArgumentSpecValidator(veth.argument_spec()).validate(dict(item))
            assert not checked.error_messages, (item, checked.error_messages)
            params = checked.validated_parameters
            assert param_errors("veth", item["name"], params) + param_errors(
                "veth", item["peer"], params, prefix="peer_") == [], item
        # qemu_vms: vm_launch's specs as qemu_vm_args hands them over, through qemu_vms's and qemu_vm's own checks
        specs = qemu_vm_specs(host["vms"], dict(VM_LAUNCH, lab=lab))
        checked = validated(qemu_vm_args(specs), lab, RUN_ROOT)
        assert [error for _name, _params, error in checked] == [None] * len(specs)
        for (name, params, _error), vm in zip(checked, host["vms"]):
            assert _validate.check_name(name, "vm") is None
            config = normalise_config(params)
            assert (config["name"], config["lab"], config["memory"], config["vcpus"]) == (
                vm["name"], lab, vm["memory"], vm["vcpus"])
            assert [(nic["mac"], nic.get("ifname")) for nic in config["nics"]] == [
                (nic["mac"], nic.get("ifname")) for nic in vm["nics"]]
            assert build_argv(config, "tcg")


UNSET_WHEN_EMPTY = ("lab_netns", "lab_qemu_user", "vm_gateway", "vm_kernel", "vm_initrd", "vm_disk")


def faithful(plan, hostvars, decl, vm_name, target, value):
    """A value the plan accepted is one the field's reader accepts, and its reading is what was rendered."""
    if value is None or (value == "" and decl.name in UNSET_WHEN_EMPTY):
        return  # unset
    read, why = decl.read(value)
    assert why is None, "the plan accepted %r for %s, which its reader refuses: %s" % (value, decl.name, why)
    host = plan["hosts"][plan["hypervisor"]]
    if decl.name == "lab_name":
        assert host["lab"] == read and all(vm["lab"] == read for vm in host["vms"])
    elif decl.name == "lab_netns":
        assert host["netns"] == read and all(vm["netns"] == read for vm in host["vms"])
    elif decl.name == "lab_console_log_limit":
        assert plan["console_log_limit"] == read and all(vm["console_log_limit"] == read for vm in host["vms"])
    elif decl.name == "lab_qemu_user":
        assert plan["qemu_user"] == read and all(vm["run_as"] == (read or None) for vm in host["vms"])
        assert all(tap["owner"] == (read or None) for tap in host["links"]["taps"])
    elif decl.scope == "vm":
        vm = next(vm for vm in host["vms"] if vm["name"] == vm_name)
        rendered = {"vm_memory": vm["memory"], "vm_vcpus": vm["vcpus"], "ansible_port": vm["ssh_port"],
                    "vm_kernel": vm["kernel"], "vm_initrd": vm["initrd"], "vm_disk": vm["disk"]}
        if decl.name in rendered:
            assert rendered[decl.name] == read, (decl.name, value, rendered[decl.name])
        if decl.name == "ansible_port":
            assert vm["nics"][-1]["hostfwd"] == [{"host_port": read, "guest_port": 22, "protocol": "tcp"}]
        guest = host["guests"][vm_name]
        if decl.name == "vm_forwarding":
            assert guest["forwarding"] is read
        if decl.name == "vm_gateway":
            assert guest["gateway"] == str(read)
    elif decl.scope == "nic" and decl.name in ("mac", "model", "vhost", "tap", "mtu"):
        vm = next(vm for vm in host["vms"] if vm["name"] == vm_name)
        index = next(i for i, nic in enumerate(dicts_in(hostvars[vm_name]["vm_nics"])) if nic is target)
        nic = vm["nics"][index]
        if nic["backend"] == "tap" or decl.name in ("mac", "model"):
            assert nic.get({"tap": "ifname"}.get(decl.name, decl.name)) == read, (decl.name, value, nic)
        if decl.name == "mtu" and nic["backend"] == "tap":
            tap, = [tap for tap in host["links"]["taps"] if tap["name"] == nic["ifname"]]
            assert tap.get("mtu") == read, (value, tap)


@ROUND_TRIP
@given(st.lists(mutations(), min_size=1, max_size=3), st.data())
def test_schema_values_are_refused_or_rendered_as_the_modules_accept_them(changes, data):
    hostvars, groups = schema_lab()
    # the hypervisors group is optional: without it (or empty) localhost is the lab host all the same
    layout = data.draw(st.sampled_from(["hypervisors", "none", "empty"]), label="hypervisors")
    if layout != "hypervisors":
        groups["hypervisors"] = []
        if layout == "none":
            del groups["hypervisors"]
    applied = []
    for where, value in changes:
        decl = _lab_schema.field(*where.split("."))
        target = apply_change(hostvars, groups, decl, value, data)
        if target is not None:
            applied.append((decl, target, value))
    plan = lab_plan(copy.deepcopy(hostvars), copy.deepcopy(groups), check_files=False)
    event("refused" if plan["errors"] else "accepted")
    if plan["errors"]:
        assert plan["hosts"] == plan["guests"] == {}
        return
    assert_complete_or_refused(plan)
    assert (plan["hypervisor"], plan["hypervisors"]) == ("localhost", ["localhost"])
    round_trips(plan)
    for decl, target, value in applied:
        if target.get(decl.name, None) is not value:
            continue  # overwritten by a later change
        owners = [name for name, item in items_of(hostvars, groups, decl.scope) if item is target]
        if owners:  # still in the inventory (a later change may have replaced the list holding it)
            faithful(plan, hostvars, decl, owners[0], target, value)


def test_the_schema_lab_itself_round_trips():
    hostvars, groups = schema_lab()
    plan = lab_plan(hostvars, groups, check_files=False)
    assert plan["errors"] == []
    round_trips(plan)
    assert [len(vm["nics"]) for vm in plan["hosts"]["localhost"]["vms"]] == [3, 3, 2]
    # every scope's items are where the mutations look for them
    assert all(len(items_of(hostvars, groups, scope)) >= 1 for scope in MUTABLE_SCOPES)
    assert len(items_of(hostvars, groups, "route")) == 2
