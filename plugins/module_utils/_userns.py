# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rootless lab's namespaces: a small holder process owning a user namespace and a network namespace inside it,
kept alive for the lab's lifetime and found again by later runs (docs/rootless.md).

A user cannot bind-mount a namespace under /run/netns, so the namespaces live exactly as long as a process in them.
The holder is a Python process that unshares CLONE_NEWUSER|CLONE_NEWNET, maps the user to root inside (one uid and
gid; no setuid helper), brings its loopback up, says "ready" and waits for SIGTERM in a session of its own (so the
end of the Ansible run that started it does not end it). Its record `<run root>/_userns/<lab>.json` holds its pid,
its start time (field 22 of /proc/<pid>/stat) and the (dev, inode) of both namespaces: a later run trusts the pid
only when all of them still match, so a recycled pid is never taken for the holder, nor signalled.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import select
import subprocess
import sys

from ansible_collections.qemulab.network.plugins.module_utils._lock import end_verified, process_start_time

RECORD_DIR = "_userns"
# the holder's argument after its code: what names it in `ps` and what a record's pid must still carry
MARK = "qemulab-userns"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

HOLDER = r"""
import ctypes, fcntl, os, signal, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.geteuid(), os.getegid()
try:
    if libc.unshare(0x10000000 | 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER|CLONE_NEWNET): " + os.strerror(ctypes.get_errno()))
    for name, text in (("setgroups", "deny"), ("uid_map", "0 %d 1" % uid), ("gid_map", "0 %d 1" % gid)):
        with open("/proc/self/" + name, "w") as f:
            f.write(text)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", 0x1 | 0x8 | 0x40))  # SIOCSIFFLAGS lo up
    s.close()
except Exception as e:
    os.write(1, ("error: %s\n" % e).encode())
    sys.exit(1)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
os.chdir("/")
os.write(1, b"ready\n")
os.close(1)
while True:
    signal.pause()
"""


class UsernsError(Exception):
    pass


def record_path(run_root, lab):
    return os.path.join(run_root, RECORD_DIR, lab + ".json")


def start_time(pid, read=None):
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), or None when there is no such process."""
    started = process_start_time(pid, read) if read else process_start_time(pid)
    return None if started is None else int(started)


def ns_identity(pid, kind, stat=os.stat):
    st = stat("/proc/%d/ns/%s" % (pid, kind))
    return [st.st_dev, st.st_ino]


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read().split(b"\0")


def identity(pid, lab, stat=os.stat, read=None, argv=cmdline):
    """The holder's identity as recorded, or None when `pid` is no holder of `lab` (gone, or another process)."""
    started = start_time(pid, read)
    if started is None:
        return None
    try:
        args = argv(pid)
        # [python, "-c", HOLDER, MARK, lab]
        if len(args) < 5 or args[1] != b"-c" or args[3] != MARK.encode() or args[4] != lab.encode():
            return None
        return {"lab": lab, "pid": pid, "start_time": started,
                "userns": ns_identity(pid, "user", stat), "netns": ns_identity(pid, "net", stat)}
    except OSError:
        return None


def read_record(path):
    """The record, or None when there is none; a record that is no JSON object is treated as none (stale)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def live_holder(record, lab, **probes):
    """The record when its pid is still the same holder (same start time and namespaces), else None."""
    if not record or record.get("lab") != lab:
        return None
    now = identity(record["pid"], lab, **probes)
    if now is None:
        return None
    same = all(now[key] == record.get(key) for key in ("start_time", "userns", "netns"))
    return record if same else None


def _makedirs(path):
    """The record directory (0700) and, when missing, the run root above it: the user's is private to the user,
    root's stays 0755 as lab_dirs makes it (an unprivileged QEMU passes through it)."""
    root = os.path.dirname(path)
    if not os.path.isdir(root):
        os.makedirs(os.path.dirname(root), exist_ok=True)
        try:
            os.mkdir(root, 0o755 if os.geteuid() == 0 else 0o700)
        except FileExistsError:
            pass
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def write_record(path, record):
    _makedirs(os.path.dirname(path))
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, sort_keys=True)
    os.rename(tmp, path)


def remove_record(path):
    try:
        os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # other labs' records are still there


def start_holder(lab, python=None):
    """Start a holder for `lab`; its identity once it says ready. Raises UsernsError naming what failed."""
    proc = subprocess.Popen([python or sys.executable, "-c", HOLDER, MARK, lab], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True, cwd="/",
                            start_new_session=True)
    try:
        ready = select.select([proc.stdout], [], [], READY_TIMEOUT)[0]
        line = proc.stdout.readline().decode("utf-8", "replace").strip() if ready else ""
    finally:
        proc.stdout.close()
    if line != "ready":
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise UsernsError("lab %s: the namespace holder did not start (%s); user namespaces may be off on this "
                          "host (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)"
                          % (lab, line or "no answer in %ds" % READY_TIMEOUT))
    found = identity(proc.pid, lab)
    if found is None:
        raise UsernsError("lab %s: the namespace holder %d ended right after starting" % (lab, proc.pid))
    return found


def stop_holder(record, lab, timeout=STOP_TIMEOUT):
    """End the holder the record names, through a pidfd taken before its identity is checked (no pid race)."""
    return end_verified(record["pid"], lambda: live_holder(record, lab) is not None, timeout)


def enter_command(pid):
    """The command prefix that runs a program inside the holder's namespaces as the same user."""
    return ["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(pid)]
