# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compiler's part for user-space (`backend: vhost-user`) segments: read one such NIC, judge the segments,
render each lab host's datapaths (qemulab.network.dpdk_datapath) and its NICs' sockets.

A vhost-user segment is named by its NICs' `bridge` but is no Linux bridge: a DPDK datapath (dpdk-testpmd,
module_utils/_dpdk_datapath.py) forwards between exactly two vhost-user NICs, polling `lab_dpdk_cores` CPUs and
holding HUGEPAGES_DEFAULT 2 MiB hugepages the lab reserves while it runs. vm_launch starts it before the VMs,
teardown stops it and gives the hugepages back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.qemulab.network.plugins.module_utils._dpdk_datapath import HUGEPAGE_MIB, HUGEPAGES_DEFAULT
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_schema import as_int, is_mapping

# keys of a NIC that mean a tap or SLIRP and have no sense on a user-space segment
NOT_WITH_VHOST_USER = ("tap", "vhost", "net", "hostfwd", "netem")
PORTS_PER_SEGMENT = 2


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
        # routes and a gateway may lead through it, like through a tap NIC's address
        nic["_iface"] = nic["address"]
        nic["address"] = str(nic["address"])


def _host_cpus(compiler, host):
    """The CPUs of lab host `host` as the playbook read them (lab_host_info), or None when not known."""
    lab_hosts = getattr(compiler, "lab_hosts", None)
    resources = lab_hosts.get(host) if lab_hosts else compiler.host_resources
    return as_int(resources.get("cpus")) if is_mapping(resources) else None


def hugepages_mib(vms):
    """Memory the datapaths of these VMs' segments take from the lab host as hugepages (the capacity check adds it
    to the VMs')."""
    return len(segment_ports(vms)) * HUGEPAGES_DEFAULT * HUGEPAGE_MIB


def check(compiler, cores, owner, host, qemu_user, vms):
    """Each segment has exactly two vhost-user NICs of VMs on one lab host and is not also a Linux bridge; QEMU
    runs as root; every lab host has the CPUs for its segments' polling cores."""
    problems = compiler.problems
    segments = getattr(compiler, "dpdk_segments", {})
    hypervisor = dict((vm["name"], vm["hypervisor"]) for vm in vms)
    per_host = {}
    for segment, members in sorted(segments.items()):
        vm, field = members[0]
        if segment in compiler.segments:
            problems.add(vm, field, "%s is a user-space (vhost-user) segment but also a Linux bridge of backend tap "
                         "NICs; give them different names" % segment)
        if len(members) != PORTS_PER_SEGMENT:
            problems.add(vm, field, "segment %s has %d vhost-user NIC(s) (%s); its datapath (dpdk-testpmd) forwards "
                         "between exactly %d" % (segment, len(members), ", ".join("%s %s" % m for m in members),
                                                 PORTS_PER_SEGMENT))
        hosts = sorted(set(hypervisor.get(member, host) for member, _field in members))
        if len(hosts) > 1:
            problems.add(vm, field, "segment %s joins VMs on lab hosts %s; a user-space segment's datapath serves "
                         "VMs of one lab host, so give its VMs the same vm_hypervisor" % (segment, ", ".join(hosts)))
        per_host.setdefault(hosts[0] if hosts else host, []).append(segment)
    if segments and qemu_user and qemu_user not in ("root", "0"):
        problems.add(owner, "lab_qemu_user", "%s: the datapath's vhost-user sockets are root's and QEMU must map "
                     "its shared guest memory for it, so VMs with backend vhost-user run as root; drop "
                     "lab_qemu_user or use backend tap" % qemu_user)
    for lab_host, names in sorted(per_host.items()):
        cpus = _host_cpus(compiler, lab_host)
        wanted = len(names) * cores + 1
        if cpus is not None and wanted > cpus:
            problems.add(owner, "lab_dpdk_cores", "%d: %d user-space segment(s) polling %d core(s) each need %d CPUs "
                         "(one more for testpmd's main core and the guests), but the lab host%s has %d; lower "
                         "lab_dpdk_cores, use fewer vhost-user segments, or backend tap" % (
                             cores, len(names), cores, wanted, "" if lab_host == host else " " + lab_host, cpus))


def segment_ports(vms):
    """{segment: [(vm, dev, port)]} of these VMs' vhost-user NICs, in the order of the VMs and their NICs. A port is
    `<vm>-<dev>` (its socket's file name), or `port<k>` where that breaks the name rule or repeats on the segment."""
    found = {}
    for vm in vms:
        for nic in vm["nics"]:
            if nic["backend"] == "vhost-user":
                found.setdefault(nic["bridge"], []).append((vm["name"], nic["dev"], "%s-%s" % (vm["name"], nic["dev"])))
    for segment, members in found.items():
        names = [port for _vm, _dev, port in members]
        if len(set(names)) != len(names) or any(check_name(port, "vm") for port in names):
            found[segment] = [(vm, dev, "port%d" % k) for k, (vm, dev, _port) in enumerate(members)]
    return found


def socket_path(lab, segment, port):
    """The vhost-user socket of `port`, relative to the run root (vm_launch's qemu_vm_specs makes it absolute)."""
    return "%s.dpdk/%s/%s.sock" % (lab, segment, port)


def datapaths(lab, vms, cores):
    """qemulab.network.dpdk_datapath's arguments for the segments of these VMs (one lab host's)."""
    return [{"lab": lab, "segment": segment, "ports": [port for _vm, _dev, port in members], "cores": cores,
             "hugepages": HUGEPAGES_DEFAULT} for segment, members in sorted(segment_ports(vms).items())]
