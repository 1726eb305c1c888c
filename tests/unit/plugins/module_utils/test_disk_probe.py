"""Unit tests: _disk_probe finds an SSH server in an ext4 image without mounting it (real mke2fs/debugfs images,
no kernel), keeps "unknown" for what it cannot read and never opens what is not a regular file."""
import os
import shutil
import subprocess

import pytest

from ansible_collections.qemulab.network.plugins.module_utils._disk_probe import SSH_SERVERS, ssh_server

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(not (shutil.which("mke2fs") or os.path.exists("/sbin/mke2fs"))
                                 or not (shutil.which("debugfs") or os.path.exists("/sbin/debugfs")),
                                 reason="e2fsprogs (mke2fs, debugfs) is not installed")]

DEBUGFS = shutil.which("debugfs") or "/sbin/debugfs"


def image(tmp_path, files=(), links=()):
    """An 8 MiB ext4 made by mke2fs -d from a tree with `files` (paths) and `links` ((path, target))."""
    root = tmp_path / "root"
    root.mkdir()
    for path in files:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\n")
    for path, to in links:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(to, str(target))
    disk = str(tmp_path / "disk.ext4")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root), disk, "8M"], check=True,
                   env=dict(os.environ, PATH=os.environ.get("PATH", "") + ":/sbin:/usr/sbin"))
    return disk


def test_openssh_is_found(tmp_path):
    seen = ssh_server(image(tmp_path, files=["/usr/sbin/sshd", "/bin/busybox"]), debugfs=DEBUGFS)
    assert seen["ssh_server"] is True and seen["found"] == "/usr/sbin/sshd", seen


def test_a_dropbear_link_under_a_merged_sbin_is_found(tmp_path):
    # Yocto: /usr/sbin/dropbear -> dropbearmulti; merged /usr: /sbin -> usr/sbin
    disk = image(tmp_path, files=["/usr/sbin/dropbearmulti"],
                 links=[("/usr/sbin/dropbear", "dropbearmulti"), ("/sbin", "usr/sbin")])
    seen = ssh_server(disk, debugfs=DEBUGFS)
    assert seen["ssh_server"] is True and seen["found"] == "/usr/sbin/dropbear", seen


def test_a_busybox_image_has_none(tmp_path):
    disk = image(tmp_path, files=["/bin/busybox", "/sbin/init", "/usr/bin/ssh"])
    seen = ssh_server(disk, debugfs=DEBUGFS)
    assert seen["ssh_server"] is False and seen["found"] is None
    assert all(path in seen["reason"] for path in SSH_SERVERS), seen


def test_what_is_not_ext4_is_unknown(tmp_path):
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb" + b"\0" * 65536)
    seen = ssh_server(str(disk), debugfs=DEBUGFS)
    assert seen["ssh_server"] is None and "ext2/3/4" in seen["reason"], seen


def test_a_missing_file_is_unknown(tmp_path):
    seen = ssh_server(str(tmp_path / "nothing.ext4"), debugfs=DEBUGFS)
    assert seen["ssh_server"] is None and "cannot be read" in seen["reason"], seen


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_what_is_not_a_regular_file_is_never_opened(tmp_path, kind):
    path = str(tmp_path / kind)
    if kind == "fifo":
        os.mkfifo(path)  # debugfs would block opening it
    else:
        os.mkdir(path)

    def run(argv):
        raise AssertionError("debugfs ran on %s" % argv)

    seen = ssh_server(path, debugfs=DEBUGFS, run=run)
    assert seen["ssh_server"] is None and seen["reason"] == "is not a regular file", seen
