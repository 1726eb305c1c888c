#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: qemu_vms
short_description: Start, or stop and remove, several QEMU guests of a lab at once
version_added: 0.1.0
description:
  - O(state=running) does for each of O(vms) exactly what M(qemulab.network.qemu_vm) does with the same options
    (same checks, same idempotence, same fingerprint), for all of them at once in parallel. Starting seven QEMUs
    one task loop item after another costs a Python start and a QMP handshake each in sequence; here they all
    start together, and the guests boot side by side. The vm_launch role uses it.
  - O(state=absent) finds a lab's VMs the way M(qemulab.network.qemu_vm_info) does (the run directories under
    O(run_root)/O(lab), whatever the inventory says now) and stops them all in parallel, each exactly as
    M(qemulab.network.qemu_vm) with O(qemulab.network.qemu_vm#module:state=absent) does it (ACPI powerdown for
    O(stop_timeout) seconds, QMP quit, SIGTERM, SIGKILL; a PID is signalled only when it is that run directory's
    QEMU), then removes their run directories, each after unmounting its console log's tmpfs (also one a killed
    run left). The teardown role uses it.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description:
      - The lab whose VMs to start or remove (lower-case letters, digits and C(-), at most 15 characters). Its VMs
        run in O(run_root)/O(lab)/<name>; an item naming another lab or another C(run_dir) is refused.
    type: str
    required: true
  state:
    description:
      - C(running) runs every VM of O(vms) as M(qemulab.network.qemu_vm) would (each item may set its own
        O(qemulab.network.qemu_vm#module:state)).
      - C(absent) stops and removes every VM of the lab found on the host.
    type: str
    choices: [running, absent]
    default: absent
  vms:
    description:
      - With O(state=running), the VMs, each a dictionary of M(qemulab.network.qemu_vm)'s options (validated as that
        module validates them; an item without C(lab) gets O(lab)). One VM's failure does not stop the others;
        the task fails afterwards naming every VM that failed.
    type: list
    elements: dict
    default: []
  run_root:
    description: Root of the run directories.
    type: path
    default: /run/qemulab
  stop_timeout:
    description:
      - With O(state=absent), seconds each guest gets to power down on the ACPI button before QEMU is told to quit;
        C(0) quits at once. With O(state=running) each item's own C(stop_timeout) counts.
    type: int
    default: 10
attributes:
  check_mode:
    description: Reports which VMs would be started, restarted, stopped or removed, without touching them.
    support: full
  diff_mode:
    description: Returns each VM's state and changed configuration before and after (O(state=running)), or the lab's VMs.
    support: full
"""

EXAMPLES = r"""
- name: Start two VMs of the seed lab together
  qemulab.network.qemu_vms:
    lab: seed
    state: running
    vms:
      - name: h1
        netns: qlab-seed
        kernel: /var/cache/qemulab/images/abc/vmlinux
        disks: [{file: /var/lib/qemulab/labs/seed/h1.qcow2, format: qcow2}]
        nics: [{mac: "12:34:56:ab:cd:11", ifname: vport41}]
      - name: h2
        netns: qlab-seed
        kernel: /var/cache/qemulab/images/abc/vmlinux
        disks: [{file: /var/lib/qemulab/labs/seed/h2.qcow2, format: qcow2}]
        nics: [{mac: "12:34:56:ab:cd:12", ifname: vport51}]

- name: Remove every VM of the seed lab
  qemulab.network.qemu_vms:
    lab: seed
    state: absent
    stop_timeout: 0
"""

RETURN = r"""
vms:
  description:
    - With O(state=absent), the VMs found, with how each QEMU ended (C(powerdown), C(quit), C(SIGTERM), C(SIGKILL),
      C(not running)).
    - With O(state=running), one entry per item of O(vms), in order - M(qemulab.network.qemu_vm)'s result for it
      (C(changed), C(state), C(pid), C(user), C(argv), C(nics), C(changes), ...) plus C(name), and C(failed) and
      C(msg) for a VM that failed.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "rt1", "run_dir": "/run/qemulab/seed/rt1", "stopped_by": "quit"}]
"""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.qemulab.network.plugins.module_utils._diff import finish_items
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import (
    QEMU_VM_ARGUMENT_SPEC,
    QemuConfigError,
    check_names,
    normalise_config,
    secret_contents,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_console import release
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import find_qemus, lab_run_dirs, stop_vm
from ansible_collections.qemulab.network.plugins.module_utils._qemu_tap import tap_reader
from ansible_collections.qemulab.network.plugins.module_utils._qemu_task import VmTaskError, qemu_vm_task
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name


def validated(vms, lab, run_root):
    """[(name, params or None, error or None)] for each item, as AnsibleModule would validate qemu_vm's options.

    Every item belongs to `lab` and runs in run_root/lab/<name>, where state=absent finds it again."""
    out = []
    validator = ArgumentSpecValidator(QEMU_VM_ARGUMENT_SPEC)
    for index, item in enumerate(vms):
        item = dict(item)
        item.setdefault("lab", lab)
        where = "vms[%d] (%s)" % (index, item.get("name", "?"))
        checked = validator.validate(item)
        if checked.error_messages:
            out.append((item.get("name"), None, "%s: %s" % (where, "; ".join(checked.error_messages))))
            continue
        params = checked.validated_parameters
        problems = check_names(params)
        if not problems and params["lab"] != lab:
            problems.append("lab %s is not this task's lab %s; give each lab its own qemu_vms task"
                            % (params["lab"], lab))
        run_dir = os.path.join(run_root, lab, params["name"])
        if not problems and params["run_dir"] and os.path.normpath(params["run_dir"]) != run_dir:
            problems.append("run_dir %s is not %s, where this module finds the lab's VMs again; leave run_dir out"
                            % (params["run_dir"], run_dir))
        if problems:
            out.append((item.get("name"), None, "%s: %s" % (where, "; ".join(problems))))
            continue
        params["run_dir"] = run_dir
        out.append((item.get("name"), params, None))
    return out


def configs_of(params_list):
    """Normalised configurations of the items that have one (qemu_vm_task reports the others' errors)."""
    configs = []
    for params in params_list:
        try:
            configs.append(normalise_config(params))
        except QemuConfigError:
            pass
    return configs


def run_all(module):
    """state=running: every VM's qemu_vm task, in parallel."""
    items = validated(module.params["vms"], module.params["lab"], module.params["run_root"])
    get_tap = tap_reader(configs_of([params for _name, params, _error in items if params is not None]))

    def one(item):
        name, params, error = item
        if error:
            return {"name": name, "failed": True, "msg": error, "changed": False}
        try:
            result = qemu_vm_task(params, module.check_mode, get_tap)
        except VmTaskError as exc:
            result = dict(exc.result, failed=True, msg=exc.msg, changed=False)
        except Exception as exc:  # one VM's surprise must not hide the others' results behind a traceback
            result = dict(failed=True, changed=False, msg="VM %s: %s: %s" % (name, type(exc).__name__, exc))
        result["name"] = name
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(items)))) as pool:
        results = list(pool.map(one, items))
    finish_items(module, results, vms=results)


def main():
    module = AnsibleModule(argument_spec=dict(
        lab=dict(type="str", required=True),
        state=dict(type="str", choices=["running", "absent"], default="absent"),
        vms=dict(type="list", elements="dict", default=[]),
        run_root=dict(type="path", default="/run/qemulab"),
        stop_timeout=dict(type="int", default=10),
    ), supports_check_mode=True)
    # before anything can fail: no result or message of this run may show a guest's private key
    for vm in module.params["vms"]:
        module.no_log_values.update(secret_contents(vm))
    problem = check_name(module.params["lab"], "lab")
    if problem:
        module.fail_json(msg="qemu_vms: lab: %s" % problem)
    if module.params["state"] == "running":
        run_all(module)
    lab_dir = os.path.join(module.params["run_root"], module.params["lab"])
    # the QEMUs found in /proc, not the pidfile's word: an unprivileged QEMU user can rewrite its pidfile
    vms = [{"name": name, "run_dir": run_dir, "pid": (find_qemus(run_dir) or [None])[0]}
           for name, run_dir in lab_run_dirs(module.params["run_root"], module.params["lab"])]
    result = dict(changed=bool(vms), vms=[dict(vm, stopped_by=None) for vm in vms],
                  diff=dict(before={"vms": [vm["name"] for vm in vms]}, after={"vms": []}))
    if module.check_mode or not vms:
        module.exit_json(**result)

    def remove(vm):
        how = stop_vm(vm["run_dir"], module.params["stop_timeout"])
        if how == "still running":
            return how, None
        try:
            # the console log's tmpfs first: a directory holding a mount point cannot be removed (a killed run's too)
            release(vm["run_dir"])
        except OSError as exc:
            return how, "%s: %s: %s; unmount it (umount -l %s) and run this again" % (
                vm["name"], exc.filename, exc.strerror, exc.filename)
        shutil.rmtree(vm["run_dir"], ignore_errors=True)
        return how, None

    with ThreadPoolExecutor(max_workers=min(16, len(vms))) as pool:
        ended = list(pool.map(remove, vms))
    for vm, (how, _problem) in zip(result["vms"], ended):
        vm["stopped_by"] = how
    survivors = [vm["name"] for vm in result["vms"] if vm["stopped_by"] == "still running"]
    if survivors:
        module.fail_json(msg="VM(s) %s: QEMU survived powerdown, QMP quit, SIGTERM and SIGKILL; see qemu.log in their "
                             "run directories under %s" % (", ".join(survivors), lab_dir), **result)
    problems = [problem for _how, problem in ended if problem]
    if problems:
        module.fail_json(msg="VM(s) stopped, but their run directories could not be removed: %s" % "; ".join(problems),
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
