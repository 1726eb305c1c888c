# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ring recorder (lab_capture_ring): one tcpdump per segment, inside the lab's namespace, writing a ring of
one-megabyte pcap files under <state_dir>/labs/<lab>/rings/, so the last few megabytes a segment carried since it
was created are on disk when a verify fails.

Why tcpdump: it is C (a Python recorder would cost a Python wake-up per packet), its -C/-W ring is bounded by
construction, and packet_capture already needs it. Its -C unit is 10^6 bytes and takes no suffix (4.99), so the
ring is `size` files of 1 MB; tcpdump starts a new file once the current one has grown past 1 MB, so a file holds at
most 1 MB plus one packet record (SNAPLEN + 16 bytes).

A recorder is ours when its command line is exactly the one we start (tcpdump writing into this lab's rings
directory, which only root can write), it runs as root, and it lives in the lab's namespace: the pidfile is only a
hint, /proc is searched (as for QEMU in _qemu_process).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import os
import signal
import subprocess
import time

from ansible_collections.qemulab.network.plugins.module_utils._netlink import NETNS_RUN_DIR
from ansible_collections.qemulab.network.plugins.module_utils._pcapng import PcapError, _header, convert
from ansible_collections.qemulab.network.plugins.module_utils._pcapng import records as pcap_records
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import proc_cmdline, process_uid

SIZE_DEFAULT = 8  # megabytes (tcpdump's 10^6 bytes): the last ~8 MB of each segment
SIZE_MIN = 2  # a ring needs two files: the one being written and the one before it
SIZE_MAX = 64  # a hard cap: a verify failure copies the rings of its path into /run (memory)
FILE_BYTES = 1000000  # tcpdump -C 1
SNAPLEN = 65535  # whole frames, GSO ones from the taps included
RECORD_HEADER = 16
PCAP_HEADER = 24
# libpcap hands packets to tcpdump in blocks retired after at most this long (tcpdump's 1000 ms timeout)
HANDOVER_SECONDS = 1.2
FLUSH_SECONDS = 0.3  # for tcpdump to act on SIGUSR2
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class RingError(Exception):
    pass


def ring_root(state_dir, lab):
    return os.path.join(state_dir, "labs", lab, "rings")


def ring_base(root, bridge):
    return os.path.join(root, bridge + ".pcap")


def bound_bytes(size):
    """The most a ring of `size` files can hold on disk: each file 1 MB plus one record, and its header."""
    return size * (FILE_BYTES + SNAPLEN + RECORD_HEADER + PCAP_HEADER)


def check_size(size):
    """None, or why `size` is not a ring size."""
    if isinstance(size, bool) or not isinstance(size, int) or not SIZE_MIN <= size <= SIZE_MAX:
        return "%r is not a whole number of megabytes from %d to %d; give one, like %d" % (
            size, SIZE_MIN, SIZE_MAX, SIZE_DEFAULT)
    return None


def recorder_argv(root, bridge, size):
    """tcpdump's own command line (what /proc shows: `ip netns exec` replaces itself with it).
    No -U: tcpdump buffers a few KB before writing, one write per buffer instead of one per packet (with -U the
    recorders cost about a quarter of a core during an iperf3 across the seed lab); flush() writes the buffer out when
    a ring is saved. -Z root keeps root, which may create the next file in the root-only directory (Debian's tcpdump
    would drop to user tcpdump); -n looks nothing up; no -p: the bridge must be promiscuous to pass up the frames it
    forwards between its ports."""
    return ["tcpdump", "-i", bridge, "-n", "-s", str(SNAPLEN), "-Z", "root", "-C", "1", "-W", str(size),
            "-w", ring_base(root, bridge)]


def launch_argv(netns, argv):
    return (["ip", "netns", "exec", netns] if netns else []) + argv


def ring_files(root, bridge):
    """The ring's files (<bridge>.pcap<N>), oldest first: tcpdump writes them in turn, so the last written is newest."""
    base = ring_base(root, bridge)
    files = [path for path in glob.glob(glob.escape(base) + "*") if path[len(base):].isdigit()]
    return sorted(files, key=lambda path: (os.stat(path).st_mtime_ns, path))


def _netns_inode(netns):
    return os.stat(os.path.join(NETNS_RUN_DIR, netns) if netns else "/proc/1/ns/net").st_ino


def process_netns_inode(pid):
    try:
        return os.stat("/proc/%d/ns/net" % pid).st_ino
    except OSError:
        return None


def find_recorders(root):
    """{bridge: {"pid", "argv", "netns_inode"}} of every root tcpdump writing a ring into `root`."""
    found = {}
    prefix = root.rstrip("/") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        argv = proc_cmdline(pid)
        if not argv or argv[0] != "tcpdump" or "-w" not in argv[:-1]:
            continue
        target = argv[argv.index("-w") + 1]
        name = target[len(prefix):-len(".pcap")] if target.startswith(prefix) and target.endswith(".pcap") else ""
        if not name or "/" in name or process_uid(pid) != 0:
            continue
        found[name] = {"pid": pid, "argv": argv, "netns_inode": process_netns_inode(pid)}
    return found


def is_current(recorder, root, bridge, size, netns):
    """A running recorder already records `bridge` as asked: the same command line in the lab's namespace."""
    try:
        inode = _netns_inode(netns)
    except OSError:
        return False
    return recorder["argv"] == recorder_argv(root, bridge, size) and recorder["netns_inode"] == inode


def plan(have, want, root, size, netns):
    """(bridges to start, bridges to stop): a wanted bridge without a current recorder is started (its old recorder,
    with other arguments or in another namespace, stopped first); a recorder of a bridge not wanted is stopped."""
    start = [b for b in want if b not in have or not is_current(have[b], root, b, size, netns)]
    stop = sorted(b for b in have if b not in want or b in start)
    return start, stop


def _alive(pid, argv):
    return proc_cmdline(pid) == argv


def flush(recorder):
    """Have a running recorder write out what it buffers (tcpdump flushes its file on SIGUSR2); False when it is
    not running (any more)."""
    if not _alive(recorder["pid"], recorder["argv"]):
        return False
    try:
        os.kill(recorder["pid"], signal.SIGUSR2)
    except ProcessLookupError:
        return False
    return True


def stop(recorder):
    """SIGTERM (tcpdump flushes and exits), SIGKILL after STOP_TIMEOUT; only while /proc still shows our argv."""
    pid, argv = recorder["pid"], recorder["argv"]
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        if not _alive(pid, argv):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, argv):
                return
            time.sleep(0.05)
    raise RingError("the ring recorder %d (%s) did not end after SIGKILL" % (pid, " ".join(argv)))


def remove_files(root, bridge):
    extra = [os.path.join(root, bridge + suffix) for suffix in (".pid", ".err")]
    for path in glob.glob(glob.escape(ring_base(root, bridge)) + "*") + extra:
        if os.path.lexists(path):
            os.unlink(path)


def start(root, netns, bridge, size):
    """Start a recorder on `bridge` with an empty ring; its pid once tcpdump has opened the first file (it opens it
    after the capture is active, so nothing the segment carries after this returns is missed)."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    remove_files(root, bridge)
    argv = recorder_argv(root, bridge, size)
    err_path = os.path.join(root, bridge + ".err")
    with open(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as err:
        # a session of its own: the recorder outlives this module run and no signal to Ansible's group reaches it
        proc = subprocess.Popen(launch_argv(netns, argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True, close_fds=True, umask=0o077)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ring_files(root, bridge):
            with open(os.open(os.path.join(root, bridge + ".pid"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                              | os.O_NOFOLLOW, 0o600), "w") as f:
                f.write("%d\n" % proc.pid)
            return proc.pid
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    with open(err_path, "rb") as f:
        said = f.read()[-500:].decode("utf-8", "replace").strip()
    raise RingError("the ring recorder on %s%s did not start (exit %s): %s; the bridge must exist and be up there "
                    "(host_prep creates it) and tcpdump be installed" % (
                        bridge, " in namespace %s" % netns if netns else "", proc.returncode, said or "no message"))


def merge(paths, bridge, comment=""):
    """(pcapng bytes, packets) of a ring's files, oldest first, as one capture of `bridge`; files whose header
    differs from the first's (none, unless tcpdump died while writing one) are left out."""
    header, records = None, []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < PCAP_HEADER:
            continue
        try:
            order = _header(data)[0]
        except PcapError:
            continue
        if header is None:
            header = data[:PCAP_HEADER]
        elif data[:PCAP_HEADER] != header:
            continue
        records += list(pcap_records(data, order))
    if header is None:
        raise RingError("the ring of %s holds no pcap file yet" % bridge)
    return convert(header + b"".join(records), bridge, comment)
