# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rootless lab's way out: a slirp4netns process attached to the lab's namespace (its lab_userns holder's).

slirp4netns makes a tap inside the namespace, gives it 10.0.4.100/24 and a default route via 10.0.4.2 (--configure)
and carries what the namespace sends there out through sockets of the user's own, in the host's namespace: a
user-mode NAT, no privilege. It is entered through the holder's namespace fds that _netlink_holder checked against
the holder's record (`--netns-type=path --userns-path`, /proc/self/fd/N), never by a pid that could have been reused.

Its record `<run root>/<lab>/slirp4netns.json` holds its pid, start time and exact argv, and the holder it serves:
a later run trusts the pid only while all of them match (so a recycled pid is never taken for it, nor signalled),
and the cleanup ends it through a pidfd taken before that check. It outlives the holder (its tap keeps the namespace
alive): ending the lab ends it first (docs/rootless.md).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import select
import subprocess

from ansible_collections.qemulab.network.plugins.module_utils._lock import end_verified, process_start_time
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import write_json_atomic

RECORD = "slirp4netns.json"
LOG = "slirp4netns.log"
PROGRAM = "slirp4netns"
# What --configure gives the namespace. Not slirp4netns' default 10.0.2.0/24: every guest has that network on its
# management NIC (QEMU's user-mode network, SSH forward), so 10.0.2.2 and 10.0.2.3 (slirp's DNS) would be the
# guest's own QEMU, never the way out (measured: a guest's connect to 10.0.2.2 was refused by its own QEMU); nor
# 10.0.3.0/24, a user-mode NIC's default network. The plan refuses a lab network that overlaps this one.
NETWORK = "10.0.4.0/24"
ADDRESS = "10.0.4.100/24"
GATEWAY = "10.0.4.2"
MTU_MIN, MTU_MAX = 68, 65521
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class Slirp4netnsError(Exception):
    pass


def record_path(run_root, lab):
    return os.path.join(run_root, lab, RECORD)


def argv(tap, mtu, host_loopback, userns_fd, netns_fd, ready_fd):
    """slirp4netns' argv, entering the namespaces through the checked fds (they are passed at the same numbers)."""
    args = [PROGRAM, "--configure", "--mtu=%d" % mtu, "--cidr=" + NETWORK]
    if not host_loopback:
        # the lab reaches nothing on the host's 127.0.0.1 (as with root's veth, where 127/8 is martian)
        args.append("--disable-host-loopback")
    return args + ["--ready-fd=%d" % ready_fd, "--netns-type=path", "--userns-path=/proc/self/fd/%d" % userns_fd,
                   "/proc/self/fd/%d" % netns_fd, tap]


def wanted(holder, tap, mtu, host_loopback):
    """What the record must say for the running process to be the one asked for (no restart when it does)."""
    return {"holder": {"pid": holder["pid"], "start_time": holder["start_time"]}, "tap": tap, "mtu": mtu,
            "host_loopback": host_loopback}


def differs(record, want):
    """The fields of `want` the running process was started with otherwise (empty: keep it)."""
    return sorted(key for key in want if record.get(key) != want[key])


def read_record(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("pid"), int) and isinstance(data.get("argv"), list)
    return data if ok else None


def _cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return [part.decode("utf-8", "replace") for part in f.read().split(b"\0")[:-1]]


def live(record, start_time=process_start_time, cmdline=_cmdline, owner=None):
    """The record when its pid is still that slirp4netns (same start time, same argv, the user's process), else
    None."""
    if not record:
        return None
    pid = record["pid"]
    started = start_time(pid)
    if started is None or str(started) != str(record.get("start_time")):
        return None
    try:
        if cmdline(pid) != record["argv"]:
            return None
        if (owner or os.stat)("/proc/%d" % pid).st_uid != os.geteuid():
            return None
    except OSError:
        return None
    return record


def write_record(path, record):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_json_atomic(path, record, mode=0o600)


def remove_record(path):
    for name in (path, os.path.join(os.path.dirname(path), LOG)):
        try:
            os.unlink(name)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


def start(holder, tap, mtu, host_loopback, run_dir):
    """Start slirp4netns for the holder's namespace (a _netlink_holder.HolderNamespace) in a session of its own, so
    it outlives the run; its record once it says the tap is configured. Slirp4netnsError naming what failed."""
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    read_end, write_end = os.pipe()
    args = argv(tap, mtu, host_loopback, holder.userns_fd, holder.netns_fd, write_end)
    log = os.open(os.path.join(run_dir, LOG), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, cwd="/",
                                pass_fds=(holder.userns_fd, holder.netns_fd, write_end), start_new_session=True)
    except OSError as exc:
        os.close(read_end)
        raise Slirp4netnsError("cannot run %s (%s); install it once as root: apt-get install slirp4netns"
                               % (PROGRAM, exc))
    finally:
        os.close(write_end)
        os.close(log)
    try:
        ready = select.select([read_end], [], [], READY_TIMEOUT)[0]
        said = os.read(read_end, 16) if ready else b""
    finally:
        os.close(read_end)
    if said != b"1":
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise Slirp4netnsError("%s did not configure tap %s (exit status %s); see %s"
                               % (PROGRAM, tap, proc.returncode, os.path.join(run_dir, LOG)))
    started = process_start_time(proc.pid)
    if started is None:
        raise Slirp4netnsError("%s %d ended right after configuring tap %s" % (PROGRAM, proc.pid, tap))
    record = {"pid": proc.pid, "start_time": int(started), "argv": args}
    record.update(wanted(holder.record, tap, mtu, host_loopback))
    return record


def stop(record, timeout=STOP_TIMEOUT):
    """End the slirp4netns the record names, through a pidfd taken before its identity is checked (no pid race).
    False when it was no longer running."""
    return end_verified(record["pid"], lambda: live(record) is not None, timeout)


def sysctls(tap, forward_from):
    """The namespace's sysctls that route `forward_from`'s packets out through the tap: forwarding on those
    interfaces and the tap only (not ip_forward: no other segment of the namespace routes), and proxy ARP on the
    tap, so the namespace answers slirp's ARP for the lab's addresses behind it (slirp ARPs for each destination,
    also one outside its network, and NATs any source; measured: without it a routed reply never leaves slirp)."""
    values = {"net.ipv4.conf.%s.forwarding" % tap: "1", "net.ipv4.conf.%s.proxy_arp" % tap: "1"}
    for name in forward_from:
        values["net.ipv4.conf.%s.forwarding" % name] = "1"
    return values
