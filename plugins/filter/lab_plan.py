# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_plan: the inventory turned into one normalised plan of the lab, with every problem listed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: lab_plan
short_description: The lab inventory as a normalised plan, with every problem listed
version_added: 0.1.0
description:
  - Reads the lab's VMs (hosts of the groups C(routers) and C(hosts), children of C(lab)) and the lab-wide
    variables, and returns the plan the roles act on - bridges, taps, host ports and VMs with every default filled
    in - together with C(errors), a list of every problem found. Each error names the host, the field and the fix.
    Bad input never raises; the playbook stops on a non-empty C(errors) before anything on the host changes.
  - The lab-wide variables C(lab_name), C(lab_netns), C(lab_host_ports) and C(lab_qemu_user) are read from the hostvars of the
    hypervisor (the first host of group C(hypervisors); put them in C(group_vars/all.yml)). The keyword options of
    the same names override them.
  - VM variables - C(ansible_port) (the 127.0.0.1 port forwarded to the guest's sshd), C(vm_nics) (list of
    C(bridge), C(tap), C(mac), C(address), C(model), C(vhost), C(backend), C(net), C(hostfwd)), C(vm_routes) (list
    of C(to), C(via)), C(vm_nat) (routers; list of C(type) masquerade or static, C(inside), C(outside),
    C(inside_address), C(outside_address)), C(vm_gateway),
    C(vm_memory) (int MiB or C(512M)/C(1G), default C(1G)), C(vm_vcpus) (default 1), C(vm_forwarding) (default true
    for routers, false for hosts), C(vm_kernel), C(vm_initrd), C(vm_disk), C(vm_hypervisor).
  - A VM either uses the built guest image (no C(vm_kernel), C(vm_initrd), C(vm_disk)) or brings its own C(vm_kernel)
    and C(vm_disk) (C(vm_initrd) optional, only with C(vm_kernel)); those files must exist. They are looked up on the
    controller, which is the lab host while the only supported hypervisor is local.
  - A NIC without C(mac) gets a stable locally administered MAC derived from the lab name, the VM and the NIC's index.
    Every VM gets a stable management MAC (C(52:54:00:...)) for its user-mode NIC.
options:
  _input:
    description: C(hostvars).
    type: dict
    required: true
  groups:
    description: C(groups).
    type: dict
    required: true
  claims:
    description:
      - Lab names already claimed on the lab host, lab name to the inventory directory that claimed it (read from
        C(/run/qemulab/<lab>/lab.json)). A claim by another inventory is an error.
    type: dict
    default: {}
  lab_name:
    description: Overrides the hypervisor's C(lab_name).
    type: str
  lab_netns:
    description: Overrides the hypervisor's C(lab_netns).
    type: str
  lab_host_ports:
    description: Overrides the hypervisor's C(lab_host_ports).
    type: list
    elements: dict
  inventory_dir:
    description: Overrides the hypervisor's C(inventory_dir), compared with C(claims).
    type: str
  check_files:
    description: Whether to check that C(vm_kernel), C(vm_initrd) and C(vm_disk) exist.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Turn the inventory into a plan
  ansible.builtin.set_fact:
    lab_plan: "{{ hostvars | qemulab.network.lab_plan(groups) }}"

- name: Stop on an invalid inventory
  ansible.builtin.assert:
    that: lab_plan.errors | length == 0
    fail_msg: "{{ lab_plan.errors | join('\n') }}"
"""

RETURN = r"""
_value:
  description:
    - The plan - C(lab_name), C(netns) (empty when none), C(qemu_user) (empty for root), C(run_dir), C(hypervisor), C(bridges) (C(name), C(subnet)),
      C(taps) (C(name), C(bridge), C(vm)), C(host_ports) (C(name), C(peer), C(bridge), C(address), C(routes)),
      C(vms) and C(errors).
    - Each VM - C(name), C(kind) (router or host), C(hypervisor), C(ssh_port), C(memory_mb), C(vcpus), C(kernel),
      C(initrd), C(disk) (null for the built guest image), C(forwarding), C(gateway), C(routes) (C(to), C(via),
      C(dev)), C(nics) (C(index), C(dev), C(backend), C(bridge), C(tap), C(mac), C(address), C(model), C(vhost),
      C(net), C(hostfwd)), C(nat) (C(type), C(inside), C(outside), and C(inside_subnet) or C(inside_address) and
      C(outside_address)), C(mgmt_mac).
  type: dict
"""

import hashlib
import ipaddress
import os
import re

from ansible.module_utils.six.moves.collections_abc import Mapping

try:
    from jinja2 import Undefined
except ImportError:  # only Ansible's templating produces undefined values, and it always has jinja2
    Undefined = None

IFNAMSIZ_BYTES = 15
NIC_MODELS = ("virtio-net-pci", "e1000", "rtl8139")
VHOST_VALUES = ("auto", "on", "off")
DEFAULT_MEMORY_MB = 1024
RUN_ROOT = "/run/qemulab"
LAB_NAME_RE = re.compile(r"^[a-z0-9-]{1,15}\Z")
# Debian's useradd accepts these names (NAME_REGEX); a uid is accepted too.
QEMU_USER_RE = re.compile(r"^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})\Z")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MEMORY_RE = re.compile(r"^\s*([0-9]+)\s*(?:([MG])(?:i?B)?)?\s*$", re.IGNORECASE)
NIC_KEYS = ("bridge", "tap", "mac", "address", "model", "vhost", "backend", "net", "hostfwd")
NIC_BACKENDS = ("tap", "user")
HOSTFWD_KEYS = ("host_port", "guest_port", "protocol")
# QEMU's user-mode network of the management NIC (the guest's mgmt0 is 10.0.2.15/24 there)
MGMT_NET = ipaddress.ip_network("10.0.2.0/24")
DEFAULT_USER_NET = "10.0.3.0/24"
NAT_TYPES = ("masquerade", "static")
NAT_KEYS = {"masquerade": ("type", "inside", "outside"),
            "static": ("type", "inside", "outside", "inside_address", "outside_address")}
ROUTE_KEYS = ("to", "via")
HOST_PORT_KEYS = ("name", "peer", "bridge", "address", "routes")

_MISSING = object()


class _Problems(object):
    """Collects every error; `add` takes the owner (host or 'lab'), the field and the message with its fix."""

    def __init__(self):
        self.messages = []
        # (owner, variable) pairs that failed to render: reported once, never again as "not set"
        self.unrenderable = set()

    def add(self, owner, field, message):
        self.messages.append("%s: %s %s" % (owner, field, message))


def _plain(value):
    """A deep copy in plain dict/list/str, rendering Ansible's lazy containers now so a bad template fails here."""
    if Undefined is not None and isinstance(value, Undefined):
        # Ansible 2.19 hands over an undefined value as a marker that only fails when the result is finalised
        raise ValueError(getattr(value, "_undefined_message", None) or "a value is undefined")
    if isinstance(value, Mapping):
        return dict((_plain(key), _plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    return value


def _get(mapping, key, problems, owner):
    """One variable of a hostvars entry; a template that fails to render is a problem, not a traceback."""
    try:
        if key not in mapping:
            return _MISSING
        return _plain(mapping[key])
    except Exception as exc:  # templating errors of any kind surface here in Ansible's lazy hostvars
        problems.add(owner, key, "cannot be rendered (%s); fix the variable's template" % _short(exc))
        problems.unrenderable.add((owner, key))
        return _MISSING


def _short(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_str(value):
    return isinstance(value, str)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value):
    """Ints and digit strings (INI inventories give strings) as int; anything else None."""
    if _is_int(value):
        return value
    if _is_str(value) and value.strip().isdigit():
        return int(value.strip())
    return None


def _describe(value):
    if _is_str(value):
        return repr(str(value))
    if value is None:
        return "nothing"
    return "%r (a %s)" % (value, type(value).__name__)


def _ifname_problem(name):
    """Why `name` cannot be a Linux interface name, or None."""
    if not _is_str(name) or not name:
        return "must be a non-empty string"
    if len(name.encode("utf-8")) > IFNAMSIZ_BYTES:
        return "%r is %d bytes, over the kernel's limit of %d" % (
            str(name), len(name.encode("utf-8")), IFNAMSIZ_BYTES)
    if name in (".", "..") or re.search(r"[\s/:]", name):
        return "%r is not a valid interface name (no whitespace, '/' or ':')" % str(name)
    return None


def _mac_problem(mac):
    if not _is_str(mac) or not MAC_RE.match(mac.strip().lower()):
        return "%s is not a MAC address; write six hex pairs like 12:34:56:ab:cd:71" % _describe(mac)
    first = int(mac.strip()[:2], 16)
    if first & 1:
        return "%s is a multicast MAC; a NIC needs a unicast one (even first octet)" % mac
    if mac.strip().lower() == "00:00:00:00:00:00":
        return "00:00:00:00:00:00 is not usable; give the NIC a real MAC"
    return None


def _interface(value):
    """An IPv4 'address/prefix' as ipaddress.IPv4Interface, or an error text."""
    if _is_str(value) and "/" not in value:
        try:
            ipaddress.ip_address(value.strip())
            return None, "%s has no prefix length; write it with one, like %s/24" % (value, value.strip())
        except ValueError:
            pass
    if not _is_str(value) or "/" not in value:
        return None, "%s is not an address with prefix length; write it like 10.20.10.1/24" % _describe(value)
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        return None, "%s is not an address with prefix length; write it like 10.20.10.1/24" % _describe(value)
    if iface.version != 4:
        return None, "%s is not IPv4; the lab is IPv4 only" % value
    reserved = (iface.network.network_address, iface.network.broadcast_address)
    if iface.network.prefixlen < 31 and iface.ip in reserved:
        return None, "%s is the network or broadcast address of %s; pick a host address" % (value, iface.network)
    return iface, None


def _address(value):
    if value is None:
        return None, "is not set; give the gateway's address, like 10.20.10.1"
    if not _is_str(value):
        return None, "%s is not an IPv4 address; write it like 10.20.10.1" % _describe(value)
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None, "%s is not an IPv4 address; write it like 10.20.10.1" % _describe(value)
    if address.version != 4:
        return None, "%s is not IPv4; the lab is IPv4 only" % value
    return address, None


def _network(value):
    """A route destination: a network in CIDR form (host bits clear) or 'default'."""
    if value is None:
        return None, "is not set; give the destination network, like 10.20.60.0/24"
    if _is_str(value) and value.strip() == "default":
        return ipaddress.ip_network("0.0.0.0/0"), None
    if not _is_str(value):
        return None, "%s is not a network; write it like 10.20.60.0/24" % _describe(value)
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None, "%s is not a network; write it like 10.20.60.0/24" % _describe(value)
    if network.version != 4:
        return None, "%s is not IPv4; the lab is IPv4 only" % value
    if str(network) != value.strip() and "/" in value:
        return None, "%s has host bits set; the network is %s" % (value, network)
    if "/" not in value:
        return None, "%s is an address, not a network; write it with its prefix, like %s/32" % (value, value)
    return network, None


def memory_mb(value):
    """vm_memory (int MiB, '512M', '1G', '1024') as MiB, or None when it means nothing."""
    if _is_int(value):
        return value if value > 0 else None
    if not _is_str(value):
        return None
    match = MEMORY_RE.match(value)
    if not match:
        return None
    amount = int(match.group(1)) * (1024 if (match.group(2) or "").upper() == "G" else 1)
    return amount if amount > 0 else None


def derived_mac(lab_name, vm, slot, prefix="02"):
    """A stable MAC from lab, VM and slot; prefix 02 is locally administered unicast, 52:54:00 QEMU's own range."""
    digest = hashlib.sha256(("%s/%s/%s" % (lab_name, vm, slot)).encode("utf-8")).hexdigest()
    octets = prefix.split(":")
    octets += [digest[2 * i:2 * i + 2] for i in range(6 - len(octets))]
    return ":".join(octets)


def _unique_mac(lab_name, vm, slot, prefix, used):
    attempt = 0
    while True:
        mac = derived_mac(lab_name, vm, slot if attempt == 0 else "%s#%d" % (slot, attempt), prefix)
        if mac not in used:
            return mac
        attempt += 1


def _check_keys(mapping, known, owner, field, problems):
    for key in sorted(str(k) for k in mapping):
        if key not in known:
            problems.add(owner, "%s.%s" % (field, key), "is not a known key; use only %s" % ", ".join(known))


def _mapping_items(value, owner, field, problems, shape, example, keys):
    """(index, item field, item) for each mapping in the list `value`; a non-list, a non-mapping item and unknown
    keys are reported (`shape` and `example` show the fix)."""
    if not isinstance(value, (list, tuple)):
        problems.add(owner, field, "%s is not a list; write a list of %s" % (_describe(value), shape))
        return []
    items = []
    for index, raw in enumerate(value):
        item_field = "%s[%d]" % (field, index)
        if not _is_mapping(raw):
            problems.add(owner, item_field, "%s is not a mapping; write %s" % (_describe(raw), example))
            continue
        _check_keys(raw, keys, owner, item_field, problems)
        items.append((index, item_field, raw))
    return items


class _Planner(object):
    def __init__(self, hostvars, groups, claims, overrides, check_files):
        self.hostvars = hostvars if _is_mapping(hostvars) else {}
        self.groups = groups if _is_mapping(groups) else {}
        self.claims = claims if _is_mapping(claims) else {}
        self.overrides = overrides
        self.check_files = check_files
        self.problems = _Problems()
        # address -> (owner, field) of its first user, for duplicates across VMs and host ports
        self.addresses = {}
        self.macs = {}
        self.ifnames = {}
        # bridge -> list of (owner, field, IPv4Interface) on it
        self.segments = {}
        self.bridge_order = []
        # VMs whose NICs could not all be read: their routes are not checked against segments, to avoid cascades
        self.unresolved = set()
        # (host_port, protocol) -> "vm field" of user-mode NIC forwards; (vm, field, network) of user-mode NICs
        self.forwards = {}
        self.user_nets = []

    # -- inventory access -------------------------------------------------------------------------------------
    def host_vars(self, host):
        try:
            if host in self.hostvars:
                entry = self.hostvars[host]
                return entry if _is_mapping(entry) else {}
        except Exception as exc:
            self.problems.add(host, "hostvars", "cannot be read (%s)" % _short(exc))
        return {}

    def group(self, name):
        members = self.groups.get(name) if _is_mapping(self.groups) else None
        if not isinstance(members, (list, tuple)):
            return []
        return [str(m) for m in members if _is_str(m)]

    # -- the plan ---------------------------------------------------------------------------------------------
    def plan(self):
        problems = self.problems
        hypervisors = self.group("hypervisors")
        hypervisor = hypervisors[0] if hypervisors else None
        if not hypervisors:
            problems.add("lab", "groups.hypervisors", "is empty; add localhost to group hypervisors with "
                         "ansible_connection: local")
        hv_vars = self.host_vars(hypervisor) if hypervisor else {}
        hv_owner = hypervisor or "lab"

        lab_name = self.lab_var("lab_name", hv_vars, hv_owner)
        lab_netns = self.lab_var("lab_netns", hv_vars, hv_owner)
        host_ports_in = self.lab_var("lab_host_ports", hv_vars, hv_owner)
        qemu_user = self.lab_var("lab_qemu_user", hv_vars, hv_owner)
        inventory_dir = self.lab_var("inventory_dir", hv_vars, hv_owner)

        if (hv_owner, "lab_name") in problems.unrenderable:
            lab_name = ""
        elif lab_name is _MISSING or lab_name is None:
            problems.add(hv_owner, "lab_name", "is not set; set lab_name (up to 15 of a-z, 0-9, -) in "
                         "group_vars/all.yml")
            lab_name = ""
        elif not _is_str(lab_name) or not LAB_NAME_RE.match(lab_name):
            problems.add(hv_owner, "lab_name", "%s is not a lab name; use 1 to 15 characters of a-z, 0-9 and -"
                         % _describe(lab_name))
            lab_name = str(lab_name) if _is_str(lab_name) else ""
        lab_name = str(lab_name)

        if lab_netns is _MISSING or lab_netns is None:
            lab_netns = ""
        elif not _is_str(lab_netns):
            problems.add(hv_owner, "lab_netns", "%s is not a namespace name; give a name or \"\" for none"
                         % _describe(lab_netns))
            lab_netns = ""
        elif lab_netns:
            why = _ifname_problem(lab_netns)
            if why:
                problems.add(hv_owner, "lab_netns", "%s; choose a shorter plain name" % why)
        lab_netns = str(lab_netns)

        if qemu_user is _MISSING or qemu_user is None or qemu_user == "":
            qemu_user = ""
        elif not (_is_str(qemu_user) or _is_int(qemu_user)) or not QEMU_USER_RE.match(str(qemu_user)):
            problems.add(hv_owner, "lab_qemu_user", "%s is not a user name; give an unprivileged user's name (like "
                         "qemulab) or \"\" to run QEMU as root" % _describe(qemu_user))
            qemu_user = ""
        elif str(qemu_user) in ("root", "0"):
            qemu_user = ""
        qemu_user = str(qemu_user)

        self.check_claim(lab_name, inventory_dir, hv_owner)

        vms = self.plan_vms(lab_name, hypervisors)
        host_ports = self.plan_host_ports(host_ports_in, hv_owner)
        bridges = self.plan_bridges()
        self.check_interface_names()
        self.check_user_nets(vms)
        self.resolve_routes(vms)
        self.resolve_nat(vms)
        for vm in vms:
            for nic in vm["nics"]:
                nic.pop("_iface", None)
        self.assign_macs(lab_name, vms)

        taps = []
        for vm in vms:
            for nic in vm["nics"]:
                if nic["tap"]:
                    taps.append({"name": nic["tap"], "bridge": nic["bridge"], "vm": vm["name"]})
        for vm in vms:
            vm.pop("_routes_in", None)
            vm.pop("_gateway_in", None)
            vm.pop("_nat_in", None)
        return {
            "lab_name": lab_name,
            "netns": lab_netns,
            "qemu_user": qemu_user,
            "run_dir": "%s/%s" % (RUN_ROOT, lab_name),
            "hypervisor": hypervisor,
            "bridges": bridges,
            "taps": taps,
            "host_ports": host_ports,
            "vms": vms,
            "errors": list(problems.messages),
        }

    def lab_var(self, name, hv_vars, owner):
        if self.overrides.get(name) is not None:
            return self.overrides[name]
        return _get(hv_vars, name, self.problems, owner)

    def check_claim(self, lab_name, inventory_dir, owner):
        if not lab_name or lab_name not in self.claims:
            return
        claimed = self.claims[lab_name]
        here = inventory_dir if _is_str(inventory_dir) else ""
        if _norm_path(claimed) != _norm_path(here):
            self.problems.add(owner, "lab_name", "%s is already claimed by the running lab of inventory %s (this is "
                              "%s); tear that lab down first or choose another lab_name"
                              % (lab_name, claimed, here or "an inventory without a directory"))

    # -- VMs --------------------------------------------------------------------------------------------------
    def vm_names(self, hypervisors):
        routers, hosts = self.group("routers"), self.group("hosts")
        names = []
        for name in self.group("lab") + routers + hosts:
            if name not in names and name not in hypervisors:
                names.append(name)
        # a host outside lab/routers/hosts that still describes NICs was most likely meant to be a VM
        for name in self.group("all") + self.group("ungrouped"):
            if name in names or name in hypervisors:
                continue
            if "vm_nics" in self.host_vars(name):
                names.append(name)
        return names, routers, hosts

    def plan_vms(self, lab_name, hypervisors):
        problems = self.problems
        names, routers, hosts = self.vm_names(hypervisors)
        for name in sorted(set(self.group("lab") + routers + hosts) & set(hypervisors)):
            problems.add(name, "groups", "is both a hypervisor and a lab VM; keep the lab host out of "
                         "routers, hosts and lab")
        if not names:
            problems.add("lab", "groups", "define no VMs; add VMs to group routers or hosts (children of lab)")
        ports = {}
        vms = []
        for name in names:
            hv = self.host_vars(name)
            if name in routers and name in hosts:
                problems.add(name, "groups", "is in both routers and hosts; put it in exactly one")
            elif name not in routers and name not in hosts:
                problems.add(name, "groups", "is in neither routers nor hosts; put it in exactly one")
            kind = "router" if name in routers else "host"
            vm = {
                "name": name,
                "kind": kind,
                "hypervisor": self.vm_hypervisor(name, hv, hypervisors),
                "ssh_port": self.vm_port(name, hv, ports),
                "memory_mb": self.vm_memory(name, hv),
                "vcpus": self.vm_vcpus(name, hv),
                "kernel": None,
                "initrd": None,
                "disk": None,
                "forwarding": self.vm_forwarding(name, hv, kind),
                "gateway": None,
                "routes": [],
                "nics": self.vm_nics(name, hv),
                "mgmt_mac": None,
                "_routes_in": _get(hv, "vm_routes", problems, name),
                "_gateway_in": _get(hv, "vm_gateway", problems, name),
                "_nat_in": _get(hv, "vm_nat", problems, name),
                "nat": [],
            }
            self.vm_boot_files(vm, hv)
            vms.append(vm)
        return vms

    def vm_hypervisor(self, name, hv, hypervisors):
        value = _get(hv, "vm_hypervisor", self.problems, name)
        default = hypervisors[0] if hypervisors else None
        if value is _MISSING or value is None:
            return default
        if not _is_str(value) or value not in hypervisors:
            self.problems.add(name, "vm_hypervisor", "%s is not a host of group hypervisors (%s); name one of them"
                              % (_describe(value), ", ".join(hypervisors) or "empty"))
            return default
        if value != default:
            self.problems.add(name, "vm_hypervisor", "%s: only one hypervisor (%s) is supported so far; place the "
                              "VM on %s" % (value, default, default))
        return str(value)

    def vm_port(self, name, hv, ports):
        value = _get(hv, "ansible_port", self.problems, name)
        if (name, "ansible_port") in self.problems.unrenderable:
            return None
        if value is _MISSING or value is None:
            self.problems.add(name, "ansible_port", "is not set; give every VM its own 127.0.0.1 port for SSH "
                              "(1024-65535)")
            return None
        port = _as_int(value)
        if port is None:
            self.problems.add(name, "ansible_port", "%s is not a port number; use an integer 1024-65535"
                              % _describe(value))
            return None
        if not 1024 <= port <= 65535:
            self.problems.add(name, "ansible_port", "%d is outside 1024-65535; pick an unprivileged port" % port)
            return None
        if port in ports:
            self.problems.add(name, "ansible_port", "%d is already used by %s; give every VM its own port"
                              % (port, ports[port]))
        else:
            ports[port] = name
        return port

    def vm_memory(self, name, hv):
        value = _get(hv, "vm_memory", self.problems, name)
        if value is _MISSING or value is None:
            return DEFAULT_MEMORY_MB
        mb = memory_mb(value)
        if mb is None:
            self.problems.add(name, "vm_memory", "%s is not a memory size; write MiB as an integer or a size like "
                              "512M or 1G" % _describe(value))
            return DEFAULT_MEMORY_MB
        return mb

    def vm_vcpus(self, name, hv):
        value = _get(hv, "vm_vcpus", self.problems, name)
        if value is _MISSING or value is None:
            return 1
        vcpus = _as_int(value)
        if vcpus is None or vcpus < 1:
            self.problems.add(name, "vm_vcpus", "%s is not a positive integer; give the number of CPUs, e.g. 1"
                              % _describe(value))
            return 1
        return vcpus

    def vm_forwarding(self, name, hv, kind):
        value = _get(hv, "vm_forwarding", self.problems, name)
        if value is _MISSING or value is None:
            return kind == "router"
        if not isinstance(value, bool):
            self.problems.add(name, "vm_forwarding", "%s is not a boolean; write true or false" % _describe(value))
            return kind == "router"
        return value

    def vm_boot_files(self, vm, hv):
        name = vm["name"]
        given = {}
        for field in ("vm_kernel", "vm_initrd", "vm_disk"):
            value = _get(hv, field, self.problems, name)
            if value is _MISSING or value is None or value == "":
                continue
            if not _is_str(value):
                self.problems.add(name, field, "%s is not a path; give the file's absolute path" % _describe(value))
                continue
            if not os.path.isabs(value):
                self.problems.add(name, field, "%s is not an absolute path; give the file's absolute path" % value)
            elif self.check_files and not os.path.isfile(value):
                self.problems.add(name, field, "%s does not exist on the lab host; fix the path or drop %s to use "
                                  "the built guest image" % (value, field))
            given[field] = str(value)
        if ("vm_kernel" in given) != ("vm_disk" in given):
            missing = "vm_disk" if "vm_kernel" in given else "vm_kernel"
            self.problems.add(name, missing, "is not set while %s is; a VM brings its own kernel and root disk "
                              "together, or neither for the built guest image"
                              % ("vm_kernel" if missing == "vm_disk" else "vm_disk"))
        if "vm_initrd" in given and "vm_kernel" not in given:
            self.problems.add(name, "vm_initrd", "is set without vm_kernel; an initrd only goes with its kernel")
        vm["kernel"] = given.get("vm_kernel")
        vm["initrd"] = given.get("vm_initrd")
        vm["disk"] = given.get("vm_disk")

    def vm_nics(self, name, hv):
        problems = self.problems
        value = _get(hv, "vm_nics", problems, name)
        if not isinstance(value, (list, tuple)) or not value:
            self.unresolved.add(name)
        if (name, "vm_nics") in problems.unrenderable:
            return []
        if value is _MISSING or value is None:
            problems.add(name, "vm_nics", "is not set; give the VM at least one NIC {bridge, tap, address}")
            return []
        if not isinstance(value, (list, tuple)):
            problems.add(name, "vm_nics", "%s is not a list; write a list of {bridge, tap, mac, address}"
                         % _describe(value))
            return []
        if not value:
            problems.add(name, "vm_nics", "is empty; give the VM at least one NIC {bridge, tap, address}")
        nics = []
        for index, raw in enumerate(value):
            field = "vm_nics[%d]" % index
            if not _is_mapping(raw):
                problems.add(name, field, "%s is not a mapping; write {bridge, tap, mac, address}" % _describe(raw))
                self.unresolved.add(name)
                continue
            _check_keys(raw, NIC_KEYS, name, field, problems)
            nic = {"index": index, "dev": "eth%d" % index, "backend": "tap", "bridge": None, "tap": None,
                   "mac": None, "address": None, "model": "virtio-net-pci", "vhost": "auto", "net": None,
                   "hostfwd": []}
            backend = raw.get("backend")
            if backend is not None and backend not in NIC_BACKENDS:
                problems.add(name, field + ".backend", "%s is not tap or user; use tap (a bridge port) or user "
                             "(QEMU user-mode networking)" % _describe(backend))
            elif backend is not None:
                nic["backend"] = str(backend)
            self.nic_mac_model(name, field, raw, nic)
            if nic["backend"] == "user":
                self.user_nic(name, field, raw, nic)
                nics.append(nic)
                continue
            for key in ("net", "hostfwd"):
                if raw.get(key) is not None:
                    problems.add(name, "%s.%s" % (field, key), "only applies to backend user; drop it or set "
                                 "backend: user")
            for key in ("bridge", "tap"):
                item = raw.get(key)
                if item is None:
                    problems.add(name, "%s.%s" % (field, key), "is not set; name the %s of eth%d"
                                 % (key, index))
                    continue
                why = _ifname_problem(item)
                if why:
                    problems.add(name, "%s.%s" % (field, key), "%s; choose a name of at most 15 bytes" % why)
                    continue
                nic[key] = str(item)
                self.ifnames.setdefault(str(item), []).append((key, name, "%s.%s" % (field, key)))
            vhost = raw.get("vhost")
            if vhost is not None:
                # YAML reads a bare on/off as a boolean
                vhost = {True: "on", False: "off"}.get(vhost, vhost) if isinstance(vhost, bool) else vhost
                if vhost not in VHOST_VALUES:
                    problems.add(name, field + ".vhost", "%s is not auto, on or off; use one of them"
                                 % _describe(raw.get("vhost")))
                else:
                    nic["vhost"] = str(vhost)
            if nic["vhost"] == "on" and nic["model"] != "virtio-net-pci":
                problems.add(name, field + ".vhost", "is on but vhost only works with virtio-net-pci; use auto or "
                             "off, or model virtio-net-pci")
            address = raw.get("address")
            if address is not None:
                iface, why = _interface(address)
                if why:
                    problems.add(name, field + ".address", why)
                    self.unresolved.add(name)
                else:
                    nic["address"] = str(iface)
                    nic["_iface"] = iface
                    self.claim_address(iface, name, field + ".address")
            if nic["bridge"]:
                if nic["bridge"] not in self.segments:
                    self.segments[nic["bridge"]] = []
                    self.bridge_order.append(nic["bridge"])
                if nic.get("_iface"):
                    self.segments[nic["bridge"]].append((name, field + ".address", nic["_iface"]))
            nics.append(nic)
        return nics

    def nic_mac_model(self, name, field, raw, nic):
        problems = self.problems
        mac = raw.get("mac")
        if mac is not None:
            why = _mac_problem(mac)
            if why:
                problems.add(name, field + ".mac", why)
            else:
                nic["mac"] = mac.strip().lower()
                self.claim_mac(nic["mac"], name, field + ".mac")
        model = raw.get("model")
        if model is not None:
            if model not in NIC_MODELS:
                problems.add(name, field + ".model", "%s is not a supported NIC model; use one of %s"
                             % (_describe(model), ", ".join(NIC_MODELS)))
            else:
                nic["model"] = str(model)

    def user_nic(self, name, field, raw, nic):
        """A QEMU user-mode (SLIRP) NIC: its own private network, always restricted, forwards on 127.0.0.1 only."""
        problems = self.problems
        nic["vhost"] = None
        for key in ("bridge", "tap", "vhost"):
            if raw.get(key) is not None:
                problems.add(name, "%s.%s" % (field, key), "does not apply to a user-mode NIC (QEMU's own network, "
                             "no bridge or tap); drop it or use backend: tap")
        net_in = raw.get("net") if raw.get("net") is not None else DEFAULT_USER_NET
        net, why = _network(net_in)
        if not why and net.prefixlen > 29:
            why = "%s is too small for SLIRP's gateway (.2), DNS (.3) and guest; use a /24 like %s" % (
                net, DEFAULT_USER_NET)
        if not why and net.overlaps(MGMT_NET):
            why = "%s overlaps %s, the management NIC's user-mode network; use another, like %s" % (
                net, MGMT_NET, DEFAULT_USER_NET)
        if why:
            problems.add(name, field + ".net", why)
            return
        nic["net"] = str(net)
        self.user_nets.append((name, field + ".net", net))
        address = raw.get("address")
        if address is None:
            # SLIRP's DHCP hands out .15 first; the guest gets the same address statically (no DHCP client)
            nic["address"] = "%s/%d" % (net.network_address + 15, net.prefixlen)
        else:
            iface, why = _interface(address)
            if not why and iface.network != net:
                why = "%s is not in the user-mode network %s; use an address in it, like %s/%d" % (
                    address, net, net.network_address + 15, net.prefixlen)
            if not why and iface.ip in (net.network_address + 2, net.network_address + 3):
                why = "%s is SLIRP's own gateway or DNS address; use another, like %s/%d" % (
                    address, net.network_address + 15, net.prefixlen)
            if why:
                problems.add(name, field + ".address", why)
            else:
                nic["address"] = str(iface)
        forwards = raw.get("hostfwd")
        if forwards is None:
            return
        if nic["address"] and ipaddress.ip_interface(nic["address"]).ip != net.network_address + 15:
            # QEMU forwards to SLIRP's first DHCP address when hostfwd names no guest address
            first = net.network_address + 15
            problems.add(name, field + ".address", "%s is not %s, where QEMU delivers the forwards; drop address "
                         "or use %s/%d" % (nic["address"], first, first, net.prefixlen))
        for _index, fwd_field, fwd in _mapping_items(forwards, name, field + ".hostfwd", problems,
                                                     "{host_port, guest_port, protocol}",
                                                     "{host_port: 8080, guest_port: 80}", HOSTFWD_KEYS):
            host_port, guest_port = _as_int(fwd.get("host_port")), _as_int(fwd.get("guest_port"))
            protocol = fwd.get("protocol", "tcp")
            ok = True
            if host_port is None or not 1024 <= host_port <= 65535:
                problems.add(name, fwd_field + ".host_port", "%s is not a port 1024-65535; pick a free unprivileged "
                             "port on 127.0.0.1" % _describe(fwd.get("host_port")))
                ok = False
            if guest_port is None or not 1 <= guest_port <= 65535:
                problems.add(name, fwd_field + ".guest_port", "%s is not a port 1-65535; give the guest's port"
                             % _describe(fwd.get("guest_port")))
                ok = False
            if protocol not in ("tcp", "udp"):
                problems.add(name, fwd_field + ".protocol", "%s is not tcp or udp; use one of them"
                             % _describe(protocol))
                ok = False
            if not ok:
                continue
            if (host_port, protocol) in self.forwards:
                problems.add(name, fwd_field + ".host_port", "%d/%s is already forwarded by %s; give every forward "
                             "its own port" % (host_port, protocol, self.forwards[(host_port, protocol)]))
                continue
            self.forwards[(host_port, protocol)] = "%s %s" % (name, fwd_field)
            nic["hostfwd"].append({"host_port": host_port, "guest_port": guest_port, "protocol": str(protocol)})

    def claim_mac(self, mac, owner, field):
        if mac in self.macs:
            first_owner, first_field = self.macs[mac]
            self.problems.add(owner, field, "%s is already used by %s %s; give every NIC its own MAC"
                              % (mac, first_owner, first_field))
        else:
            self.macs[mac] = (owner, field)

    def claim_address(self, iface, owner, field):
        if iface.ip in self.addresses:
            first_owner, first_field = self.addresses[iface.ip]
            self.problems.add(owner, field, "%s is already used by %s %s; give every interface its own address"
                              % (iface.ip, first_owner, first_field))
        else:
            self.addresses[iface.ip] = (owner, field)

    # -- host ports -------------------------------------------------------------------------------------------
    def plan_host_ports(self, value, owner):
        problems = self.problems
        if value is _MISSING or value is None:
            return []
        if not isinstance(value, (list, tuple)):
            problems.add(owner, "lab_host_ports", "%s is not a list; write a list of {name, peer, bridge, "
                         "address, routes}" % _describe(value))
            return []
        ports = []
        for index, raw in enumerate(value):
            field = "lab_host_ports[%d]" % index
            if not _is_mapping(raw):
                problems.add(owner, field, "%s is not a mapping; write {name, peer, bridge, address, routes}"
                             % _describe(raw))
                continue
            _check_keys(raw, HOST_PORT_KEYS, owner, field, problems)
            port = {"name": None, "peer": None, "bridge": None, "address": None, "routes": []}
            for key in ("name", "peer", "bridge"):
                item = raw.get(key)
                if item is None:
                    problems.add(owner, "%s.%s" % (field, key), "is not set; name the %s" % {
                        "name": "veth end enslaved to the bridge", "peer": "veth end carrying the address",
                        "bridge": "segment the port joins"}[key])
                    continue
                why = _ifname_problem(item)
                if why:
                    problems.add(owner, "%s.%s" % (field, key), "%s; choose a name of at most 15 bytes" % why)
                    continue
                port[key] = str(item)
                if key != "bridge":
                    self.ifnames.setdefault(str(item), []).append(("veth", owner, "%s.%s" % (field, key)))
            if port["bridge"] and port["bridge"] not in self.segments:
                problems.add(owner, field + ".bridge", "%s is used by no VM NIC; attach the port to a bridge of "
                             "the lab (%s)" % (port["bridge"], ", ".join(sorted(self.segments)) or "none"))
            iface = None
            address = raw.get("address")
            if address is not None:
                iface, why = _interface(address)
                if why:
                    problems.add(owner, field + ".address", why)
                    iface = None
                else:
                    port["address"] = str(iface)
                    self.claim_address(iface, owner, field + ".address")
                    if port["bridge"] in self.segments:
                        self.segments[port["bridge"]].append((owner, field + ".address", iface))
            routes = raw.get("routes")
            if routes is not None:
                nets = [iface.network] if iface else []
                own = [iface.ip] if iface else []
                port["routes"] = [
                    {"to": r["to"], "via": r["via"]}
                    for r in self.parse_routes(routes, owner, field + ".routes", nets, "the port's address", own)]
            ports.append(port)
        return ports

    # -- segments ---------------------------------------------------------------------------------------------
    def plan_bridges(self):
        problems = self.problems
        subnets = {}
        for bridge in self.bridge_order:
            members = self.segments[bridge]
            if not members:
                subnets[bridge] = None
                continue
            first_owner, first_field, first = members[0]
            subnets[bridge] = first.network
            for member_owner, field, iface in members[1:]:
                if iface.network != first.network:
                    problems.add(member_owner, field, "%s is not in %s, the subnet of bridge %s (set by %s %s); "
                                 "all addresses on one bridge share a subnet" % (
                                     iface, first.network, bridge, first_owner, first_field))
        known = [(b, subnets[b]) for b in self.bridge_order if subnets[b] is not None]
        for i, (bridge_a, net_a) in enumerate(known):
            for bridge_b, net_b in known[i + 1:]:
                if net_a.overlaps(net_b):
                    a_owner, a_field, _address = self.segments[bridge_a][0]
                    b_owner, b_field, b_iface = self.segments[bridge_b][0]
                    problems.add(b_owner, b_field, "%s puts bridge %s in %s, which overlaps %s of bridge %s (set by "
                                 "%s %s); give every bridge its own subnet" % (
                                     b_iface, bridge_b, net_b, net_a, bridge_a, a_owner, a_field))
        self.subnets = subnets
        return [{"name": b, "subnet": str(subnets[b]) if subnets[b] else None} for b in sorted(subnets)]

    def check_interface_names(self):
        """Bridges, taps and veth ends share one namespace of link names."""
        for ifname in sorted(self.ifnames):
            uses = self.ifnames[ifname]
            bridge_uses = [u for u in uses if u[0] == "bridge"]
            other_uses = [u for u in uses if u[0] != "bridge"]
            if bridge_uses and other_uses:
                kind, who, field = other_uses[0]
                self.problems.add(who, field, "%s is also the name of a bridge (%s %s); give the %s another name"
                                  % (ifname, bridge_uses[0][1], bridge_uses[0][2], "tap" if kind == "tap" else
                                     "veth end"))
            for kind, who, field in other_uses[1:]:
                first_kind, first_who, first_field = other_uses[0]
                self.problems.add(who, field, "%s is already used by %s %s; give every %s its own name"
                                  % (ifname, first_who, first_field, "tap" if kind == "tap" else "interface"))

    # -- routes -----------------------------------------------------------------------------------------------
    def parse_routes(self, value, owner, field, networks, where, own_addresses):
        """[{to, via}] -> [{to, via, network, gateway}] keeping only the valid ones.

        `networks` are the owner's attached subnets (None: unknown, skip the checks that need them)."""
        problems = self.problems
        routes = []
        seen = {}
        for index, item_field, raw in _mapping_items(value, owner, field, problems, "{to, via}",
                                                     "{to: 10.20.60.0/24, via: 10.20.20.2}", ROUTE_KEYS):
            network, why_to = _network(raw.get("to"))
            if why_to:
                problems.add(owner, item_field + ".to", why_to)
            gateway, why_via = _address(raw.get("via"))
            if why_via:
                problems.add(owner, item_field + ".via", why_via)
            if why_to or why_via:
                continue
            if networks is None:
                pass
            elif networks and not any(gateway in net for net in networks):
                problems.add(owner, item_field + ".via", "%s is on no segment of %s (%s); use a gateway on one "
                             "of them" % (gateway, where, ", ".join(str(n) for n in networks)))
                continue
            elif not networks:
                problems.add(owner, item_field + ".via", "%s cannot be reached: %s has no address; give it an "
                             "address on the gateway's segment" % (gateway, where))
                continue
            if gateway in own_addresses:
                problems.add(owner, item_field + ".via", "%s is %s own address; route via a neighbour's address"
                             % (gateway, "the port's" if field.startswith("lab_host_ports") else "the VM's"))
                continue
            # the kernel refuses a second route to one destination, and already has one to an attached segment
            if networks and network in networks:
                problems.add(owner, item_field + ".to", "%s is a segment of %s, reached directly; drop this route"
                             % (network, where))
                continue
            if network in seen:
                problems.add(owner, item_field + ".to", "%s is already routed by %s[%d]; keep one route per "
                             "destination" % (network, field, seen[network]))
                continue
            seen[network] = index
            routes.append({"to": str(network), "via": str(gateway), "network": network, "gateway": gateway})
        return routes

    def resolve_routes(self, vms):
        for vm in vms:
            name = vm["name"]
            attached = [(nic["dev"], nic["_iface"].network) for nic in vm["nics"] if nic.get("_iface")]
            networks = None if name in self.unresolved else [net for _nic, net in attached]
            routes_in = vm["_routes_in"]
            if routes_in is not _MISSING and routes_in is not None:
                own = [nic["_iface"].ip for nic in vm["nics"] if nic.get("_iface")]
                for route in self.parse_routes(routes_in, name, "vm_routes", networks, "the VM's NICs", own):
                    dev = next((dev for dev, net in attached if route["gateway"] in net), None)
                    if dev:
                        vm["routes"].append({"to": route["to"], "via": route["via"], "dev": dev})
            gateway_in = vm["_gateway_in"]
            if gateway_in is not _MISSING and gateway_in is not None and gateway_in != "":
                gateway, why = _address(gateway_in)
                if why:
                    self.problems.add(name, "vm_gateway", why)
                elif networks is None:
                    pass
                elif not any(gateway in net for net in networks):
                    self.problems.add(name, "vm_gateway", "%s is on no segment of the VM's NICs (%s); use an "
                                      "address on one of them" % (gateway, ", ".join(str(n) for n in networks)
                                                                  or "none addressed"))
                elif any(gateway == nic["_iface"].ip for nic in vm["nics"] if nic.get("_iface")):
                    self.problems.add(name, "vm_gateway", "%s is the VM's own address; use a router's address"
                                      % gateway)
                elif any(route["to"] == "0.0.0.0/0" for route in vm["routes"]):
                    self.problems.add(name, "vm_gateway", "%s duplicates the default route in vm_routes; keep only "
                                      "one of them" % gateway)
                else:
                    vm["gateway"] = str(gateway)

    def check_user_nets(self, vms):
        """User-mode networks stay apart from the lab's segments and SSH ports stay apart from their forwards."""
        for name, field, net in self.user_nets:
            for bridge, subnet in sorted((b, n) for b, n in self.subnets.items() if n is not None):
                if net.overlaps(subnet):
                    self.problems.add(name, field, "%s overlaps %s of bridge %s; the guest would have two routes "
                                      "to it, use another network" % (net, subnet, bridge))
        for vm in vms:
            if vm["ssh_port"] is not None and (vm["ssh_port"], "tcp") in self.forwards:
                self.problems.add(vm["name"], "ansible_port", "%d is also forwarded by %s; give the forward "
                                  "another port" % (vm["ssh_port"], self.forwards[(vm["ssh_port"], "tcp")]))

    # -- NAT --------------------------------------------------------------------------------------------------
    def resolve_nat(self, vms):
        """vm_nat on routers: masquerade an inside segment out of an outside NIC, or publish one address 1:1."""
        problems = self.problems
        for vm in vms:
            name, value = vm["name"], vm["_nat_in"]
            if value is _MISSING or value is None or value == []:
                continue
            if not isinstance(value, (list, tuple)):
                problems.add(name, "vm_nat", "%s is not a list; write a list of {type, inside, outside, ...}"
                             % _describe(value))
                continue
            if vm["kind"] != "router" or not vm["forwarding"]:
                problems.add(name, "vm_nat", "is set on a VM that does not forward; NAT runs on a router (group "
                             "routers, vm_forwarding true)")
                continue
            devs = dict((nic["dev"], nic) for nic in vm["nics"] if nic.get("_iface"))
            for index, raw in enumerate(value):
                field = "vm_nat[%d]" % index
                rule = self.nat_rule(name, field, raw, devs)
                if rule:
                    vm["nat"].append(rule)

    def nat_rule(self, name, field, raw, devs):
        problems = self.problems
        if not _is_mapping(raw):
            problems.add(name, field, "%s is not a mapping; write {type: masquerade, inside: eth0, outside: eth1}"
                         % _describe(raw))
            return None
        kind = raw.get("type")
        if kind not in NAT_TYPES:
            problems.add(name, field + ".type", "%s is not masquerade or static; use one of them" % _describe(kind))
            return None
        _check_keys(raw, NAT_KEYS[kind], name, field, problems)
        rule = {"type": kind}
        for side in ("inside", "outside"):
            dev = raw.get(side)
            if dev not in devs:
                problems.add(name, "%s.%s" % (field, side), "%s is not an addressed tap NIC of this VM; name one of "
                             "%s" % (_describe(dev), ", ".join(sorted(devs)) or "none"))
                return None
            rule[side] = str(dev)
        if rule["inside"] == rule["outside"]:
            problems.add(name, field + ".outside", "is the inside NIC too; translate between two different NICs")
            return None
        inside_net, outside_net = devs[rule["inside"]]["_iface"].network, devs[rule["outside"]]["_iface"].network
        if kind == "masquerade":
            rule["inside_subnet"] = str(inside_net)
            return rule
        for side, net in (("inside", inside_net), ("outside", outside_net)):
            key = side + "_address"
            if raw.get(key) is None:
                problems.add(name, "%s.%s" % (field, key), "is not set; give the %s address of the 1:1 mapping, on "
                             "%s's segment %s" % (side, rule[side], net))
                return None
            address, why = _address(raw.get(key))
            if not why and address not in net:
                why = "%s is not on %s's segment %s; use an address in it" % (address, rule[side], net)
            if not why and address in (net.network_address, net.broadcast_address):
                why = "%s is the network or broadcast address of %s; pick a host address" % (address, net)
            if why:
                problems.add(name, "%s.%s" % (field, key), why)
                return None
            rule[key] = str(address)
        if ipaddress.ip_address(rule["inside_address"]) == devs[rule["inside"]]["_iface"].ip:
            problems.add(name, field + ".inside_address", "%s is the router's own address; publish a host behind "
                         "it" % rule["inside_address"])
            return None
        # the router answers ARP for the published address, so nobody else on the segment may hold it
        self.claim_address(ipaddress.ip_interface("%s/%d" % (rule["outside_address"], outside_net.prefixlen)),
                           name, field + ".outside_address")
        return rule

    def assign_macs(self, lab_name, vms):
        used = set(self.macs)
        for vm in vms:
            for nic in vm["nics"]:
                if nic["mac"] is None:
                    nic["mac"] = _unique_mac(lab_name, vm["name"], nic["index"], "02", used)
                    used.add(nic["mac"])
        for vm in vms:
            vm["mgmt_mac"] = _unique_mac(lab_name, vm["name"], "mgmt", "52:54:00", used)
            used.add(vm["mgmt_mac"])


def _is_mapping(value):
    return isinstance(value, Mapping)


def _norm_path(value):
    if not _is_str(value) or not value:
        return ""
    return os.path.normpath(value)


def lab_plan(hostvars, groups, claims=None, lab_name=None, lab_netns=None, lab_host_ports=None, inventory_dir=None,
             check_files=True):
    """The plan of the lab described by `hostvars` and `groups`; see DOCUMENTATION."""
    overrides = {"lab_name": lab_name, "lab_netns": lab_netns, "lab_host_ports": lab_host_ports,
                 "inventory_dir": inventory_dir}
    return _Planner(hostvars, groups, claims or {}, overrides, bool(check_files)).plan()


class FilterModule(object):
    def filters(self):
        return {"lab_plan": lab_plan}
