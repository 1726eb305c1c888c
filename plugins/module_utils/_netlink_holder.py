# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rootless lab's namespace, named by its holder's pid (lab_userns, _userns): checked, then entered.

A user without root cannot setns() into the holder's network namespace from their own user namespace (that needs
CAP_SYS_ADMIN in the user's own), only after joining the holder's user namespace, which a multi-threaded process
cannot do and no process can undo. So a small helper is exec'd (a fresh, single-threaded process, safe to start from
qemu_vms' threads): it joins the holder's user then network namespace through fds checked here, and either opens
what it is asked for there (a netlink socket, /dev/net/tun, a /proc/sys/net file) and sends the fds back over a
socketpair (SCM_RIGHTS), or opens a VM's taps there and execs QEMU. A netlink socket or tun fd opened inside keeps
working in this process: the kernel checks CAP_NET_ADMIN in the namespace's owning user namespace, and the user who
made that namespace has every capability in it from outside (measured, docs/rootless.md).

The holder is trusted only as lab_userns recorded it: a record of the user's own run root names the pid, and the pid
is still that holder (same start time, same namespaces, the user's own process). The namespace fds are then opened
and their (dev, inode) compared with the record, so what is entered is the recorded namespace even if the pid were
reused right after the check.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import array
import glob
import json
import os
import socket
import subprocess
import sys

from ansible_collections.qemulab.network.plugins.module_utils import _run_paths, _userns

# The helper: argv[1] is a JSON request. fds: userns, netns (joined, then closed); then either "open" (items opened
# inside, their fds sent back over "reply", a socketpair end, with an errno per item) or "exec" (an argv to exec).
# A tap is opened as _qemu_tap.open_tap opens one (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, never made if missing).
ENTER = r"""
import ctypes, errno, fcntl, json, os, socket, struct, sys
req = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)


def open_tap(name):
    try:
        socket.if_nametoindex(name)  # TUNSETIFF would make a missing tap, one that vanishes with QEMU
    except OSError:
        raise OSError(errno.ENODEV, "no such tap")
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", name.encode(), 0x0002 | 0x1000 | 0x4000))
    except OSError:
        os.close(fd)
        raise
    return fd


try:
    for key, flag in (("userns", 0x10000000), ("netns", 0x40000000)):
        if libc.setns(req[key], flag) != 0:
            code = ctypes.get_errno()
            raise OSError(code, "setns(%s): %s" % (key, os.strerror(code)))
        os.close(req[key])
    if req.get("open") is not None:
        fds, codes = [], []
        for item in req["open"]:
            try:
                if item[0] == "netlink":
                    fd = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0).detach()  # pyroute2 wants DGRAM
                elif item[0] == "tap":
                    fd = open_tap(item[1])
                elif item[0] == "udp" or item[0] == "tcp":
                    kind = socket.SOCK_STREAM if item[0] == "tcp" else socket.SOCK_DGRAM
                    fd = socket.socket(socket.AF_INET, kind).detach()
                else:
                    fd = os.open(item[1], item[2])
                fds.append(fd)
                codes.append(0)
            except OSError as e:
                codes.append(e.errno or errno.EIO)
        reply = socket.socket(fileno=req["reply"])
        reply.sendmsg([json.dumps(codes).encode()],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))] if fds else [])
        sys.exit(0)
    os.execvp(req["exec"][0], req["exec"])
except Exception as e:
    sys.stderr.write("qemulab: lab namespace: %s\n" % e)
    sys.exit(1)
"""
HELPER_TIMEOUT = 30


class HolderError(Exception):
    """The holder cannot be used; the message names the pid and the fix."""


class HolderNamespace(str):
    """A lab namespace given by its holder: reads as "holder <pid> of lab <lab>" wherever a namespace name is shown,
    and carries the checked namespace fds the helper joins."""

    def __new__(cls, record, userns_fd, netns_fd):
        self = str.__new__(cls, "holder %d of lab %s" % (record["pid"], record["lab"]))
        self.record, self.userns_fd, self.netns_fd = record, userns_fd, netns_fd
        return self

    @property
    def pid(self):
        return self.record["pid"]


_RESOLVED = {}


def find_record(pid, run_root):
    """The user's own lab_userns record naming `pid` whose holder still lives (_userns.live_holder), or None."""
    for path in sorted(glob.glob(os.path.join(run_root, _userns.RECORD_DIR, "*.json"))):
        record = _userns.read_record(path)
        if record and record["pid"] == pid and isinstance(record.get("lab"), str):
            if _userns.live_holder(record, record["lab"]) is not None:
                return record
    return None


def _open_checked(pid, kind, want):
    fd = os.open("/proc/%d/ns/%s" % (pid, kind), os.O_RDONLY | os.O_CLOEXEC)
    st = os.fstat(fd)
    if [st.st_dev, st.st_ino] != list(want):
        os.close(fd)
        raise HolderError("%s namespace changed since its record was written" % kind)
    return fd


def holder_namespace(pid, run_root=None):
    """The HolderNamespace of holder `pid` (once per process), or HolderError naming what is wrong and the fix."""
    if pid in _RESOLVED:
        return _RESOLVED[pid]
    run_root = run_root or _run_paths.current().run
    fix = "start it with qemulab.network.lab_userns (state: present) as this user and pass its holder.pid"
    record = find_record(pid, run_root)
    if record is None:
        raise HolderError("userns_pid %s: no running namespace holder of this user has that pid (no record under %s "
                          "names it, or its process is gone or another one); %s"
                          % (pid, os.path.join(run_root, _userns.RECORD_DIR), fix))
    try:
        if os.stat("/proc/%d" % pid).st_uid != os.geteuid():
            raise HolderError("process %d is not this user's" % pid)
        userns_fd = _open_checked(pid, "user", record["userns"])
        try:
            netns_fd = _open_checked(pid, "net", record["netns"])
        except BaseException:
            os.close(userns_fd)
            raise
    except (OSError, HolderError) as exc:
        raise HolderError("userns_pid %s: %s; %s" % (pid, exc, fix))
    _RESOLVED[pid] = HolderNamespace(record, userns_fd, netns_fd)
    return _RESOLVED[pid]


def _request(holder, extra):
    req = dict(userns=holder.userns_fd, netns=holder.netns_fd)
    req.update(extra)
    return [sys.executable, "-c", ENTER, json.dumps(req)]


def open_inside(holder, items):
    """Open `items` inside the holder's namespaces: ("netlink",) a NETLINK_ROUTE socket, ("tcp",)/("udp",) an IPv4
    socket, ("file", path, flags) a file, ("tap", ifname) an existing tap for QEMU. A list of fds (close them) or
    OSError per item, in order."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        proc = subprocess.Popen(_request(holder, {"reply": child.fileno(), "open": [list(i) for i in items]}),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                pass_fds=(holder.userns_fd, holder.netns_fd, child.fileno()), close_fds=True)
        child.close()
        try:
            err = proc.communicate(timeout=HELPER_TIMEOUT)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
        if proc.returncode != 0:
            raise OSError("cannot enter %s: %s" % (holder, err.decode("utf-8", "replace").strip()
                                                   or "exit status %s" % proc.returncode))
        size = array.array("i").itemsize
        data, ancillary, _flags, _addr = parent.recvmsg(65536, socket.CMSG_SPACE(len(items) * size))
    finally:
        parent.close()
        child.close()
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % size])
    received = list(fds)
    out = []
    for code in json.loads(data.decode()):
        if code:
            out.append(OSError(code, os.strerror(code)))
        else:
            fd = received.pop(0)
            os.set_inheritable(fd, False)
            out.append(fd)
    return out


def exec_inside(holder, argv):
    """(argv, pass_fds) that exec `argv` inside the holder's namespaces, as the same user (root there)."""
    return _request(holder, {"exec": list(argv)}), (holder.userns_fd, holder.netns_fd)
