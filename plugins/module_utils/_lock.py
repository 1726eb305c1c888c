# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A lab's run lock: a kernel-held flock on /run/qemulab/<lab>.lock, held for the life of one ansible-playbook run.

Modules and action plugins end after their task, so a small holder process (this file run as a script) takes the
lock and keeps it until the playbook process it watches is gone. The kernel drops a flock when its holder dies, so
a SIGKILLed run never leaves the lab locked. The holder unlinks the file on its way out; takers check that they
locked the file still at the path (same inode), so the unlink never lets two runs in at once.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import os
import select
import signal
import subprocess
import sys
import time


def _read_text(path):
    with open(path) as f:
        return f.read()


def process_start_time(pid, read=_read_text):
    """The start time field of /proc/PID/stat (tells a process from a later one with the same pid), or None."""
    try:
        # the command name (field 2) may hold spaces and parentheses: split after its last ")"
        fields = read("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def end_verified(pid, still_it, timeout):
    """End process `pid` with SIGTERM (SIGKILL after `timeout` s) through a pidfd taken before `still_it()` checks
    its identity: if the check passes, the signal reaches that process even if the pid were reused right after.
    False when it was gone or is no longer the process meant."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        if e.errno == errno.ESRCH:
            return False
        raise
    try:
        if not still_it():
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([pidfd], [], [], 0.1)[0]:
                return True
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], timeout)
        return True
    finally:
        os.close(pidfd)


def _describe_holder(path):
    try:
        with open(path) as f:
            return f.read().strip() or "another run"
    except OSError:
        return "another run"


def _lock_current_file(path, watch_pid, watch_start, deadline):
    """An fd holding the flock of the file now at path, or None when the deadline passed or the watched run ended."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.time() > deadline or process_start_time(watch_pid) != watch_start:
                return None
            time.sleep(0.2)
            continue
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except OSError:
            pass
        os.close(fd)  # the previous holder unlinked it after we opened it: take the new file


def hold(path, watch_pid, watch_start, timeout):
    """The holder: take the lock, say so on stdout, keep it while the watched process lives. Exit status 1: busy."""
    # Ctrl-C stops the playbook, and a task worker's session ending hangs up its group: the lock goes with the run.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    fd = _lock_current_file(path, watch_pid, watch_start, time.time() + timeout)
    if fd is None:
        sys.stdout.write("busy %s\n" % _describe_holder(path))
        return 1
    os.ftruncate(fd, 0)
    os.write(fd, ("ansible-playbook pid %d since %s" % (watch_pid, time.strftime("%Y-%m-%d %H:%M:%S %Z"))).encode())
    sys.stdout.write("locked\n")
    sys.stdout.flush()
    os.close(1)
    while process_start_time(watch_pid) == watch_start:
        time.sleep(0.2)
    try:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass
    return 0


def take_run_lock(path, watch_pid, timeout):
    """Start the holder; wait until it has the lock (returns None) or gives up (returns who holds it)."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        # a user's run root (docs/rootless.md) is theirs alone, as _userns makes it; root's stays readable
        os.makedirs(parent, mode=0o755 if os.geteuid() == 0 else 0o700)
    start = process_start_time(watch_pid)
    if start is None:
        return "cannot watch process %d: it is not running" % watch_pid
    with open(os.devnull, "r+b") as devnull:
        holder = subprocess.Popen([sys.executable, os.path.abspath(__file__), path, str(watch_pid), start,
                                   str(timeout)], stdin=devnull, stdout=subprocess.PIPE, stderr=devnull,
                                  close_fds=True, start_new_session=True)
    line = holder.stdout.readline().decode("utf-8", "replace").strip()
    holder.stdout.close()
    if line == "locked":
        # The holder outlives this process on purpose: reaping it here would wait for the whole playbook.
        holder.returncode = 0
        return None
    holder.wait()
    return line[len("busy "):] if line.startswith("busy ") else "the lock holder failed (%r)" % line


if __name__ == "__main__":
    raise SystemExit(hold(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])))
