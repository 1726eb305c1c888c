"""Unit tests (no mount made): the console log's limit as qemu_vm and the inventory read it, the mountinfo reading
that finds the console tmpfs again, and how the mount point is made and handed to mount(2)."""
import os
import stat

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _qemu_console as console
from ansible_collections.qemulab.network.plugins.module_utils import _validate as validate
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import (
    QemuConfigError,
    config_diff,
    fingerprint,
    normalise_config,
)
from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_schema as schema

pytestmark = pytest.mark.unit

KIB, MIB = 1024, 1024 * 1024


# -- the limit ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,size", [
    ("64K", 64 * KIB), ("256k", 256 * KIB), ("4M", 4 * MIB), ("4MiB", 4 * MIB), ("4mb", 4 * MIB), (" 16 M ", 16 * MIB),
    ("1G", 1024 * MIB), ("1GiB", 1024 * MIB), (65536, 64 * KIB), ("65536", 64 * KIB), (4 * MIB, 4 * MIB),
])
def test_a_limit_reads_as_bytes(value, size):
    assert validate.parse_console_log_limit(value) == size


@pytest.mark.parametrize("value,fragment", [
    ("63K", "below 64 KiB"), (4, "below 64 KiB"), ("4", "a bare number is bytes"), ("0M", "below 64 KiB"),
    ("2G", "over 1 GiB"), ("1025M", "over 1 GiB"), (10 ** 12, "over 1 GiB"),
    ("4 MB B", "is not a size"), ("4T", "is not a size"), ("-4M", "is not a size"), ("4.5M", "is not a size"),
    ("", "is not a size"), (True, "is not a size"), (None, "is not a size"), ([4], "is not a size"),
    ("4M; rm -rf /", "is not a size"),
])
def test_a_bad_limit_is_refused_with_the_fix(value, fragment):
    with pytest.raises(ValueError) as exc:
        validate.parse_console_log_limit(value)
    assert fragment in str(exc.value) and "; give " in str(exc.value) and "4M" in str(exc.value), exc.value


def test_qemu_vm_names_the_vm_and_the_field_and_defaults_to_4m():
    assert normalise_config(dict(name="rt1"))["console_log_limit"] == 4 * MIB
    assert normalise_config(dict(name="rt1", console_log_limit="256K"))["console_log_limit"] == 256 * KIB
    with pytest.raises(QemuConfigError, match=r"^VM rt1: console_log_limit: '8K' is below 64 KiB.*at least 64K"):
        normalise_config(dict(name="rt1", console_log_limit="8K"))


def test_a_changed_limit_changes_the_fingerprint_and_is_named_as_a_change():
    small, large = (normalise_config(dict(name="rt1", console_log_limit=v)) for v in ("1M", "8M"))
    assert fingerprint(small) != fingerprint(large)
    assert config_diff(small, large) == ({"console_log_limit": MIB}, {"console_log_limit": 8 * MIB})
    # the same size written two ways is the same configuration: no restart
    assert fingerprint(normalise_config(dict(name="rt1", console_log_limit="1M"))) == fingerprint(
        normalise_config(dict(name="rt1", console_log_limit=MIB)))


def test_the_inventory_field_reads_the_same_rule_and_defaults_to_what_qemu_vm_does():
    field = schema.field("lab", "lab_console_log_limit")
    assert field.read("16M") == ("16M", None)
    value, why = field.read("16K")
    assert value is None and "below 64 KiB" in why and ";" in why
    assert validate.parse_console_log_limit(field.default) == normalise_config(dict(name="x"))["console_log_limit"]


# -- mountinfo --------------------------------------------------------------------------------------------------------

MOUNTINFO = "\n".join([
    "22 27 0:21 / /proc rw,relatime - proc proc rw",
    "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
    "60 27 0:40 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,size=1024k",
    # a lab's two VMs, one of them with a space and a backslash in its run directory's path
    "61 60 0:41 / /run/qemulab/seed/rt1/console rw,nosuid,nodev,noexec shared:6 - tmpfs qemulab-console "
    "rw,size=4096k,nr_inodes=16,mode=700",
    r"62 60 0:42 / /run/qemulab/seed/my\040vm\134x/console rw,nosuid - tmpfs qemulab-console rw,size=64k",
    # the same source on another file system type, another lab, the lab directory itself, a sibling lab's prefix
    "63 60 0:43 / /run/qemulab/seed/rt2/console rw - ramfs qemulab-console rw",
    "64 60 0:44 / /run/qemulab/other/rt1/console rw - tmpfs qemulab-console rw",
    "65 60 0:45 / /run/qemulab/seed rw - tmpfs qemulab-console rw",
    "66 60 0:46 / /run/qemulab/seedx/rt1/console rw - tmpfs qemulab-console rw",
    # another tmpfs below the lab, not ours
    "67 60 0:47 / /run/qemulab/seed/rt3/console rw - tmpfs tmpfs rw",
    # stacked: a second console tmpfs over rt1's (newer, so first)
    "68 61 0:48 / /run/qemulab/seed/rt1/console rw - tmpfs qemulab-console rw",
    "garbage line",
    "",
])


def test_mountinfo_fields_and_escapes():
    mounts = console.parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 11
    by_id = dict((mount["id"], mount) for mount in mounts)
    assert by_id[61] == {"id": 61, "dev": (0, 41), "mount_point": "/run/qemulab/seed/rt1/console", "fstype": "tmpfs",
                         "source": "qemulab-console"}
    assert by_id[62]["mount_point"] == "/run/qemulab/seed/my vm\\x/console"
    assert by_id[27]["fstype"] == "ext4" and by_id[27]["source"] == "/dev/vda"


def test_only_console_tmpfs_strictly_below_the_directory_count_deepest_and_newest_first():
    def ids(under):
        return [mount["id"] for mount in console.console_mounts(under, MOUNTINFO)]
    # not ramfs (63), not lab other's (64) nor seedx's (66), not the lab directory itself (65), not a plain tmpfs (67)
    assert ids("/run/qemulab/seed") == ids("/run/qemulab/seed/") == [68, 62, 61]
    assert ids("/run/qemulab/seed/rt1") == [68, 61]
    assert ids("/run/qemulab/seed/rt1/console") == [] and ids("/run/qemulab/nolab") == []


# -- the mount point ------------------------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "seed" / "rt1"
    path.mkdir(parents=True)
    return str(path)


def _mount_point(run_dir):
    run_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = console._mount_point(run_fd, os.path.join(run_dir, "console"))
    finally:
        os.close(run_fd)
    try:
        return os.readlink("/proc/self/fd/%d" % fd), os.fstat(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("left", ["nothing", "link", "file", "open_dir", "root_dir"])
def test_the_mount_point_is_a_directory_only_root_writes_whatever_was_left(run_dir, tmp_path, left):
    where = os.path.join(run_dir, "console")
    outside = tmp_path / "outside"
    outside.mkdir()
    if left == "link":
        os.symlink(str(outside), where)
    elif left == "file":
        open(where, "w").close()
    elif left == "open_dir":
        os.mkdir(where)
        os.chmod(where, 0o777)  # anyone could move it out of the run directory before the mount
    elif left == "root_dir":
        os.mkdir(where, 0o700)
    path, st = _mount_point(run_dir)
    assert path == where and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022
    assert os.listdir(str(outside)) == [] and not os.path.islink(where)


def test_a_directory_with_something_in_it_is_left_for_a_person(run_dir):
    where = os.path.join(run_dir, "console")
    os.mkdir(where)
    os.chmod(where, 0o777)
    open(os.path.join(where, "keep"), "w").close()
    with pytest.raises(OSError) as exc:
        _mount_point(run_dir)
    assert exc.value.filename == where and "look at it and remove it" in exc.value.strerror
    assert os.listdir(where) == ["keep"]


def test_the_tmpfs_is_mounted_on_the_open_directory_with_the_limit_in_whole_pages(run_dir, monkeypatch):
    calls = []
    where = os.path.join(os.path.realpath(run_dir), "console")

    def fake_call(name, argtypes, *args):
        if name == "mount":
            calls.append((name, os.readlink(args[1].decode())) + args[:1] + args[2:])
        else:
            calls.append((name,) + args)
    # no mount is made here: the directory's own file system stands for the tmpfs that would be on it
    dev = os.stat(run_dir).st_dev
    mounted = "70 1 %d:%d / %s rw - tmpfs qemulab-console rw" % (os.major(dev), os.minor(dev), where)
    monkeypatch.setattr(console, "_call", fake_call)
    monkeypatch.setattr(console, "read_mountinfo", lambda: mounted if calls else "")
    log = console.mount_console(run_dir, 256 * KIB + 100, (65534, 65534))
    assert log == os.path.join(run_dir, "console", "console.log")
    assert calls == [("mount", where, b"qemulab-console", b"tmpfs", 0x2 | 0x4 | 0x8,
                      b"size=262144,nr_inodes=16,mode=0700,uid=65534,gid=65534")]


def test_a_hidden_mount_listed_under_the_same_path_is_not_taken_for_the_new_one(run_dir, monkeypatch):
    """A private namespace with its own tmpfs over /run still lists the host's console tmpfs under their old paths:
    one of them with this VM's path is neither released nor mistaken for the fresh mount."""
    where = os.path.join(os.path.realpath(run_dir), "console")
    dev = os.stat(run_dir).st_dev
    hidden = "60 1 0:4242 / %s rw - tmpfs qemulab-console rw" % where
    calls = []
    monkeypatch.setattr(console, "_call", lambda name, argtypes, *args: calls.append(name))
    monkeypatch.setattr(console, "read_mountinfo", lambda: hidden + (
        "\n70 1 %d:%d / %s rw - tmpfs qemulab-console rw" % (os.major(dev), os.minor(dev), where) if calls else ""))
    console.mount_console(run_dir, 4 * 1024 * 1024, (0, 0))
    assert calls == ["mount"]


def test_a_mount_that_did_not_land_on_the_console_directory_is_undone(run_dir, monkeypatch):
    renamed = os.path.join(os.path.realpath(run_dir), "elsewhere")
    os.mkdir(renamed)
    dev = os.stat(renamed).st_dev
    calls = []
    monkeypatch.setattr(console, "_call", lambda name, argtypes, *args: calls.append(name))
    # what a rename of the directory by its owner between open and mount would leave: the tmpfs on another name
    monkeypatch.setattr(console, "read_mountinfo", lambda: (
        "70 1 %d:%d / %s rw - tmpfs qemulab-console rw" % (os.major(dev), os.minor(dev), renamed)
        if calls == ["mount"] else ""))
    with pytest.raises(OSError) as exc:
        console.mount_console(run_dir, 4 * MIB, (0, 0))
    assert "renamed" in exc.value.strerror and calls == ["mount", "umount2"]
