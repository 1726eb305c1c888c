# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A topology file (`*.qemulab.yml`) compiled into the classic lab inventory, in named stages.

    read      the file's keys, nodes and segments, every value checked (names by `_validate.check_name`, values
              by the lab schema's own readers)
    derive    bridges, taps, host-port names, MACs, SSH ports, subnets and addresses, groups
    route     static routes and gateways (`_topology_routes`); an unroutable topology is a problem
    emit      the inventory a person would write: groups, group variables, host variables, every value concrete
    check     the emitted inventory through the lab compiler (`_lab_compiler.compile_lab`), the one that runs it

Every problem names the file, the node or segment, the field, the value and the fix; nothing raises on bad input.
The output feeds the inventory plugin (`plugins/inventory/topology.py`); the lab compiler reads it like any other
inventory, so nothing downstream knows a topology file was involved. Derived names are stable when the file grows:
they come from a segment's position and a member's position in it, never from a counter over the whole file.

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import ipaddress

from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name
from ansible_collections.qemulab.network.plugins.module_utils._run_paths import CURRENT as CONTROLLER_PATHS
from ansible_collections.qemulab.network.plugins.plugin_utils import _topology_routes
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab, derived_mac
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_schema import describe, field, is_mapping

PLUGIN_NAME = "qemulab.network.topology"
LAB_HOST = "lab_host"
HYPERVISOR = "localhost"
# The guests' key and known_hosts as the controller's SSH reads them: a topology's lab host is the controller itself
# (local connection, the same user), so they are that user's (docs/rootless.md; root's under /var/lib/qemulab).
KEY_FILE = CONTROLLER_PATHS.ssh_key
LABS_DIR = CONTROLLER_PATHS.labs
# the seed's own value; the inventory plugin passes its interpreter's path instead, so --list shows a concrete one
CONTROLLER_PYTHON = "{{ ansible_playbook_python }}"

TOP_KEYS = ("plugin", "lab", "netns", "pool", "ssh_port_base", "defaults", "vars", "hypervisors", "nodes", "segments")
NODE_KEYS = ("role", "memory", "vcpus", "image", "ssh_port", "forwarding", "routes", "gateway", "nat", "user_nics",
             "host", "vars")
DEFAULT_KEYS = ("memory", "vcpus", "image")
IMAGE_KEYS = ("kernel", "initrd", "disk")
NIC_OPTIONS = ("model", "vhost", "mtu", "netem", "link")
SEGMENT_KEYS = ("members", "subnet", "name") + NIC_OPTIONS
MEMBER_KEYS = ("address", "mac", "tap") + NIC_OPTIONS
HOST_PORT_KEYS = ("address", "name", "peer")
ROLES = ("router", "host")
# host variables a node's `vars` may not set: the topology derives them from the node's own fields
DERIVED_VM_VARS = {"ansible_port": "ssh_port", "vm_nics": "segments (and user_nics)", "vm_routes": "routes",
                   "vm_gateway": "gateway", "vm_memory": "memory", "vm_vcpus": "vcpus", "vm_kernel": "image",
                   "vm_initrd": "image", "vm_disk": "image", "vm_forwarding": "forwarding", "vm_nat": "nat",
                   "vm_hypervisor": "host"}
DERIVED_LAB_VARS = {"lab_name": "lab", "lab_netns": "netns", "lab_host_ports": "a segment member lab_host"}
# Default SSH ports: a block of 100 in 20000-29999 picked by the lab's name, so labs of different names rarely
# share one, below Linux's ephemeral range (32768-60999) so outgoing connections never hold them.
PORT_BLOCK_FIRST, PORT_BLOCK_SIZE, PORT_BLOCKS = 20000, 100, 100


class Problems(object):
    """Every problem of one file, each '<file>: <where> <why>'; `why` names the value and the fix."""

    def __init__(self, source):
        self.source = source
        self.messages = []

    def add(self, where, why):
        self.messages.append("%s: %s %s" % (self.source, where, why))


def default_port_base(lab):
    digest = int(hashlib.sha256(lab.encode("utf-8")).hexdigest()[:8], 16)
    return PORT_BLOCK_FIRST + PORT_BLOCK_SIZE * (digest % PORT_BLOCKS)


class _Topology(object):
    def __init__(self, data, source, python):
        self.data = data
        self.python = python
        self.problems = Problems(source)
        self.bad = False

    # -- stage: read ------------------------------------------------------------------------------------------
    def keys(self, mapping, known, where):
        for key in sorted(str(k) for k in mapping):
            if key not in known:
                self.problems.add("%s.%s" % (where, key) if where else key,
                                  "is not a known key; use only %s" % ", ".join(known))

    def schema(self, scope, name, value, where):
        """`value` read by the lab schema's reader of field scope.name; None (and a problem) when it breaks it."""
        result, why = field(scope, name).read(value)
        if why:
            self.problems.add(where, why)
            return None
        return result

    def name(self, value, kind, where):
        why = check_name(value, kind)
        if why:
            self.problems.add(where, why)
            return None
        return str(value)

    def mapping(self, value, where, shape):
        if value is None:
            return {}
        if not is_mapping(value):
            self.problems.add(where, "%s is not a mapping; write %s" % (describe(value), shape))
            return None
        return value

    def read(self):
        data = self.data
        if not is_mapping(data):
            self.problems.add("the file", "%s is not a mapping; write plugin:, lab:, nodes: and segments:"
                              % describe(data))
            return False
        self.keys(data, TOP_KEYS, "")
        if data.get("plugin") != PLUGIN_NAME:
            self.problems.add("plugin", "%s is not %s; write plugin: %s" % (describe(data.get("plugin")),
                                                                            PLUGIN_NAME, PLUGIN_NAME))
        self.lab = self.name(data.get("lab"), "lab", "lab")
        netns = data.get("netns", None)
        if netns is None:
            # the lab's own namespace unless the file says otherwise: no lab address touches the host's interfaces
            self.netns = "qemulab-%s" % self.lab if self.lab else ""
        elif netns == "":
            self.netns = ""
        else:
            self.netns = self.name(netns, "netns", "netns") or ""
        self.pool = None
        if data.get("pool") is not None:
            self.pool = self.schema("route", "to", data["pool"], "pool")
            if self.pool is not None and self.pool.prefixlen > 24:
                self.problems.add("pool", "%s is smaller than a /24; give a pool of /24 segments, like 172.31.0.0/16"
                                  % self.pool)
                self.pool = None
        self.port_base = None
        if data.get("ssh_port_base") is not None:
            self.port_base = self.schema("vm", "ansible_port", data["ssh_port_base"], "ssh_port_base")
        elif self.lab:
            self.port_base = default_port_base(self.lab)
        self.read_defaults(data.get("defaults"))
        self.lab_vars = self.read_vars(data.get("vars"), "vars", DERIVED_LAB_VARS, "the top-level key")
        # the lab hosts, each with its connection variables and lab_underlay_address (docs/multi-host.md); none: the
        # controller itself
        self.hypervisors = {}
        if data.get("hypervisors") is not None:
            hosts = self.mapping(data["hypervisors"], "hypervisors", "{labhost1: {ansible_host: ..., "
                                 "lab_underlay_address: 192.0.2.11}}") or {}
            for host, values in hosts.items():
                values = self.mapping(values if values is not None else {}, "hypervisors.%s" % host,
                                      "{ansible_host: ..., lab_underlay_address: ...}")
                if values is not None:
                    self.hypervisors[str(host)] = dict(values)
        self.read_nodes(data.get("nodes"))
        self.read_segments(data.get("segments"))
        return not self.problems.messages

    def read_vars(self, value, where, derived, owner):
        values = self.mapping(value, where, "{variable: value}")
        result = {}
        for key, item in (values or {}).items():
            key = str(key)
            if key in derived:
                self.problems.add("%s.%s" % (where, key), "is derived from %s %s; set that instead"
                                  % (owner, derived[key]))
            else:
                result[key] = item
        return result

    def read_defaults(self, value):
        defaults = self.mapping(value, "defaults", "{memory: 512M, vcpus: 1}") or {}
        self.keys(defaults, DEFAULT_KEYS, "defaults")
        self.defaults = self.vm_values(defaults, "defaults")

    def vm_values(self, raw, where):
        """memory, vcpus and image of a node (or of `defaults`) as the classic host variables."""
        values = {}
        if raw.get("memory") is not None and self.schema("vm", "vm_memory", raw["memory"], where + ".memory"):
            values["vm_memory"] = raw["memory"]
        if raw.get("vcpus") is not None:
            vcpus = self.schema("vm", "vm_vcpus", raw["vcpus"], where + ".vcpus")
            if vcpus is not None:
                values["vm_vcpus"] = vcpus
        image = self.mapping(raw.get("image"), where + ".image", "{kernel: /path, disk: /path, initrd: /path}")
        self.keys(image or {}, IMAGE_KEYS, where + ".image")
        for key in IMAGE_KEYS:
            if (image or {}).get(key) is not None:
                path = self.schema("vm", "vm_" + key, image[key], "%s.image.%s" % (where, key))
                if path is not None:
                    values["vm_" + key] = path
        return values

    def read_nodes(self, value):
        self.nodes = {}
        nodes = self.mapping(value, "nodes", "{rt1: {role: router}, h1: {role: host}}")
        if not nodes:
            if nodes is not None:
                self.problems.add("nodes", "is empty; list the lab's VMs, like {rt1: {role: router}}")
            return
        for position, (raw_name, raw) in enumerate(nodes.items()):
            where = "nodes.%s" % raw_name
            name = self.name(raw_name, "vm", where)
            raw = self.mapping(raw, where, "{role: router} or {role: host}")
            if name is None or raw is None:
                self.bad = True
                continue
            self.keys(raw, NODE_KEYS, where)
            role = raw.get("role")
            if role not in ROLES:
                self.problems.add(where + ".role", "%s is not router or host; write role: router or role: host"
                                  % describe(role))
            node = {"role": role, "position": position, "vars": self.vm_values(raw, where)}
            node["ssh_port"] = None
            if raw.get("ssh_port") is not None:
                node["ssh_port"] = self.schema("vm", "ansible_port", raw["ssh_port"], where + ".ssh_port")
            if raw.get("forwarding") is not None and self.schema("vm", "vm_forwarding", raw["forwarding"],
                                                                 where + ".forwarding") is not None:
                node["vars"]["vm_forwarding"] = raw["forwarding"]
            if raw.get("nat") is not None:
                node["vars"]["vm_nat"] = raw["nat"]
            # the lab host that runs the VM (docs/multi-host.md); the lab compiler checks it is one of hypervisors
            if raw.get("host") is not None and self.schema("vm", "vm_hypervisor", raw["host"],
                                                           where + ".host") is not None:
                node["vars"]["vm_hypervisor"] = raw["host"]
            node["routes"] = self.read_routes(raw.get("routes"), where + ".routes")
            node["gateway"] = None
            if raw.get("gateway") is not None:
                node["gateway"] = self.schema("vm", "vm_gateway", raw["gateway"], where + ".gateway")
            node["user_nics"] = []
            if raw.get("user_nics") is not None:
                if not isinstance(raw["user_nics"], list):
                    self.problems.add(where + ".user_nics", "%s is not a list; write [{backend: user, net: "
                                      "10.0.3.0/24}]" % describe(raw["user_nics"]))
                else:
                    node["user_nics"] = list(raw["user_nics"])
            node["extra"] = self.read_vars(raw.get("vars"), where + ".vars", DERIVED_VM_VARS, "the node's field")
            self.nodes[name] = node

    def read_routes(self, value, where):
        """Routes a person wrote: [{to, via}] as given (the lab compiler checks `via` against the segments)."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.add(where, "%s is not a list; write [{to: 10.20.60.0/24, via: 10.20.20.2}]"
                              % describe(value))
            return []
        routes = []
        for index, item in enumerate(value):
            item_where = "%s[%d]" % (where, index)
            if not is_mapping(item):
                self.problems.add(item_where, "%s is not a mapping; write {to: 10.20.60.0/24, via: 10.20.20.2}"
                                  % describe(item))
                continue
            self.keys(item, ("to", "via"), item_where)
            to = self.schema("route", "to", item.get("to"), item_where + ".to")
            via = self.schema("route", "via", item.get("via"), item_where + ".via")
            if to is not None and via is not None:
                routes.append({"to": str(item["to"]).strip(), "via": str(via), "network": to})
        return routes

    def read_segments(self, value):
        self.segments = []
        if not isinstance(value, list) or not value:
            self.problems.add("segments", "%s is not a non-empty list; write [[rt1, rt2], {members: [rt2, h1]}]"
                              % describe(value))
            return
        for index, raw in enumerate(value):
            where = "segments[%d]" % index
            if isinstance(raw, list):
                raw = {"members": raw}
            if not is_mapping(raw):
                self.problems.add(where, "%s is neither a list of members nor a mapping; write [rt1, rt2] or "
                                  "{members: [rt1, rt2], subnet: 10.20.10.0/24}" % describe(raw))
                self.bad = True
                continue
            self.keys(raw, SEGMENT_KEYS, where)
            segment = {"index": index, "where": where, "options": {}}
            segment["bridge"] = (self.name(raw["name"], "bridge", where + ".name") if raw.get("name") is not None
                                 else "br%d" % (index + 1))
            segment["subnet"] = None
            if raw.get("subnet") is not None:
                segment["subnet"] = self.schema("route", "to", raw["subnet"], where + ".subnet")
            for key in NIC_OPTIONS:
                if raw.get(key) is not None and self.schema("nic", key, raw[key], "%s.%s" % (where, key)) is not None:
                    segment["options"][key] = raw[key]
            segment["members"] = self.read_members(raw.get("members"), where)
            self.segments.append(segment)

    def read_members(self, value, where):
        members = []
        if not isinstance(value, list) or not value:
            self.problems.add(where + ".members", "%s is not a non-empty list; name the nodes on this segment, "
                              "like [rt1, h1] (and lab_host for the lab host's port)" % describe(value))
            self.bad = True
            return members
        seen = set()
        for position, item in enumerate(value):
            item_where = "%s.members[%d]" % (where, position)
            overrides = {}
            if is_mapping(item) and len(item) == 1:
                item, overrides = list(item.items())[0]
                overrides = self.mapping(overrides, "%s.%s" % (item_where, item), "{address: 10.20.10.1/24}") or {}
            if not isinstance(item, str) or (item != LAB_HOST and item not in self.nodes):
                self.problems.add(item_where, "%s is not a node of this file; name one of %s, or lab_host"
                                  % (describe(item), ", ".join(self.nodes) or "the nodes (none read)"))
                self.bad = True
                continue
            if item in seen:
                self.problems.add(item_where, "%s is already a member of this segment; list each member once" % item)
                self.bad = True
                continue
            seen.add(item)
            self.keys(overrides, HOST_PORT_KEYS if item == LAB_HOST else MEMBER_KEYS, "%s.%s" % (item_where, item))
            for key in ("mac",) + NIC_OPTIONS:
                if item != LAB_HOST and overrides.get(key) is not None:
                    if self.schema("nic", key, overrides[key], "%s.%s.%s" % (item_where, item, key)) is None:
                        self.bad = True
            members.append({"name": item, "position": position, "where": "%s.%s" % (item_where, item),
                            "overrides": dict(overrides)})
        return members

    # -- stage: derive ----------------------------------------------------------------------------------------
    def derive(self):
        self.derive_ports()
        self.derive_subnets()
        for segment in self.segments:
            self.derive_addresses(segment)
        self.derive_names()

    def derive_ports(self):
        pinned = dict((node["ssh_port"], name) for name, node in self.nodes.items() if node["ssh_port"])
        for name, node in self.nodes.items():
            if node["ssh_port"] is None and self.port_base is not None:
                port = self.port_base + node["position"]
                if port > 65535:
                    self.problems.add("ssh_port_base", "%d leaves node %s at port %d, above 65535; give a lower "
                                      "ssh_port_base" % (self.port_base, name, port))
                elif port in pinned:
                    self.problems.add("nodes.%s.ssh_port" % pinned[port], "%d is also node %s's derived port "
                                      "(ssh_port_base + its position); pin another port or change ssh_port_base"
                                      % (port, name))
                node["ssh_port"] = port

    def derive_subnets(self):
        given = [(s, s["subnet"]) for s in self.segments if s["subnet"] is not None]
        for i, (segment, subnet) in enumerate(given):
            for other, other_subnet in given[i + 1:]:
                if subnet.overlaps(other_subnet):
                    self.problems.add(other["where"] + ".subnet", "%s overlaps %s of %s; give every segment its own "
                                      "subnet" % (other_subnet, subnet, segment["where"]))
        # consecutive /24s of the pool in file order, skipping every /24 a given subnet touches, so a segment keeps
        # its subnet when segments are appended
        free = iter(net for net in (self.pool.subnets(new_prefix=24) if self.pool else [])
                    if not any(net.overlaps(sub) for _s, sub in given))
        for segment in self.segments:
            if segment["subnet"] is None:
                segment["subnet"] = next(free, None)
                if segment["subnet"] is None:
                    self.problems.add(segment["where"], "has no subnet: %s; give the segment a subnet or the file "
                                      "a (larger) pool" % ("the pool %s has no /24 left" % self.pool if self.pool
                                                           else "the file has no pool"))
                    self.bad = True

    def derive_addresses(self, segment):
        subnet = segment["subnet"]
        if subnet is None:
            return
        taken = set()
        for member in segment["members"]:
            member["address"] = None
            value = member["overrides"].get("address")
            if value is None:
                continue
            where = member["where"] + ".address"
            text = str(value).strip() if isinstance(value, str) else value
            if isinstance(text, str) and "/" not in text:
                text = "%s/%d" % (text, subnet.prefixlen)
            iface = self.schema("nic", "address", text, where)
            if iface is None:
                self.bad = True
            elif iface.network != subnet:
                self.problems.add(where, "%s is not in the segment's subnet %s; give an address in it" % (value, subnet))
                self.bad = True
            elif iface.ip in taken:
                self.problems.add(where, "%s is already given to another member of this segment; give every member "
                                  "its own address" % iface.ip)
                self.bad = True
            else:
                member["address"] = iface
                taken.add(iface.ip)
        # the others take the lowest free host addresses in member order
        hosts = (ip for ip in subnet.hosts() if ip not in taken)
        for member in segment["members"]:
            if member["address"] is None and member["overrides"].get("address") is None:
                ip = next(hosts, None)
                if ip is None:
                    self.problems.add(segment["where"] + ".subnet", "%s has too few addresses for %d members; give "
                                      "a larger subnet" % (subnet, len(segment["members"])))
                    self.bad = True
                    return
                member["address"] = ipaddress.ip_interface("%s/%d" % (ip, subnet.prefixlen))

    def derive_names(self):
        """Taps `t<segment>-<member position>`, host ports `hp<segment>`/`hp<segment>-host`, all unique."""
        used = {}
        for segment in self.segments:
            if segment["bridge"] is not None:
                used.setdefault(segment["bridge"], []).append(segment["where"] + ".name")
        for segment in self.segments:
            number = segment["index"] + 1
            for member in segment["members"]:
                member["ifnames"] = {}
                if member["name"] == LAB_HOST:
                    defaults = {"name": "hp%d" % number, "peer": "hp%d-host" % number}
                else:
                    defaults = {"tap": "t%d-%d" % (number, member["position"] + 1)}
                for key, default in sorted(defaults.items()):
                    value = member["overrides"].get(key)
                    kind = "tap" if key == "tap" else "veth"
                    name = self.name(value, kind, "%s.%s" % (member["where"], key)) if value is not None else default
                    if name is None:
                        self.bad = True
                        continue
                    member["ifnames"][key] = name
                    used.setdefault(name, []).append("%s.%s" % (member["where"], key))
        for name, wheres in sorted(used.items()):
            for where in wheres[1:]:
                self.problems.add(where, "%s is also the name of %s (given or derived); give every bridge, tap and "
                                  "host port its own name" % (name, wheres[0]))
                self.bad = True

    # -- stage: route -----------------------------------------------------------------------------------------
    def route(self):
        segments = [{"label": "%s (%s, %s)" % (s["where"], s["bridge"], s["subnet"]), "subnet": s["subnet"],
                     "members": dict((m["name"], m["address"].ip) for m in s["members"])} for s in self.segments]
        routers = set(name for name, node in self.nodes.items() if node["role"] == "router")
        on_segments = set(m["name"] for s in self.segments for m in s["members"])
        for name in self.nodes:
            if name not in on_segments:
                self.problems.add("nodes.%s" % name, "is on no segment; add it to a segment's members")
        sources = [n for n in self.nodes if n in routers and n in on_segments]
        if LAB_HOST in on_segments:
            sources.append(LAB_HOST)
        hosts = [name for name, node in self.nodes.items()
                 if node["role"] == "host" and name in on_segments and node["gateway"] is None
                 and not any(r["network"].prefixlen == 0 for r in node["routes"])]
        written = dict((name, [r["network"] for r in node["routes"]]) for name, node in self.nodes.items())
        result = _topology_routes.plan_routes(segments, routers, sources, hosts, written)
        for member, why in result["problems"]:
            self.problems.add("nodes.%s" % member if member != LAB_HOST else "segment member lab_host", why)
        self.routes = result["routes"]
        self.gateways = result["gateways"]

    # -- stage: emit ------------------------------------------------------------------------------------------
    def emit(self):
        routers = [n for n, node in self.nodes.items() if node["role"] == "router"]
        hosts = [n for n, node in self.nodes.items() if node["role"] == "host"]
        known_hosts = "%s/%s/known_hosts" % (LABS_DIR, self.lab)
        all_vars = {"lab_name": self.lab, "lab_netns": self.netns}
        host_ports = self.host_ports()
        if host_ports:
            all_vars["lab_host_ports"] = host_ports
        all_vars.update(self.lab_vars)
        lab_vars = {
            "ansible_host": "127.0.0.1",
            "ansible_user": "root",
            "ansible_ssh_private_key_file": KEY_FILE,
            "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes" % known_hosts,
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        lab_vars.update(self.defaults)
        host_vars = dict(self.hypervisors) if self.hypervisors else {
            HYPERVISOR: {"ansible_connection": "local", "ansible_python_interpreter": self.python}}
        for name, node in self.nodes.items():
            values = {"ansible_port": node["ssh_port"], "vm_nics": self.nics(name) + node["user_nics"]}
            routes = [{"to": r["to"], "via": r["via"]} for r in node["routes"]]
            routes += [{"to": str(net), "via": str(via)} for net, via in self.routes.get(name, [])]
            if routes:
                values["vm_routes"] = routes
            gateway = node["gateway"] or self.gateways.get(name)
            if gateway is not None:
                values["vm_gateway"] = str(gateway)
            values.update(node["vars"])
            if "vm_kernel" in node["vars"] or "vm_kernel" in self.defaults:
                # a guest on its own image has a host key the lab cannot know: accepted once into known_hosts.own
                values["ansible_ssh_common_args"] = ("-o UserKnownHostsFile=%s.own -o StrictHostKeyChecking="
                                                     "accept-new" % known_hosts)
            values.update(node["extra"])
            host_vars[name] = values
        return {
            "groups": {"hypervisors": list(self.hypervisors) or [HYPERVISOR], "lab": [], "routers": routers,
                       "hosts": hosts},
            "children": {"lab": ["routers", "hosts"]},
            "group_vars": {"all": all_vars, "lab": lab_vars},
            "host_vars": host_vars,
            "errors": [],
        }

    def nics(self, name):
        nics = []
        for segment in self.segments:
            for member in segment["members"]:
                if member["name"] != name:
                    continue
                nic = {"bridge": segment["bridge"], "tap": member["ifnames"]["tap"],
                       "mac": member["overrides"].get("mac") or derived_mac(self.lab, name, segment["bridge"]),
                       "address": str(member["address"])}
                options = dict(segment["options"])
                options.update((k, member["overrides"][k]) for k in NIC_OPTIONS if k in member["overrides"])
                nic.update(sorted(options.items()))
                nics.append(nic)
        return nics

    def host_ports(self):
        ports = []
        port_of = {}
        for segment in self.segments:
            for member in segment["members"]:
                if member["name"] == LAB_HOST:
                    port_of[segment["index"]] = len(ports)
                    ports.append({"name": member["ifnames"]["name"], "peer": member["ifnames"]["peer"],
                                  "bridge": segment["bridge"], "address": str(member["address"]), "routes": []})
        # the lab host's ports share one routing table (the lab namespace): each route goes to the port whose
        # segment holds its gateway
        for net, via in self.routes.get(LAB_HOST, []):
            for index, position in sorted(port_of.items()):
                if via in self.segments[index]["subnet"]:
                    ports[position]["routes"].append({"to": str(net), "via": str(via)})
                    break
        for port in ports:
            if not port["routes"]:
                del port["routes"]
        return ports


def flatten(inventory):
    """(hostvars, groups) as Ansible merges the emitted inventory (all < lab < routers/hosts < host)."""
    groups = dict((name, list(members)) for name, members in inventory["groups"].items())
    groups["lab"] = groups["routers"] + groups["hosts"]
    groups["all"] = list(inventory["host_vars"])
    groups["ungrouped"] = []
    hostvars = {}
    for host, values in inventory["host_vars"].items():
        merged = dict(inventory["group_vars"]["all"])
        if host in groups["lab"]:
            merged.update(inventory["group_vars"]["lab"])
        merged.update(values)
        merged["inventory_hostname"] = host
        hostvars[host] = merged
    return hostvars, groups


def compile_topology(data, source="topology file", check_files=False, python=CONTROLLER_PYTHON):
    """The classic inventory of a topology file: {groups, children, group_vars, host_vars, errors}.

    `python`: the lab host's interpreter for the modules (the inventory plugin gives its own, a concrete path).

    `errors` lists every problem (file, where, value, fix); with errors nothing else is returned filled in."""
    topology = _Topology(data, source, python)
    empty = {"groups": {}, "children": {}, "group_vars": {}, "host_vars": {}}
    if not topology.read() and (topology.bad or not topology.segments or not topology.nodes):
        return dict(empty, errors=topology.problems.messages)
    topology.derive()
    if topology.bad or topology.problems.messages:
        return dict(empty, errors=topology.problems.messages)
    topology.route()
    if topology.problems.messages:
        return dict(empty, errors=topology.problems.messages)
    inventory = topology.emit()
    # the lab compiler reads the result exactly as lab.yml will; what it refuses is refused here already
    plan = compile_lab(*flatten(inventory), check_files=check_files)
    if plan["errors"]:
        return dict(empty, errors=["%s: the inventory made from it: %s" % (source, message)
                                   for message in plan["errors"]])
    return inventory
