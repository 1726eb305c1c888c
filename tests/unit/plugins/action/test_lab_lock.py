"""Unit tests: which lock the lab_lock action takes - only a lab name that passes the name rule becomes a path, and
the timeout is read as the lab plan reads lab_lock_timeout; anything else locks nothing (the plan reports it)."""
import os

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _run_paths
from ansible_collections.qemulab.network.plugins.action.lab_lock import lock_path, read_timeout

pytestmark = pytest.mark.unit


def args(**given):
    return dict({"path": None, "lab": None, "run_root": "/run/qemulab"}, **given)


@pytest.mark.skipif(os.geteuid() != 0, reason="without run_root the lock is the controller user's; the suite runs as root")
def test_without_run_root_root_locks_under_run_qemulab_as_always():
    assert lock_path(args(lab="seed", run_root=None)) == ("/run/qemulab/seed.lock", None)


def test_a_valid_lab_name_locks_beside_the_run_directories():
    assert lock_path(args(lab="seed")) == ("/run/qemulab/seed.lock", None)
    assert lock_path(args(lab="seed", run_root="/run/elsewhere")) == ("/run/elsewhere/seed.lock", None)
    assert lock_path(args(path="/tmp/x.lock")) == ("/tmp/x.lock", None)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "Seed", "a" * 16, "-x", "x$(id)"])
def test_a_name_that_breaks_the_rule_locks_nothing(name):
    path, why = lock_path(args(lab=name))
    assert path is None and why.startswith("lab name %r: " % name)


@pytest.mark.parametrize("value,seconds", [(600, 600), ("30", 30), (0, 0), (86400, 86400), ("ten", None),
                                           (-1, None), (86401, None), (True, None), ("\u00b3", None)])
def test_timeout_is_read_as_the_plan_reads_lab_lock_timeout(value, seconds):
    read, why = read_timeout(value)
    assert read == seconds and (why is None) == (seconds is not None)


def test_without_run_root_a_user_locks_in_their_own_run_root(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    # the runtime directory is this process's own, mode 0700, as logind makes it
    paths = _run_paths.roots(1000, "/home/ana", str(runtime))
    assert lock_path(args(lab="seed", run_root=None), paths) == (str(runtime / "qemulab" / "seed.lock"), None)


def test_a_user_whose_runtime_directory_is_missing_locks_nothing_and_is_told_the_fix():
    paths = _run_paths.roots(1000, "/home/ana", "/nonexistent/runtime")
    path, why = lock_path(args(lab="seed", run_root=None), paths)
    assert path is None and why.startswith("the runtime directory /nonexistent/runtime does not exist")
    # an explicit run_root is taken as given
    assert lock_path(args(lab="seed", run_root="/run/elsewhere"), paths) == ("/run/elsewhere/seed.lock", None)
