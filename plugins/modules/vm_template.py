#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vm_template
short_description: Booted clone templates of the default guest image, made once and restored by every lab VM
version_added: 0.3.0
description:
  - For each VM of O(vms) that can be a clone, makes sure a template for its machine and NIC layout exists beside the
    image (C(<image dir>/templates/<key>/)), that is the default guest image booted once with only what clones share
    (its NIC devices carry placeholder MACs and no backend the lab uses), stopped by
    its init before it becomes any one VM, its state saved with QMP C(migrate) and its disk frozen as the backing
    file of every clone's overlay. Its guest RAM is a file beside them (C(ram), sparse, C(memory-backend-file)
    C(share=on)) saved with C(x-ignore-shared), so the state holds device state only and every clone maps the file
    privately; for VMs with C(run_as) the RAM is in the state instead (the RAM mode is part of the key).
    M(qemulab.network.qemu_vm) with O(qemulab.network.qemu_vm#module:clone_from) restores lab VMs from it.
  - The key covers everything the saved state depends on (QEMU binary and version, accelerator, memory, vCPUs,
    translation cache, kernel, initrd, image disk, the NICs' models and device options, rng, RAM mode); a change
    makes a new template. Templates that are missing are built at the same time, each in its own QEMU.
  - Built under a lock in C(.build-<key>-<pid>) and renamed into place when complete, like the image; a second run
    waits for the first and uses its template. Removed with its image (M(qemulab.network.guest_image) pruning).
  - A VM that cannot be a clone (see RV(vms)) and a template that fails to build are not errors; those VMs boot,
    and the reason is returned (the lab's status table shows it).
author:
  - qemulab developers (@qemulab)
options:
  vms:
    description: The VMs, as M(qemulab.network.qemu_vms) takes them (qemu_vm options). Only their machine is read.
    type: list
    elements: dict
    required: true
  base_disk:
    description: The default guest image's disk (C(disk.ext4) in its cache directory); templates live beside it.
    type: path
    required: true
attributes:
  check_mode:
    description: Says which templates would be built; builds nothing.
    support: full
  diff_mode:
    description: Not supported.
    support: none
"""

EXAMPLES = r"""
- name: Make the clone templates the lab's VMs need
  qemulab.network.vm_template:
    vms: "{{ specs | qemulab.network.qemu_vm_args }}"
    base_disk: /var/cache/qemulab/images/0123456789abcdef/disk.ext4
  register: templates
"""

RETURN = r"""
vms:
  description: Per VM name, C(template) (the directory to pass as clone_from, empty when none) and C(reason).
  returned: always
  type: dict
  sample: {"rt1": {"template": "/var/cache/qemulab/images/0123456789abcdef/templates/fedcba9876543210",
                   "reason": ""}}
templates:
  description: Per template key, its directory, whether this run built it (C(built)) and its manifest's timings.
  returned: always
  type: dict
"""

import os
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.qemulab.network.plugins.module_utils._guest_image import BuildLock, remove_stale_builds
from ansible_collections.qemulab.network.plugins.module_utils._qemu_clone import (
    CloneError,
    build_template,
    clone_problem,
    read_template,
    template_key,
    templates_dir,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import (
    QEMU_VM_ARGUMENT_SPEC,
    QemuConfigError,
    normalise_config,
    secret_contents,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_host import qemu_version, resolve_accelerator


def plan(vms, base_disk, check_mode):
    """({vm: (key or None, reason)}, {key: (config, inputs)}): which template each VM needs."""
    wanted, machines = {}, {}
    validator = ArgumentSpecValidator(QEMU_VM_ARGUMENT_SPEC)
    for index, item in enumerate(vms):
        name = item.get("name") or "vms[%d]" % index
        checked = validator.validate(dict(item))
        if checked.error_messages:
            wanted[name] = (None, "; ".join(checked.error_messages))
            continue
        try:
            config = normalise_config(checked.validated_parameters)
        except QemuConfigError as exc:
            wanted[name] = (None, str(exc))
            continue
        problem = clone_problem(config)
        if problem:
            wanted[name] = (None, problem)
            continue
        accel, _reason = resolve_accelerator(config["accelerator"], config["qemu_binary"], config["kernel"],
                                             probe=not check_mode)
        key, inputs = template_key(config, base_disk, accel, qemu_version(config["qemu_binary"]))
        machines.setdefault(key, (config, accel, inputs))
        wanted[name] = (key, "")
    return wanted, machines


def main():
    module = AnsibleModule(argument_spec=dict(
        vms=dict(type="list", elements="dict", required=True),
        base_disk=dict(type="path", required=True),
    ), supports_check_mode=True)
    for item in module.params["vms"]:
        module.no_log_values.update(secret_contents(item if isinstance(item, dict) else {}))
    base_disk = os.path.abspath(module.params["base_disk"])
    if not os.path.isfile(base_disk):
        module.fail_json(msg="vm_template: base_disk %s does not exist; build the guest image first "
                             "(qemulab.network.guest_image)" % base_disk)
    directory = templates_dir(base_disk)
    wanted, machines = plan(module.params["vms"], base_disk, module.check_mode)
    templates, failed, warnings = {}, {}, []
    if machines and not module.check_mode:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        remove_stale_builds(directory)

    def find_or_build(key):
        config, accel, inputs = machines[key]
        found = read_template(directory, key)
        if found is None and not module.check_mode:
            with BuildLock(directory, key):
                found = read_template(directory, key)  # another run may have built it while we waited
                if found is None:
                    found = build_template(config, base_disk, accel, key, inputs)
                    found["built"] = True
        return found

    # One thread per template: a build is a QEMU booting and being saved, which this process only waits for.
    with ThreadPoolExecutor(max_workers=max(1, len(machines))) as pool:
        futures = dict((key, pool.submit(find_or_build, key)) for key in sorted(machines))
    for key, future in sorted(futures.items()):
        try:
            found = future.result()
        except CloneError as exc:
            failed[key] = str(exc)
            warnings.append("%s; those VMs boot instead" % exc)
            continue
        if found is None:  # check mode
            templates[key] = {"dir": os.path.join(directory, key), "built": True}
            continue
        templates[key] = {"dir": found["dir"], "built": bool(found.get("built")),
                          "timings": found["manifest"].get("timings", {})}
    vms = {}
    for name, (key, reason) in wanted.items():
        if key in failed:
            vms[name] = {"template": "", "reason": "its template could not be built: %s" % failed[key]}
        else:
            vms[name] = {"template": templates[key]["dir"] if key else "", "reason": reason}
    for warning in warnings:   # module.warn, not exit_json(warnings=): ansible-core deprecates the latter
        module.warn(warning)
    module.exit_json(changed=any(t["built"] for t in templates.values()), vms=vms, templates=templates)


if __name__ == "__main__":
    main()
