#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: disk_overlay
short_description: A per-VM qcow2 copy-on-write disk over a shared base image
version_added: 0.1.0
description:
  - Makes a qcow2 file at O(path) whose backing file is O(backing) exist (O(state=present)) or not (O(state=absent)).
  - The current backing file and format are read with C(qemu-img info --output=json); an overlay over another
    backing file (a rebuilt guest image has a new path) or of another format is recreated, which discards what the
    VM wrote to it. An existing file that is not a qcow2 is never overwritten.
  - Do not change an overlay while its VM runs.
  - O(overlays) handles many overlays in one run, one module start for a lab's VMs instead of one per VM.
author:
  - qemulab developers (@qemulab)
requirements:
  - qemu-img (qemu-utils)
options:
  path:
    description:
      - The overlay file, by convention C(/var/lib/qemulab/labs/<lab>/<vm>.qcow2). Its directory is created.
      - Required unless O(overlays) is given.
    type: path
  overlays:
    description:
      - Several overlays with O(state=present), made in order; instead of O(path). The first that fails stops
        the run.
    type: list
    elements: dict
    suboptions:
      path:
        description: The overlay file, as O(path).
        type: path
        required: true
      backing:
        description: Its base image, as O(backing).
        type: path
        required: true
      backing_format:
        description: Format of its base image, as O(backing_format).
        type: str
        choices: [raw, qcow2]
        default: raw
      accept_backing:
        description: Other backing files it may keep, as O(accept_backing).
        type: list
        elements: path
        default: []
  backing:
    description: The base image (absolute path). Required with O(state=present).
    type: path
  backing_format:
    description: Format of the base image.
    type: str
    choices: [raw, qcow2]
    default: raw
  accept_backing:
    description:
      - Other backing files an existing overlay may keep (with their format, C(raw) for a file that is no qcow2).
        A lab VM's disk made over the image stays over the image when its VM would now be a clone, and one made
        over a clone template stays over it (M(qemulab.network.vm_template)). A new overlay is made over O(backing).
    type: list
    elements: path
    default: []
  state:
    description: Whether the overlay exists.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    description: Reports what would change without changing anything.
    support: full
  diff_mode:
    description: Returns the state before and after.
    support: full
"""

EXAMPLES = r"""
- name: Copy-on-write disk of VM rt1 over the cached guest image
  qemulab.network.disk_overlay:
    path: /var/lib/qemulab/labs/seed/rt1.qcow2
    backing: "{{ guest_image_disk }}"
    backing_format: raw

- name: Copy-on-write disks of two VMs in one run
  qemulab.network.disk_overlay:
    overlays:
      - {path: /var/lib/qemulab/labs/seed/rt1.qcow2, backing: /var/lib/qemulab/images/x/disk.raw}
      - {path: /var/lib/qemulab/labs/seed/rt2.qcow2, backing: /var/lib/qemulab/images/x/disk.raw}

- name: Teardown removes the overlay; the base stays cached
  qemulab.network.disk_overlay:
    path: /var/lib/qemulab/labs/seed/rt1.qcow2
    state: absent
"""

RETURN = r"""
overlays:
  description: With O(overlays) - each overlay's C(path), C(backing) and C(changed), in order.
  returned: with overlays
  type: list
  elements: dict
path:
  description: The overlay file.
  returned: always
  type: str
backing:
  description: The backing file the overlay now has (empty when absent).
  returned: always
  type: str
"""

import json
import os
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils._image_prune import qcow2_backing


def read_overlay(module, path):
    """{'exists', 'format', 'backing', 'backing_format'} of the file at `path`."""
    if not os.path.lexists(path):
        return {"exists": False, "format": "", "backing": "", "backing_format": ""}
    proc = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        module.fail_json(msg=f"disk_overlay {path}: qemu-img info failed: {proc.stderr.strip()}; "
                             "remove the file or fix it")
    info = json.loads(proc.stdout)
    backing = info.get("full-backing-filename") or info.get("backing-filename") or ""
    return {"exists": True, "format": info.get("format", ""), "backing": backing,
            "backing_format": info.get("backing-filename-format", "")}


OVERLAY_OPTIONS = dict(
    path=dict(type="path", required=True),
    backing=dict(type="path", required=True),
    backing_format=dict(type="str", choices=["raw", "qcow2"], default="raw"),
    accept_backing=dict(type="list", elements="path", default=[]),
)


def keep_overlay(module, path, backing, backing_format, accept_backing):
    """Make the overlay at `path` one over `backing` (or over an accepted one it already has); returns
    (changed, backing it has after, diff before, diff after). Fails the module on a problem."""
    have = read_overlay(module, path)
    before = dict(have)
    backing = os.path.abspath(backing)
    if not os.path.exists(backing):
        module.fail_json(msg=f"disk_overlay {path}: backing file {backing} does not exist; build it first "
                             "(qemulab.network.guest_image) or fix backing")
    if have["exists"] and have["format"] != "qcow2":
        module.fail_json(msg=f"disk_overlay {path}: exists and is {have['format']}, not a qcow2 overlay; "
                             "refusing to overwrite it, remove it or choose another path")
    want = {"exists": True, "format": "qcow2", "backing": backing, "backing_format": backing_format}
    have_backing = os.path.realpath(have["backing"]) if have["backing"] else ""
    accepted = [(os.path.realpath(backing), want["backing_format"])] + [
        (os.path.realpath(other), "raw" if qcow2_backing(other) is None else "qcow2") for other in accept_backing]
    changed = not (have["exists"] and (have_backing, have["backing_format"]) in accepted)
    if not changed:
        want = dict(want, backing=have["backing"], backing_format=have["backing_format"])
    if changed and not module.check_mode:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing,
                               "-F", want["backing_format"], tmp], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            if os.path.exists(tmp):
                os.unlink(tmp)
            module.fail_json(msg=f"disk_overlay {path}: qemu-img create failed: {proc.stderr.strip()}")
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
    return changed, want["backing"], before, (want if changed else before)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            overlays=dict(type="list", elements="dict", options=OVERLAY_OPTIONS),
            backing=dict(type="path"),
            backing_format=dict(type="str", choices=["raw", "qcow2"], default="raw"),
            accept_backing=dict(type="list", elements="path", default=[]),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        mutually_exclusive=[("path", "overlays"), ("overlays", "backing")],
        required_one_of=[("path", "overlays")],
        supports_check_mode=True,
    )
    state = module.params["state"]
    if module.params["overlays"] is not None:
        if state != "present":
            module.fail_json(msg="disk_overlay: overlays is for state=present; remove overlays one path at a time")
        results, before, after = [], {}, {}
        for item in module.params["overlays"]:
            changed, backing, before[item["path"]], after[item["path"]] = keep_overlay(
                module, item["path"], item["backing"], item["backing_format"], item["accept_backing"])
            results.append({"path": item["path"], "backing": backing, "changed": changed})
        module.exit_json(changed=any(r["changed"] for r in results), overlays=results,
                         diff={"before": before, "after": after})

    path, backing = module.params["path"], module.params["backing"]
    if state == "absent":
        have = read_overlay(module, path)
        after = {"exists": False, "format": "", "backing": "", "backing_format": ""}
        changed = have["exists"]
        if changed and not module.check_mode:
            os.unlink(path)
        module.exit_json(changed=changed, path=path, backing="", diff={"before": dict(have), "after": after})
    if not backing:
        module.fail_json(msg="disk_overlay %s: state is present but backing is missing" % path)
    changed, backing, before, after = keep_overlay(module, path, backing, module.params["backing_format"],
                                                   module.params["accept_backing"])
    module.exit_json(changed=changed, path=path, backing=backing, diff={"before": before, "after": after})


if __name__ == "__main__":
    main()
