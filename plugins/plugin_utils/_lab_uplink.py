# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's way out (`lab_uplink`), two stages of the lab compiler.

    plan     read the keys, claim the address on its segment and the lab-side veth name (before the segments'
             subnets are checked, so the address is checked with them)
    resolve  once routes and NAT are known: the uplink router's default route and masquerade, the VMs' default
             routes towards the way out, and what the lab host does: a veth from `bridge` to `upstream_netns`, its
             end there holding `address`, and a masquerade of the segment out of `upstream` in chains the lab owns
             (`qemulab-<lab>-pre`/`-post`, the nat_rules action's owner), so cleanup removes exactly those; the
             veth carries the segment's MTU when the plan sets one (VXLAN's 50 bytes on a segment spanning hosts)

A lab host run without root (docs/rootless.md) has no upstream namespace to reach: its lab's namespace lives in a
user namespace of the user's. There the way out is slirp4netns attached to that namespace (qemulab.network.
slirp4netns): its tap in the lab's namespace, `address` on `bridge` itself, the namespace routing between the two
and slirp4netns doing the NAT in user mode. The guests' side (the uplink router's default route and masquerade,
the hosts' default routes) is the same plan; `upstream`, `name` and `peer` are not used there.

Every problem names the lab host, the field, the value and the fix (the compiler's `_Problems`).

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import ipaddress

from ansible_collections.qemulab.network.plugins.module_utils import _slirp4netns
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_rootless import roots as _host_roots
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_schema import fields as _fields, keys as _keys

FIELD = "lab_uplink"
DEFAULT_ROUTE = "0.0.0.0/0"
# slirp4netns's tap: its own side only (the segments keep theirs; the namespace routes between them); 65520 is what
# slirp4netns recommends (measured 7.5 Gbit/s from the namespace to a listener on the host, docs/rootless.md)
SLIRP_MTU = 65520


def owner(lab_name):
    """The nat_rules owner of a lab's uplink rules: `qemulab-<lab>` (a lab name has at most 15 characters, so the
    chain `qemulab-<lab>-post` stays within iptables' 28)."""
    return "qemulab-" + lab_name


def default_names(lab_name):
    digest = hashlib.sha256(lab_name.encode("utf-8")).hexdigest()[:8]
    return "qlu-%s-l" % digest, "qlu-%s-u" % digest


def slirp_tap(lab_name):
    """The tap slirp4netns makes in a rootless lab's namespace: `qlu-<8 hex of the lab name>-s`."""
    return "qlu-%s-s" % hashlib.sha256(lab_name.encode("utf-8")).hexdigest()[:8]


def rootless(compiler, host):
    """Whether lab host `host` reported a user other than root (lab_host_info), so its way out is slirp4netns."""
    return _host_roots(compiler.lab_hosts.get(host)).rootless


def plan(compiler, value, where, lab_name, netns):
    """The uplink's keys read and checked on their own, or None (unset, or a problem was recorded)."""
    if value is None:
        return None
    problems = compiler.problems
    for key in sorted(str(k) for k in value):
        if key not in _keys("uplink"):
            problems.add(where, "%s.%s" % (FIELD, key), "is not a known key; use only %s" % ", ".join(_keys("uplink")))
    up = dict((decl.name, compiler.read("uplink", decl.name, value, where, "%s.%s" % (FIELD, decl.name)))
              for decl in _fields("uplink"))
    if any(up[key] is None and value.get(key) is not None for key in up):
        return None
    if up["bridge"] is None or up["address"] is None:
        return None
    if rootless(compiler, where):
        return _plan_rootless(compiler, up, where, lab_name)
    if up["upstream"] is None:
        decl = [decl for decl in _fields("uplink") if decl.name == "upstream"][0]
        problems.add(where, FIELD + ".upstream", "is not set; give it (%s), like %s (only a lab host run without "
                     "root needs none: its way out is slirp4netns)" % (decl.rule, decl.example.strip("`")))
        return None
    name, peer = default_names(lab_name)
    up["name"], up["peer"] = up["name"] or name, up["peer"] or peer
    if up["name"] == up["peer"]:
        problems.add(where, FIELD + ".peer", "%s is also the name of the end on the bridge; give the two ends "
                     "different names" % up["peer"])
        return None
    if up["peer"] == up["upstream"]:
        problems.add(where, FIELD + ".peer", "%s is the upstream interface itself; give the veth end another name"
                     % up["peer"])
        return None
    compiler.ifnames.setdefault(up["name"], []).append(("veth", where, FIELD + ".name"))
    if up["upstream_netns"] == netns:
        # both ends in one namespace: the peer's name must be free there as well
        compiler.ifnames.setdefault(up["peer"], []).append(("veth", where, FIELD + ".peer"))
    return _claim_segment(compiler, up, where)


def _claim_segment(compiler, up, where):
    if up["bridge"] not in compiler.segments:
        compiler.problems.add(where, FIELD + ".bridge", "%s is used by no VM NIC; give the way out a bridge of the "
                              "lab (%s)" % (up["bridge"], ", ".join(sorted(compiler.segments)) or "none"))
        return None
    iface = up["address"]
    compiler.claim_address(iface, where, FIELD + ".address")
    compiler.segments[up["bridge"]].append((where, FIELD + ".address", iface))
    up["_iface"] = iface
    return up


def _plan_rootless(compiler, up, where, lab_name):
    """The rootless way out: slirp4netns's tap in the lab's namespace (its name claimed there), no veth."""
    if up["upstream_netns"]:
        compiler.problems.add(where, FIELD + ".upstream_netns", "is %s, but lab host %s runs the lab without root: "
                              "the way out is slirp4netns in the lab's own namespace and a user enters no other; "
                              "drop upstream_netns (docs/uplink.md)" % (up["upstream_netns"], where))
        return None
    up["tap"] = slirp_tap(lab_name)
    compiler.ifnames.setdefault(up["tap"], []).append(("tap", where, FIELD))
    return _claim_segment(compiler, up, where)


def _default_via(vm):
    """The VM's default route's gateway (vm_gateway or a `to: default` route), or None."""
    if vm["gateway"]:
        return vm["gateway"]
    return next((route["via"] for route in vm["routes"] if route["to"] == DEFAULT_ROUTE), None)


def _addressed(vm):
    return [nic for nic in vm["nics"] if nic.get("_iface") and nic["tap"]]


def resolve(compiler, up, vms, where, lab_name):
    """The uplink's effects on the VMs, and what the lab host runs (None when unset or broken)."""
    if up is None:
        return None
    problems = compiler.problems
    iface = up.pop("_iface")
    if iface.network != compiler.subnets.get(up["bridge"]):
        return None  # the segment check already named the mismatch
    gateway = str(iface.ip)
    by_name = dict((vm["name"], vm) for vm in vms)
    router, router_out = None, None
    if up["router"] is not None:
        router = by_name.get(up["router"])
        field = FIELD + ".router"
        if router is None or router["kind"] != "router" or not router["forwarding"]:
            problems.add(where, field, "%s is not a VM of group routers that forwards; name a router on %s (%s)" % (
                up["router"], up["bridge"], ", ".join(sorted(vm["name"] for vm in vms if vm["kind"] == "router"
                                                             and any(nic["bridge"] == up["bridge"]
                                                                     for nic in _addressed(vm)))) or "none"))
            return None
        router_out = next((nic for nic in _addressed(router) if nic["bridge"] == up["bridge"]), None)
        if router_out is None:
            problems.add(where, field, "%s has no addressed NIC on %s; give it one, or name a router that has" % (
                up["router"], up["bridge"]))
            return None
        via = _default_via(router)
        if via is not None and via != gateway:
            problems.add(router["name"], "vm_gateway", "%s is the router's default route, but %s.router sends it "
                         "out through %s; drop vm_gateway (and any `to: default` route) of %s" % (
                             via, FIELD, gateway, router["name"]))
            return None
        if via is None:
            router["gateway"] = gateway
        for nic in _addressed(router):
            subnet = str(nic["_iface"].network)
            if nic is router_out or any(rule.get("inside_subnet") == subnet and rule["outside"] == router_out["dev"]
                                        for rule in router["nat"]):
                continue
            router["nat"].append({"type": "masquerade", "inside": nic["dev"], "outside": router_out["dev"],
                                  "inside_subnet": subnet})
    # hosts without a default route get one towards the way out: on its segment the uplink address, next to the
    # uplink router that router (a host further away needs its own routers' default routes; see docs/uplink.md)
    for vm in vms:
        if vm["kind"] != "host" or _default_via(vm) is not None:
            continue
        nics = _addressed(vm)
        if any(nic["bridge"] == up["bridge"] for nic in nics):
            vm["gateway"] = gateway
        elif router is not None:
            shared = [str(theirs["_iface"].ip) for nic in nics for theirs in _addressed(router)
                      if theirs["_iface"].network == nic["_iface"].network]
            if shared:
                vm["gateway"] = shared[0]
    if "tap" in up:
        return _resolve_rootless(compiler, up, iface, where, lab_name)
    result = {
        "bridge": up["bridge"], "address": str(iface), "subnet": str(iface.network), "upstream": up["upstream"],
        "upstream_netns": up["upstream_netns"], "router": up["router"], "name": up["name"], "peer": up["peer"],
        "owner": owner(lab_name),
        # the nat_rules action's rule: the segment leaves upstream with the upstream interface's address
        "rules": [{"type": "masquerade", "inside": up["peer"], "outside": up["upstream"],
                   "inside_subnet": str(iface.network)}],
    }
    mtu = segment_mtu(vms, up["bridge"])
    if mtu is not None:
        result["mtu"] = mtu
    return result


def _resolve_rootless(compiler, up, iface, where, lab_name):
    """What a rootless lab host runs: slirp4netns (its tap, MTU, network) and `address` on `bridge`, or None when a
    segment of the lab overlaps slirp4netns's own network (its addresses there would be unreachable)."""
    network = ipaddress.ip_network(_slirp4netns.NETWORK)
    overlapping = sorted("segment %s" % bridge for bridge, subnet in compiler.subnets.items()
                         if subnet is not None and subnet.overlaps(network))
    # a guest routes a user-mode NIC's network out of that NIC: the way out's gateway would be QEMU's
    overlapping += sorted("%s %s" % (vm, label) for vm, label, net in compiler.user_nets if net.overlaps(network))
    if overlapping:
        compiler.problems.add(where, FIELD, "needs slirp4netns on this rootless lab host, whose own network is %s, which "
                              "%s overlap(s); give them other subnets" % (network, ", ".join(overlapping)))
        return None
    return {
        "bridge": up["bridge"], "address": str(iface), "subnet": str(iface.network), "router": up["router"],
        "owner": owner(lab_name),
        "slirp4netns": {"tap": up["tap"], "mtu": SLIRP_MTU, "network": str(network), "gateway": _slirp4netns.GATEWAY},
    }


def segment_mtu(vms, bridge):
    """The MTU the plan gives segment `bridge`'s NICs (the placement lowers it by VXLAN's 50 bytes when the segment
    spans lab hosts), or None when it leaves the default: the veth on that bridge must not send larger frames, which
    the tunnel would drop."""
    mtus = [nic["mtu"] for vm in vms for nic in vm["nics"] if nic.get("bridge") == bridge and nic.get("mtu")]
    return min(mtus) if mtus else None
