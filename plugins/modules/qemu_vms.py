#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: qemu_vms
short_description: Stop and remove every QEMU guest of a lab at once
version_added: 0.1.0
description:
  - Finds a lab's VMs the way M(qemulab.network.qemu_vm_info) does (the run directories under O(run_root)/O(lab),
    whatever the inventory says now) and stops them all in parallel, each exactly as M(qemulab.network.qemu_vm)
    with O(qemulab.network.qemu_vm#module:state=absent) does it (ACPI powerdown for O(stop_timeout) seconds, QMP quit,
    SIGTERM, SIGKILL; a PID is signalled only when it is that run directory's QEMU), then removes their run
    directories.
  - The teardown role uses it so that taking a lab down costs one module run, not one per VM.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description: The lab whose VMs to remove.
    type: str
    required: true
  state:
    description: Only C(absent).
    type: str
    choices: [absent]
    default: absent
  run_root:
    description: Root of the run directories.
    type: path
    default: /run/qemulab
  stop_timeout:
    description: Seconds each guest gets to power down on the ACPI button before QEMU is told to quit; C(0) quits at once.
    type: int
    default: 10
attributes:
  check_mode:
    description: Reports which VMs would be stopped and removed, without touching them.
    support: full
  diff_mode:
    description: Returns the lab's VMs before and after.
    support: full
"""

EXAMPLES = r"""
- name: Remove every VM of the seed lab
  qemulab.network.qemu_vms:
    lab: seed
    state: absent
    stop_timeout: 0
"""

RETURN = r"""
vms:
  description: The VMs found, with how each QEMU ended (C(powerdown), C(quit), C(SIGTERM), C(SIGKILL), C(not running)).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "rt1", "run_dir": "/run/qemulab/seed/rt1", "stopped_by": "quit"}]
"""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qemulab.network.plugins.module_utils._qemu import lab_run_dirs, read_pid, stop_vm, vm_paths


def main():
    module = AnsibleModule(argument_spec=dict(
        lab=dict(type="str", required=True),
        state=dict(type="str", choices=["absent"], default="absent"),
        run_root=dict(type="path", default="/run/qemulab"),
        stop_timeout=dict(type="int", default=10),
    ), supports_check_mode=True)
    lab_dir = os.path.join(module.params["run_root"], module.params["lab"])
    vms = [{"name": name, "run_dir": run_dir, "pid": read_pid(vm_paths(run_dir)["pidfile"])}
           for name, run_dir in lab_run_dirs(module.params["run_root"], module.params["lab"])]
    result = dict(changed=bool(vms), vms=[dict(vm, stopped_by=None) for vm in vms],
                  diff=dict(before={"vms": [vm["name"] for vm in vms]}, after={"vms": []}))
    if module.check_mode or not vms:
        module.exit_json(**result)

    def remove(vm):
        how = stop_vm(vm["run_dir"], module.params["stop_timeout"])
        if how != "still running":
            shutil.rmtree(vm["run_dir"], ignore_errors=True)
        return how

    with ThreadPoolExecutor(max_workers=min(16, len(vms))) as pool:
        ended = list(pool.map(remove, vms))
    for vm, how in zip(result["vms"], ended):
        vm["stopped_by"] = how
    survivors = [vm["name"] for vm in result["vms"] if vm["stopped_by"] == "still running"]
    if survivors:
        module.fail_json(msg="VM(s) %s: QEMU survived powerdown, QMP quit, SIGTERM and SIGKILL; see qemu.log in their "
                             "run directories under %s" % (", ".join(survivors), lab_dir), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
