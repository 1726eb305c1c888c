# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compiler's part for lab hosts whose user is not root (rootless labs, docs/rootless.md).

Each lab host reports its user and roots (qemulab.network.lab_host_info: `euid`, `rootless`, `roots`,
`runtime_dir_problem`). From them this file gives
    roots    where a lab keeps its files on that host (`_run_paths.Roots`): root's paths unless the host said
             otherwise, so a plan made without lab_host_info (or from an older one) is the same as always
    check    what a user without root cannot run, refused before anything changes, each naming host, field,
             value and fix

Which paths are whose: the run, cache and state roots here are the lab host's (its user's). The controller's own
files - the jump directories of guests reached through a lab host (`_lab_placement.JUMP_ROOT`) and the guest key
and known_hosts a topology inventory names (`_topology`) - belong to the user running ansible-playbook and come
from `_run_paths.CURRENT` in the controller's process.

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.qemulab.network.plugins.module_utils._run_paths import ROOT, Roots
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_schema import is_mapping

DOCS = "docs/rootless.md"


def roots(info):
    """The roots a lab host reported (lab_host_info's `roots` with `rootless`), else root's."""
    if not is_mapping(info) or info.get("rootless") is not True or not is_mapping(info.get("roots")):
        return ROOT
    reported = info["roots"]
    values = [reported.get(key) for key in ("run", "cache", "state")]
    if not all(isinstance(value, str) and os.path.isabs(value) for value in values):
        return ROOT
    return Roots(*[os.path.normpath(value) for value in values], rootless=True)


def as_dict(paths):
    """A host's roots as the plan carries them (the roles take their run, cache and state directories from it)."""
    return {"run": paths.run, "cache": paths.cache, "state": paths.state}


def _rootless(info):
    return is_mapping(info) and info.get("rootless") is True and not info.get("unreachable")


def check(problems, lab, vms, placement, hosts, lab_hosts):
    """Refuse, per rootless lab host, what it cannot run; `hosts` in the plan's order, `lab_hosts` their reports."""
    first = hosts[0] if hosts else None
    for host in hosts:
        info = lab_hosts.get(host)
        if not _rootless(info):
            continue
        euid = info.get("euid")
        user = "uid %s" % euid if euid is not None else "a user without root"
        fix = "or run this lab host's part as root"
        if info.get("runtime_dir_problem"):
            problems.add(host, "runtime directory", "of %s: %s" % (user, info["runtime_dir_problem"]))
            # a cleanup needs the run root too: it holds the lab's claim and namespace holder
            problems.cleanup.append(problems.messages[-1])
        if host == first:
            # the lab-wide fields that need root are made on the first lab host (host ports, way out, namespace)
            if lab.get("lab_netns") == "":
                problems.add(host, "lab_netns", "is \"\" (the host's own namespace), but this lab host's user is %s, "
                             "who cannot add links there; name the lab's namespace, like qemulab-%s, %s"
                             % (user, lab.get("lab_name") or "lab", fix))
            if lab.get("lab_qemu_user"):
                problems.add(host, "lab_qemu_user", "is %s, but this lab host's user is %s: QEMU runs as that user "
                             "already and cannot switch to another; drop lab_qemu_user, %s"
                             % (lab["lab_qemu_user"], user, fix))
            if lab.get("lab_capture_ring"):
                problems.add(host, "lab_capture_ring", "is true, but this lab host's user is %s: the rings' "
                             "recorders are tcpdump run as root through `ip netns exec` (ring_recorder trusts "
                             "only root's); set lab_capture_ring: false, %s" % (user, fix))
        for vm in vms:
            if vm.get("hypervisor") != host:
                continue
            for nic in vm.get("nics") or []:
                if nic.get("backend") == "vhost-user":
                    problems.add(vm["name"], "vm_nics[%d].backend" % nic["index"], "is vhost-user, but lab host %s's "
                                 "user is %s: a DPDK datapath needs hugepages and root; use backend tap, or place "
                                 "the VM on a lab host run as root (vm_hypervisor)" % (host, user))
        for segment in (placement or {}).get("segments") or []:
            if host in segment.get("hosts", []):
                # a VXLAN port's UDP socket lies in the host's own namespace, where its underlay address is and
                # only root adds links; through slirp4netns every tunnel would need a port forward (not built)
                problems.add(host, "segment %s" % segment["bridge"], "spans lab hosts %s over VXLAN, but this lab "
                             "host's user is %s, who cannot make a VXLAN port in the host's namespace; put all of "
                             "the segment's VMs on one lab host (vm_hypervisor), %s"
                             % (", ".join(segment["hosts"]), user, fix))
