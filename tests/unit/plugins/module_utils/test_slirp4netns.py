"""Unit tests (no process started; /proc mocked): how a rootless lab's slirp4netns is started (its argv), recognised
again from its record, restarted when asked for otherwise, and what the slirp4netns module refuses before anything is
read."""
import json
import os
from types import SimpleNamespace

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _slirp4netns as slirp
from ansible_collections.qemulab.network.plugins.modules import slirp4netns as module

pytestmark = pytest.mark.unit

HOLDER = {"lab": "seed", "pid": 4242, "start_time": 777, "userns": [4, 100], "netns": [4, 101]}
ARGV = slirp.argv("qlu-1a2b3c4d-s", 65520, False, 5, 6, 7)
RECORD = dict({"pid": 4343, "start_time": 888, "argv": ARGV}, **slirp.wanted(HOLDER, "qlu-1a2b3c4d-s", 65520, False))


def test_argv_enters_the_checked_namespace_fds_and_keeps_the_host_s_loopback_shut_by_default():
    assert ARGV == ["slirp4netns", "--configure", "--mtu=65520", "--cidr=10.0.4.0/24", "--disable-host-loopback",
                    "--ready-fd=7", "--netns-type=path", "--userns-path=/proc/self/fd/5", "/proc/self/fd/6", "qlu-1a2b3c4d-s"]
    assert "--disable-host-loopback" not in slirp.argv("t0", 1500, True, 5, 6, 7)


def probes(started="888", argv=ARGV, uid=None):
    uid = os.geteuid() if uid is None else uid
    return dict(start_time=lambda pid: started, cmdline=lambda pid: list(argv),
                owner=lambda path: SimpleNamespace(st_uid=uid))


def test_a_running_slirp4netns_is_taken_only_while_start_time_argv_and_owner_match():
    assert slirp.live(RECORD, **probes()) == RECORD
    assert slirp.live(RECORD, **probes(started=None)) is None  # gone
    assert slirp.live(RECORD, **probes(started="999")) is None  # the pid is another, later process
    assert slirp.live(RECORD, **probes(argv=["sleep", "600"])) is None
    assert slirp.live(RECORD, **probes(uid=os.geteuid() + 1)) is None  # another user's
    assert slirp.live(None, **probes()) is None


def test_another_holder_tap_mtu_or_loopback_restarts_it_the_same_keeps_it():
    same = slirp.wanted(HOLDER, "qlu-1a2b3c4d-s", 65520, False)
    assert slirp.differs(RECORD, same) == [] and module.plan(RECORD, same, "present") == (False, False)
    new_holder = dict(HOLDER, pid=5000, start_time=999)
    assert slirp.differs(RECORD, slirp.wanted(new_holder, "qlu-1a2b3c4d-s", 65520, False)) == ["holder"]
    assert slirp.differs(RECORD, slirp.wanted(HOLDER, "qlu-1a2b3c4d-s", 1500, True)) == ["host_loopback", "mtu"]
    assert module.plan(RECORD, slirp.wanted(HOLDER, "t1", 65520, False), "present") == (True, True)
    assert module.plan(None, same, "present") == (True, False)
    assert module.plan(RECORD, None, "absent") == (False, True) and module.plan(None, None, "absent") == (False, False)


def test_the_record_round_trips_private_and_a_broken_one_counts_as_none(tmp_path):
    path = slirp.record_path(str(tmp_path), "seed")
    slirp.write_record(path, RECORD)
    assert slirp.read_record(path) == RECORD
    assert oct(os.stat(path).st_mode & 0o777) == "0o600" and oct(os.stat(tmp_path / "seed").st_mode & 0o777) == "0o700"
    with open(tmp_path / "seed" / slirp.LOG, "w") as f:
        f.write("sent tapfd=5 for tap0\n")
    slirp.remove_record(path)
    assert os.listdir(tmp_path / "seed") == []
    slirp.remove_record(path)  # nothing there: no error
    for text in ("not json", json.dumps([1]), json.dumps({"pid": "4343", "argv": []}), json.dumps({"pid": 1})):
        with open(path, "w") as f:
            f.write(text)
        assert slirp.read_record(path) is None


def test_forwarding_on_the_listed_interfaces_and_the_tap_proxy_arp_on_the_tap_only():
    assert slirp.sysctls("qlu-1a2b3c4d-s", ["br2"]) == {
        "net.ipv4.conf.qlu-1a2b3c4d-s.forwarding": "1", "net.ipv4.conf.qlu-1a2b3c4d-s.proxy_arp": "1",
        "net.ipv4.conf.br2.forwarding": "1"}


def params(**changes):
    value = {"lab": "seed", "state": "present", "tap": "qlu-1a2b3c4d-s", "mtu": 65520, "host_loopback": False,
             "forward_from": ["br2"], "run_root": None, "userns_pid": 4242}
    value.update(changes)
    return value


@pytest.mark.parametrize("changes, start", [
    ({"lab": "../x"}, "lab: "),
    ({"tap": "tap;rm"}, "tap: "),
    ({"tap": "a-name-longer-than-15"}, "tap: "),
    ({"forward_from": ["br2", "br 3"]}, "forward_from[1]: "),
    ({"forward_from": ["qlu-1a2b3c4d-s"]}, "forward_from: qlu-1a2b3c4d-s is the tap itself"),
    ({"mtu": 67}, "mtu: 67 is not from 68 to 65521"),
    ({"mtu": 65522}, "mtu: 65522 is not from 68 to 65521"),
])
def test_bad_input_is_refused_before_anything_is_read(changes, start):
    assert module.check_params(params(**changes)).startswith(start)


def test_good_input_and_an_absent_with_only_the_lab_pass():
    assert module.check_params(params()) is None
    assert module.check_params(params(state="absent", tap=None, forward_from=[], userns_pid=None)) is None
    assert module.check_params(params(state="absent", lab="Bad Lab")).startswith("lab: ")
