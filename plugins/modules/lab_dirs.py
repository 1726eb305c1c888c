#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: lab_dirs
short_description: Remove a lab's run directory and disk directory, only when each one claims to be that lab's
version_added: 0.1.0
description:
  - Removes the two directories a lab keeps on its host, C(<run_root>/<lab>) (run files, VM sockets, C(lab.json)) and
    C(<state_dir>/labs/<lab>) (the VMs' copy-on-write disks).
  - O(lab) must follow the lab name rule (lower-case letters, digits and C(-), starting with a letter or digit, at
    most 15 characters); any other value, such as an empty name, C(.), C(..) or one holding C(/), is refused before
    anything is read or removed.
  - A directory is removed only when it is a real directory (not a symbolic link) directly under its root and holds
    a readable C(lab.json) claim whose C(lab) is O(lab) (the qemulab.network.host_prep role writes it at bring-up).
    Any other directory, file or link under that name is left in place and named in a warning with what to do.
  - A missing directory is no change, so running it twice is harmless.
  - Refuses to remove a run directory from which one of the lab's VMs still runs (stop them first with
    qemulab.network.qemu_vms O(state=absent)); in check mode that is not checked, as the role's earlier task would
    have stopped them.
  - There is no O(state=present); the qemulab.network.host_prep role creates the directories and their claims.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description: Name of the lab whose directories are removed.
    type: str
    required: true
  run_root:
    description: Directory holding each lab's run directory. An absolute path.
    type: path
    default: /run/qemulab
  state_dir:
    description: Directory whose C(labs/) holds each lab's disk directory. An absolute path.
    type: path
    default: /var/lib/qemulab
  state:
    description: The lab's directories are absent.
    type: str
    choices: [absent]
    default: absent
attributes:
  check_mode:
    description: Reports which directories would be removed and which kept, without removing anything.
    support: full
  diff_mode:
    description: Returns the lab's paths that exist before and after as the diff.
    support: full
"""

EXAMPLES = r"""
- name: Remove lab seed's run directory and disks (after its VMs are stopped)
  qemulab.network.lab_dirs:
    lab: seed
    state: absent

- name: The same for a lab kept under other roots
  qemulab.network.lab_dirs:
    lab: seed
    run_root: /run/qemulab-test
    state_dir: /srv/qemulab
"""

RETURN = r"""
lab:
  description: The lab name.
  returned: always
  type: str
  sample: seed
removed:
  description: The directories removed (in check mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: [/run/qemulab/seed, /var/lib/qemulab/labs/seed]
kept:
  description: Paths under the lab's name that were left in place, each with the reason (also given as a warning).
  returned: always
  type: list
  elements: dict
  sample: [{path: /var/lib/qemulab/labs/seed, reason: "it holds no lab.json claim"}]
"""

import json
import os
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import vm_paths
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import is_our_qemu, read_pid
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_lab_name

CLAIM = "lab.json"
CLAIM_MAX_BYTES = 64 * 1024


class DirectoryChanged(Exception):
    """The directory under the lab's name is no longer the one that was checked."""


def argument_spec():
    return dict(
        lab=dict(type="str", required=True),
        run_root=dict(type="path", default="/run/qemulab"),
        state_dir=dict(type="path", default="/var/lib/qemulab"),
        state=dict(type="str", choices=["absent"], default="absent"),
    )


def lab_roots(run_root, state_dir):
    """The roots a lab's directories lie directly under, in removal order (disks before run files)."""
    roots = [os.path.normpath(os.path.join(state_dir, "labs")), os.path.normpath(run_root)]
    return roots[1:] if roots[0] == roots[1] else roots


def _open_dir(path, dir_fd=None, follow=True):
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    return os.open(path, flags, dir_fd=dir_fd)


def read_claim(lab_fd):
    """(claimed lab name, None) from the lab.json inside the open directory, or (None, why it has no usable claim)."""
    try:
        fd = os.open(CLAIM, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=lab_fd)
    except FileNotFoundError:
        return None, "it holds no %s claim" % CLAIM
    except OSError as exc:
        return None, "its %s cannot be opened as a regular file (%s)" % (CLAIM, exc.strerror or exc)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None, "its %s is not a regular file" % CLAIM
        data = f.read(CLAIM_MAX_BYTES + 1)
    if len(data) > CLAIM_MAX_BYTES:
        return None, "its %s is over %d bytes, not a claim" % (CLAIM, CLAIM_MAX_BYTES)
    try:
        claim = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        return None, "its %s is not JSON (%s)" % (CLAIM, exc)
    if not isinstance(claim, dict) or not isinstance(claim.get("lab"), str):
        return None, "its %s has no \"lab\" string" % CLAIM
    return claim["lab"], None


def read_lab_dir(root, lab):
    """What lies at root/lab, read through the root's directory fd without following a link at root/lab:
    {'root', 'path', 'kind': absent|directory|symlink|other, 'identity': (dev, ino), 'claim', 'problem',
    'entries': names of its subdirectories}."""
    found = {"root": root, "path": os.path.join(root, lab), "kind": "absent", "identity": None, "claim": None,
             "problem": None, "entries": []}
    try:
        root_fd = _open_dir(root)
    except (FileNotFoundError, NotADirectoryError):
        return found
    try:
        try:
            st = os.lstat(lab, dir_fd=root_fd)
        except FileNotFoundError:
            return found
        found["identity"] = (st.st_dev, st.st_ino)
        if stat.S_ISLNK(st.st_mode):
            found["kind"] = "symlink"
            found["problem"] = "it is a symbolic link (to %s), which qemulab never makes; its target is left alone" % (
                os.readlink(lab, dir_fd=root_fd))
            return found
        if not stat.S_ISDIR(st.st_mode):
            found["kind"] = "other"
            found["problem"] = "it is not a directory"
            return found
        found["kind"] = "directory"
        lab_fd = _open_dir(lab, dir_fd=root_fd, follow=False)
        try:
            fst = os.fstat(lab_fd)
            if (fst.st_dev, fst.st_ino) != found["identity"]:
                found["problem"] = "it was replaced while being read"
                return found
            found["claim"], found["problem"] = read_claim(lab_fd)
            found["entries"] = sorted(entry.name for entry in os.scandir(lab_fd)
                                      if entry.is_dir(follow_symlinks=False))
        finally:
            os.close(lab_fd)
    finally:
        os.close(root_fd)
    return found


def kept_reason(found, lab):
    """Why the path must stay, with what to do about it; None when it is lab's own directory."""
    path = found["path"]
    if found["kind"] in ("symlink", "other"):
        return "%s; remove it by hand (rm %s) if it is stale" % (found["problem"], path)
    if found["problem"]:
        return ("%s, so nothing shows it is lab %s's (made before qemulab claimed its directories, by a bring-up "
                "stopped before the claim, or by someone else); look inside and, if it is lab %s's, remove it by hand "
                "(rm -r %s)" % (found["problem"], lab, lab, path))
    if found["claim"] != lab:
        return ("its %s claims lab %r; tear that lab down with lab_name=%s, or remove it by hand if the claim is "
                "stale" % (CLAIM, found["claim"], found["claim"]))
    return None


def plan_lab_dirs(lab, findings):
    """(paths to remove, [{'path', 'reason'}] kept, diff): directories whose claim names `lab` go, everything
    else under its name stays."""
    remove, kept = [], []
    for found in findings:
        if found["kind"] == "absent":
            continue
        reason = kept_reason(found, lab)
        if reason:
            kept.append({"path": found["path"], "reason": reason})
        else:
            remove.append(found["path"])
    existing = [found["path"] for found in findings if found["kind"] != "absent"]
    diff = {"before": {"paths": existing}, "after": {"paths": [path for path in existing if path not in remove]}}
    return remove, kept, diff


def running_vms(found):
    """['<vm> (pid N)'] of the lab's VMs whose QEMU still runs from this run directory."""
    running = []
    for name in found["entries"]:
        run_dir = os.path.join(found["path"], name)
        pid = read_pid(vm_paths(run_dir)["pidfile"])
        if is_our_qemu(pid, run_dir):
            running.append("%s (pid %d)" % (name, pid))
    return running


def remove_lab_dir(found, lab):
    """Remove root/lab if it is still the very directory that was checked (same device and inode, not a link)."""
    root_fd = _open_dir(found["root"])
    try:
        st = os.lstat(lab, dir_fd=root_fd)
        if stat.S_ISLNK(st.st_mode) or (st.st_dev, st.st_ino) != found["identity"]:
            raise DirectoryChanged(found["path"])
        try:
            shutil.rmtree(lab, dir_fd=root_fd)
        except TypeError:  # Python before 3.11: rmtree refuses a link itself and walks by fds where it can
            shutil.rmtree(found["path"])
    finally:
        os.close(root_fd)


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    lab = module.params["lab"]
    problem = check_lab_name(lab)
    if problem:
        module.fail_json(msg="lab_dirs: lab: %s; nothing was removed" % problem)
    for field in ("run_root", "state_dir"):
        if not os.path.isabs(module.params[field]):
            module.fail_json(msg="lab_dirs: %s: %r is not an absolute path; give one starting with /" % (
                field, module.params[field]))

    roots = lab_roots(module.params["run_root"], module.params["state_dir"])
    try:
        findings = [read_lab_dir(root, lab) for root in roots]
    except OSError as exc:
        module.fail_json(msg="lab %s: reading its directories under %s failed: %s; nothing was removed" % (
            lab, " and ".join(roots), exc))
    remove, kept, diff = plan_lab_dirs(lab, findings)
    for item in kept:
        module.warn("lab %s: kept %s: %s" % (lab, item["path"], item["reason"]))
    result = dict(changed=bool(remove), lab=lab, removed=remove, kept=kept)
    if module._diff:
        result["diff"] = diff
    if module.check_mode or not remove:
        module.exit_json(**result)

    run_dir = findings[-1]
    running = running_vms(run_dir) if run_dir["path"] in remove else []
    if running:
        result.update(changed=False, removed=[])
        module.fail_json(msg="lab %s: VM(s) %s still run from %s; stop them first (qemulab.network.qemu_vms lab=%s "
                             "state=absent), then run this again; nothing was removed" % (
                                 lab, ", ".join(running), run_dir["path"], lab), **result)
    done = []
    for found in findings:
        if found["path"] not in remove:
            continue
        try:
            remove_lab_dir(found, lab)
        except (DirectoryChanged, OSError) as exc:
            why = ("it changed between its check and its removal (replaced, or turned into a link), so it was left "
                   "in place" if isinstance(exc, DirectoryChanged) else "removing it failed: %s" % exc)
            result.update(changed=bool(done), removed=done)
            module.fail_json(msg="lab %s: %s: %s; run this again" % (lab, found["path"], why), **result)
        done.append(found["path"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
