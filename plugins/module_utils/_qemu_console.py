# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's serial console log on a small tmpfs of its own: a guest flooding its console fills that, nothing else.

QEMU 7.2 has no size limit for a chardev's logfile, and RLIMIT_FSIZE would cap the VM's disk overlays too. So the
log lies in <run_dir>/console/, a tmpfs of the VM's console_log_limit mounted before QEMU starts. Once it is full,
QEMU's write to the log fails (ENOSPC) and QEMU drops that output (qemu_chr_write_log returns on an error): the guest
runs on, its console socket still carries everything, and the log keeps what came first (the boot).

The run directory may belong to the unprivileged QEMU user, who can swap any name in it for a link at any moment.
So the mount point is made and opened through the run directory's fd without following a link; it must be root's
and writable by root alone (the QEMU user could move a directory of its own out of the run directory between our
open and the mount), and the tmpfs is mounted on that open directory (/proc/self/fd/N), never on a path. Mounts are
found again by their source name in /proc/self/mountinfo, only under the directory being cleaned, and detached
without following a link. A mounted-on name cannot be renamed or removed (EBUSY), so what mountinfo names is ours.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import mmap
import os
import re
import stat

from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import CONSOLE_DIR, vm_paths
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import open_subdir

# The mounts' source: what tells a console tmpfs of ours from any other mount in /proc/self/mountinfo.
SOURCE = "qemulab-console"
# QEMU makes one file there; a few inodes spare, none for flooding the host's memory with empty files.
NR_INODES = 16
MOUNTINFO = "/proc/self/mountinfo"

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8
_MNT_DETACH, _UMOUNT_NOFOLLOW = 0x2, 0x8
# O_PATH: enough to mount on and to fstat, opens a directory whatever its mode; with O_DIRECTORY a link is ENOTDIR.
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ESCAPE_RE = re.compile(r"\\([0-7]{3})")
_libc = []


def _call(name, argtypes, *args):
    """A libc call (the standard library has no mount(2) or umount2(2)); OSError on failure."""
    if not _libc:
        _libc.append(ctypes.CDLL(None, use_errno=True))
    func = getattr(_libc[0], name)
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    if func(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _unescape(field):
    """A mountinfo field as written: the kernel escapes space, tab, newline and backslash as \\ooo."""
    return _ESCAPE_RE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text):
    """[{'id', 'dev': (major, minor), 'mount_point', 'fstype', 'source'}] of /proc/self/mountinfo's text; a line not
    in its format is skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            major, minor = fields[2].split(":")
            mounts.append({"id": int(fields[0]), "dev": (int(major), int(minor)), "mount_point": _unescape(fields[4]),
                           "fstype": fields[separator + 1], "source": _unescape(fields[separator + 2])})
        except (ValueError, IndexError):
            continue
    return mounts


def read_mountinfo():
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()


def console_mounts(under, mountinfo=None):
    """The console tmpfs mounts strictly below the directory `under`, deepest and newest first. Only `under`'s own
    path is resolved (it is root's: a lab's or a VM's run directory, whose parent the QEMU user cannot write)."""
    base = os.path.realpath(under).rstrip("/") + "/"
    mounts = [mount for mount in parse_mountinfo(read_mountinfo() if mountinfo is None else mountinfo)
              if mount["source"] == SOURCE and mount["fstype"] == "tmpfs" and mount["mount_point"].startswith(base)]
    return sorted(mounts, key=lambda mount: (-mount["mount_point"].count("/"), -mount["id"]))


def _still_there(mount):
    """True when the path of `mount` still leads, without following a link at its end, to that mount's filesystem."""
    try:
        fd = os.open(mount["mount_point"], _PATH_FLAGS)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (os.major(st.st_dev), os.minor(st.st_dev)) == mount["dev"]


def release(under):
    """Detach every console tmpfs below `under` (a killed run's too); returns the mount points released. Raises
    OSError when one cannot be detached."""
    released = []
    for _round in range(16):  # stacked mounts on one point come off one per round
        mounts = [mount for mount in console_mounts(under) if _still_there(mount)]
        if not mounts:
            break
        for mount in mounts:
            try:
                _call("umount2", [ctypes.c_char_p, ctypes.c_int], os.fsencode(mount["mount_point"]),
                      _MNT_DETACH | _UMOUNT_NOFOLLOW)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: no longer a mount point (detached meanwhile)
                    raise OSError(exc.errno, "cannot unmount the console log's tmpfs: %s" % exc.strerror,
                                  mount["mount_point"])
                continue
            released.append(mount["mount_point"])
    return released


def _remove_entry(path):
    """What removes whatever the QEMU user (or an older run) left under the mount point's name: a link, a file, an
    empty directory. A directory with something in it is left for a person to look at."""
    def remove(run_fd, name):
        try:
            os.unlink(name, dir_fd=run_fd)
            return
        except FileNotFoundError:
            return
        except (IsADirectoryError, PermissionError):
            pass
        try:
            os.rmdir(name, dir_fd=run_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OSError(exc.errno, "%s, so the console log's tmpfs cannot be mounted there; look at it and remove "
                          "it" % exc.strerror, path)
    return remove


def _mount_point(run_fd, path):
    """An O_PATH fd of the directory run_dir/console: root's, writable by root alone and on the run directory's own
    filesystem (not still a mount point); whatever else lies under that name is removed and the directory made."""
    run_dev = os.fstat(run_fd).st_dev

    def accept(fd):
        st = os.fstat(fd)
        return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022 and st.st_dev == run_dev
    try:
        return open_subdir(run_fd, CONSOLE_DIR, _PATH_FLAGS, accept, _remove_entry(path))
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise
        raise OSError(errno.EAGAIN, "kept changing while the console log's tmpfs was being mounted", path)


def mount_console(run_dir, limit, owner):
    """A fresh tmpfs of `limit` bytes (whole pages, rounded down) at run_dir/console, owned by `owner` (uid, gid)
    with mode 0700, nosuid, nodev, noexec; one an earlier run left is detached first. Returns the log's path, where
    QEMU creates it. Raises OSError naming the path."""
    where = os.path.join(os.path.realpath(run_dir), CONSOLE_DIR)
    release(run_dir)
    run_fd = os.open(run_dir, _DIR_FLAGS)
    try:
        fd = _mount_point(run_fd, where)
        try:
            size = max(1, limit // mmap.PAGESIZE) * mmap.PAGESIZE
            options = "size=%d,nr_inodes=%d,mode=0700,uid=%d,gid=%d" % (size, NR_INODES, owner[0], owner[1])
            try:
                _call("mount", [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p], SOURCE.encode(),
                      ("/proc/self/fd/%d" % fd).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                      options.encode())
            except OSError as exc:
                raise OSError(exc.errno, "cannot mount the console log's tmpfs: %s" % exc.strerror, where)
        finally:
            os.close(fd)
    finally:
        os.close(run_fd)
    # the QEMU user may have renamed the directory within the run directory before the mount: then QEMU's log
    # would miss it. Only mounts this namespace can reach count: one hidden under a later mount (a private
    # namespace's tmpfs over /run shows the host's) is listed under its old path.
    if [mount["mount_point"] for mount in console_mounts(run_dir) if _still_there(mount)] != [where]:
        release(run_dir)
        raise OSError(errno.EAGAIN, "the console log's directory was renamed while its tmpfs was mounted", where)
    return vm_paths(run_dir)["console_log"]


def unbounded_console(run_dir):
    """The console directory of a rootless lab's VM, whose user cannot mount a tmpfs in the host's mount namespace:
    a plain 0700 directory in the user's own run directory, its log from an earlier start removed (a new, empty log
    per start, as with the tmpfs). Its size is not bounded."""
    run_fd = os.open(run_dir, _DIR_FLAGS)
    try:
        fd = open_subdir(run_fd, CONSOLE_DIR)
        try:
            os.unlink(os.path.basename(vm_paths(run_dir)["console_log"]), dir_fd=fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    finally:
        os.close(run_fd)
