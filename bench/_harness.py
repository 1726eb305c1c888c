# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plumbing shared by the benchmarks: child processes, guest SSH, free ports, cleanup on any exit."""

import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")
SSH_KEY = "/var/lib/qemulab/ssh/id_ed25519"
RUN_ROOT = "/run/qemulab"
STATE_DIR = "/var/lib/qemulab"


class BenchError(Exception):
    """A measurement that could not be taken; the message says what failed and where to look."""


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def run(argv, timeout=600, log_path=None, env=None, cwd=None, check=False):
    """Run a child in its own process group so Ctrl-C reaches us first and we decide what to stop.

    Returns (rc, seconds, output text). On KeyboardInterrupt the child's group (and only it) is killed.
    """
    t0 = time.monotonic()
    out = open(log_path, "ab") if log_path else subprocess.PIPE
    if log_path:
        out.write(("\n$ %s\n" % " ".join(shlex.quote(a) for a in argv)).encode())
        out.flush()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        if log_path:
            out.close()
    seconds = time.monotonic() - t0
    text = stdout.decode(errors="replace") if stdout is not None else ""
    if check and proc.returncode != 0:
        where = (" (log: %s)" % log_path) if log_path else (": " + text[-800:])
        raise BenchError("%s exited %d%s" % (argv[0] if len(argv) < 3 else " ".join(argv[:3]), proc.returncode,
                                             where))
    return proc.returncode, seconds, text


def _kill_group(proc):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


class Guest:
    """SSH to a guest's forwarded port on 127.0.0.1 (inside `netns` when QEMU itself runs there)."""

    def __init__(self, name, port, netns=""):
        self.name = name
        self.port = port
        self.netns = netns

    def argv(self, command, connect_timeout=5):
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return prefix + ["ssh", "-i", SSH_KEY, "-p", str(self.port), "-o", "BatchMode=yes",
                         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                         "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=%d" % connect_timeout,
                         "root@127.0.0.1", command]

    def run(self, command, timeout=60, check=True):
        rc, _, out = run(self.argv(command), timeout=timeout)
        if check and rc != 0:
            raise BenchError("on %s: `%s` exited %d: %s" % (self.name, command, rc, out.strip()[-600:]))
        return rc, out


def port_block(count, low=30000, high=60000, tries=200):
    """`count` consecutive TCP ports free on 127.0.0.1 now (the root namespace is shared with other labs)."""
    for _ in range(tries):
        base = random.randrange(low, high - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise BenchError("found no %d consecutive free ports on 127.0.0.1" % count)


def netns_list():
    rc, _, out = run(["ip", "netns", "list"], timeout=30)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def ssh_banner(port, timeout=1.0):
    """Whether 127.0.0.1:port answers with an SSH banner within `timeout` (connect and first bytes each)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def qemu_vm_name(pid):
    """The VM name a QEMU process was given (`-name NAME[,...]`), or None."""
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
    return argv[argv.index("-name") + 1].split(",")[0] if "-name" in argv else None


def processes_matching(marker):
    """PIDs of processes whose command line contains `marker` (a path or name unique to one of our labs)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in os.path.basename(argv[0]) and any(marker.encode() in a for a in argv):
            found.append(int(entry))
    return found


def vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError("no VmRSS for pid %d" % pid)


def vm_memory_kib(pid):
    """{rss, pss, uss} KiB of one process from /proc/<pid>/smaps_rollup. RSS counts every resident page it maps;
    PSS divides each page among the processes that map it; USS (Private_Clean + Private_Dirty) is what only this
    process holds, i.e. what ending it would free. RSS - USS is what it shares (QEMU's binary, libraries and the
    image's kernel/initrd in the page cache, or guest RAM pages shared with a template)."""
    got = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                got[key] = int(rest.split()[0])
    if "Rss" not in got:
        raise BenchError("no Rss in /proc/%d/smaps_rollup" % pid)
    return {"rss": got["Rss"], "pss": got.get("Pss", 0),
            "uss": got.get("Private_Clean", 0) + got.get("Private_Dirty", 0)}


def host_memory_mib():
    """{total, used, available} MiB of this machine from /proc/meminfo; used = MemTotal - MemAvailable."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
    return {"total": info["MemTotal"] // 1024, "available": info["MemAvailable"] // 1024,
            "used": (info["MemTotal"] - info["MemAvailable"]) // 1024}


def loadavg():
    """The 1, 5 and 15 minute load averages, as /proc/loadavg prints them."""
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def root_links_with_alias(alias):
    rc, _, out = run(["ip", "-o", "link", "show"], timeout=30)
    return [line.split(":")[1].strip() for line in out.splitlines() if ("alias " + alias) in line]


class Cleanups:
    """Undo actions run last-in first-out on any exit; Ctrl-C during them is ignored so they finish."""

    def __init__(self):
        self._actions = []

    def push(self, label, action):
        self._actions.append((label, action))
        return (label, action)

    def pop(self, token):
        if token in self._actions:
            self._actions.remove(token)

    def run_all(self):
        if not self._actions:
            return []
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        errors = []
        try:
            while self._actions:
                label, action = self._actions.pop()
                log("cleaning up: %s" % label)
                try:
                    action()
                except Exception as exc:  # keep going: every other lab must still be removed
                    errors.append("%s: %s" % (label, exc))
                    log("cleanup of %s failed: %s" % (label, exc))
        finally:
            signal.signal(signal.SIGINT, previous)
        return errors


def sigterm_as_interrupt():
    def handler(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, handler)
