# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compiler's placement stage: which lab host holds what, and how segments spread over lab hosts are joined.

    place      each segment's lab hosts (its VMs' `vm_hypervisor`, host ports on the first lab host)
    underlay   every lab host a segment spans has its own `lab_underlay_address`, one it really has (read there by
               lab_host_info), on an interface that carries `lab_underlay_mtu`
    mtu        VXLAN costs 50 bytes: a spanning segment's NICs, taps, host ports and bridge get
               lab_underlay_mtu - 50 unless set lower; a larger mtu is refused
    vxlan      per spanning segment and pair of its lab hosts one VXLAN port on each end (unicast), its VNI derived
               from lab, segment and the pair (`vni`)
    jump       guests of a lab host reached over SSH are reached through that host (`proxy_command`)

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import re
import shlex

from ansible_collections.qemulab.network.plugins.module_utils._run_paths import CURRENT as CONTROLLER_PATHS
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_schema import VXLAN_OVERHEAD, as_int

# Where the controller keeps, per lab and lab host, what it needs to reach that host's guests through it: the host's
# guest key and the lab's known_hosts there (vm_launch copies them, teardown removes them). The controller's own files,
# so under the state root of the user running ansible-playbook (_run_paths), whoever the lab hosts' users are.
JUMP_ROOT = CONTROLLER_PATHS.jump
# A lab host's inventory name becomes a directory under JUMP_ROOT: DNS-like names only.
HOST_DIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
VNI_MAX = (1 << 24) - 1


def vni(lab, bridge, host_a, host_b, attempt=0):
    """The VNI of segment `bridge`'s tunnel between two lab hosts: the first 24 bits of
    sha256("<lab>/<bridge>/<host>/<host>") over the pair in sorted order (with "#<n>" appended on the n-th retry after
    a clash within the lab); 0 is skipped. The pair is part of it because Linux refuses two VXLAN devices with one
    VNI on one UDP port in a namespace, and a lab host has one port per other host of the segment."""
    first, second = sorted((host_a, host_b))
    key = "%s/%s/%s/%s" % (lab, bridge, first, second) + ("#%d" % attempt if attempt else "")
    value = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:6], 16)
    return value or 1


def vxlan_name(number):
    """The VXLAN port's interface name on both ends: `vx-` and the VNI in six hex digits (9 bytes, the name rule)."""
    return "vx-%06x" % number


def is_local(hostvars, host):
    """Whether Ansible reaches `host` without SSH: its guests' forwards are then on the controller's 127.0.0.1."""
    connection = hostvars.get("ansible_connection")
    if connection is None:
        # the implicit localhost, or an inventory's localhost left without a connection, as existing labs have it
        return host in ("localhost", "127.0.0.1")
    return connection in ("local",)


def _quote(token):
    # ssh expands %-tokens in ProxyCommand before its shell runs it: the hypervisor's own tokens keep theirs for the
    # inner ssh by doubling them
    return shlex.quote(str(token).replace("%", "%%"))


def proxy_command(host, hostvars):
    """`ssh <the lab host's connection> -W 127.0.0.1:%p`, built from its own connection variables (its own
    ansible_ssh_common_args included, so a ProxyCommand there nests), every token shell-quoted."""
    argv = ["ssh", "-o", "BatchMode=yes"]
    port = as_int(hostvars.get("ansible_port"))
    if port is not None:
        argv += ["-p", port]
    for key, option in (("ansible_user", "-l"), ("ansible_ssh_private_key_file", "-i")):
        value = hostvars.get(key)
        if isinstance(value, str) and value:
            argv += [option, value]
    common = hostvars.get("ansible_ssh_common_args")
    if isinstance(common, str) and common.strip():
        argv += shlex.split(common)
    address = hostvars.get("ansible_host")
    argv.append(address if isinstance(address, str) and address else host)
    return " ".join(_quote(token) for token in argv) + " -W 127.0.0.1:%p"


def guest_connection(lab, host, hostvars, own_image):
    """The connection variables of a guest on lab host `host` reached through it: its forward stays on that host's
    127.0.0.1, the key and known_hosts are the controller's copies of that host's (JUMP_ROOT/<lab>/<host>/)."""
    directory = "%s/%s/%s" % (JUMP_ROOT, lab, host)
    known_hosts = directory + ("/known_hosts.own" if own_image else "/known_hosts")
    proxy = shlex.quote("ProxyCommand=" + proxy_command(host, hostvars))
    args = "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=%s -o %s" % (
        known_hosts, "accept-new" if own_image else "yes", proxy)
    return {"ansible_host": "127.0.0.1", "ansible_ssh_private_key_file": directory + "/id_ed25519",
            "ansible_ssh_common_args": args}


def segment_hosts(vms, host_ports, first, first_bridges=()):
    """{bridge: [lab hosts in order of first use]} from the VMs' tap NICs, the host ports and `first_bridges` (the
    way out's segment), which are on the first host."""
    hosts = {}
    for vm in vms:
        for nic in vm["nics"]:
            if nic.get("bridge") and vm.get("hypervisor"):
                hosts.setdefault(nic["bridge"], [])
                if vm["hypervisor"] not in hosts[nic["bridge"]]:
                    hosts[nic["bridge"]].append(vm["hypervisor"])
    for bridge in [port.get("bridge") for port in host_ports] + list(first_bridges):
        if bridge in hosts and first not in hosts[bridge]:
            hosts[bridge].append(first)
    return hosts


class Placement(object):
    """The placement stage over a compiler's VMs, host ports and bridges; problems go to the compiler's list."""

    def __init__(self, problems, lab, hypervisors, hypervisor_vars, lab_hosts):
        self.problems = problems
        self.lab = lab
        self.hypervisors = hypervisors
        self.vars = hypervisor_vars
        # host -> what lab_host_info read there ({} when the plan is made without it)
        self.lab_hosts = lab_hosts

    def plan(self, lab_name, vms, host_ports, bridges, ifnames, first_bridges=()):
        """Fills the spanning segments' MTUs in `vms`, `host_ports` and `bridges`; returns the placement."""
        order = dict((host, index) for index, host in enumerate(self.hypervisors))
        by_bridge = segment_hosts(vms, host_ports, self.hypervisors[0], first_bridges)
        spans = dict((bridge, sorted(hosts, key=order.get)) for bridge, hosts in by_bridge.items() if len(hosts) > 1)
        underlay = self.underlay(spans)
        self.check_host_dirs(vms)
        overlay_mtu = self.lab["lab_underlay_mtu"] - VXLAN_OVERHEAD if self.lab["lab_underlay_mtu"] else None
        segments = []
        used = {}
        for bridge in sorted(spans):
            hosts = spans[bridge]
            mtu = self.segment_mtu(bridge, hosts, vms, host_ports, bridges, overlay_mtu)
            tunnels = []
            for i, host_a in enumerate(hosts):
                for host_b in hosts[i + 1:]:
                    attempt = 0
                    number = vni(lab_name, bridge, host_a, host_b)
                    while number in used:
                        attempt += 1
                        number = vni(lab_name, bridge, host_a, host_b, attempt)
                    used[number] = (bridge, host_a, host_b)
                    name = vxlan_name(number)
                    for kind, owner, field in ifnames.get(name, []):
                        self.problems.add(owner, field, "%s is the name of the VXLAN port of segment %s between %s "
                                          "and %s; give the %s another name" % (name, bridge, host_a, host_b, kind))
                    tunnels.append({"hosts": [host_a, host_b], "vni": number, "name": name})
            segments.append({"bridge": bridge, "hosts": hosts, "mtu": mtu, "tunnels": tunnels})
        return {"segments": segments, "underlay": underlay, "port": self.lab["lab_vxlan_port"]}

    def underlay(self, spans):
        """{host: address} of the lab hosts' underlay addresses, each checked: set where a segment spans, unique,
        the host's own, on an interface that carries lab_underlay_mtu."""
        addresses, seen = {}, {}
        needed = {}
        for bridge in sorted(spans):
            for host in spans[bridge]:
                needed.setdefault(host, bridge)
        for host in self.hypervisors:
            value = self.vars[host].get("lab_underlay_address")
            if value is None:
                if host in needed:
                    bridge = needed[host]
                    self.problems.add(host, "lab_underlay_address", "is not set, but segment %s spans lab hosts %s; "
                                      "give the address this host's VXLAN tunnels use, one the other lab hosts "
                                      "reach, like 192.0.2.11" % (bridge, ", ".join(spans[bridge])))
                continue
            if value in seen:
                self.problems.add(host, "lab_underlay_address", "%s is already the underlay address of %s; give every "
                                  "lab host its own address" % (value, seen[value]))
                continue
            seen[value] = host
            addresses[host] = str(value)
            self.check_on_host(host, value)
        return addresses

    def check_on_host(self, host, address):
        found = (self.lab_hosts.get(host) or {}).get("addresses")
        if not isinstance(found, list):
            return
        ours = [item for item in found if isinstance(item, dict) and item.get("address") == str(address)]
        if not ours:
            have = ", ".join(sorted(set(str(item.get("address")) for item in found if isinstance(item, dict)
                                        and item.get("address") and not str(item["address"]).startswith("127."))))
            self.problems.add(host, "lab_underlay_address", "%s is not an address of this lab host (it has %s); "
                              "give one of its own addresses that the other lab hosts reach"
                              % (address, have or "no IPv4 address but loopback"))
            return
        mtu = as_int(ours[0].get("mtu"))
        wanted = self.lab["lab_underlay_mtu"]
        if wanted and mtu is not None and mtu < wanted:
            self.problems.add(host, "lab_underlay_mtu", "%d is more than the MTU %d of %s, which carries "
                              "lab_underlay_address %s on this lab host; set lab_underlay_mtu to %d or less, or "
                              "raise that interface's MTU" % (wanted, mtu, ours[0].get("interface"), address, mtu))

    def check_host_dirs(self, vms):
        """A lab host reached over SSH names a directory on the controller (JUMP_ROOT/<lab>/<host>)."""
        remote = set(vm["hypervisor"] for vm in vms if vm.get("hypervisor") and not is_local(
            self.vars.get(vm["hypervisor"], {}), vm["hypervisor"]))
        for host in sorted(remote):
            if not HOST_DIR_RE.match(host) or ".." in host:
                self.problems.add(host, "inventory_hostname", "%r cannot name the controller's directory of this "
                                  "lab host's guest keys; use letters, digits, '.', '_' and '-' (set ansible_host "
                                  "for the address)" % host)

    def segment_mtu(self, bridge, hosts, vms, host_ports, bridges, overlay_mtu):
        """The MTU of a segment that spans lab hosts: the set one if it fits through VXLAN, else the overlay's."""
        if overlay_mtu is None:
            return None
        where = "segment %s, which spans lab hosts %s over VXLAN" % (bridge, ", ".join(hosts))
        fix = ("lab_underlay_mtu %d less %d bytes of VXLAN leaves %d; give %d or less, or raise lab_underlay_mtu "
               "(the underlay must carry it)" % (overlay_mtu + VXLAN_OVERHEAD, VXLAN_OVERHEAD, overlay_mtu,
                                                 overlay_mtu))
        mtu = overlay_mtu
        for vm in vms:
            for nic in vm["nics"]:
                if nic.get("bridge") != bridge:
                    continue
                if nic["mtu"] is None:
                    nic["mtu"] = overlay_mtu
                elif nic["mtu"] > overlay_mtu:
                    self.problems.add(vm["name"], "vm_nics[%d].mtu" % nic["index"], "%d does not fit %s: %s"
                                      % (nic["mtu"], where, fix))
                else:
                    mtu = min(mtu, nic["mtu"])
        for port in host_ports:
            if port.get("bridge") == bridge:
                port["mtu"] = mtu
        for item in bridges:
            if item["name"] == bridge:
                item["mtu"] = mtu
        return mtu
