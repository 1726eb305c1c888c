#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: lab_dirs
short_description: Create a lab's run and disk directories with their claims, or remove them only when claimed
version_added: 0.1.0
description:
  - Manages the two directories a lab keeps on its host, C(<run_root>/<lab>) (run files, VM sockets, C(lab.json))
    and C(<state_dir>/labs/<lab>) (the VMs' copy-on-write disks), each marked as the lab's by a C(lab.json) claim.
  - O(lab) must follow the lab name rule (lower-case letters, digits and C(-), starting with a letter or digit, at
    most 15 characters); any other value, such as an empty name, C(.), C(..) or one holding C(/), is refused before
    anything is read, created or removed.
  - Every directory is reached through the file descriptor of its root, and neither a lab's directory nor its claim
    is ever followed as a symbolic link.
  - With O(state=present), one run creates both directories (and any missing part of their roots - O(run_root) with mode
    C(0755), O(state_dir) and its C(labs/) with mode C(0700), owned by the module's user), gives each its owner, group
    and mode, and writes the claim C({"inventory", "lab", "netns"}) into each, atomically (a new file renamed over the
    old one inside the directory). The run directory is owned by the module's user (root for a root lab, the user for a
    rootless one) and O(group), with mode C(0710) when O(group) is not that user's own group (so that group may pass
    through to its VM directories, not list them) and C(0700) when it is; the disk directory is the user's, mode
    C(0700); each claim is the user's, mode C(0600).
  - With O(state=present), a symbolic link or anything other than a directory under the lab's name, or a C(lab.json)
    there that claims another lab or is no readable claim, is refused, naming the path, before anything changes. A
    directory without a claim is claimed. Whether another inventory holds the lab name is the plan's to check
    (qemulab.network.lab_host_info reads the claim), not this module's.
  - With O(state=absent), a directory is removed only when it is a real directory (not a symbolic link) directly
    under its root and holds a readable C(lab.json) claim whose C(lab) is O(lab). Any other directory, file or link
    under that name is left in place and named in a warning with what to do.
  - A missing directory is no change for O(state=absent), and directories already as wanted are no change for
    O(state=present), so running either twice is harmless.
  - With O(state=absent), refuses to remove a run directory from which one of the lab's VMs still runs (stop them
    first with qemulab.network.qemu_vms O(state=absent)); in check mode that is not checked, as the role's earlier
    task would have stopped them.
  - With O(state=absent), the VMs' console log tmpfs mounts below the run directory (source C(qemulab-console),
    see qemulab.network.qemu_vm's O(qemulab.network.qemu_vm#module:console_log_limit)) are unmounted before it is
    removed, also those a killed run left; no other mount is touched.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description: Name of the lab whose directories are created or removed.
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
    description:
      - V(present) creates the lab's directories and writes their claims; V(absent) removes the directories that
        claim the lab.
      - The default stays V(absent), as the module only removed directories before V(present) was added.
    type: str
    choices: [absent, present]
    default: absent
  inventory:
    description:
      - Inventory recorded in the claims as C(inventory) (the plan refuses a lab name claimed by another inventory).
      - Used only with O(state=present).
    type: str
    default: ""
  netns:
    description:
      - Network namespace recorded in the claims as C(netns) (a cleanup finds the lab's namespace there).
      - Used only with O(state=present).
    type: str
    default: ""
  group:
    description:
      - Group of the run directory, by name or numeric gid; the group the lab's unprivileged QEMU user is in.
      - When not given, the module's user's own group (root's for root). When it is not that group, the run
        directory's mode is C(0710), else C(0700).
      - Used only with O(state=present).
    type: str
attributes:
  check_mode:
    description: Reports what would be created, changed, claimed or removed, without changing anything.
    support: full
  diff_mode:
    description:
      - With O(state=present), the lab's directories and claims before and after (owner, group, mode and, for a
        claim, its content), with any part of the roots that is created.
      - With O(state=absent), the lab's paths that exist before and after.
    support: full
"""

EXAMPLES = r"""
- name: Create lab seed's run and disk directories, claimed by its inventory
  qemulab.network.lab_dirs:
    lab: seed
    inventory: /srv/labs/seed
    netns: qemulab-seed
    state: present

- name: The same for a lab whose QEMU runs as user qemulab (its group may pass through the run directory)
  qemulab.network.lab_dirs:
    lab: seed
    inventory: /srv/labs/seed
    netns: qemulab-seed
    group: qemulab
    state: present

- name: Remove lab seed's run directory and disks (after its VMs are stopped)
  qemulab.network.lab_dirs:
    lab: seed
    state: absent

- name: The same for a lab kept under other roots
  qemulab.network.lab_dirs:
    lab: seed
    run_root: /run/qemulab-test
    state_dir: /srv/qemulab
    state: absent
"""

RETURN = r"""
lab:
  description: The lab name.
  returned: always
  type: str
  sample: seed
removed:
  description: The directories removed (in check mode, those that would be).
  returned: when O(state=absent)
  type: list
  elements: str
  sample: [/run/qemulab/seed, /var/lib/qemulab/labs/seed]
kept:
  description: Paths under the lab's name that were left in place, each with the reason (also given as a warning).
  returned: when O(state=absent)
  type: list
  elements: dict
  sample: [{path: /var/lib/qemulab/labs/seed, reason: "it holds no lab.json claim"}]
created:
  description: The directories created, outermost first, including missing parts of the roots (in check mode, those
    that would be).
  returned: when O(state=present)
  type: list
  elements: str
  sample: [/run/qemulab/seed, /var/lib/qemulab/labs/seed]
fixed:
  description: The lab's existing directories whose owner, group or mode were set (in check mode, would be).
  returned: when O(state=present)
  type: list
  elements: str
  sample: [/run/qemulab/seed]
claimed:
  description: The claims written (in check mode, those that would be).
  returned: when O(state=present)
  type: list
  elements: str
  sample: [/run/qemulab/seed/lab.json, /var/lib/qemulab/labs/seed/lab.json]
"""

import grp
import json
import os
import secrets
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils._qemu_console import release
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import find_qemus
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_lab_name

CLAIM = "lab.json"
CLAIM_MAX_BYTES = 64 * 1024
CLAIM_MODE = 0o600
# The directories and claims are the module's user's: root's for a root lab, the user's own for a rootless one
# (docs/rootless.md), who cannot give a file to root.
OWNER_UID = os.geteuid()
OWNER_GID = os.getegid()


class DirectoryChanged(Exception):
    """The directory under the lab's name is no longer the one that was checked."""


def argument_spec():
    return dict(
        lab=dict(type="str", required=True),
        run_root=dict(type="path", default="/run/qemulab"),
        state_dir=dict(type="path", default="/var/lib/qemulab"),
        state=dict(type="str", choices=["absent", "present"], default="absent"),
        inventory=dict(type="str", default=""),
        netns=dict(type="str", default=""),
        group=dict(type="str"),
    )


def lab_roots(run_root, state_dir):
    """The roots a lab's directories lie directly under, in removal order (disks before run files)."""
    roots = [os.path.normpath(os.path.join(state_dir, "labs")), os.path.normpath(run_root)]
    return roots[1:] if roots[0] == roots[1] else roots


def _open_dir(path, dir_fd=None, follow=True):
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    return os.open(path, flags, dir_fd=dir_fd)


def _attrs(st):
    return {"owner": st.st_uid, "group": st.st_gid, "mode": "%04o" % stat.S_IMODE(st.st_mode)}


def read_claim_file(lab_fd):
    """(bytes, stat, None) of the lab.json inside the open directory; (None, None, None) when there is none;
    (None, None, why it is no usable claim) otherwise. Never follows a link, never blocks on a FIFO."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(CLAIM, flags, dir_fd=lab_fd)
    except FileNotFoundError:
        return None, None, None
    except OSError as exc:
        return None, None, "its %s cannot be opened as a regular file (%s)" % (CLAIM, exc.strerror or exc)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # before fdopen, which refuses a directory with an error of its own
        os.close(fd)
        return None, None, "its %s is not a regular file" % CLAIM
    with os.fdopen(fd, "rb") as f:
        data = f.read(CLAIM_MAX_BYTES + 1)
    if len(data) > CLAIM_MAX_BYTES:
        return None, None, "its %s is over %d bytes, not a claim" % (CLAIM, CLAIM_MAX_BYTES)
    return data, st, None


def parse_claim(data):
    """(claimed lab name, None) from a claim's bytes, or (None, why it is no usable claim)."""
    try:
        claim = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        return None, "its %s is not JSON (%s)" % (CLAIM, exc)
    if not isinstance(claim, dict) or not isinstance(claim.get("lab"), str):
        return None, "its %s has no \"lab\" string" % CLAIM
    return claim["lab"], None


def read_claim(lab_fd):
    """(claimed lab name, None) from the lab.json inside the open directory, or (None, why it has no usable claim)."""
    data, _st, problem = read_claim_file(lab_fd)
    if problem:
        return None, problem
    if data is None:
        return None, "it holds no %s claim" % CLAIM
    return parse_claim(data)


def read_lab_dir(root, lab):
    """What lies at root/lab, read through the root's directory fd without following a link at root/lab:
    {'root', 'path', 'kind': absent|directory|symlink|other, 'identity': (dev, ino), 'attrs': its owner, group and
    mode, 'claim', 'problem', 'claim_data', 'claim_attrs', 'claim_problem' (the raw claim, None when there is none),
    'entries': names of its subdirectories}."""
    found = {"root": root, "path": os.path.join(root, lab), "kind": "absent", "identity": None, "attrs": None,
             "claim": None, "problem": None, "claim_data": None, "claim_attrs": None, "claim_problem": None,
             "entries": []}
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
            found["attrs"] = _attrs(fst)
            data, claim_st, found["claim_problem"] = read_claim_file(lab_fd)
            if data is not None:
                found["claim_data"], found["claim_attrs"] = data, _attrs(claim_st)
                found["claim"], found["claim_problem"] = parse_claim(data)
            found["problem"] = found["claim_problem"] or (
                None if data is not None else "it holds no %s claim" % CLAIM)
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
        # the pidfile is the QEMU user's to forge: the processes are looked up, not believed
        for pid in find_qemus(run_dir):
            running.append("%s (pid %d)" % (name, pid))
    return running


def remove_lab_dir(found, lab):
    """Remove root/lab if it is still the very directory that was checked (same device and inode, not a link), after
    unmounting its VMs' console log tmpfs (a killed run may have left them; a mount point cannot be removed)."""
    root_fd = _open_dir(found["root"])
    try:
        st = os.lstat(lab, dir_fd=root_fd)
        if stat.S_ISLNK(st.st_mode) or (st.st_dev, st.st_ino) != found["identity"]:
            raise DirectoryChanged(found["path"])
        release(found["path"])
        try:
            shutil.rmtree(lab, dir_fd=root_fd)
        except TypeError:  # Python before 3.11: rmtree refuses a link itself and walks by fds where it can
            shutil.rmtree(found["path"])
    finally:
        os.close(root_fd)


def claim_content(lab, inventory, netns):
    """The claim's exact bytes, as the role's former to_nice_json copy wrote them (so an existing claim is kept)."""
    return (json.dumps({"lab": lab, "inventory": inventory, "netns": netns}, indent=4, sort_keys=True,
                       separators=(",", ": ")) + "\n").encode("utf-8")


def resolve_group(group):
    """(gid, None) for a group name or a numeric gid (None: the module's user's own group), or (None, why not)."""
    if group is None:
        return OWNER_GID, None
    if group.isdigit():
        return int(group), None
    try:
        return grp.getgrnam(group).gr_gid, None
    except KeyError:
        return None, "there is no group %r on this host; give an existing group name or a numeric gid" % group


def wanted_dirs(lab, run_root, state_dir, gid, claim):
    """The lab's directories as they should be: [{'root', 'root_mode' (for missing parts of the root), 'path',
    'attrs', 'claim_path', 'claim'}], the run directory first; one entry when both roots are the same."""
    run_root, labs_root = os.path.normpath(run_root), os.path.normpath(os.path.join(state_dir, "labs"))
    wants = [
        {"root": run_root, "root_mode": 0o755, "mode": 0o710 if gid != OWNER_GID else 0o700, "group": gid},
        {"root": labs_root, "root_mode": 0o700, "mode": 0o700, "group": OWNER_GID},
    ]
    wants = wants[:1] if run_root == labs_root else wants
    for want in wants:
        want["path"] = os.path.join(want["root"], lab)
        want["attrs"] = {"owner": OWNER_UID, "group": want.pop("group"), "mode": "%04o" % want.pop("mode")}
        want["claim_path"] = os.path.join(want["path"], CLAIM)
        want["claim"] = claim
    return wants


def missing_dirs(root):
    """(the parts of root that do not exist yet, outermost first; None) or ([], why root cannot be used)."""
    missing, path = [], root
    while not os.path.lexists(path):
        missing.insert(0, path)
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return [], "%s is not a directory (nor a link to one); remove it or choose another root" % path
    return missing, None


def refusal(found, lab):
    """Why the lab's directory may not be created or claimed here, with what to do; None when it may."""
    path = found["path"]
    if found["kind"] in ("symlink", "other"):
        return "%s: %s; remove it by hand (rm %s) if it is stale" % (path, found["problem"], path)
    if found["kind"] == "directory" and found["attrs"] is None:
        return "%s: %s; run this again" % (path, found["problem"])
    if found["kind"] == "directory" and found["claim_problem"]:
        return ("%s: %s, so it may be someone else's; look at it and remove it by hand (rm %s) if it is stale" % (
            path, found["claim_problem"], os.path.join(path, CLAIM)))
    if found["claim"] is not None and found["claim"] != lab:
        return ("%s: its %s claims lab %r; tear that lab down with lab_name=%s first, or remove the directory by "
                "hand if the claim is stale" % (path, CLAIM, found["claim"], found["claim"]))
    return None


def plan_present(wants, findings, missing):
    """(actions, diff) taking each found directory to its want: 'create_roots' (parts of its root to make), 'create',
    'fix' (owner, group or mode to set), 'claim' (to write); diff before/after maps each path to its attributes and,
    for a claim, its content."""
    actions, before, after = [], {}, {}
    for want, found, root_missing in zip(wants, findings, missing):
        claim_attrs = {"owner": OWNER_UID, "group": OWNER_GID, "mode": "%04o" % CLAIM_MODE}
        action = {
            "create_roots": root_missing,
            "create": found["kind"] == "absent",
            "fix": found["kind"] == "directory" and found["attrs"] != want["attrs"],
            "claim": found["claim_data"] != want["claim"] or found["claim_attrs"] != claim_attrs,
        }
        actions.append(action)
        for path in root_missing:
            after[path] = {"owner": OWNER_UID, "group": OWNER_GID, "mode": "%04o" % want["root_mode"]}
        if found["attrs"]:
            before[want["path"]] = found["attrs"]
        if found["claim_data"] is not None:
            before[want["claim_path"]] = dict(found["claim_attrs"],
                                              content=found["claim_data"].decode("utf-8", "replace"))
        after[want["path"]] = dict(want["attrs"])
        after[want["claim_path"]] = dict(claim_attrs, content=want["claim"].decode("utf-8"))
    return actions, {"before": {"paths": before}, "after": {"paths": after}}


def open_root(path, mode):
    """An fd of directory `path`, its missing parts made first (each root's, with `mode`); links in the part that
    exists are followed, as for any root given in the options."""
    try:
        return _open_dir(path)
    except FileNotFoundError:
        parent, name = os.path.split(path)
        if not name:
            raise
    parent_fd = open_root(parent, mode)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:  # made by someone else meanwhile: taken as it is, like any existing root
            return _open_dir(name, dir_fd=parent_fd)
        fd = _open_dir(name, dir_fd=parent_fd, follow=False)
        os.fchown(fd, OWNER_UID, OWNER_GID)
        os.fchmod(fd, mode)
        return fd
    finally:
        os.close(parent_fd)


def write_claim(lab_fd, data):
    """Replace lab.json in the open directory with `data` atomically: a new file, never opened through a link,
    renamed over the old one within the directory."""
    tmp = ".%s.%s" % (CLAIM, secrets.token_hex(8))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, CLAIM_MODE, dir_fd=lab_fd)
    try:
        try:
            os.fchown(fd, OWNER_UID, OWNER_GID)
            os.fchmod(fd, CLAIM_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, CLAIM, src_dir_fd=lab_fd, dst_dir_fd=lab_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=lab_fd)
        except OSError:
            pass
        raise


def make_lab_dir(want, found, action, lab):
    """Carry out one directory's action through its root's fd: create it or check it is still the directory that was
    read (never a link), set its owner, group and mode, write its claim."""
    root_fd = open_root(want["root"], want["root_mode"])
    try:
        if action["create"]:
            try:
                os.mkdir(lab, 0o700, dir_fd=root_fd)
            except FileExistsError:
                raise DirectoryChanged(want["path"])
        lab_fd = _open_dir(lab, dir_fd=root_fd, follow=False)
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(lab_fd)
        if not action["create"] and (st.st_dev, st.st_ino) != found["identity"]:
            raise DirectoryChanged(want["path"])
        attrs = want["attrs"]
        if (st.st_uid, st.st_gid) != (attrs["owner"], attrs["group"]):
            os.fchown(lab_fd, attrs["owner"], attrs["group"])
        os.fchmod(lab_fd, int(attrs["mode"], 8))
        if action["claim"]:
            write_claim(lab_fd, want["claim"])
    finally:
        os.close(lab_fd)


def ensure_present(module, lab):
    """state=present: read both directories once, refuse what is not the lab's to claim, plan, then act."""
    params = module.params
    gid, problem = resolve_group(params["group"])
    if problem:
        module.fail_json(msg="lab %s: group: %s; nothing was changed" % (lab, problem))
    wants = wanted_dirs(lab, params["run_root"], params["state_dir"], gid,
                        claim_content(lab, params["inventory"], params["netns"]))
    missing = []
    for want in wants:
        root_missing, problem = missing_dirs(want["root"])
        if problem:
            module.fail_json(msg="lab %s: root %s: %s; nothing was changed" % (lab, want["root"], problem))
        missing.append(root_missing)
    try:
        findings = [read_lab_dir(want["root"], lab) for want in wants]
    except OSError as exc:
        module.fail_json(msg="lab %s: reading its directories under %s failed: %s; nothing was changed" % (
            lab, " and ".join(want["root"] for want in wants), exc))
    refusals = [reason for reason in (refusal(found, lab) for found in findings) if reason]
    if refusals:
        module.fail_json(msg="lab %s: %s; nothing was changed" % (lab, "; ".join(refusals)))

    actions, diff = plan_present(wants, findings, missing)
    result = dict(lab=lab,
                  created=[path for want, action in zip(wants, actions)
                           for path in action["create_roots"] + ([want["path"]] if action["create"] else [])],
                  fixed=[want["path"] for want, action in zip(wants, actions) if action["fix"]],
                  claimed=[want["claim_path"] for want, action in zip(wants, actions) if action["claim"]])
    result["changed"] = bool(result["created"] or result["fixed"] or result["claimed"])
    if module._diff:
        result["diff"] = diff
    if module.check_mode or not result["changed"]:
        module.exit_json(**result)
    for want, found, action in zip(wants, findings, actions):
        if not (action["create_roots"] or action["create"] or action["fix"] or action["claim"]):
            continue
        try:
            make_lab_dir(want, found, action, lab)
        except (DirectoryChanged, OSError) as exc:
            why = ("it changed between its check and its creation (made, replaced or turned into a link by someone "
                   "else), so it was left as it is" if isinstance(exc, DirectoryChanged) else
                   "creating or claiming it failed: %s" % exc)
            module.fail_json(msg="lab %s: %s: %s; run this again" % (lab, want["path"], why), **result)
    module.exit_json(**result)


def ensure_absent(module, lab):
    """state=absent: remove each directory that claims the lab, keep anything else under its name."""
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


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    lab = module.params["lab"]
    present = module.params["state"] == "present"
    problem = check_lab_name(lab)
    if problem:
        module.fail_json(msg="lab_dirs: lab: %s; nothing was %s" % (problem, "changed" if present else "removed"))
    for field in ("run_root", "state_dir"):
        if not os.path.isabs(module.params[field]):
            module.fail_json(msg="lab_dirs: %s: %r is not an absolute path; give one starting with /" % (
                field, module.params[field]))
    if present:
        ensure_present(module, lab)
    ensure_absent(module, lab)


if __name__ == "__main__":
    main()
