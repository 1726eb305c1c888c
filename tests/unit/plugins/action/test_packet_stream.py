"""Unit tests: the packet_stream action refuses before running anything (bad names, no pcap callback, a remote lab
host, not root), streams a command's stdout to the kept descriptor as it writes, and stops it when its seconds pass
or its parent (ansible-playbook) is gone, leaving no process."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.qemulab.network.plugins.action import packet_stream
from ansible_collections.qemulab.network.plugins.action.packet_stream import outcome, problems, refusal, stream

pytestmark = pytest.mark.unit


def args(**given):
    return dict({"netns": "qemulab-seed", "interface": "br2", "seconds": 0, "filter": "icmp"}, **given)


def test_valid_arguments_have_no_problem():
    assert problems(args()) == [] and problems(args(netns="", seconds=3600, filter="")) == []


@pytest.mark.parametrize("given,field", [({"interface": "br2; reboot"}, "interface"), ({"netns": "../x"}, "netns"),
                                         ({"interface": ""}, "interface"), ({"seconds": -1}, "seconds"),
                                         ({"seconds": 3601}, "seconds"), ({"filter": "icmp\nor arp"}, "filter")])
def test_a_bad_value_is_named_with_its_field(given, field):
    found = problems(args(**given))
    assert len(found) == 1 and found[0].startswith(field + ": "), found


def test_without_the_pcap_callback_the_stream_is_refused_naming_it():
    why = refusal(None, "local", 0)
    assert "ANSIBLE_STDOUT_CALLBACK=qemulab.network.pcap" in why


def test_a_remote_lab_host_is_refused_with_the_ssh_way():
    why = refusal(5, "ssh", 0)
    assert "connection ssh" in why and "ssh root@<lab host>" in why


def test_not_root_is_refused_and_root_on_a_local_host_streams():
    assert "root" in refusal(5, "local", 1000)
    assert refusal(5, "local", 0) is None


@pytest.mark.parametrize("rc,stopped_by,failed", [(0, "3 seconds passed", False), (-signal.SIGPIPE, None, False),
                                                  (0, None, False), (-signal.SIGTERM, None, False), (1, None, True)])
def test_an_end_fails_only_when_tcpdump_ended_by_itself(rc, stopped_by, failed):
    assert outcome(rc, stopped_by)[0] is failed


def _writer(lines, pause):
    """A stand-in for tcpdump: writes a line, flushes, waits, until stopped."""
    code = ("import sys, time\nfor i in range(%d):\n    sys.stdout.write('packet %%d\\n' %% i); sys.stdout.flush();"
            " time.sleep(%r)\ntime.sleep(60)" % (lines, pause))
    return [sys.executable, "-c", code]


def test_the_stream_reaches_the_descriptor_while_it_runs_and_stops_after_its_seconds():
    read, write = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the worker: stream into the pipe for 2 seconds
        os.close(read)
        returncode, stopped_by, _err = stream(_writer(3, 0.1), write, 2, os.getppid())
        os._exit(0 if stopped_by == "2 seconds passed" and returncode == -signal.SIGINT else 1)
    os.close(write)
    first = os.read(read, 100)
    first_at = time.monotonic() - started
    rest = b""
    while True:
        chunk = os.read(read, 100)
        if not chunk:
            break
        rest += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert first.startswith(b"packet 0") and first_at < 1.5, (first, first_at)
    assert (first + rest).splitlines() == [b"packet 0", b"packet 1", b"packet 2"]
    assert os.waitstatus_to_exitcode(status) == 0 and time.monotonic() - started >= 2


def test_a_gone_parent_stops_the_stream_and_leaves_no_process(monkeypatch):
    monkeypatch.setattr(packet_stream, "POLL_SECONDS", 0.1)
    with open(os.devnull, "wb") as out:
        # a parent pid that is not ours: the stream sees ansible-playbook gone at its first look
        returncode, stopped_by, _err = stream(_writer(1, 0), out.fileno(), 0, os.getppid() + 1)
    assert stopped_by == "ansible-playbook is gone" and returncode == -signal.SIGINT
    assert not [p for p in _children(os.getpid())], _children(os.getpid())


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if _alive(int(p))]


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
