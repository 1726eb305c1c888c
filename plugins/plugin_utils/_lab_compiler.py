# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab compiler: an inventory turned into the plan, in named stages.

    read      the lab-wide variables, the groups and every VM's variables, as plain data
    validate  every field against its declaration in `_lab_schema` (one reader per type, the rules of
              `module_utils/_validate`), then the checks across fields: segments, duplicates, routes, NAT
    defaults  filled from the declarations while reading
    derive    MACs, bridges, taps, routes' devices, NAT subnets, the capacity check against the lab host
    render    per lab host, the exact arguments of each module and role (`_lab_render`)

Every problem is collected, each naming the host, the field, the value and the fix; bad input never raises. The
playbook stops on a non-empty `errors` before anything on the lab host changes.

Controller-only (plugins/plugin_utils): modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import ipaddress
import os

from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_dpdk
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_placement
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_render
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_rootless
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_serial
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_uplink
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_schema import (
    MISSING as _MISSING,
    as_int as _as_int,
    describe as _describe,
    field as _field,
    fields as _fields,
    is_mapping as _is_mapping,
    keys as _keys,
    network as _network,
)

try:
    from jinja2 import Undefined
except ImportError:  # only Ansible's templating produces undefined values, and it always has jinja2
    Undefined = None

from ansible.module_utils.six.moves.collections_abc import Mapping

# QEMU's user-mode network of the management NIC (the guest's mgmt0 is 10.0.2.15/24 there)
MGMT_NET = ipaddress.ip_network("10.0.2.0/24")
# Resident memory QEMU needs beyond its guests' RAM under TCG, measured with bench/qemu_overhead.py (2026-11-27:
# 176 MiB per QEMU whatever the guest size, of which 64 MiB is the translation cache at vm_launch's tb-size of 64,
# ~25 MiB its own anonymous memory and ~90 MiB QEMU's binary and the image's kernel and initrd, which every QEMU
# shares). The capacity check adds the private part per VM (cache + 25 MiB, rounded up with margin) and the shared
# part once.
QEMU_OVERHEAD_MIB = 96
QEMU_SHARED_MIB = 128
DEFAULT_HYPERVISOR = "localhost"


class _Problems(object):
    """Collects every error; `add` takes the owner (host or 'lab'), the field and the message with its fix."""

    def __init__(self):
        self.messages = []
        # the problems a cleanup must stop for: it needs nothing but a valid lab name and namespace
        self.cleanup = []
        # (owner, variable) pairs that failed to render: reported once, never again as "not set"
        self.unrenderable = set()

    def add(self, owner, field, message):
        self.messages.append("%s: %s %s" % (owner, field, message))
        if field in ("lab_name", "lab_netns"):
            self.cleanup.append(self.messages[-1])


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


class _Compiler(object):
    def __init__(self, hostvars, groups, claims, overrides, check_files, host_resources, lab_hosts=None):
        self.hostvars = hostvars if _is_mapping(hostvars) else {}
        self.groups = groups if _is_mapping(groups) else {}
        self.claims = claims if _is_mapping(claims) else {}
        self.overrides = overrides
        self.check_files = check_files
        self.host_resources = host_resources if _is_mapping(host_resources) else {}
        # lab host -> what lab_host_info read there (memory, CPUs, addresses); replaces host_resources when given
        self.lab_hosts = dict(lab_hosts) if _is_mapping(lab_hosts) else {}
        self.problems = _Problems()
        self.claim_errors = []
        # address -> (owner, field) of its first user, for duplicates across VMs and host ports
        self.addresses = {}
        self.macs = {}
        self.ifnames = {}
        # bridge -> list of (owner, field, IPv4Interface) on it; bridge -> [(owner, field, mtu)]
        self.segments = {}
        self.segment_mtus = {}
        # user-space (vhost-user) segment -> [(owner, field)] of its NICs (_lab_dpdk)
        self.dpdk_segments = {}
        self.bridge_order = []
        # VMs whose NICs could not all be read: their routes are not checked against segments, to avoid cascades
        self.unresolved = set()
        # (host_port, protocol) -> "vm field" of user-mode NIC forwards; (vm, field, network) of user-mode NICs
        self.forwards = {}
        self.user_nets = []

    # -- stage: read ------------------------------------------------------------------------------------------
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

    # -- stage: validate (one field against its declaration) -------------------------------------------------
    def read(self, scope, name, mapping, owner, label=None, context=None):
        """Field `name` of `mapping` checked against its declaration in the schema.

        Unset (or null) gives the declared default; a required field unset and a value that breaks the field's
        rule are problems (named `owner: label`) and give None."""
        decl = _field(scope, name)
        label = label or name
        if scope in ("lab", "vm", "hypervisor"):
            if (owner, name) in self.problems.unrenderable:
                return None
            raw = _get(mapping, name, self.problems, owner)
            if (owner, name) in self.problems.unrenderable:
                return None
        else:
            raw = mapping.get(name, _MISSING)
        if raw is _MISSING or raw is None or (raw == "" and decl.default == ""):
            if decl.required:
                self.problems.add(owner, label, "is not set; give it%s, like %s" % (
                    " (%s)" % decl.rule if decl.rule else "", decl.example.strip("`")))
                return None
            return decl.default_for(context)
        value, why = decl.read(raw)
        if why:
            self.problems.add(owner, label, why)
            return None
        return value

    def item_mappings(self, scope, value, owner, label):
        """(index, item label, item) for each mapping of a list field whose items are `scope` fields; a non-mapping
        item and keys the scope does not declare are problems."""
        items = []
        for index, raw in enumerate(value or []):
            item_label = "%s[%d]" % (label, index)
            if not _is_mapping(raw):
                problems_shape = ", ".join(f.name for f in _fields(scope))
                self.problems.add(owner, item_label, "%s is not a mapping; write {%s}" % (
                    _describe(raw), problems_shape))
                continue
            _check_keys(raw, _keys(scope), owner, item_label, self.problems)
            items.append((index, item_label, raw))
        return items

    # -- the stages in order ---------------------------------------------------------------------------------
    def compile(self):
        problems = self.problems
        hypervisors = self.group("hypervisors")
        # Without a hypervisors group the lab host is the controller itself (implicit localhost, local connection);
        # the lab-wide variables then come from group_vars/all, which every host of the inventory sees.
        hypervisor = hypervisors[0] if hypervisors else DEFAULT_HYPERVISOR
        hv_vars = self.host_vars(hypervisor)
        if not hypervisors and not hv_vars:
            hv_vars = self.lab_wide_vars()
        hv_owner = hypervisor

        lab = {}
        for decl in _fields("lab"):
            if self.overrides.get(decl.name) is not None:
                lab[decl.name] = self.read("lab", decl.name, {decl.name: self.overrides[decl.name]}, hv_owner)
            else:
                lab[decl.name] = self.read("lab", decl.name, hv_vars, hv_owner)
        lab_name = lab["lab_name"] or ""
        inventory_dir = self.overrides.get("inventory_dir")
        if inventory_dir is None:
            inventory_dir = _get(hv_vars, "inventory_dir", problems, hv_owner)
        self.check_claim(lab_name, inventory_dir, hv_owner, lab["lab_cleanup_force"])

        vms = self.plan_vms(lab_name, hypervisors or [hypervisor])
        host_ports = self.plan_host_ports(lab["lab_host_ports"], hv_owner)
        uplink = _lab_uplink.plan(self, lab["lab_uplink"], hv_owner, lab_name, lab["lab_netns"] or "")
        bridges = self.plan_bridges()
        self.check_interface_names()
        _lab_serial.plan(self, lab["lab_serial_links"], hv_owner, vms)
        # the way out (lab_uplink) is made on the first lab host, like the host ports
        first_bridges = [uplink["bridge"]] if _is_mapping(uplink) and uplink.get("bridge") else []
        placement, connections = self.place(lab, lab_name, hypervisors, hypervisor, vms, host_ports, bridges,
                                            first_bridges)
        self.check_user_nets(vms)
        self.resolve_routes(vms)
        self.resolve_nat(vms)
        uplink = _lab_uplink.resolve(self, uplink, vms, hv_owner, lab_name)
        for vm in vms:
            for nic in vm["nics"]:
                nic.pop("_iface", None)
        self.assign_macs(lab_name, vms)
        if self.lab_hosts:
            for host in hypervisors or [hypervisor]:
                self.check_capacity([vm for vm in vms if vm["hypervisor"] == host], lab["lab_overcommit"], host,
                                    self.lab_hosts.get(host))
        else:
            self.check_capacity(vms, lab["lab_overcommit"], hv_owner)
        _lab_dpdk.check(self, lab["lab_dpdk_cores"] or 1, hv_owner, hypervisor, lab["lab_qemu_user"], vms)
        _lab_rootless.check(problems, lab, vms, placement, hypervisors or [hypervisor], self.lab_hosts)
        roots = dict((host, _lab_rootless.roots(self.lab_hosts.get(host))) for host in hypervisors or [hypervisor])

        taps = []
        for vm in vms:
            for nic in vm["nics"]:
                if nic["tap"]:
                    taps.append({"name": nic["tap"], "bridge": nic["bridge"], "vm": vm["name"], "mtu": nic["mtu"]})
        for vm in vms:
            vm.pop("_routes_in", None)
            vm.pop("_gateway_in", None)
            vm.pop("_nat_in", None)
        plan = {
            "lab_name": lab_name,
            "netns": lab["lab_netns"] or "",
            "qemu_user": lab["lab_qemu_user"] or "",
            "console_log_limit": lab["lab_console_log_limit"],
            "capture_ring": bool(lab["lab_capture_ring"]),
            "capture_ring_size": lab["lab_capture_ring_size"],
            "lock_timeout": lab["lab_lock_timeout"] if lab["lab_lock_timeout"] is not None else 600,
            "run_dir": "%s/%s" % (roots[hypervisor].run, lab_name),
            "hypervisor": hypervisor,
            "hypervisors": hypervisors or [hypervisor],
            "bridges": bridges,
            "taps": taps,
            "host_ports": host_ports,
            "uplink": uplink,
            "vms": vms,
            "errors": list(problems.messages),
            "cleanup_errors": list(problems.cleanup),
        }
        # render: nothing is rendered for an invalid lab, so no role can act on half a plan. Another inventory's
        # claim is the lab host's state, not a defect of this plan: it is rendered (a bring-up still stops on the
        # error), so a forced cleanup's plays find their arguments.
        defects = [message for message in plan["errors"] if message not in self.claim_errors]
        cores = lab["lab_dpdk_cores"] or 1
        plan["hosts"] = {} if defects else _lab_render.render(plan, placement, connections, cores)
        for host, entry in plan["hosts"].items():
            # where this lab host's user keeps the lab's files: the roles take their directories from it
            entry["roots"] = _lab_rootless.as_dict(roots[host])
            # a rootless lab host's namespace is held by qemulab.network.lab_userns, not made by the netns module
            entry["rootless"] = roots[host].rootless
        # a guest's own arguments, found by its name wherever it runs (the plays on the guests look them up so)
        plan["guests"] = dict((name, guest) for host in plan["hosts"].values() for name, guest in host["guests"].items())
        return plan

    def lab_wide_vars(self):
        """The lab-wide variables as every VM sees them (group_vars/all), for an inventory without hypervisors."""
        names = self.group("all") or sorted(str(name) for name in self.hostvars)
        for name in names:
            entry = self.host_vars(name)
            if entry:
                return entry
        return {}

    def check_claim(self, lab_name, inventory_dir, owner, cleanup_force=False):
        """Another inventory's claim refuses a bring-up, and a cleanup unless lab_cleanup_force is true."""
        if not lab_name or lab_name not in self.claims:
            return
        claimed = self.claims[lab_name]
        here = inventory_dir if _is_str(inventory_dir) else ""
        if _norm_path(claimed) != _norm_path(here):
            self.problems.add(owner, "lab_name", "%s is already claimed by the running lab of inventory %s (this is "
                              "%s); tear that lab down first (from that inventory, or from this one with "
                              "lab_cleanup_force: true) or choose another lab_name"
                              % (lab_name, claimed, here or "an inventory without a directory"))
            self.claim_errors.append(self.problems.messages[-1])
            if cleanup_force:
                self.problems.cleanup.remove(self.problems.messages[-1])

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
            # the VM's own name becomes a directory, a QEMU option and a hostname: it passes the name rule first
            if self.read("vm", "inventory_hostname", {"inventory_hostname": name}, name) is None:
                continue
            if name in routers and name in hosts:
                problems.add(name, "groups", "is in both routers and hosts; put it in exactly one")
            elif name not in routers and name not in hosts:
                problems.add(name, "groups", "is in neither routers nor hosts; put it in exactly one")
            kind = "router" if name in routers else "host"
            memory = self.read("vm", "vm_memory", hv, name)
            vcpus = self.read("vm", "vm_vcpus", hv, name)
            forwarding = self.read("vm", "vm_forwarding", hv, name, context=kind)
            vm = {
                "name": name,
                "kind": kind,
                "hypervisor": self.vm_hypervisor(name, hv, hypervisors),
                "ssh_port": self.vm_port(name, hv, ports),
                "memory_mb": memory if memory is not None else _field("vm", "vm_memory").default,
                "vcpus": vcpus if vcpus is not None else _field("vm", "vm_vcpus").default,
                "kernel": None,
                "initrd": None,
                "disk": None,
                "forwarding": forwarding if forwarding is not None else kind == "router",
                "boot": self.read("vm", "vm_boot", hv, name),
                "connection": self.read("vm", "vm_connection", hv, name),
                "connection_reason": None,
                "gateway": None,
                "routes": [],
                "nics": self.vm_nics(name, hv),
                "mgmt_mac": None,
                "_routes_in": self.read("vm", "vm_routes", hv, name),
                "_gateway_in": _get(hv, "vm_gateway", problems, name),
                "_nat_in": self.read("vm", "vm_nat", hv, name),
                "nat": [],
            }
            self.vm_boot_files(vm, hv)
            if vm["connection"] is None:
                vm["connection"], vm["connection_reason"] = self.vm_connection(vm)
            vms.append(vm)
        return vms

    def vm_connection(self, vm):
        """(connection, why) for a VM whose inventory does not say: SSH, unless the VM's own root disk was looked
        into on its lab host (lab_host_info `disks`) and holds no SSH server - a course image without sshd, which
        can only be configured through its serial console."""
        if vm["disk"] is None:
            return "ssh", None
        info = self.lab_hosts.get(vm["hypervisor"])
        disks = info.get("disks") if _is_mapping(info) else None
        seen = disks.get(vm["disk"]) if _is_mapping(disks) else None
        if _is_mapping(seen) and seen.get("ssh_server") is False:
            return "console", "vm_disk %s %s" % (vm["disk"], seen.get("reason") or "has no SSH server")
        return "ssh", None

    def vm_hypervisor(self, name, hv, hypervisors):
        value = self.read("vm", "vm_hypervisor", hv, name)
        default = hypervisors[0]
        if value is None:
            return default
        if value not in hypervisors:
            self.problems.add(name, "vm_hypervisor", "%s is not a host of group hypervisors (%s); name one of them"
                              % (_describe(value), ", ".join(hypervisors)))
            return default
        return value

    def vm_port(self, name, hv, ports):
        port = self.read("vm", "ansible_port", hv, name)
        if port is None:
            return None
        if port in ports:
            self.problems.add(name, "ansible_port", "%d is already used by %s; give every VM its own port"
                              % (port, ports[port]))
        else:
            ports[port] = name
        return port

    def vm_boot_files(self, vm, hv):
        name = vm["name"]
        given = {}
        for field in ("vm_kernel", "vm_initrd", "vm_disk"):
            if _get(hv, field, self.problems, name) == "":
                continue
            value = self.read("vm", field, hv, name)
            if value is None:
                continue
            if self.check_files and not os.path.isfile(value):
                self.problems.add(name, field, "%s does not exist on the lab host; fix the path or drop %s to use "
                                  "the built guest image" % (value, field))
            given[field] = value
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

    # -- stage: derive (capacity) ----------------------------------------------------------------------------
    def check_capacity(self, vms, overcommit, owner, resources=None):
        """The VMs against the lab host's memory and CPUs, before anything starts.

        `host_resources` (read on the lab host by the playbook), or `resources` of one lab host of several:
        mem_available_mib (MemAvailable plus what this lab's own running QEMUs hold, so a re-run is judged like the
        first run) and cpus."""
        resources = resources if _is_mapping(resources) else ({} if self.lab_hosts else self.host_resources)
        if overcommit or not vms:
            return
        available = _as_int(resources.get("mem_available_mib"))
        cpus = _as_int(resources.get("cpus"))
        if available is not None:
            wanted = sum(vm["memory_mb"] for vm in vms)
            overhead = QEMU_OVERHEAD_MIB * len(vms) + QEMU_SHARED_MIB
            # the hugepages the user-space segments' datapaths reserve (lab_host_info counts the lab's own back in)
            huge = _lab_dpdk.hugepages_mib(vms)
            if wanted + overhead + huge > available:
                self.problems.add(owner, "vm_memory", "of the lab's %d VMs adds up to %d MiB, plus %d MiB for QEMU "
                                  "itself (%d MiB per VM and %d shared)%s, but the lab host has %d MiB available; give "
                                  "the VMs less vm_memory, run fewer VMs, or set lab_overcommit: true to start them "
                                  "anyway" % (len(vms), wanted, overhead, QEMU_OVERHEAD_MIB, QEMU_SHARED_MIB,
                                              " and %d MiB of hugepages for the DPDK datapaths" % huge if huge else "",
                                              available))
        if cpus is not None:
            for vm in vms:
                if vm["vcpus"] > cpus:
                    self.problems.add(vm["name"], "vm_vcpus", "%d is more than the %d CPUs of the lab host; give at "
                                      "most %d, or set lab_overcommit: true" % (vm["vcpus"], cpus, cpus))

    # -- stage: derive (placement over lab hosts; _lab_placement) ---------------------------------------------
    def place(self, lab, lab_name, hypervisors, hypervisor, vms, host_ports, bridges, first_bridges=()):
        """The segments spread over lab hosts (VXLAN, MTU, underlay checks) and the guests reached through their lab
        host: ({segments, underlay, port}, {vm: connection variables})."""
        hosts = hypervisors or [hypervisor]
        host_vars = {}
        for host in hosts:
            entry = self.host_vars(host) if hypervisors else {}
            values = {"lab_underlay_address": self.read("hypervisor", "lab_underlay_address", entry, host)}
            for key in ("ansible_connection", "ansible_host", "ansible_port", "ansible_user",
                        "ansible_ssh_private_key_file", "ansible_ssh_common_args"):
                value = _get(entry, key, self.problems, host) if hypervisors else _MISSING
                if value is not _MISSING:
                    values[key] = value
            # without a hypervisors group the lab host is the controller itself
            if not hypervisors:
                values["ansible_connection"] = "local"
            host_vars[host] = values
        for host, info in sorted(self.lab_hosts.items()):
            if host in hosts and _is_mapping(info) and info.get("unreachable"):
                self.problems.add(host, "connection", "could not be reached (%s); fix the lab host's connection "
                                  "variables or take its VMs elsewhere (vm_hypervisor)"
                                  % _short(Exception(info.get("msg") or "unreachable")))
                # the host's state, not a defect of the plan: rendered (a bring-up still stops), so a cleanup of the
                # other hosts finds its arguments
                self.claim_errors.append(self.problems.messages[-1])
        placement = _lab_placement.Placement(self.problems, lab, hosts, host_vars, self.lab_hosts).plan(
            lab_name, vms, host_ports, bridges, self.ifnames, first_bridges)
        connections = {}
        for vm in vms:
            host = vm["hypervisor"]
            if host and not _lab_placement.is_local(host_vars.get(host, {}), host):
                connections[vm["name"]] = _lab_placement.guest_connection(
                    lab_name, host, host_vars[host], bool(vm["kernel"]))
        return placement, connections

    def vm_nics(self, name, hv):
        problems = self.problems
        value = self.read("vm", "vm_nics", hv, name)
        if not value:
            self.unresolved.add(name)
            if value is not None:
                problems.add(name, "vm_nics", "is empty; give the VM at least one NIC {bridge, tap, address}")
            return []
        nics = []
        items = self.item_mappings("nic", value, name, "vm_nics")
        if len(items) != len(value):
            self.unresolved.add(name)
        for index, field, raw in items:
            nic = {"index": index, "dev": "eth%d" % index}
            for decl in _fields("nic"):
                nic[decl.name] = self.read("nic", decl.name, raw, name, "%s.%s" % (field, decl.name))
            nic["backend"] = nic["backend"] or "tap"
            nic["model"] = nic["model"] or "virtio-net-pci"
            if nic["mac"]:
                self.claim_mac(nic["mac"], name, field + ".mac")
            if nic["backend"] == "user":
                self.user_nic(name, field, raw, nic)
                nics.append(nic)
                continue
            if nic["backend"] == "vhost-user":
                _lab_dpdk.read_nic(self, name, field, raw, nic)
                nics.append(nic)
                continue
            nic["net"], nic["hostfwd"] = None, []
            nic["vhost"] = nic["vhost"] or "auto"
            for key in ("net", "hostfwd"):
                if raw.get(key) is not None:
                    problems.add(name, "%s.%s" % (field, key), "only applies to backend user; drop it or set "
                                 "backend: user")
            for key in ("bridge", "tap"):
                if raw.get(key) is None:
                    problems.add(name, "%s.%s" % (field, key), "is not set; name the %s of eth%d" % (key, index))
                elif nic[key]:
                    self.ifnames.setdefault(nic[key], []).append((key, name, "%s.%s" % (field, key)))
            if nic["vhost"] == "on" and nic["model"] != "virtio-net-pci":
                problems.add(name, field + ".vhost", "is on but vhost only works with virtio-net-pci; use auto or "
                             "off, or model virtio-net-pci")
            iface = None
            if raw.get("address") is not None:
                if nic["address"] is None:
                    self.unresolved.add(name)
                else:
                    iface = nic["address"]
                    nic["address"] = str(iface)
                    nic["_iface"] = iface
                    self.claim_address(iface, name, field + ".address")
            if nic["bridge"]:
                if nic["bridge"] not in self.segments:
                    self.segments[nic["bridge"]] = []
                    self.bridge_order.append(nic["bridge"])
                if iface:
                    self.segments[nic["bridge"]].append((name, field + ".address", iface))
                self.segment_mtus.setdefault(nic["bridge"], []).append((name, field + ".mtu", nic["mtu"]))
            nics.append(nic)
        return nics

    def user_nic(self, name, field, raw, nic):
        """A QEMU user-mode (SLIRP) NIC: its own private network, always restricted, forwards on 127.0.0.1 only."""
        problems = self.problems
        nic["vhost"], nic["bridge"], nic["tap"] = None, None, None
        # SLIRP has no MTU of its own to set: an mtu here would reach the guest only
        for key in ("bridge", "tap", "vhost", "mtu"):
            if raw.get(key) is not None:
                problems.add(name, "%s.%s" % (field, key), "does not apply to a user-mode NIC (QEMU's own network, "
                             "no bridge or tap); drop it or use backend: tap")
        nic["mtu"] = None
        default_net = _field("nic", "net").default
        net = _network(default_net)[0] if raw.get("net") is None else nic["net"]
        why = None
        if net is None:
            nic["address"], nic["hostfwd"] = None, []
            return
        if net.prefixlen > 29:
            why = "%s is too small for SLIRP's gateway (.2), DNS (.3) and guest; use a /24 like %s" % (
                net, default_net)
        elif net.overlaps(MGMT_NET):
            why = "%s overlaps %s, the management NIC's user-mode network; use another, like %s" % (
                net, MGMT_NET, default_net)
        if why:
            problems.add(name, field + ".net", why)
            nic["net"], nic["address"], nic["hostfwd"] = None, None, []
            return
        nic["net"] = str(net)
        self.user_nets.append((name, field + ".net", net))
        first = net.network_address + 15
        if raw.get("address") is None:
            # SLIRP's DHCP hands out .15 first; the guest gets the same address statically (no DHCP client)
            nic["address"] = "%s/%d" % (first, net.prefixlen)
        elif nic["address"] is not None:
            iface = nic["address"]
            nic["address"] = None
            if iface.network != net:
                why = "%s is not in the user-mode network %s; use an address in it, like %s/%d" % (
                    iface, net, first, net.prefixlen)
            elif iface.ip in (net.network_address + 2, net.network_address + 3):
                why = "%s is SLIRP's own gateway or DNS address; use another, like %s/%d" % (iface, first, net.prefixlen)
            if why:
                problems.add(name, field + ".address", why)
            else:
                nic["address"] = str(iface)
        forwards, nic["hostfwd"] = nic["hostfwd"] or [], []
        if not forwards:
            return
        if nic["address"] and ipaddress.ip_interface(nic["address"]).ip != first:
            # QEMU forwards to SLIRP's first DHCP address when hostfwd names no guest address
            problems.add(name, field + ".address", "%s is not %s, where QEMU delivers the forwards; drop address "
                         "or use %s/%d" % (nic["address"], first, first, net.prefixlen))
        for _index, fwd_field, fwd in self.item_mappings("hostfwd", forwards, name, field + ".hostfwd"):
            values = dict((decl.name, self.read("hostfwd", decl.name, fwd, name, "%s.%s" % (fwd_field, decl.name)))
                          for decl in _fields("hostfwd"))
            if None in values.values():
                continue
            key = (values["host_port"], values["protocol"])
            if key in self.forwards:
                problems.add(name, fwd_field + ".host_port", "%d/%s is already forwarded by %s; give every forward "
                             "its own port" % (key + (self.forwards[key],)))
                continue
            self.forwards[key] = "%s %s" % (name, fwd_field)
            nic["hostfwd"].append(values)

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
        ports = []
        for _index, field, raw in self.item_mappings("host_port", value, owner, "lab_host_ports"):
            port = dict((decl.name, self.read("host_port", decl.name, raw, owner, "%s.%s" % (field, decl.name)))
                        for decl in _fields("host_port") if decl.name != "routes")
            for key in ("name", "peer"):
                if port[key]:
                    self.ifnames.setdefault(port[key], []).append(("veth", owner, "%s.%s" % (field, key)))
            if port["bridge"] and port["bridge"] not in self.segments:
                problems.add(owner, field + ".bridge", "%s is used by no VM NIC; attach the port to a bridge of "
                             "the lab (%s)" % (port["bridge"], ", ".join(sorted(self.segments)) or "none"))
            iface = port["address"]
            if iface is not None:
                port["address"] = str(iface)
                self.claim_address(iface, owner, field + ".address")
                if port["bridge"] in self.segments:
                    self.segments[port["bridge"]].append((owner, field + ".address", iface))
            routes = self.read("host_port", "routes", raw, owner, field + ".routes")
            nets = [iface.network] if iface else []
            own = [iface.ip] if iface else []
            port["routes"] = [
                {"to": r["to"], "via": r["via"]}
                for r in self.parse_routes(routes or [], owner, field + ".routes", nets, "the port's address", own)]
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
        mtus = {}
        for bridge in self.bridge_order:
            # a bridge forwards at its smallest port's MTU: members that disagree would drop each other's frames
            members = self.segment_mtus.get(bridge, [])
            first_owner, first_field, first = members[0] if members else (None, None, None)
            for owner, field, mtu in members[1:]:
                if (mtu or 1500) != (first or 1500):
                    problems.add(owner, field, "%s differs from %s on bridge %s (set by %s %s); give every NIC of a "
                                 "segment the same mtu" % (mtu or "1500 (unset)", first or "1500 (unset)", bridge,
                                                           first_owner, first_field))
            mtus[bridge] = first
        return [{"name": b, "subnet": str(subnets[b]) if subnets[b] else None, "mtu": mtus.get(b)}
                for b in sorted(subnets)]

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
    def parse_routes(self, value, owner, field, networks, where, own_addresses, hint=""):
        """[{to, via}] -> [{to, via, network, gateway}] keeping only the valid ones.

        `networks` are the owner's attached subnets (None: unknown, skip the checks that need them); `hint` ends the
        message of a gateway on none of them."""
        problems = self.problems
        routes = []
        seen = {}
        for index, item_field, raw in self.item_mappings("route", value, owner, field):
            network = self.read("route", "to", raw, owner, item_field + ".to")
            gateway = self.read("route", "via", raw, owner, item_field + ".via")
            if network is None or gateway is None:
                continue
            # before the segments: a point-to-point link's own end is on none of them (only its peer is)
            if gateway in own_addresses:
                problems.add(owner, item_field + ".via", "%s is %s own address; route via a neighbour's address"
                             % (gateway, "the port's" if field.startswith("lab_host_ports") else "the VM's"))
                continue
            if networks is None:
                pass
            elif networks and not any(gateway in net for net in networks):
                problems.add(owner, item_field + ".via", "%s is on no segment of %s (%s); use a gateway on one "
                             "of them%s" % (gateway, where, ", ".join(str(n) for n in networks), hint))
                continue
            elif not networks:
                problems.add(owner, item_field + ".via", "%s cannot be reached: %s has no address; give it an "
                             "address on the gateway's segment" % (gateway, where))
                continue
            if networks and any(gateway in (net.network_address, net.broadcast_address) and net.prefixlen < 31
                                for net in networks):
                problems.add(owner, item_field + ".via", "%s is the network or broadcast address of its segment; "
                             "route via a neighbour's address" % gateway)
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
            if routes_in:
                # a ppp/slip link is a point-to-point network too: its peer's address, reached over ppp<n>/sl<n>
                serial = _lab_serial.attached(vm)
                own = [nic["_iface"].ip for nic in vm["nics"] if nic.get("_iface")] + _lab_serial.own_addresses(vm)
                for route in self.parse_routes(
                        routes_in, name, "vm_routes", None if networks is None else networks + [n for _d, n in serial],
                        "the VM's NICs" + (" and serial links" if serial else ""), own, _lab_serial.raw_hint(vm)):
                    dev = next((dev for dev, net in attached + serial if route["gateway"] in net), None)
                    if dev:
                        vm["routes"].append({"to": route["to"], "via": route["via"], "dev": dev})
            gateway_in = vm["_gateway_in"]
            if gateway_in is not _MISSING and gateway_in is not None and gateway_in != "":
                gateway = self.read("vm", "vm_gateway", {"vm_gateway": gateway_in}, name)
                if gateway is None or networks is None:
                    pass
                elif not any(gateway in net for net in networks):
                    # the default route is the NICs' (rendered into the boot's ip commands); a serial peer's is a route
                    serial = [dev for dev, net in _lab_serial.attached(vm) if gateway in net]
                    self.problems.add(name, "vm_gateway", "%s is on no segment of the VM's NICs (%s); use an "
                                      "address on one of them%s" % (
                                          gateway, ", ".join(str(n) for n in networks) or "none addressed",
                                          "; through its serial link (%s) write vm_routes [{to: 0.0.0.0/0, via: %s}]"
                                          % (serial[0], gateway) if serial else ""))
                elif any(gateway in (net.network_address, net.broadcast_address) and net.prefixlen < 31
                         for net in networks if gateway in net):
                    self.problems.add(name, "vm_gateway", "%s is the network or broadcast address of its segment; "
                                      "use a router's address" % gateway)
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
        """vm_nat on routers: masquerade an inside segment out of an outside NIC, translate it onto a pool, or publish
        one address 1:1."""
        problems = self.problems
        for vm in vms:
            name, value = vm["name"], vm["_nat_in"]
            if not value:
                continue
            if vm["kind"] != "router" or not vm["forwarding"]:
                problems.add(name, "vm_nat", "is set on a VM that does not forward; NAT runs on a router (group "
                             "routers, vm_forwarding true)")
                continue
            if vm["connection"] == "console":
                # nat_rules reads iptables-save and ip -j and feeds stdin: neither a Yocto busybox nor the console has
                if vm["connection_reason"]:
                    problems.add(name, "vm_nat", "is set on a VM reached through its serial console (its %s); NAT is "
                                 "configured over SSH: put an SSH server in the image, or set vm_connection: ssh"
                                 % vm["connection_reason"])
                else:
                    problems.add(name, "vm_nat", "is set on a VM with vm_connection console; NAT is configured over "
                                 "SSH (vm_connection ssh)")
                continue
            devs = dict((nic["dev"], nic) for nic in vm["nics"] if nic.get("_iface"))
            for _index, field, raw in self.item_mappings("nat", value, name, "vm_nat"):
                rule = self.nat_rule(name, field, raw, devs)
                if rule:
                    vm["nat"].append(rule)

    def nat_rule(self, name, field, raw, devs):
        problems = self.problems
        kind = self.read("nat", "type", raw, name, field + ".type")
        if kind is None:
            return None
        for key, owner_kind in (("inside_address", "static"), ("outside_address", "static"), ("pool", "pool")):
            if kind != owner_kind and raw.get(key) is not None:
                problems.add(name, "%s.%s" % (field, key), "only applies to type %s; drop it or use type %s"
                             % (owner_kind, owner_kind))
        rule = {"type": kind}
        for side in ("inside", "outside"):
            dev = raw.get(side)
            if not isinstance(dev, str) or dev not in devs:
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
        if kind == "pool":
            return self.nat_pool(name, field, raw, rule, inside_net, outside_net)
        for side, net in (("inside", inside_net), ("outside", outside_net)):
            key = side + "_address"
            if raw.get(key) is None:
                problems.add(name, "%s.%s" % (field, key), "is not set; give the %s address of the 1:1 mapping, on "
                             "%s's segment %s" % (side, rule[side], net))
                return None
            address = self.read("nat", key, raw, name, "%s.%s" % (field, key))
            if address is None:
                return None
            why = None
            if address not in net:
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

    def nat_pool(self, name, field, raw, rule, inside_net, outside_net):
        """A pool lies wholly on the outside segment or on no segment of the lab, and no address in it is used."""
        problems, key = self.problems, field + ".pool"
        if raw.get("pool") is None:
            problems.add(name, key, "is not set; give the addresses to translate onto as first-last, on %s's "
                         "segment %s or outside the lab's subnets, like 203.0.113.10-203.0.113.20"
                         % (rule["outside"], outside_net))
            return None
        text = self.read("nat", "pool", raw, name, key)
        if text is None:
            return None
        first, last = (ipaddress.ip_address(end) for end in text.split("-"))
        span = list(ipaddress.summarize_address_range(first, last))
        # segments, user-mode networks and the management network: a pool address there belongs to them
        known = [(net, "bridge %s" % bridge) for bridge, net in sorted(self.subnets.items()) if net is not None]
        known += [(net, "%s %s" % (owner, where)) for owner, where, net in self.user_nets]
        known.append((MGMT_NET, "the management NIC's user-mode network"))
        for net, what in known:
            if not any(part.overlaps(net) for part in span):
                continue
            if net == outside_net and first in net and last in net:
                if net.prefixlen < 31 and (first == net.network_address or last == net.broadcast_address):
                    problems.add(name, key, "%s holds the network or broadcast address of %s; start after %s and "
                                 "end before %s" % (text, net, net.network_address, net.broadcast_address))
                    return None
                continue
            fix = ("keep it within %s's segment %s or outside every subnet of the lab" % (rule["outside"],
                                                                                          outside_net))
            if net == inside_net:
                why = "%s lies in %s, the inside segment itself; translate onto other addresses: %s" % (
                    text, net, fix)
            else:
                why = "%s overlaps %s of %s; %s" % (text, net, what, fix)
            problems.add(name, key, why)
            return None
        # the router holds every pool address: nobody else in the lab may use one
        for number in range(int(first), int(last) + 1):
            pooled = ipaddress.ip_address(number)
            if pooled in self.addresses:
                owner, used_by = self.addresses[pooled]
                problems.add(name, key, "%s holds %s, which %s %s uses; pick a range of free addresses"
                             % (text, pooled, owner, used_by))
                return None
        for number in range(int(first), int(last) + 1):
            self.addresses[ipaddress.ip_address(number)] = (name, key)
        rule["inside_subnet"] = str(inside_net)
        rule["pool"] = text
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


def _norm_path(value):
    if not _is_str(value) or not value:
        return ""
    return os.path.normpath(value)


def compile_lab(hostvars, groups, claims=None, overrides=None, check_files=True, host_resources=None,
                lab_hosts=None):
    """The plan of the lab described by `hostvars` and `groups` (see the lab_plan filter's documentation)."""
    return _Compiler(hostvars, groups, claims or {}, overrides or {}, bool(check_files), host_resources,
                     lab_hosts).compile()
