"""_ring (lab_capture_ring): the recorder's command line and bound, which running tcpdump is the lab's, and a ring's
files joined oldest first into one pcapng (hand-built pcap files; the real recorder runs in
tests/integration/test_ring_recorder.py)."""
import os
import signal
import struct

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _ring

pytestmark = pytest.mark.unit

HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def record(stamp, data):
    return struct.pack("<IIII", stamp, 0, len(data), len(data)) + data


def frames(data):
    """The stamps of the Enhanced Packet Blocks of a pcapng."""
    offset, out = 0, []
    while offset < len(data):
        kind, length = struct.unpack("<II", data[offset:offset + 8])
        if kind == 6:
            out.append(struct.unpack("<IIIII", data[offset + 8:offset + 28])[2] // 1000000)
        offset += length
    return out


def write(path, data, mtime):
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(mtime, mtime))


@pytest.mark.parametrize("size", [_ring.SIZE_MIN, _ring.SIZE_DEFAULT, _ring.SIZE_MAX])
def test_sizes_in_range_pass(size):
    assert _ring.check_size(size) is None


@pytest.mark.parametrize("size", [_ring.SIZE_MIN - 1, _ring.SIZE_MAX + 1, 0, -3, True, "8", 8.0])
def test_sizes_out_of_range_or_not_ints_are_refused_with_the_range(size):
    why = _ring.check_size(size)
    assert why and "from 2 to 64" in why


def test_the_recorder_is_a_ring_of_size_one_megabyte_files_in_the_labs_rings_directory():
    root = _ring.ring_root("/var/lib/qemulab", "seed")
    assert root == "/var/lib/qemulab/labs/seed/rings"
    argv = _ring.recorder_argv(root, "br2", 8)
    assert argv[0] == "tcpdump" and argv[argv.index("-i") + 1] == "br2"
    assert argv[argv.index("-C") + 1] == "1" and argv[argv.index("-W") + 1] == "8"
    assert argv[argv.index("-w") + 1] == root + "/br2.pcap"
    assert argv[argv.index("-Z") + 1] == "root"
    assert "-U" not in argv  # buffered: one write per few KB, flushed by SIGUSR2 when a ring is saved
    assert "-p" not in argv  # the bridge must be promiscuous to see the frames it forwards
    assert _ring.launch_argv("lab-ns", argv) == ["ip", "netns", "exec", "lab-ns"] + argv
    assert _ring.launch_argv("", argv) == argv


def test_the_bound_is_the_size_plus_one_largest_record_and_a_header_per_file():
    assert _ring.bound_bytes(8) == 8 * (1000000 + 65535 + 16 + 24)
    assert _ring.bound_bytes(_ring.SIZE_MAX) < 70 * 1000 * 1000


def test_ring_files_are_the_numbered_files_oldest_first(tmp_path):
    root = str(tmp_path)
    write(os.path.join(root, "br2.pcap0"), HEADER, 3000)
    write(os.path.join(root, "br2.pcap1"), HEADER, 1000)
    write(os.path.join(root, "br2.pcap2"), HEADER, 2000)
    write(os.path.join(root, "br2.pcapx"), HEADER, 1)  # not a ring file
    write(os.path.join(root, "br22.pcap0"), HEADER, 1)  # another bridge's
    write(os.path.join(root, "br2.pid"), b"1\n", 1)
    assert [os.path.basename(p) for p in _ring.ring_files(root, "br2")] == ["br2.pcap1", "br2.pcap2", "br2.pcap0"]


def test_merge_joins_the_files_oldest_first_and_drops_a_cut_record(tmp_path):
    root = str(tmp_path)
    # the ring wrapped: pcap0 is being written (newest, cut inside its last record), pcap1 is the oldest
    write(os.path.join(root, "br2.pcap0"), HEADER + record(5, b"e" * 60) + record(6, b"f" * 60)[:30], 3000)
    write(os.path.join(root, "br2.pcap1"), HEADER + record(1, b"a" * 60) + record(2, b"b" * 42), 1000)
    write(os.path.join(root, "br2.pcap2"), HEADER + record(3, b"c" * 60) + record(4, b"d" * 60), 2000)
    data, count = _ring.merge(_ring.ring_files(root, "br2"), "br2", "ring")
    assert count == 5
    assert frames(data) == [1, 2, 3, 4, 5]
    assert b"br2" in data and data[:4] == b"\x0a\x0d\x0d\x0a"


def test_merge_leaves_out_a_file_whose_header_differs_and_refuses_an_empty_ring(tmp_path):
    root = str(tmp_path)
    other = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 113)  # another link type
    write(os.path.join(root, "br2.pcap0"), HEADER + record(1, b"a" * 60), 1000)
    write(os.path.join(root, "br2.pcap1"), other + record(2, b"b" * 60), 2000)
    write(os.path.join(root, "br2.pcap2"), b"\xa1\xb2", 3000)  # just created, header not written yet
    data, count = _ring.merge(_ring.ring_files(root, "br2"), "br2")
    assert count == 1 and frames(data) == [1]
    with pytest.raises(_ring.RingError, match="holds no pcap file"):
        _ring.merge([os.path.join(root, "br2.pcap2")], "br2")


def fake_proc(monkeypatch, processes):
    """processes: {pid: (argv, uid, netns inode)}"""
    monkeypatch.setattr(_ring.os, "listdir", lambda path: [str(pid) for pid in processes] + ["self", "stat"])
    monkeypatch.setattr(_ring, "proc_cmdline", lambda pid: processes[pid][0] if pid in processes else None)
    monkeypatch.setattr(_ring, "process_uid", lambda pid: processes[pid][1])
    monkeypatch.setattr(_ring, "process_netns_inode", lambda pid: processes[pid][2])


def test_only_root_tcpdumps_writing_into_this_labs_rings_are_found(monkeypatch):
    root = "/var/lib/qemulab/labs/seed/rings"
    ours = _ring.recorder_argv(root, "br1", 8)
    fake_proc(monkeypatch, {
        10: (ours, 0, 77),
        11: (_ring.recorder_argv(root, "br2", 4), 0, 77),
        12: (_ring.recorder_argv(root, "br3", 8), 1000, 77),  # not root: anyone could name our path
        13: (_ring.recorder_argv("/var/lib/qemulab/labs/seed2/rings", "br1", 8), 0, 77),  # another lab
        14: (["tcpdump", "-i", "br1", "-w", root + "/../x/br1.pcap"], 0, 77),  # outside the directory
        15: (["vim", "-w", root + "/br1.pcap"], 0, 77),
        16: (["tcpdump", "-i", "br1", "-w"], 0, 77),
    })
    found = _ring.find_recorders(root)
    assert sorted(found) == ["br1", "br2"]
    assert found["br1"] == {"pid": 10, "argv": ours, "netns_inode": 77}


def test_a_recorder_is_current_only_with_the_same_arguments_in_the_labs_namespace(monkeypatch):
    root = "/r"
    monkeypatch.setattr(_ring, "_netns_inode", lambda netns: {"ns-a": 1, "ns-b": 2}[netns])
    recorder = {"pid": 5, "argv": _ring.recorder_argv(root, "br1", 8), "netns_inode": 1}
    assert _ring.is_current(recorder, root, "br1", 8, "ns-a")
    assert not _ring.is_current(recorder, root, "br1", 16, "ns-a")
    assert not _ring.is_current(recorder, root, "br1", 8, "ns-b")


def test_stop_signals_only_while_proc_shows_our_command_line(monkeypatch):
    sent = []
    alive = {"left": 2}

    def cmdline(pid):
        alive["left"] -= 1
        return ["tcpdump", "x"] if alive["left"] >= 0 else ["bash"]

    monkeypatch.setattr(_ring, "proc_cmdline", cmdline)
    monkeypatch.setattr(_ring.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    _ring.stop({"pid": 42, "argv": ["tcpdump", "x"]})
    assert sent == [(42, signal.SIGTERM)]
    sent.clear()
    monkeypatch.setattr(_ring, "proc_cmdline", lambda pid: ["sshd"])  # the pid is someone else's now
    _ring.stop({"pid": 42, "argv": ["tcpdump", "x"]})
    assert sent == []


def test_the_plan_starts_the_missing_restarts_the_changed_and_stops_the_unwanted(monkeypatch):
    root = "/r"
    monkeypatch.setattr(_ring, "_netns_inode", lambda netns: 1)
    have = {"br1": {"pid": 1, "argv": _ring.recorder_argv(root, "br1", 8), "netns_inode": 1},  # as wanted
            "br2": {"pid": 2, "argv": _ring.recorder_argv(root, "br2", 4), "netns_inode": 1},  # another size
            "br3": {"pid": 3, "argv": _ring.recorder_argv(root, "br3", 8), "netns_inode": 9},  # another namespace
            "br9": {"pid": 9, "argv": _ring.recorder_argv(root, "br9", 8), "netns_inode": 1}}  # no longer a segment
    start, stop = _ring.plan(have, ["br1", "br2", "br3", "br4"], root, 8, "ns")
    assert start == ["br2", "br3", "br4"] and stop == ["br2", "br3", "br9"]
    assert _ring.plan({"br1": have["br1"]}, ["br1"], root, 8, "ns") == ([], [])  # a rerun changes nothing
    assert _ring.plan(have, [], root, 8, "ns") == ([], ["br1", "br2", "br3", "br9"])  # state=absent


def test_flush_signals_only_a_recorder_proc_shows_as_ours(monkeypatch):
    sent = []
    monkeypatch.setattr(_ring.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(_ring, "proc_cmdline", lambda pid: ["tcpdump", "x"])
    assert _ring.flush({"pid": 42, "argv": ["tcpdump", "x"]}) is True
    assert sent == [(42, signal.SIGUSR2)]
    monkeypatch.setattr(_ring, "proc_cmdline", lambda pid: None)  # gone
    assert _ring.flush({"pid": 42, "argv": ["tcpdump", "x"]}) is False and len(sent) == 1
