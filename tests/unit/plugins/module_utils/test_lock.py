"""Unit tests (real processes and flock, no network): the lab run lock and its holder."""
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _lock

pytestmark = pytest.mark.unit


def _run_stand_in():
    """A process standing in for ansible-playbook: the lock lives as long as it does."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_second_taker_waits_then_fails_naming_the_holder(tmp_path):
    path = str(tmp_path / "lab.lock")
    first, second = _run_stand_in(), _run_stand_in()
    try:
        assert _lock.take_run_lock(path, first.pid, 5) is None
        started = time.monotonic()
        holder = _lock.take_run_lock(path, second.pid, 1)
        assert time.monotonic() - started >= 1
        assert holder.startswith("ansible-playbook pid %d since " % first.pid)
    finally:
        first.kill()
        second.kill()
        first.wait()
        second.wait()


def test_lock_is_released_when_the_run_is_killed(tmp_path):
    path = str(tmp_path / "lab.lock")
    first, second = _run_stand_in(), _run_stand_in()
    try:
        assert _lock.take_run_lock(path, first.pid, 5) is None
        first.kill()
        first.wait()
        started = time.monotonic()
        assert _lock.take_run_lock(path, second.pid, 10) is None
        assert time.monotonic() - started < 3
    finally:
        second.kill()
        second.wait()
    deadline = time.monotonic() + 5
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(path), "the last holder did not remove the lock file"


def test_dead_or_unknown_process_cannot_take_the_lock(tmp_path):
    gone = _run_stand_in()
    gone.kill()
    gone.wait()
    assert "not running" in _lock.take_run_lock(str(tmp_path / "lab.lock"), gone.pid, 1)
    assert _lock.process_start_time(gone.pid) is None
