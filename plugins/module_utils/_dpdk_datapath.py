# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One user-space datapath per vhost-user segment: dpdk-testpmd forwarding between exactly two vhost-user ports.

Layout of a segment's directory ``<run_root>/<lab>.dpdk/<segment>/`` (beside the lab's run directory, not in it:
every directory in there is a VM's, and qemu_vms removes them all; a lab name holds no '.', so no lab is called
``<lab>.dpdk``): ``huge/`` (a hugetlbfs mounted for this datapath
alone), ``<port>.sock`` (the vhost-user sockets testpmd serves, QEMU connects as client), ``testpmd.log`` and
``state.json`` (pid, hugepages this datapath added to the kernel's pool, cores, ports). Stopping ends that pid (only
when it is still this segment's testpmd), unmounts ``huge/``, gives back exactly the hugepages it added and removes
DPDK's runtime directory for its ``--file-prefix``.

Why testpmd and not OVS-DPDK: measured on the project's 2-core host (docs/dpdk.md), both need one polling core per
datapath, and a lab segment of two NICs needs no MAC learning; testpmd is one process with no database.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import signal
import subprocess
import time

NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
DPDK_RUNTIME = "/var/run/dpdk"
TESTPMD = "dpdk-testpmd"
# 2 MiB pages testpmd's EAL preallocates (-m 128) plus room for its vhost and ring allocations.
HUGEPAGES_DEFAULT = 80
HUGEPAGE_MIB = 2
TESTPMD_MEMORY_MB = 128
# a small mbuf pool: testpmd's default (~155,000 mbufs, 338 MB) does not fit a lab's few hugepages
MBUFS = 8192
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
STATE = "state.json"


class DatapathError(Exception):
    """The datapath cannot be started or stopped as asked; the message names the segment and the fix."""


def lab_dir(run_dir):
    """The directory of a lab's datapaths, beside its run directory `run_dir` (<run_root>/<lab>)."""
    return os.path.normpath(run_dir) + ".dpdk"


def segment_dir(run_dir, segment):
    return os.path.join(lab_dir(run_dir), segment)


def segments(run_dir):
    """The segments whose datapath directory exists (running or left by a killed run)."""
    directory = lab_dir(run_dir)
    return sorted(name for name in os.listdir(directory) if os.path.isdir(os.path.join(directory, name))) \
        if os.path.isdir(directory) else []


def reserved_hugepages(run_dir):
    """The hugepages this lab's datapaths added to the kernel's pool (their state files say so)."""
    return sum(int((read_state(run_dir, segment) or {}).get("hugepages") or 0) for segment in segments(run_dir))


def file_prefix(run_dir, segment):
    """DPDK's --file-prefix: unique per lab run directory and segment, so two datapaths never share EAL state."""
    lab = os.path.basename(os.path.normpath(run_dir))
    return "qemulab-%s-%s" % (lab, segment)


def socket_paths(run_dir, segment, ports):
    return dict((port, os.path.join(segment_dir(run_dir, segment), port + ".sock")) for port in ports)


def host_cpus():
    return len(os.sched_getaffinity(0))


def cores_problem(cores, cpus):
    """Why `cores` polling cores cannot run on a host of `cpus` CPUs, or None. testpmd needs a main lcore besides
    its forwarding ones, and the guests need a CPU that is not polled at 100 %."""
    if cores < 1:
        return "cores is %d; a datapath needs at least one polling core" % cores
    if cores + 1 > cpus:
        return ("needs %d CPUs (%d polling core(s) and testpmd's main core) but the host has %d; use fewer cores "
                "or a bigger host" % (cores + 1, cores, cpus))
    return None


def testpmd_argv(run_dir, segment, ports, cores, binary=TESTPMD, memory_mb=TESTPMD_MEMORY_MB):
    """testpmd serving `ports` as vhost-user servers and forwarding between them (io mode) on `cores` lcores."""
    sockets = socket_paths(run_dir, segment, ports)
    argv = [binary, "-l", "0-%d" % cores, "--no-pci", "--huge-dir", os.path.join(segment_dir(run_dir, segment), "huge"),
            "--file-prefix", file_prefix(run_dir, segment), "-m", str(memory_mb)]
    for index, port in enumerate(ports):
        argv += ["--vdev", "net_vhost%d,iface=%s,queues=1" % (index, sockets[port])]
    # --stats-period: testpmd then runs until a signal instead of reading "Press enter" from stdin
    argv += ["--", "--forward-mode=io", "--auto-start", "--stats-period", "60", "--total-num-mbufs=%d" % MBUFS,
             "--nb-cores=%d" % cores]
    return argv


def _read_int(path):
    with open(path) as f:
        return int(f.read().strip())


def _write_int(path, value):
    with open(path, "w") as f:
        f.write("%d\n" % value)


def reserve_hugepages(pages, path=NR_HUGEPAGES):
    """Add `pages` to the kernel's pool; the number actually added (the kernel may find fewer). All or nothing:
    a shortfall is given back and reported."""
    before = _read_int(path)
    _write_int(path, before + pages)
    added = _read_int(path) - before
    if added < pages:
        _write_int(path, max(0, _read_int(path) - max(0, added)))
        raise DatapathError("the kernel gave %d of %d more 2 MiB hugepages (%s was %d); free memory or lower "
                            "hugepages" % (max(0, added), pages, path, before))
    return added


def release_hugepages(pages, path=NR_HUGEPAGES):
    """Give back `pages` this datapath added, and no more."""
    if pages > 0:
        _write_int(path, max(0, _read_int(path) - pages))


def is_mounted(path, mounts="/proc/mounts"):
    try:
        with open(mounts) as f:
            return any(line.split()[1] == path for line in f if len(line.split()) > 2)
    except OSError:
        return False


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def is_our_testpmd(pid, run_dir, segment):
    """pid is a live testpmd with this segment's --file-prefix (a recycled pid is not trusted)."""
    argv = _cmdline(pid)
    prefix = file_prefix(run_dir, segment).encode()
    return bool(argv) and os.path.basename(argv[0]).startswith(b"dpdk-testpmd") and prefix in argv


def read_state(run_dir, segment):
    """The running datapath as found: {running, pid, ports, cores, hugepages, mounted, sockets} or None."""
    directory = segment_dir(run_dir, segment)
    try:
        with open(os.path.join(directory, STATE)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    state["running"] = isinstance(pid, int) and is_our_testpmd(pid, run_dir, segment)
    state["mounted"] = is_mounted(os.path.join(directory, "huge"))
    return state


def _write_state(run_dir, segment, state):
    path = os.path.join(segment_dir(run_dir, segment), STATE)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, sort_keys=True)
    os.replace(path + ".tmp", path)


def _log_tail(directory, size=1500):
    try:
        with open(os.path.join(directory, "testpmd.log"), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def start(run_dir, segment, ports, cores, hugepages=HUGEPAGES_DEFAULT, binary=TESTPMD, timeout=START_TIMEOUT):
    """Reserve hugepages, mount a private hugetlbfs, start testpmd and wait for its sockets. On any failure
    everything this call did is undone before the error is raised."""
    if shutil.which(binary) is None:
        raise DatapathError("segment %s: %s is not installed; install Debian's dpdk-dev on the lab host" % (
            segment, binary))
    directory = segment_dir(run_dir, segment)
    huge = os.path.join(directory, "huge")
    os.makedirs(huge, mode=0o700, exist_ok=True)
    os.chmod(lab_dir(run_dir), 0o700)
    state = {"segment": segment, "ports": list(ports), "cores": cores, "hugepages": 0, "pid": None,
             "sockets": socket_paths(run_dir, segment, ports)}
    _write_state(run_dir, segment, state)
    try:
        state["hugepages"] = reserve_hugepages(hugepages)
        _write_state(run_dir, segment, state)
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0700", "qemulab-dpdk", huge],
                       check=True, capture_output=True)
        for path in state["sockets"].values():
            if os.path.lexists(path):
                os.unlink(path)  # a stale socket of a killed datapath: testpmd cannot bind over it
        with open(os.path.join(directory, "testpmd.log"), "wb") as log:
            proc = subprocess.Popen(testpmd_argv(run_dir, segment, ports, cores, binary), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        state["pid"] = proc.pid
        _write_state(run_dir, segment, state)
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(path) for path in state["sockets"].values()):
            if proc.poll() is not None:
                raise DatapathError("segment %s: testpmd exited (%s) before serving its sockets: %s" % (
                    segment, proc.returncode, _log_tail(directory)))
            if time.monotonic() > deadline:
                raise DatapathError("segment %s: testpmd served no sockets within %d s: %s" % (
                    segment, timeout, _log_tail(directory)))
            time.sleep(0.1)
    except (OSError, subprocess.CalledProcessError, DatapathError) as exc:
        stop(run_dir, segment)
        if isinstance(exc, subprocess.CalledProcessError):
            raise DatapathError("segment %s: mounting hugetlbfs on %s failed: %s" % (
                segment, huge, (exc.stderr or b"").decode(errors="replace").strip()))
        if isinstance(exc, OSError):
            raise DatapathError("segment %s: %s" % (segment, exc))
        raise
    state["running"] = True
    return state


def _wait_gone(pid, run_dir, segment, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # our own child when the same process started it
        except ChildProcessError:
            pass
        if not is_our_testpmd(pid, run_dir, segment):
            return True
        time.sleep(0.05)
    return False


def stop(run_dir, segment):
    """End this segment's testpmd (by its recorded pid, only if it is still ours), unmount its hugetlbfs, give
    back the hugepages it added, remove its EAL runtime directory and its own directory. True if anything was
    there to undo."""
    directory = segment_dir(run_dir, segment)
    state = read_state(run_dir, segment)
    if state is None and not os.path.isdir(directory):
        return False
    state = state or {}
    pid = state.get("pid")
    if state.get("running"):
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, run_dir, segment, STOP_TIMEOUT):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, run_dir, segment, STOP_TIMEOUT)
    huge = os.path.join(directory, "huge")
    if is_mounted(huge):
        result = subprocess.run(["umount", huge], capture_output=True, check=False)
        if result.returncode != 0:
            raise DatapathError("segment %s: unmounting %s failed: %s; the hugepages stay reserved until it is "
                                "unmounted" % (segment, huge, result.stderr.decode(errors="replace").strip()))
    release_hugepages(int(state.get("hugepages") or 0))
    shutil.rmtree(os.path.join(DPDK_RUNTIME, file_prefix(run_dir, segment)), ignore_errors=True)
    try:
        os.rmdir(DPDK_RUNTIME)  # EAL creates it; gone again once no datapath uses it
    except OSError:
        pass
    shutil.rmtree(directory, ignore_errors=True)
    try:
        os.rmdir(lab_dir(run_dir))  # the lab's datapath directory goes with its last datapath
    except OSError:
        pass
    return True


def wanted_matches(state, ports, cores):
    """A running datapath already serving exactly these ports on this many cores needs no restart."""
    return bool(state and state.get("running") and state.get("mounted") and list(state.get("ports") or []) ==
                list(ports) and state.get("cores") == cores
                and all(os.path.exists(p) for p in (state.get("sockets") or {}).values()))
