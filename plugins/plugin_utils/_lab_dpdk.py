# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compiler's checks of user-space (`backend: vhost-user`) segments: read one such NIC, then judge the segments.

A vhost-user segment is named by its NICs' `bridge` but is no Linux bridge: a DPDK datapath (dpdk-testpmd,
module_utils/_dpdk_datapath.py) forwards between exactly two vhost-user NICs, polling `lab_dpdk_cores` CPUs.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.qemulab.network.plugins.plugin_utils._lab_schema import as_int, is_mapping

# keys of a NIC that mean a tap or SLIRP and have no sense on a user-space segment
NOT_WITH_VHOST_USER = ("tap", "vhost", "net", "hostfwd", "netem")
PORTS_PER_SEGMENT = 2
# What lab.yml cannot do yet: its roles start no datapath (docs/dpdk.md says how to run one with the modules).
NOT_WIRED = ("vhost-user is not run by lab.yml yet (its roles start no DPDK datapath); run the segment with "
             "qemulab.network.dpdk_datapath and qemulab.network.qemu_vm as docs/dpdk.md shows, or use backend tap")


def read_nic(compiler, name, field, raw, nic):
    """Check one vhost-user NIC and record it under its segment (compiler.dpdk_segments)."""
    problems = compiler.problems
    nic["vhost"], nic["tap"], nic["net"], nic["hostfwd"] = None, None, None, []
    for key in NOT_WITH_VHOST_USER:
        if raw.get(key) is not None:
            problems.add(name, "%s.%s" % (field, key), "does not apply to backend vhost-user (a user-space segment "
                         "has no tap and no kernel qdisc); drop it or use backend tap")
    if nic["model"] != "virtio-net-pci":
        problems.add(name, field + ".model", "is %s but vhost-user serves virtio queues only; use virtio-net-pci"
                     % nic["model"])
    if raw.get("bridge") is None:
        problems.add(name, field + ".bridge", "is not set; name the user-space segment of eth%d" % nic["index"])
    elif nic["bridge"]:
        compiler.dpdk_segments.setdefault(nic["bridge"], []).append((name, field + ".bridge"))
    if raw.get("address") is not None and nic["address"] is not None:
        compiler.claim_address(nic["address"], name, field + ".address")
        nic["address"] = str(nic["address"])


def _host_cpus(compiler, host):
    """The CPUs of lab host `host` as the playbook read them (lab_host_info), or None when not known."""
    lab_hosts = getattr(compiler, "lab_hosts", None)
    resources = lab_hosts.get(host) if lab_hosts else compiler.host_resources
    return as_int(resources.get("cpus")) if is_mapping(resources) else None


def check(compiler, cores, owner, host):
    """Each segment has exactly two vhost-user NICs and is not also a Linux bridge; the lab host has the CPUs."""
    problems = compiler.problems
    cpus = _host_cpus(compiler, host)
    segments = getattr(compiler, "dpdk_segments", {})
    for segment, members in sorted(segments.items()):
        if segment in compiler.segments:
            vm, field = members[0]
            problems.add(vm, field, "%s is a user-space (vhost-user) segment but also a Linux bridge of backend tap "
                         "NICs; give them different names" % segment)
        if len(members) != PORTS_PER_SEGMENT:
            vm, field = members[0]
            problems.add(vm, field, "segment %s has %d vhost-user NIC(s) (%s); its datapath (dpdk-testpmd) forwards "
                         "between exactly %d" % (segment, len(members), ", ".join("%s %s" % m for m in members),
                                                 PORTS_PER_SEGMENT))
        for vm, field in members:
            problems.add(vm, field.rsplit(".", 1)[0] + ".backend", NOT_WIRED)
    if segments and cpus is not None:
        wanted = len(segments) * cores + 1
        if wanted > cpus:
            problems.add(owner, "lab_dpdk_cores", "%d: %d user-space segment(s) polling %d core(s) each need %d CPUs "
                         "(one more for testpmd's main core and the guests), but the lab host has %d; lower "
                         "lab_dpdk_cores, use fewer vhost-user segments, or backend tap" % (
                             cores, len(segments), cores, wanted, cpus))
