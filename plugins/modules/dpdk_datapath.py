#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dpdk_datapath
short_description: Run or stop the user-space (DPDK) datapath of one vhost-user lab segment
version_added: 0.1.0
description:
  - With O(state=present), C(dpdk-testpmd) forwards between the two vhost-user ports of O(ports), serving one unix
    socket per port in C(<run_root>/<lab>.dpdk/<segment>/<port>.sock) for M(qemulab.network.qemu_vm) NICs with
    backend C(vhost-user). It adds O(hugepages) 2 MiB hugepages to the kernel's pool, mounts a hugetlbfs of its own
    there, and polls O(cores) CPU(s) at 100 % (plus testpmd's mostly idle main core).
  - A datapath that already runs with the same ports and cores is left alone; one with other settings is restarted
    (its guests lose their link until they reconnect, so start the datapath before the VMs).
  - With O(state=absent), the segment's testpmd is ended (by its recorded pid, only while it is still that
    segment's testpmd), the hugetlbfs unmounted, exactly the hugepages it added given back, and its directory and
    DPDK's runtime directory for it removed. Without O(segment), every datapath of the lab is stopped so, except those
    O(keep) names (the lab playbook's cleanup, and its bring-up for segments no longer in the inventory).
  - Refused before anything changes when the host has fewer than O(cores) + 1 CPUs, or C(dpdk-testpmd) (Debian
    package C(dpdk-dev)) is missing. See docs/dpdk.md for what was measured and why testpmd.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description: The lab (lower-case letters, digits and C(-)); the datapath lives in its run directory.
    type: str
    required: true
  segment:
    description:
      - The segment's name (the NICs' C(bridge) in the inventory); the rule of a bridge name.
      - Required with O(state=present); with O(state=absent) and no segment, all the lab's datapaths but O(keep).
    type: str
  keep:
    description: With O(state=absent) and no O(segment), the segments whose datapaths stay.
    type: list
    elements: str
    default: []
  ports:
    description: Exactly two port names (the rule of a VM name), one socket each, in the order QEMU's NICs use them.
    type: list
    elements: str
    default: []
  cores:
    description: Polling (forwarding) cores of this datapath; each one is busy at 100 % for as long as it runs.
    type: int
    default: 1
  hugepages:
    description: 2 MiB hugepages this datapath adds to the kernel's pool while it runs (testpmd preallocates 128 MiB).
    type: int
    default: 80
  run_root:
    description: Where labs' run directories live.
    type: path
    default: /run/qemulab
  state:
    description: C(present) runs the datapath, C(absent) stops it and releases what it reserved.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    description: Says what it would start or stop; changes nothing.
    support: full
  diff_mode:
    description: The datapath's state (running, ports, cores) before and after.
    support: full
"""

EXAMPLES = r"""
- name: A point-to-point vhost-user segment for two VMs
  qemulab.network.dpdk_datapath:
    lab: dpdk
    segment: br9
    ports: [h1-eth0, h2-eth0]
  register: br9

- name: Stop it and give back its hugepages
  qemulab.network.dpdk_datapath:
    lab: dpdk
    segment: br9
    state: absent

- name: Stop every datapath of the lab but br9's
  qemulab.network.dpdk_datapath:
    lab: dpdk
    keep: [br9]
    state: absent
"""

RETURN = r"""
sockets:
  description: Each port's vhost-user socket (give it to qemu_vm as the NIC's socket).
  returned: always
  type: dict
pid:
  description: testpmd's pid (0 when stopped, or in check mode before a start).
  returned: always
  type: int
stopped:
  description: The segments whose datapaths were (in check mode, would be) stopped.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils import _dpdk_datapath as datapath
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name


def _present(module, run_dir, where):
    """One segment's datapath as asked: left alone when it runs so, else (re)started."""
    p = module.params
    have = datapath.read_state(run_dir, p["segment"])
    keep = datapath.wanted_matches(have, p["ports"], p["cores"])
    stop = bool(have is not None or os.path.isdir(datapath.segment_dir(run_dir, p["segment"]))) and not keep
    start = not keep
    before = {"running": bool(have.get("running")), "ports": have.get("ports", []), "cores": have.get("cores")} \
        if have else {}
    after = {"running": True, "ports": list(p["ports"]), "cores": p["cores"]}
    pid = int(have["pid"]) if keep else 0
    if start and not module.check_mode:
        try:
            if stop:
                datapath.stop(run_dir, p["segment"])
            pid = datapath.start(run_dir, p["segment"], p["ports"], p["cores"], p["hugepages"])["pid"]
        except (datapath.DatapathError, OSError) as exc:
            module.fail_json(msg="%s: %s" % (where, exc))
    module.exit_json(changed=start, sockets=datapath.socket_paths(run_dir, p["segment"], p["ports"]), pid=pid,
                     stopped=[p["segment"]] if stop else [], diff={"before": before, "after": after})


def _absent(module, run_dir, where):
    """The named segment's datapath stopped, or every one of the lab's but those `keep` names."""
    p = module.params
    if p["segment"]:
        names = [p["segment"]] if os.path.isdir(datapath.segment_dir(run_dir, p["segment"])) else []
    else:
        names = [name for name in datapath.segments(run_dir) if name not in p["keep"]]
    before = dict((name, datapath.read_state(run_dir, name) or {}) for name in names)
    if names and not module.check_mode:
        for name in names:
            try:
                datapath.stop(run_dir, name)
            except (datapath.DatapathError, OSError) as exc:
                module.fail_json(msg="%s: %s" % (where, exc))
    module.exit_json(changed=bool(names), sockets={}, pid=0, stopped=names, diff={
        "before": dict((name, {"running": bool(state.get("running")), "ports": state.get("ports", []),
                               "cores": state.get("cores")}) for name, state in before.items()),
        "after": {}})


def main():
    module = AnsibleModule(
        argument_spec=dict(lab=dict(type="str", required=True), segment=dict(type="str"),
                           keep=dict(type="list", elements="str", default=[]),
                           ports=dict(type="list", elements="str", default=[]),
                           cores=dict(type="int", default=1),
                           hugepages=dict(type="int", default=datapath.HUGEPAGES_DEFAULT),
                           run_root=dict(type="path", default="/run/qemulab"),
                           state=dict(type="str", choices=["present", "absent"], default="present")),
        required_if=[("state", "present", ("segment",))],
        supports_check_mode=True,
    )
    p = module.params
    where = "dpdk_datapath: lab %s segment %s" % (p["lab"], p["segment"] or "(all)")
    problems = [("lab", check_name(p["lab"], "lab"))]
    problems += [("segment", check_name(name, "bridge")) for name in [p["segment"]] + p["keep"] if name]
    if p["state"] == "present":
        problems += [("ports", check_name(port, "vm")) for port in p["ports"]]
        if len(p["ports"]) != 2 or len(set(p["ports"])) != 2:
            problems.append(("ports", "%r: testpmd forwards between exactly two ports; give two distinct names"
                             % (p["ports"],)))
        problems.append(("cores", datapath.cores_problem(p["cores"], datapath.host_cpus())))
        if p["hugepages"] < 1:
            problems.append(("hugepages", "%d; give at least %d" % (p["hugepages"], datapath.HUGEPAGES_DEFAULT)))
    for field, why in problems:
        if why:
            module.fail_json(msg="%s: %s: %s" % (where, field, why))
    run_dir = os.path.join(p["run_root"], p["lab"])
    if p["state"] == "present":
        _present(module, run_dir, where)
    else:
        _absent(module, run_dir, where)


if __name__ == "__main__":
    main()
