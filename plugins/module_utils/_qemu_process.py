# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's QEMU process: its run directory, start, identification, state and stop, and the files written for it
(fingerprint, fw_cfg) atomically.

A pid is trusted only when its process is a QEMU whose -pidfile lies in the VM's run directory (libvirt's rule).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time

from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import vm_paths
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError, fingerprint
from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient, QMPError, query_status


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_atomic(path, text, mode=0o644, owner=None):
    """Write `text` to `path` through a temp file in the same directory and a rename: readers never see half.
    mkstemp's O_EXCL never follows a link planted in a directory an unprivileged QEMU owns; owner: (uid, gid)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), owner[0], owner[1])
        os.rename(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path, data, mode=0o644):
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True), mode)


def read_pid(pidfile):
    try:
        with open(pidfile) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except (OSError, IOError):
        return None


def process_status(pid, field):
    """The first number of a field of /proc/PID/status (Uid, VmRSS in KiB, ...), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, IOError, ValueError, IndexError):
        pass
    return None


def process_uid(pid):
    return process_status(pid, "Uid")


def is_our_qemu(pid, run_dir):
    """True only when `pid` is a QEMU whose -pidfile lies in `run_dir`, run by root or by the user who owns
    `run_dir` (an unprivileged QEMU's own directory): a reused PID, or a pidfile that user rewrote to point at
    someone else's process, is never trusted."""
    if not pid:
        return False
    try:
        allowed = set([0, os.stat(run_dir).st_uid])
    except OSError:
        return False
    if process_uid(pid) not in allowed:
        return False
    argv = proc_cmdline(pid)
    if not argv or "qemu" not in os.path.basename(argv[0]):
        return False
    try:
        pidfile = argv[argv.index("-pidfile") + 1]
    except (ValueError, IndexError):
        return False
    return os.path.dirname(os.path.abspath(pidfile)) == os.path.abspath(run_dir)


def process_uptime(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            host_uptime = float(f.read().split()[0])
    except (OSError, IOError, IndexError, ValueError):
        return None
    start_ticks = int(fields[19])
    return round(host_uptime - start_ticks / float(os.sysconf("SC_CLK_TCK")), 1)


def lab_run_dirs(run_root, lab):
    """[(name, run_dir)] of a lab's VMs: the directories qemu_vm made under run_root/lab (beside the lab's files)."""
    lab_dir = os.path.join(run_root, lab)
    names = sorted(os.listdir(lab_dir)) if os.path.isdir(lab_dir) else []
    return [(name, os.path.join(lab_dir, name)) for name in names if os.path.isdir(os.path.join(lab_dir, name))]


def read_state(run_dir):
    """What is actually there: {status, pid, stored} — status from QMP, pid only when it is our QEMU."""
    paths = vm_paths(run_dir)
    pid = read_pid(paths["pidfile"])
    ours = is_our_qemu(pid, run_dir)
    status = None
    if ours and os.path.exists(paths["qmp_socket"]):
        status = query_status(paths["qmp_socket"])
        if status is None:
            status = "unresponsive"
    stored = read_json(paths["fingerprint"]) or None
    return {"status": status or "not running", "pid": pid if ours else None, "stored": stored}


def _wait_gone(pid, run_dir, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not is_our_qemu(pid, run_dir):
            return True
        time.sleep(0.1)
    return not is_our_qemu(pid, run_dir)


def stop_vm(run_dir, stop_timeout):
    """Stop our QEMU: ACPI powerdown, bounded wait, QMP quit, then SIGTERM/SIGKILL; returns how it ended."""
    paths = vm_paths(run_dir)
    pid = read_pid(paths["pidfile"])
    if not is_our_qemu(pid, run_dir):
        return "not running"
    how = None
    if stop_timeout > 0:
        try:
            with QMPClient(paths["qmp_socket"], timeout=3) as qmp:
                qmp.command("system_powerdown")
        except QMPError:
            pass
        if _wait_gone(pid, run_dir, stop_timeout):
            how = "powerdown"
    if how is None:
        try:
            with QMPClient(paths["qmp_socket"], timeout=3) as qmp:
                qmp.command("quit")
        except QMPError:
            pass
        if _wait_gone(pid, run_dir, 5):
            how = "quit"
    for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL")):
        if how is not None:
            break
        if is_our_qemu(pid, run_dir):
            os.kill(pid, sig)
        if _wait_gone(pid, run_dir, 5):
            how = name
    for key in ("pidfile", "qmp_socket", "console_socket"):
        if os.path.exists(paths[key]):
            os.unlink(paths[key])
    return how or "still running"


def file_sha256(path):
    """Hex SHA-256 of a file's contents, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (OSError, IOError):
        return None


def fw_cfg_drift(config, contents):
    """{name: (old content or None, new content)} for the fw_cfg files whose contents differ from `contents`."""
    drift = {}
    for item in config.get("fw_cfg") or []:
        try:
            with open(item["file"]) as f:
                old = f.read()
        except (OSError, IOError):
            old = None
        if old != contents[item["name"]]:
            drift[item["name"]] = (old, contents[item["name"]])
    return drift


def write_fw_cfg(config, contents, names, user=None):
    """Write the fw_cfg files QEMU reads at boot, readable only by the user QEMU runs as."""
    owner = (user["uid"], user["gid"]) if user else None
    directory = os.path.join(config["run_dir"], "fw_cfg")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if owner is not None:
        _chown_dir(directory, owner)
    for item in config.get("fw_cfg") or []:
        if item["name"] in names:
            write_atomic(item["file"], contents[item["name"]], mode=0o600, owner=owner)


def _chown_dir(path, owner):
    """chown a directory we made, refusing to follow a link that replaced it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, owner[0], owner[1])
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def prepare_run_dir(run_dir, user=None):
    """The VM's run directory, 0700 and owned by the user QEMU runs as (root by default), without old sockets."""
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    _chown_dir(run_dir, (user["uid"], user["gid"]) if user else (0, 0))
    paths = vm_paths(run_dir)
    for key in ("pidfile", "qmp_socket", "console_socket"):
        if os.path.lexists(paths[key]):
            os.unlink(paths[key])


def launch(config, argv, pass_fds, user=None):
    """Start QEMU detached from us; wait until QMP answers; record the fingerprint. Returns the QEMU pid.

    QEMU's own -daemonize forks and calls setsid, which the sandbox (spawn=deny, elevateprivileges=deny) kills
    with SIGSYS in QEMU 7.2, so we detach it ourselves: new session, stdio to RUN/qemu.stderr. An unprivileged
    user is taken on before exec (QEMU's -runas would need the set*id calls the sandbox denies). umask 0177 makes
    its sockets and logs 0600 as they are created.
    """
    paths = vm_paths(config["run_dir"])
    stderr_path = os.path.join(config["run_dir"], "qemu.stderr")
    as_user = {}
    if user and user["uid"] != 0:
        as_user = dict(user=user["uid"], group=user["gid"], extra_groups=user["groups"])
    # O_NOFOLLOW: the directory may belong to the QEMU user, who could have left a link here.
    stderr_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(stderr_fd, "wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                pass_fds=tuple(pass_fds), close_fds=True, start_new_session=True,
                                cwd=config["run_dir"], umask=0o177, **as_user)
    deadline = time.time() + 60
    status = None
    while time.time() < deadline:
        if proc.poll() is not None:
            with open(stderr_path, "rb") as f:
                err = f.read().decode("utf-8", "replace").strip()
            raise QemuConfigError("VM %s: QEMU exited with %s: %s" % (config["name"], proc.returncode, err[-1000:]))
        if os.path.exists(paths["qmp_socket"]):
            status = query_status(paths["qmp_socket"])
            if status is not None:
                break
        time.sleep(0.05)
    if status is None:
        proc.kill()
        proc.wait()
        raise QemuConfigError("VM %s: QEMU did not answer on QMP within 60s; see %s" % (config["name"], paths["log"]))
    # Popen must not reap or kill it later: the VM outlives this process.
    proc.returncode = 0
    write_json_atomic(paths["fingerprint"], {"fingerprint": fingerprint(config), "config": config,
                                             "started_at": time.time()}, mode=0o600)
    return proc.pid
