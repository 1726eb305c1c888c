"""Unit tests (no files made): the one place that decides where a lab's files live, for root and for a user."""
import os
import stat

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _netem, _ownership, _qemu_config, _qemu_host
from ansible_collections.qemulab.network.plugins.module_utils import _run_paths as run_paths
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_placement, _lab_rootless, _topology

pytestmark = pytest.mark.unit


def test_root_keeps_the_system_paths_whatever_the_environment():
    paths = run_paths.current(environ={"XDG_RUNTIME_DIR": "/run/user/0", "HOME": "/somewhere"}, euid=0)
    assert paths is run_paths.ROOT
    assert (paths.run, paths.cache, paths.state, paths.rootless) == (
        "/run/qemulab", "/var/cache/qemulab", "/var/lib/qemulab", False)
    assert (paths.netns_markers, paths.images, paths.debs, paths.accel_cache, paths.netem_cache) == (
        "/run/qemulab/_netns", "/var/cache/qemulab/images", "/var/cache/qemulab/debs",
        "/var/cache/qemulab/accel.json", "/var/cache/qemulab/netem.json")
    assert (paths.labs, paths.ssh_key, paths.jump, paths.lab_run("seed")) == (
        "/var/lib/qemulab/labs", "/var/lib/qemulab/ssh/id_ed25519", "/var/lib/qemulab/jump", "/run/qemulab/seed")
    assert run_paths.runtime_dir_problem(paths, euid=0) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the module constants are read as the suite's user; it runs as root")
def test_the_existing_constants_are_the_root_paths_byte_for_byte():
    assert _qemu_config.RUN_ROOT == "/run/qemulab"
    assert _ownership.NETNS_MARKER_DIR == "/run/qemulab/_netns"
    assert _qemu_host.ACCEL_CACHE == "/var/cache/qemulab/accel.json"
    assert _netem.NETEM_CACHE == "/var/cache/qemulab/netem.json"
    # the controller's view of a root lab host, and the controller's own files as root
    assert _lab_rootless.roots(None) is run_paths.ROOT
    assert (_topology.KEY_FILE, _topology.LABS_DIR) == ("/var/lib/qemulab/ssh/id_ed25519", "/var/lib/qemulab/labs")
    assert _lab_placement.JUMP_ROOT == "/var/lib/qemulab/jump"


def test_a_user_gets_their_runtime_dir_cache_and_data_dirs():
    paths = run_paths.roots(1000, "/home/ana", "/run/user/1000")
    assert paths.rootless
    assert (paths.run, paths.cache, paths.state) == (
        "/run/user/1000/qemulab", "/home/ana/.cache/qemulab", "/home/ana/.local/share/qemulab")
    assert paths.netns_markers == "/run/user/1000/qemulab/_netns"
    assert paths.images == "/home/ana/.cache/qemulab/images"
    assert paths.ssh_key == "/home/ana/.local/share/qemulab/ssh/id_ed25519"
    assert paths.lab_run("seed") == "/run/user/1000/qemulab/seed"


@pytest.mark.parametrize("runtime_dir", [None, "", "relative/dir"])
def test_a_user_without_a_usable_xdg_runtime_dir_gets_logind_s_place(runtime_dir):
    assert run_paths.roots(1000, "/home/ana", runtime_dir).run == "/run/user/1000/qemulab"


def test_current_reads_home_from_the_password_database_not_home_or_xdg_data(monkeypatch):
    class Entry:
        pw_dir = "/home/ana"
    monkeypatch.setattr(run_paths.pwd, "getpwuid", lambda uid: Entry)
    env = {"HOME": "/tmp/elsewhere", "XDG_CACHE_HOME": "/tmp/c", "XDG_DATA_HOME": "/tmp/d",
           "XDG_RUNTIME_DIR": "/tmp/rt"}
    paths = run_paths.current(environ=env, euid=1000)
    assert (paths.run, paths.cache, paths.state) == (
        "/tmp/rt/qemulab", "/home/ana/.cache/qemulab", "/home/ana/.local/share/qemulab")


def test_a_uid_without_a_passwd_entry_falls_back_to_home(monkeypatch):
    def missing(uid):
        raise KeyError(uid)
    monkeypatch.setattr(run_paths.pwd, "getpwuid", missing)
    assert run_paths.current(environ={"HOME": "/h"}, euid=4242).cache == "/h/.cache/qemulab"


def fake_lstat(mode, uid):
    class St:
        st_mode = mode
        st_uid = uid
    return lambda path: St


def test_runtime_dir_problem_accepts_a_private_dir_of_the_user():
    paths = run_paths.roots(1000, "/home/ana", "/run/user/1000")
    assert run_paths.runtime_dir_problem(paths, 1000, fake_lstat(stat.S_IFDIR | 0o700, 1000)) is None


@pytest.mark.parametrize("mode,uid,words", [
    (stat.S_IFDIR | 0o755, 1000, "mode 0700"),
    (stat.S_IFDIR | 0o700, 0, "owned by uid 1000"),
    (stat.S_IFLNK | 0o777, 1000, "must be a directory"),
])
def test_runtime_dir_problem_names_the_dir_and_the_fix(mode, uid, words):
    paths = run_paths.roots(1000, "/home/ana", "/run/user/1000")
    message = run_paths.runtime_dir_problem(paths, 1000, fake_lstat(mode, uid))
    assert "/run/user/1000" in message and words in message


def test_runtime_dir_problem_for_a_missing_dir_says_how_to_get_one(tmp_path):
    paths = run_paths.roots(1000, "/home/ana", str(tmp_path / "gone"))
    message = run_paths.runtime_dir_problem(paths, 1000)
    assert "does not exist" in message and "XDG_RUNTIME_DIR" in message and "enable-linger" in message
