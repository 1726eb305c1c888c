# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's QEMU process: its run directory, start, identification, state and stop, and the files written for it
(fingerprint, fw_cfg) atomically.

A pid is trusted only when its process is a QEMU whose -pidfile (or working directory) is the VM's run directory
(libvirt's rule), and the pidfile is only a hint: find_qemus searches /proc. The run directory may belong to an
unprivileged QEMU user who can swap any name in it for a link at any moment, so root touches what is inside only
through directory fds, O_NOFOLLOW and O_EXCL, reads regular files only and only up to a bound, and talks QMP only
to a socket whose peer (SO_PEERCRED) is the VM's QEMU.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import time

from ansible_collections.qemulab.network.plugins.module_utils._netlink_holder import exec_inside
from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import vm_paths
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError, fingerprint
from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient, QMPError, query_status

# Largest file root reads from a VM's run directory, per kind: what is there may be anything its owner (an
# unprivileged QEMU user) put there, including a link to /dev/zero or a FIFO.
MAX_PIDFILE = 64
MAX_JSON = 4 * 1024 * 1024
MAX_FW_CFG = 4 * 1024 * 1024
STDERR_TAIL = 4096
# QEMU writes these into its run directory; root removes them before a start (they may be links its owner left).
# The console log is not among them: it lies on its own tmpfs, mounted fresh for every start (_qemu_console).
QEMU_WRITES = ("pidfile", "qmp_socket", "console_socket", "log")
# The console log's place before it got its own tmpfs: a VM started by an older qemu_vm may have left a large one.
OLD_CONSOLE_LOG = "console.log"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(path, dir_fd=None):
    """An fd of the directory `path`, never through a link in its last component."""
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


def read_file_at(dir_fd, name, limit, owner=None):
    """The bytes of the regular file `name` in `dir_fd`, or None when it is a link, not a regular file (a FIFO, a
    device), larger than `limit`, not owned by `owner` (a uid, when given) or unreadable."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (owner is not None and st.st_uid != owner) or st.st_size > limit:
            return None
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks) if size <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)


def read_file(path, limit, owner=None):
    """read_file_at for a path: its directory is opened without following a link in its last component."""
    directory, name = os.path.split(path)
    try:
        dir_fd = open_dir(directory or ".")
    except OSError:
        return None
    try:
        return read_file_at(dir_fd, name, limit, owner)
    finally:
        os.close(dir_fd)


def read_json(path, owner=None, limit=MAX_JSON):
    """A JSON object from a file (read_file's rules), or {}."""
    data = read_file(path, limit, owner)
    try:
        value = json.loads(data.decode("utf-8")) if data is not None else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _unlink_at(dir_fd, name):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def write_at(dir_fd, name, data, mode=0o644, owner=None):
    """Write `data` (bytes) as `name` in `dir_fd` through a new temp file (O_EXCL, never a link) and a rename in the
    same directory: readers never see half, and no existing file (or what a link points at) is ever written."""
    for _attempt in range(100):
        tmp = ".tmp-%s" % os.urandom(8).hex()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(errno.EEXIST, "no free temporary name", name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), owner[0], owner[1])
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except Exception:
        try:
            _unlink_at(dir_fd, tmp)
        except OSError:
            pass
        raise


def write_atomic(path, text, mode=0o644, owner=None):
    """Write `text` to `path` atomically (write_at) in its directory, made if missing; owner: (uid, gid)."""
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    dir_fd = open_dir(directory)
    try:
        write_at(dir_fd, name, text.encode("utf-8"), mode, owner)
    finally:
        os.close(dir_fd)


def write_json_atomic(path, data, mode=0o644):
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True), mode)


def read_pid(pidfile):
    """The pid a pidfile names, or None; the file is read by read_file's rules (its owner may have rewritten it)."""
    data = read_file(pidfile, MAX_PIDFILE)
    if data is None:
        return None
    try:
        return int(data.decode("ascii").strip() or 0) or None
    except (UnicodeDecodeError, ValueError):
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
    allowed = _allowed_uids(run_dir)
    if not pid or not allowed or process_uid(pid) not in allowed:
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


def _allowed_uids(run_dir):
    try:
        return set([0, os.stat(run_dir).st_uid])
    except OSError:
        return None


def _runs_from(pid, run_dir, allowed):
    """True when `pid` runs as an allowed user, its executable is a QEMU and its working directory is `run_dir`
    (launch starts QEMU there): a second identity that does not depend on the command line."""
    try:
        if os.readlink("/proc/%d/cwd" % pid) != os.path.abspath(run_dir):
            return False
        exe = os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return False
    return "qemu" in os.path.basename(exe) and process_uid(pid) in allowed


def belongs_to(pid, run_dir):
    """True when `pid` is a QEMU of `run_dir` by its command line (is_our_qemu) or by its executable and working
    directory, run by root or by the directory's owner."""
    allowed = _allowed_uids(run_dir)
    return bool(pid and allowed and (is_our_qemu(pid, run_dir) or _runs_from(pid, run_dir, allowed)))


def find_qemus(run_dir):
    """Sorted PIDs of the QEMUs of `run_dir`, the pidfile's first. The pidfile lies in a directory an unprivileged
    QEMU user owns, so it is only a hint: /proc is searched too, for processes whose command line names the run
    directory's pidfile or whose working directory is the run directory (belongs_to)."""
    allowed = _allowed_uids(run_dir)
    if not allowed:
        return []
    needle = os.path.abspath(run_dir).encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                named = needle in f.read()
        except OSError:
            continue
        if (named and is_our_qemu(pid, run_dir)) or _runs_from(pid, run_dir, allowed):
            found.add(pid)
    hint = read_pid(vm_paths(run_dir)["pidfile"])
    first = [hint] if hint in found else []
    return first + sorted(found - set(first))


def read_state(run_dir):
    """What is actually there: {status, pid, stored} — status from QMP (only when the socket is served by one of the
    VM's QEMUs), pid only when it is our QEMU (find_qemus: a rewritten pidfile hides nothing), stored only when
    root wrote it."""
    paths = vm_paths(run_dir)
    pids = find_qemus(run_dir)
    pid = pids[0] if pids else None
    status = None
    if pid:
        status = query_status(paths["qmp_socket"], peer_check=_served_by(pids)) or "unresponsive"
    stored = read_json(paths["fingerprint"], owner=os.geteuid()) or None
    return {"status": status or "not running", "pid": pid, "stored": stored}


def _served_by(pids):
    """A QMPClient peer_check accepting only these processes: qmp.sock may be a link its owner swapped in."""
    return lambda pid, uid, gid: pid in pids


def _wait_gone(pids, run_dir, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(belongs_to(pid, run_dir) for pid in pids):
            return True
        time.sleep(0.1)
    return not any(belongs_to(pid, run_dir) for pid in pids)


def _qmp_command(paths, pids, name):
    try:
        with QMPClient(paths["qmp_socket"], timeout=3, peer_check=_served_by(pids)) as qmp:
            qmp.command(name)
    except QMPError:
        pass


def stop_vm(run_dir, stop_timeout):
    """Stop our QEMU(s): ACPI powerdown, bounded wait, QMP quit, then SIGTERM/SIGKILL; returns how it ended.
    They are found by find_qemus, so a pidfile rewritten by the QEMU user cannot make this report "not running"."""
    paths = vm_paths(run_dir)
    pids = find_qemus(run_dir)
    if not pids:
        return "not running"
    how = None
    if stop_timeout > 0:
        _qmp_command(paths, pids, "system_powerdown")
        if _wait_gone(pids, run_dir, stop_timeout):
            how = "powerdown"
    if how is None:
        _qmp_command(paths, pids, "quit")
        if _wait_gone(pids, run_dir, 5):
            how = "quit"
    for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL")):
        if how is not None:
            break
        for pid in pids:
            if belongs_to(pid, run_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if _wait_gone(pids, run_dir, 5):
            how = name
    _remove_qemu_files(run_dir, ("pidfile", "qmp_socket", "console_socket"))
    return how or "still running"


def _remove_qemu_files(run_dir, keys, names=()):
    """Unlink QEMU's files in its run directory (through a directory fd: a link is removed, never followed)."""
    try:
        dir_fd = open_dir(run_dir)
    except OSError:
        return
    try:
        for name in [os.path.basename(vm_paths(run_dir)[key]) for key in keys] + list(names):
            _unlink_at(dir_fd, name)
    finally:
        os.close(dir_fd)


def file_sha256(path, limit=MAX_FW_CFG):
    """Hex SHA-256 of a file's contents (read_file's rules), or None when it cannot be read."""
    data = read_file(path, limit)
    return hashlib.sha256(data).hexdigest() if data is not None else None


def fw_cfg_drift(config, contents):
    """{name: (old content or None, new content)} for the fw_cfg files whose contents differ from `contents`."""
    drift = {}
    for item in config.get("fw_cfg") or []:
        data = read_file(item["file"], MAX_FW_CFG)
        try:
            old = data.decode("utf-8") if data is not None else None
        except UnicodeDecodeError:
            old = None
        if old != contents[item["name"]]:
            drift[item["name"]] = (old, contents[item["name"]])
    return drift


def open_subdir(dir_fd, name, flags=_DIR_FLAGS, accept=None, remove=None):
    """An fd (opened with `flags`, which hold O_NOFOLLOW and O_DIRECTORY) of directory `name` in `dir_fd`, made 0700
    if missing. A link or file under that name, or a directory `accept(fd)` refuses, is removed (remove(dir_fd,
    name); never followed) and the directory made anew."""
    remove = remove or _unlink_at
    for _attempt in range(10):
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                raise
            remove(dir_fd, name)
            continue
        if accept is None or accept(fd):
            return fd
        os.close(fd)
        remove(dir_fd, name)
    raise OSError(errno.EAGAIN, "kept changing under us", name)


def _private_subdir(dir_fd, name, owner):
    """An fd of directory `name` in `dir_fd`, 0700 and owned by `owner`; a link or file its owner left under that
    name is removed (never followed) and the directory made anew."""
    fd = open_subdir(dir_fd, name)
    try:
        os.fchown(fd, owner[0], owner[1])
        os.fchmod(fd, 0o700)
    except Exception:
        os.close(fd)
        raise
    return fd


def write_fw_cfg(config, contents, names, user=None):
    """Write the fw_cfg files QEMU reads at boot, readable only by the user QEMU runs as. Everything happens through
    directory fds opened without following links: the run directory may belong to that user, who may swap any
    name in it for a link at any moment."""
    owner = (user["uid"], user["gid"]) if user else (os.geteuid(), os.getegid())
    fw_cfg_dir = os.path.join(config["run_dir"], "fw_cfg")
    run_fd = open_dir(config["run_dir"])
    try:
        fw_fd = _private_subdir(run_fd, "fw_cfg", owner)
        try:
            for item in config.get("fw_cfg") or []:
                if item["name"] not in names:
                    continue
                directory, name = os.path.split(item["file"])
                if os.path.normpath(directory) != fw_cfg_dir:
                    raise QemuConfigError("VM %s: fw_cfg %s: file %s is not in %s"
                                          % (config["name"], item["name"], item["file"], fw_cfg_dir))
                write_at(fw_fd, name, contents[item["name"]].encode("utf-8"), 0o600, owner)
        finally:
            os.close(fw_fd)
    finally:
        os.close(run_fd)


def _chown_dir(path, owner):
    """chown a directory we made, refusing to follow a link that replaced it."""
    fd = open_dir(path)
    try:
        os.fchown(fd, owner[0], owner[1])
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def prepare_run_dir(run_dir, user=None):
    """The VM's run directory, 0700 and owned by the user QEMU runs as (root by default), without the files an
    earlier QEMU (or that directory's owner) left where QEMU writes."""
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    _chown_dir(run_dir, (user["uid"], user["gid"]) if user else (0, 0))
    _remove_qemu_files(run_dir, QEMU_WRITES, (OLD_CONSOLE_LOG,))


def _create_stderr(run_dir, owner):
    """A new qemu.stderr in the run directory, created (O_EXCL, never through a link) and owned by `owner`."""
    dir_fd = open_dir(run_dir)
    try:
        for _attempt in range(10):
            _unlink_at(dir_fd, "qemu.stderr")
            try:
                fd = os.open("qemu.stderr", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600, dir_fd=dir_fd)
            except FileExistsError:
                continue
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            return fd
        raise OSError(errno.EEXIST, "kept reappearing", os.path.join(run_dir, "qemu.stderr"))
    finally:
        os.close(dir_fd)


def _tail(fd, size):
    """The last `size` bytes written to an open file: QEMU's stderr is read through the fd it was given, never by
    path again."""
    try:
        end = os.fstat(fd).st_size
        return os.pread(fd, size, max(0, end - size))
    except OSError:
        return b""


def launch(config, argv, pass_fds, user=None, holder=None):
    """Start QEMU detached from us; wait until QMP answers; record the fingerprint. Returns the QEMU pid.

    QEMU's own -daemonize forks and calls setsid, which the sandbox (spawn=deny, elevateprivileges=deny) kills
    with SIGSYS in QEMU 7.2, so we detach it ourselves: new session, stdio to RUN/qemu.stderr. An unprivileged
    user is taken on before exec (QEMU's -runas would need the set*id calls the sandbox denies). umask 0177 makes
    its sockets and logs 0600 as they are created. With `holder` (a rootless lab's HolderNamespace) a helper joins
    its user and network namespace and execs QEMU there (the same pid), as the user who runs this.
    """
    paths = vm_paths(config["run_dir"])
    as_user = {}
    if user and user["uid"] not in (0, os.geteuid()):
        as_user = dict(user=user["uid"], group=user["gid"], extra_groups=user["groups"])
    stderr_fd = _create_stderr(config["run_dir"], (user["uid"], user["gid"]) if as_user else None)
    start = argv
    if holder is not None:
        start, holder_fds = exec_inside(holder, argv)
        pass_fds = list(pass_fds) + list(holder_fds)
    try:
        proc = subprocess.Popen(start, stdin=subprocess.DEVNULL, stdout=stderr_fd, stderr=stderr_fd,
                                pass_fds=tuple(pass_fds), close_fds=True, start_new_session=True,
                                cwd=config["run_dir"], umask=0o177, **as_user)
        served_by_it = _served_by((proc.pid,))
        deadline = time.time() + 60
        status = None
        while time.time() < deadline:
            if proc.poll() is not None:
                err = _tail(stderr_fd, STDERR_TAIL).decode("utf-8", "replace").strip()
                raise QemuConfigError("VM %s: QEMU exited with %s: %s"
                                      % (config["name"], proc.returncode, err[-1000:]))
            if os.path.exists(paths["qmp_socket"]):
                status = query_status(paths["qmp_socket"], peer_check=served_by_it)
                if status is not None:
                    break
            time.sleep(0.05)
    finally:
        os.close(stderr_fd)
    if status is None:
        proc.kill()
        proc.wait()
        raise QemuConfigError("VM %s: QEMU did not answer on QMP within 60s; see %s" % (config["name"], paths["log"]))
    # Popen must not reap or kill it later: the VM outlives this process.
    proc.returncode = 0
    write_json_atomic(paths["fingerprint"], {"fingerprint": fingerprint(config), "config": config,
                                             "started_at": time.time()}, mode=0o600)
    return proc.pid
