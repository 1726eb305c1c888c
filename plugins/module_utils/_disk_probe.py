# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a VM's own root disk holds an SSH server, read from the file system image without mounting it.

A course image (Yocto `core-image-minimal`) often has no sshd: such a VM is configured through its serial console
(`vm_connection: console`). When the inventory does not say how to reach a VM on its own disk, the plan asks this:
e2fsprogs' `debugfs` opens the image read-only and looks the candidates up by path (a symlinked directory such as a
merged `/sbin` is followed; the last link is not, so a `dropbear` that is a link to `dropbearmulti` counts).
Nothing is mounted and nothing is written; an image that is not ext2/3/4 (qcow2, a partitioned disk) is "unknown".
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat
import subprocess

# OpenSSH and dropbear (Yocto's two `ssh-server-*` image features), where Debian and Yocto install them.
SSH_SERVERS = (
    "/usr/sbin/sshd",
    "/usr/sbin/dropbear",
    "/usr/sbin/dropbearmulti",
    "/usr/bin/dropbear",
    "/usr/bin/dropbearmulti",
    "/sbin/sshd",
    "/sbin/dropbear",
)


def _debugfs_stat(debugfs, image, path, run):
    """'present', 'absent' or 'unreadable' for one path (debugfs exits 0 either way: its output says which)."""
    # -c: no bitmaps read; -n: no metadata checksums checked - a disk a running guest writes to still reads
    proc = run([debugfs, "-c", "-n", "-R", "stat " + path, image])
    text = (proc.stdout or "") + (proc.stderr or "")
    if "Inode:" in text and "Type:" in text:
        return "present"
    if "File not found by ext2_lookup" in text:
        return "absent"
    return "unreadable"


def _run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def ssh_server(image, debugfs="debugfs", run=_run):
    """{"path", "ssh_server": True/False/None, "found": candidate or None, "reason"} for one root disk image."""
    result = {"path": image, "ssh_server": None, "found": None}
    try:
        info = os.stat(image)
    except OSError as exc:
        result["reason"] = "cannot be read on the lab host (%s)" % (exc.strerror or exc)
        return result
    if not stat.S_ISREG(info.st_mode):
        # a device or a pipe is never opened: only an image file is looked into
        result["reason"] = "is not a regular file"
        return result
    for candidate in SSH_SERVERS:
        try:
            seen = _debugfs_stat(debugfs, image, candidate, run)
        except (OSError, subprocess.SubprocessError) as exc:
            result["reason"] = "could not be read with debugfs (%s)" % exc
            return result
        if seen == "unreadable":
            result["reason"] = "is not an ext2/3/4 file system debugfs can read"
            return result
        if seen == "present":
            result.update(ssh_server=True, found=candidate, reason="has %s" % candidate)
            return result
    result.update(ssh_server=False, reason="has no SSH server (%s)" % ", ".join(SSH_SERVERS))
    return result


def ssh_servers(paths, debugfs):
    """{path: ssh_server(path)} for the disks the plan asks about; debugfs None (not installed) or a relative path
    gives "unknown" with the reason, and nothing is opened."""
    seen = {}
    for path in paths:
        if not path.startswith("/"):
            # the plan names the field and the fix; nothing relative is opened
            seen[path] = {"path": path, "ssh_server": None, "found": None, "reason": "is not an absolute path"}
        elif debugfs is None:
            seen[path] = {"path": path, "ssh_server": None, "found": None,
                          "reason": "could not be looked into: debugfs (e2fsprogs) is not installed"}
        else:
            seen[path] = ssh_server(path, debugfs=debugfs)
    return seen
