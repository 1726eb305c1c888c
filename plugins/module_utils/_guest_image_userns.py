# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The user namespace a rootless guest image build works in (docs/rootless.md, "the image without root").

`mmdebstrap --mode=unshare` writes the guest's root filesystem through its own id map: the guest's uid n is the
user's subordinate uid <start> + n (root is <start> itself), the same for gids. Every later step (copying files in,
trimming, the initramfs, `mke2fs -d`) must see those owners as the guest's, so it runs in a user namespace with the
same map, plus the user's own uid and gid mapped to <count> inside: the build directory is the user's, and the
image's files are handed back to the user there. `unshare -U --map-auto --map-root-user` is not that map: it makes
the user root and starts the range at 1, so every owner comes out one off (measured: /etc/shadow 1:43).

    problems      what is missing before a rootless build can start, each with the fix (nothing is changed)
    run_mapped    call a function in a forked child inside that namespace (as root there); its result comes back
    remove_tree   delete a tree the subordinate ids own (what a failed or killed rootless build leaves)
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import json
import os
import pwd
import shutil
import signal
import subprocess

CLONE_NEWUSER = 0x10000000
# The guest's ids reach 65534 (nobody); adduser gives every ordinary user this many.
MIN_SUBIDS = 65536
ADMIN_DOC = "docs/rootless.md, 'The one admin step'"


class UsernsError(Exception):
    pass


def subid_range(name, uid, path):
    """(start, count) of the first range of `name` (or its uid, as newuidmap accepts) in /etc/subuid or /etc/subgid
    format; None when there is none. mmdebstrap takes the first range too."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (name, str(uid)) and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def _read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def problems(uid=None, which=shutil.which, subuid="/etc/subuid", subgid="/etc/subgid", proc_sys="/proc/sys"):
    """What stops a rootless image build for `uid`, each with the administrator's fix; [] when nothing does."""
    uid = os.geteuid() if uid is None else uid
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    found = []
    missing = [tool for tool, package in (("mmdebstrap", "mmdebstrap"), ("newuidmap", "uidmap"),
                                          ("newgidmap", "uidmap")) if not which(tool)]
    if missing:
        found.append("%s not found: the administrator installs it once (`apt-get install mmdebstrap uidmap`, %s)"
                     % (", ".join(missing), ADMIN_DOC))
    for path, kind in ((subuid, "uid"), (subgid, "gid")):
        entry = subid_range(name, uid, path)
        if entry is None or entry[1] < MIN_SUBIDS:
            have = "none" if entry is None else "only %d" % entry[1]
            found.append(
                "user %s has %s subordinate %ss in %s (%d needed: the guest's own ids are mapped onto them): the "
                "administrator gives it a free range, e.g. `usermod --add-subuids 100000-165535 --add-subgids "
                "100000-165535 %s` (adduser does this for ordinary users, `useradd --system` only with "
                "--add-subids-for-system; %s)" % (name, have, kind, path, MIN_SUBIDS, name, ADMIN_DOC))
    if _read_int(os.path.join(proc_sys, "user", "max_user_namespaces")) == 0:
        found.append("user namespaces are off (user.max_user_namespaces is 0): the administrator sets "
                     "`sysctl user.max_user_namespaces=15000`")
    if _read_int(os.path.join(proc_sys, "kernel", "unprivileged_userns_clone")) == 0:
        found.append("unprivileged user namespaces are off (kernel.unprivileged_userns_clone is 0): the "
                     "administrator sets `sysctl kernel.unprivileged_userns_clone=1`")
    return found


def id_maps(uid, gid, uid_range, gid_range):
    """newuidmap and newgidmap arguments after the pid: mmdebstrap's map, and the user's own id at <count>."""
    return ([str(n) for n in (0, uid_range[0], uid_range[1], uid_range[1], uid, 1)],
            [str(n) for n in (0, gid_range[0], gid_range[1], gid_range[1], gid, 1)])


def user_ids_inside(uid_range, gid_range):
    """The (uid, gid) the user's own files have inside the namespace (what hands a file back to the user)."""
    return uid_range[1], gid_range[1]


def current_ranges(uid=None):
    """(uid range, gid range) of the user this process runs as, or UsernsError naming the admin step."""
    uid = os.geteuid() if uid is None else uid
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    ranges = subid_range(name, uid, "/etc/subuid"), subid_range(name, uid, "/etc/subgid")
    if None in ranges:
        raise UsernsError("user %s has no subordinate id range in /etc/subuid and /etc/subgid (%s)" % (name, ADMIN_DOC))
    return ranges


def _child(fn, ready_w, go_r, result_w):
    """In the fork: unshare, wait for the parent to write the maps, become root inside, run fn, send its result."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWUSER) != 0:
            err = ctypes.get_errno()
            raise UsernsError("unshare(CLONE_NEWUSER): %s" % os.strerror(err))
        os.write(ready_w, b"1")
        os.close(ready_w)
        if os.read(go_r, 1) != b"1":
            raise UsernsError("the namespace's id maps were not written")
        # root inside, so the tools it runs (mke2fs, cpio) keep their capabilities over the mapped ids across exec
        os.setresgid(0, 0, 0)
        os.setgroups([])
        os.setresuid(0, 0, 0)
        out = {"result": fn()}
    except BaseException as e:  # everything goes back to the parent as text: this process only _exits
        out = {"error": str(e) or type(e).__name__}
    data = json.dumps(out).encode()
    while data:
        data = data[os.write(result_w, data):]


def run_mapped(fn, uid_range, gid_range, uid=None, gid=None):
    """fn() (its result JSON-able) in a forked child, root in a user namespace mapped as `id_maps` says."""
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setpgid(0, 0)  # its own group: the parent ends the tools it started too
            for fd in (ready_r, go_w, result_r):
                os.close(fd)
            _child(fn, ready_w, go_r, result_w)
            status = 0
        finally:
            os._exit(status)
    for fd in (ready_w, go_r, result_w):
        os.close(fd)
    try:
        try:
            os.setpgid(pid, pid)  # as the child does: the group exists whichever of the two runs first
        except OSError:
            pass
        if os.read(ready_r, 1) == b"1":
            uid_map, gid_map = id_maps(uid, gid, uid_range, gid_range)
            for tool, args in (("newuidmap", uid_map), ("newgidmap", gid_map)):
                proc = subprocess.run([tool, str(pid)] + args, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise UsernsError("%s %d %s failed: %s" % (tool, pid, " ".join(args), proc.stderr.strip()))
            os.write(go_w, b"1")
        os.close(go_w)
        go_w = None
        chunks = []
        while True:
            chunk = os.read(result_r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.waitpid(pid, 0)
        pid = None
    finally:
        for fd in (ready_r, result_r) + ((go_w,) if go_w is not None else ()):
            os.close(fd)
        if pid is not None:  # interrupted (a SIGTERM of the task) or no map: end the child and what it started
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.waitpid(pid, 0)
    try:
        out = json.loads(b"".join(chunks).decode())
    except ValueError:
        raise UsernsError("the user namespace's child ended without a result")
    if "error" in out:
        raise UsernsError(out["error"])
    return out["result"]


def remove_tree(path):
    """Delete `path` from inside the namespace: a rootless build's root filesystem belongs to the user's subordinate
    ids, which the user cannot unlink from outside."""
    uid_range, gid_range = current_ranges()

    def remove():
        shutil.rmtree(path)

    run_mapped(remove, uid_range, gid_range)
