"""Unit tests (no process started): how a rootless lab's namespace holder is recognised again, and what
lab_userns plans from its record."""
import json
import os

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _userns as userns
from ansible_collections.qemulab.network.plugins.modules import lab_userns

pytestmark = pytest.mark.unit

# field 22 (start time) is 777; the command name holds a space and a ")"
STAT = "4242 (py thon) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 777 1000 10 0"
ARGV = [b"/usr/bin/python3", b"-c", b"code", userns.MARK.encode(), b"seed", b""]


class St:
    def __init__(self, ino):
        self.st_dev, self.st_ino = 4, ino


def probes(stat_text=STAT, argv=ARGV, user=100, net=101):
    def read(path):
        if stat_text is None:
            raise FileNotFoundError(path)
        return stat_text
    return dict(read=read, argv=lambda pid: argv,
                stat=lambda path: St(user if path.endswith("/user") else net))


RECORD = {"lab": "seed", "pid": 4242, "start_time": 777, "userns": [4, 100], "netns": [4, 101]}


def test_start_time_is_field_22_even_with_spaces_and_parentheses_in_the_name():
    assert userns.start_time(4242, read=lambda path: STAT) == 777


def test_identity_of_a_holder_names_its_start_time_and_namespaces():
    assert userns.identity(4242, "seed", **probes()) == RECORD


def test_a_running_holder_is_recognised():
    assert userns.live_holder(dict(RECORD), "seed", **probes()) == RECORD


@pytest.mark.parametrize("what,changed_probes", [
    ("process gone", dict(stat_text=None)),
    ("pid recycled: another start time", dict(stat_text=STAT.replace(" 777 ", " 778 "))),
    ("pid recycled: another program", dict(argv=[b"/bin/sleep", b"600"])),
    ("the holder of another lab", dict(argv=ARGV[:4] + [b"other", b""])),
    ("other user namespace", dict(user=200)),
    ("other network namespace", dict(net=201)),
])
def test_anything_but_the_same_holder_is_not_taken_for_it(what, changed_probes):
    assert userns.live_holder(dict(RECORD), "seed", **probes(**changed_probes)) is None, what


def test_a_record_of_another_lab_is_not_taken():
    assert userns.live_holder(dict(RECORD, lab="other"), "seed", **probes()) is None


@pytest.mark.parametrize("content", ["", "not json", "[]", json.dumps({"pid": "4242"})])
def test_an_unreadable_record_counts_as_none(tmp_path, content):
    path = tmp_path / "seed.json"
    path.write_text(content)
    assert userns.read_record(str(path)) is None
    assert userns.read_record(str(tmp_path / "missing.json")) is None


def test_record_round_trip_is_private_and_removal_leaves_nothing(tmp_path):
    run_root = str(tmp_path / "qemulab")
    path = userns.record_path(run_root, "seed")
    assert path == os.path.join(run_root, "_userns", "seed.json")
    userns.write_record(path, RECORD)
    assert userns.read_record(path) == RECORD
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    userns.remove_record(path)
    assert os.listdir(run_root) == []
    userns.remove_record(path)  # twice is harmless


def test_removing_one_record_keeps_the_others(tmp_path):
    run_root = str(tmp_path)
    userns.write_record(userns.record_path(run_root, "a"), RECORD)
    userns.write_record(userns.record_path(run_root, "b"), RECORD)
    userns.remove_record(userns.record_path(run_root, "a"))
    assert os.listdir(os.path.join(run_root, "_userns")) == ["b.json"]


def test_the_holder_is_entered_as_the_same_user():
    assert userns.enter_command(4242) == ["nsenter", "--preserve-credentials", "-U", "-n", "-t", "4242"]


@pytest.mark.parametrize("record,live,state,expected", [
    (None, None, "present", (True, False, False)),          # start
    (RECORD, RECORD, "present", (False, False, False)),     # running: no change
    (RECORD, None, "present", (True, False, True)),         # stale record: replace
    (RECORD, RECORD, "absent", (False, True, True)),        # end it
    (RECORD, None, "absent", (False, False, True)),         # stale record: drop only, signal nothing
    (None, None, "absent", (False, False, False)),          # nothing there
])
def test_plan(record, live, state, expected):
    assert lab_userns.plan(record, live, state) == expected


def test_the_holder_program_compiles_and_checks_what_it_needs():
    compile(userns.HOLDER, "holder", "exec")
    assert "uid_map" in userns.HOLDER and "setgroups" in userns.HOLDER and "ready" in userns.HOLDER
