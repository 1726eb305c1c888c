"""The unprivileged QEMU user (lab_qemu_user, qemu_vm's run_as) plays the attacker against root's qemu_vm.

A real QEMU runs as nobody; its run directory is nobody's. A helper process running as nobody plants links in that
directory and then swaps each name root uses (fw_cfg, the fw_cfg file, qemu.pid, fingerprint.json, qemu.stderr,
qmp.sock, console - the console log's mount point) for a link in a loop: to a directory of root's (standing for
/etc/network), to a root-only secret, to /dev/zero, to a FIFO and to another process's socket. Meanwhile root runs
qemu_vm's own task (start, fw_cfg updates, restarts) and qemu_vm_info over and over. Nothing outside the VM's
directory may be created, changed, read or mounted on (file atimes on a strictatime tmpfs; /proc/self/mountinfo),
the other socket gets no byte, no output carries the secret, and no call blocks or runs out of memory. A second
case swaps only `console` while root restarts the VM again and again, so every call mounts the console log's tmpfs
during the swapping. Then the helper forges the pidfile, and qemu_vm state=absent must still stop that QEMU.

Each case runs this file as a child under `unshare -m --propagation private`, with tmpfs over /run and
/var/lib/qemulab and a read-only view of /, so whatever escapes hits a canary or a read-only root; the child ends by
pid every process it started. No network namespace or address is needed: the VM has no NICs.
"""
import hashlib
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
VENV_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")

pytestmark = pytest.mark.integration

LAB, VM = "atk", "vm"
RUN_DIR = "/run/qemulab/%s/%s" % (LAB, VM)
SECRET = "/var/lib/qemulab/secret/token"
ETC_DIR = "/var/lib/qemulab/etc-network"
FIFO = "/var/lib/qemulab/fifo"
DECOY = "/var/lib/qemulab/other-vm/qmp.sock"
# A directory outside the VM's, standing for any the QEMU user would like root to mount something on.
OUTSIDE_DIR = "/var/lib/qemulab/outside"
# The names root uses in the run directory, and what the QEMU user swaps in for each.
CONSOLE_SWAP = ("console", [OUTSIDE_DIR, "/run"])
SWAPS = [("fw_cfg", [ETC_DIR]),
         ("fw_cfg/qemulab_interfaces", [SECRET, ETC_DIR + "/interfaces"]),
         ("qemu.pid", ["/dev/zero", SECRET, FIFO]),
         ("fingerprint.json", [SECRET, "/dev/zero", FIFO]),
         ("qemu.stderr", [SECRET, "/dev/zero"]),
         ("qmp.sock", [DECOY]),
         CONSOLE_SWAP]
# A read of /dev/zero by the old code stops here (MemoryError) instead of eating the host; QEMU fits well within.
ADDRESS_SPACE = 3 << 30
# Longer than qemu_vm's own bounded waits (60 s for QMP at start, ~10 s to stop): only a read that would never
# return (a FIFO) or never end (/dev/zero) hits it.
CALL_TIMEOUT = 80

# The QEMU user's helper: plain python3, run as nobody. plant: put every link in place once; swap SECONDS: swap
# each name for a link and back, in a loop; forge: rewrite the pidfile.
HELPER = r'''
import os, sys, time
mode, run_dir, swaps = sys.argv[1], sys.argv[2], __import__("json").loads(sys.argv[3])
os.chdir(run_dir)
def link(name, target):
    tmp = name + ".lnk"
    try:
        os.unlink(tmp)
    except OSError:
        pass
    os.symlink(target, tmp)
    os.rename(tmp, name)
if mode == "plant":
    for name, targets in swaps:
        if "/" not in name:
            link(name, targets[0])
elif mode == "swap":
    end, n = time.time() + float(sys.argv[4]), 0
    while time.time() < end:
        for name, targets in swaps:
            target = targets[n % len(targets)]
            try:
                os.unlink(name + ".real")
            except OSError:
                pass
            try:  # a file or socket keeps its name all along (a hard link aside, then renamed back over the link)
                os.link(name, name + ".real", follow_symlinks=False) if name not in ("fw_cfg", "console") else \
                    os.rename(name, name + ".real")
                moved = True
            except OSError:
                moved = False
            try:
                link(name, target)
                time.sleep(0.0005)
                if moved:
                    os.rename(name + ".real", name)
                else:
                    os.unlink(name)
            except OSError:
                pass
        n += 1
    print(n)
elif mode == "forge":
    with open("qemu.pid.new", "w") as f:
        f.write("1\n")
    os.rename("qemu.pid.new", "qemu.pid")
'''


# -- the child, inside the private mount namespace ---------------------------------------------------------------

class Blocked(Exception):
    pass


def _alarm(signum, frame):
    raise Blocked("blocked for %ss" % CALL_TIMEOUT)


def _snapshot(roots, skip):
    """{path: (kind, size, mtime_ns, atime_ns, sha256)} of everything under roots but `skip` (the VM's directory)."""
    found = {}
    for root in roots:
        for base, dirs, files in os.walk(root):
            if base == skip or base.startswith(skip + "/"):
                dirs[:] = []
                continue
            for name in dirs + files:
                path = os.path.join(base, name)
                if path == skip:
                    continue
                st = os.lstat(path)
                digest = None
                if stat.S_ISREG(st.st_mode):
                    digest = st.st_size  # hashed by _hashes, after the atimes are read
                found[path] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_atime_ns, digest)
    return found


def _hashes(paths):
    out = {}
    for path in paths:
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def _decoy(received):
    """Another VM's QMP socket (root's): greets, and records every byte anyone sends it."""
    os.makedirs(os.path.dirname(DECOY), mode=0o700)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(DECOY)
    server.listen(16)

    def serve():
        while True:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(2)
                try:
                    conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
                    while True:
                        data = conn.recv(4096)
                        if not data:
                            break
                        received.append(data.decode("utf-8", "replace"))
                        conn.sendall(b'{"return": {"status": "running"}}\r\n')
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()


def _canaries(token):
    os.makedirs(os.path.dirname(SECRET), mode=0o700)
    with open(SECRET, "w") as f:
        f.write("%s\n" % token)
    os.chmod(SECRET, 0o600)
    os.makedirs(ETC_DIR)
    with open(ETC_DIR + "/interfaces", "w") as f:
        f.write("auto lo\niface lo inet loopback\n")
    # root-only like /etc/shadow: a QEMU following a link as nobody cannot read it, so any read of it is root's
    os.chmod(ETC_DIR + "/interfaces", 0o600)
    with open("/run/canary", "w") as f:
        f.write("the host's /run as this case sees it\n")
    os.mkfifo(FIFO, 0o600)
    os.makedirs(OUTSIDE_DIR)


def _mounts():
    """{(mount point, source)} of this namespace's mounts."""
    with open("/proc/self/mountinfo") as f:
        return set((fields[4], fields[fields.index("-", 6) + 2]) for fields in (line.split() for line in f))


def _params(guest, state, content):
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QEMU_VM_ARGUMENT_SPEC

    checked = ArgumentSpecValidator(QEMU_VM_ARGUMENT_SPEC).validate({
        "name": VM, "lab": LAB, "state": state, "run_as": "nobody", "accelerator": "tcg", "memory": "128M",
        "tb_size": 32, "kernel": guest["kernel"], "initrd": guest["initrd"], "append": "console=ttyS0",
        "stop_timeout": 0, "fw_cfg": [{"name": "opt/qemulab/interfaces", "content": content}]})
    assert not checked.error_messages, checked.error_messages
    return checked.validated_parameters


class Root(object):
    """Root's side: qemu_vm's task and qemu_vm_info, each call bounded in time; what they said, kept."""

    def __init__(self, guest):
        self.guest = guest
        self.outputs, self.errors, self.blocked, self.calls = [], [], [], 0

    def call(self, what, func, *args):
        from ansible_collections.qemulab.network.plugins.module_utils._qemu_task import VmTaskError

        self.calls += 1
        signal.alarm(CALL_TIMEOUT)
        try:
            out = func(*args)
            self.outputs.append(json.dumps(out, default=str))
            return out
        except VmTaskError as exc:
            self.outputs.append(exc.msg + json.dumps(exc.result, default=str))
            self.errors.append("%s: %s" % (what, exc.msg[:300]))
        except (Blocked, MemoryError) as exc:
            self.blocked.append("%s: %s" % (what, type(exc).__name__))
        except Exception as exc:  # the old code's errors (ELOOP, ...) are findings too, not crashes of the test
            self.outputs.append(repr(exc))
            self.errors.append("%s: %s: %s" % (what, type(exc).__name__, str(exc)[:300]))
        finally:
            signal.alarm(0)
        return None

    def task(self, state, content="auto eth0\n"):
        from ansible_collections.qemulab.network.plugins.module_utils._qemu_task import qemu_vm_task

        return self.call("qemu_vm %s" % state, qemu_vm_task, _params(self.guest, state, content), False)

    def info(self):
        from ansible_collections.qemulab.network.plugins.modules.qemu_vm_info import vm_info

        return self.call("qemu_vm_info", vm_info, RUN_DIR)


def _console_mount_points():
    from ansible_collections.qemulab.network.plugins.module_utils._qemu_console import console_mounts

    return [mount["mount_point"] for mount in console_mounts(RUN_DIR)]


def _qemu_pids():
    """QEMUs started from the VM's directory (their cwd), whatever their pidfile says: the ones this case made."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink("/proc/%s/cwd" % entry).startswith(RUN_DIR):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _as_nobody(args, wait=True):
    proc = subprocess.Popen(["/usr/bin/python3", "-c", HELPER] + args, user=65534, group=65534, extra_groups=[],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return out
    return proc


def child(case, kernel, initrd):
    for target in ("/run", "/var/lib/qemulab"):
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=256m,strictatime", "qemulab-attack", target],
                       check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", "/"], check=True)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    signal.signal(signal.SIGALRM, _alarm)
    token = "qemulab-secret-%s" % os.urandom(8).hex()
    received = []
    _canaries(token)
    _decoy(received)
    os.makedirs(os.path.dirname(RUN_DIR), mode=0o755)
    os.mkdir(RUN_DIR, 0o700)
    os.chown(RUN_DIR, 65534, 65534)
    swaps = json.dumps(SWAPS)
    guest = {"kernel": kernel, "initrd": initrd}
    root = Root(guest)
    report = {"case": case}
    helper = None
    try:
        mounts_before = _mounts()
        before = _snapshot(("/run", "/var/lib/qemulab"), RUN_DIR)
        hashes = _hashes(before)
        for path, entry in before.items():  # any later read of these files moves their atime (strictatime)
            if entry[0] == stat.S_IFREG:
                os.utime(path, ns=(entry[2] - 3600 * 10 ** 9, entry[2]), follow_symlinks=False)
        before = _snapshot(("/run", "/var/lib/qemulab"), RUN_DIR)
        started = time.monotonic()
        if case == "swap":
            _as_nobody(["plant", RUN_DIR, swaps])
            first = root.task("running")
            report["first_start"] = bool(first and first.get("pid"))
            helper = _as_nobody(["swap", RUN_DIR, swaps, "20"], wait=False)
            n = 0
            while helper.poll() is None:
                n += 1
                root.task("running", "auto eth0\n# update %d\n" % n)
                root.info()
            report["swap_rounds"] = helper.stdout.read().strip()
            helper = None
        elif case == "console":
            _as_nobody(["plant", RUN_DIR, json.dumps([CONSOLE_SWAP])])
            first = root.task("running")
            report["first_start"] = bool(first and first.get("pid"))
            report["console_mounted"] = _console_mount_points()
            helper = _as_nobody(["swap", RUN_DIR, json.dumps([CONSOLE_SWAP]), "20"], wait=False)
            mounts_seen = set()
            while helper.poll() is None:
                restarted = root.task("restarted") or {}
                if restarted.get("pid"):
                    report["restarts"] = report.get("restarts", 0) + 1
                mounts_seen |= _mounts()
            report["swap_rounds"] = helper.stdout.read().strip()
            helper = None
            report["mounts_outside_seen"] = sorted("%s (%s)" % m for m in mounts_seen - mounts_before
                                                   if not m[0].startswith(RUN_DIR + "/"))
            absent = root.task("absent") or {}
            report["absent_state"] = absent.get("state")
            report["console_mounts_after_absent"] = _console_mount_points()
        elif case == "forge":
            first = root.task("running")
            report["first_start"] = bool(first and first.get("pid"))
            qemu = first["pid"] if first else None
            _as_nobody(["forge", RUN_DIR, swaps])
            info = root.info() or {}
            report["info_after_forgery"] = {"state": info.get("state"), "pid": info.get("pid"), "qemu": qemu}
            absent = root.task("absent") or {}
            report["stopped_by"] = absent.get("stopped_by")
            report["qemu_alive_after_absent"] = [pid for pid in _qemu_pids() if pid == qemu]
        report["seconds"] = round(time.monotonic() - started, 1)
    finally:
        if helper is not None:
            helper.kill()
            helper.wait()
        leftovers = _qemu_pids()
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        report["killed_qemus"] = leftovers
    after = _snapshot(("/run", "/var/lib/qemulab"), RUN_DIR)
    outside = ["mounted on %s (%s)" % mount for mount in sorted(_mounts() - mounts_before)
               if not mount[0].startswith(RUN_DIR + "/")]
    for path in sorted(set(before) | set(after)):
        if path not in after:
            outside.append("vanished %s" % path)
        elif path not in before:
            outside.append("appeared %s" % path)
        elif after[path][0] != before[path][0]:
            outside.append("replaced %s" % path)
        elif after[path][0] != stat.S_IFREG:
            continue  # a directory's times move when it is listed, a socket's when connected to (bytes: the decoy)
        elif after[path][3] != before[path][3]:
            outside.append("read %s" % path)
        elif after[path][1:3] != before[path][1:3]:
            outside.append("changed %s" % path)
    for path, digest in _hashes(before).items():
        if _hashes([path]).get(path) != hashes.get(path):
            outside.append("content changed %s" % path)
    report.update(outside=outside, decoy_received=received, calls=root.calls, blocked=root.blocked,
                  errors=sorted(set(root.errors))[:20],
                  secret_in_output=[o[:300] for o in root.outputs if token in o])
    sys.stdout.write(json.dumps(report))


# -- the parent --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guest():
    from minimal_guest import build

    return build()


def run_case(case, guest):
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", VENV_PYTHON, os.path.abspath(__file__),
                           case, guest["kernel"], guest["initrd"]],
                          capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
                                   PYTHONPATH=os.path.join(REPO_ROOT, ".build", "collections")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_the_qemu_user_swapping_names_for_links_reaches_nothing_outside_its_directory(guest):
    report = run_case("swap", guest)
    print(json.dumps(report))
    summary = json.dumps(report, indent=1)[:6000]
    assert report["first_start"], summary
    assert report["outside"] == [], summary
    assert report["decoy_received"] == [], summary
    assert report["secret_in_output"] == [], summary
    assert report["blocked"] == [], summary
    # the loop ran: root acted while the helper swapped thousands of times (a launch whose QMP socket the helper
    # swapped away waits its full 60 s, so on a loaded machine a 20 s loop may hold only a few calls)
    assert report["calls"] >= 3 and int(report["swap_rounds"]) >= 100, summary


def test_the_qemu_user_swapping_the_console_mount_point_gets_no_mount_outside_its_directory(guest):
    """Root mounts the console log's tmpfs at every restart while the QEMU user swaps `console` for links to
    directories outside (one of them /run itself): every mount lands in the VM's directory or nowhere."""
    report = run_case("console", guest)
    print(json.dumps(report))
    summary = json.dumps(report, indent=1)[:6000]
    assert report["first_start"] and report["console_mounted"] == [RUN_DIR + "/console"], summary
    assert report["mounts_outside_seen"] == [] and report["outside"] == [], summary
    assert report["blocked"] == [] and report["secret_in_output"] == [], summary
    # the loop ran: restarts mounted while the helper swapped (a few may lose the race and fail; none may escape)
    assert report.get("restarts", 0) >= 3 and int(report["swap_rounds"]) >= 100, summary
    assert report["absent_state"] == "not running" and report["console_mounts_after_absent"] == [], summary


def test_a_forged_pidfile_does_not_save_qemu_from_state_absent(guest):
    report = run_case("forge", guest)
    summary = json.dumps(report, indent=1)[:6000]
    assert report["first_start"], summary
    forged = report["info_after_forgery"]
    assert forged["state"] == "running" and forged["pid"] == forged["qemu"], summary
    assert report["stopped_by"] not in (None, "not running", "still running"), summary
    assert report["qemu_alive_after_absent"] == [] and report["killed_qemus"] == [], summary
    assert report["outside"] == [] and report["blocked"] == [], summary


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(REPO_ROOT, ".build", "collections"))
    child(*sys.argv[1:4])
