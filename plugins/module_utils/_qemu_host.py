# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What this host offers a VM: the accelerator (KVM only when a guest under it really boots), vhost-net, QEMU's
version, the user QEMU runs as and what that user may open, the VM's boot files and its forwarded ports.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import option_string
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import read_json, write_json_atomic
from ansible_collections.qemulab.network.plugins.module_utils._run_paths import CURRENT as RUN_PATHS

ACCEL_CACHE = RUN_PATHS.accel_cache


def missing_files(config):
    """Human-readable problems with the files the VM boots from."""
    problems = []
    for field in ("kernel", "initrd"):
        path = config.get(field)
        if path and not os.path.isfile(path):
            problems.append("VM %s: %s %s does not exist; build the image first (qemulab.network guest_image role) "
                            "or fix the path" % (config["name"], field, path))
    for index, disk in enumerate(config["disks"]):
        if not os.path.exists(disk["file"]):
            problems.append("VM %s: disks[%d].file %s does not exist; create it (qemu-img create) or fix the path"
                            % (config["name"], index, disk["file"]))
    if config.get("initrd") and not config.get("kernel"):
        problems.append("VM %s: initrd is set without kernel; give kernel too" % config["name"])
    return problems


def port_in_use(port, protocol="tcp", open_socket=None):
    """Whether QEMU could not listen on 127.0.0.1:port. TCP binds with SO_REUSEADDR as QEMU's forwards do: connections
    of a stopped guest lingering in TIME_WAIT (for a minute) do not count, a listener still does. `open_socket`
    (protocol -> socket): one of the namespace QEMU runs in (a rootless lab's), the caller's own when None."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = open_socket(protocol) if open_socket else socket.socket(socket.AF_INET, kind)
    try:
        if protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except (OSError, socket.error):
        return True
    finally:
        sock.close()
    return False


def resolve_user(config):
    """{name, uid, gid, groups} QEMU runs as: the module's user (root, or a rootless lab's user) unless run_as names an
    unprivileged user (QemuConfigError if none)."""
    run_as = config.get("run_as")
    if run_as is None and os.geteuid() == 0:
        return {"name": "root", "uid": 0, "gid": 0, "groups": []}
    if run_as is None:  # a user without root runs their own QEMU (a rootless lab)
        entry = pwd.getpwuid(os.geteuid())
        return {"name": entry.pw_name, "uid": entry.pw_uid, "gid": entry.pw_gid, "groups": []}
    try:
        entry = pwd.getpwuid(int(run_as)) if run_as.isdigit() else pwd.getpwnam(run_as)
    except (KeyError, ValueError):
        raise QemuConfigError("VM %s: run_as: there is no user %r on this host; create one (useradd --system "
                              "--no-create-home --shell /usr/sbin/nologin %s) or leave run_as unset to run QEMU "
                              "as root" % (config["name"], run_as, run_as if not run_as.isdigit() else "qemulab"))
    groups = sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)) - set([entry.pw_gid]))
    return {"name": entry.pw_name, "uid": entry.pw_uid, "gid": entry.pw_gid, "groups": groups}


ACCESS_SCRIPT = 'while [ $# -gt 0 ]; do test "-$1" "$2" || printf "%s\\0%s\\0" "$1" "$2"; shift 2; done'


def accessible_as(user, checks):
    """[(path, "r"|"w"|"x") the user cannot access] for checks [(path, "r"|"w"|"x")], asked of the kernel itself:
    test(1) runs with the user's ids, so ACLs and every directory on the way count. A subprocess, not fork():
    qemu_vms checks VMs from several threads."""
    if user["uid"] == 0 or not checks:
        return []
    argv = ["/bin/sh", "-c", ACCESS_SCRIPT, "sh"]
    for path, mode in checks:
        argv += [mode, path]
    # the module's own user (a rootless lab's) asks with its own ids: it may not set its groups
    ids = {} if user["uid"] == os.geteuid() else dict(user=user["uid"], group=user["gid"], extra_groups=user["groups"])
    proc = subprocess.run(argv, capture_output=True, cwd="/", check=False, **ids)
    fields = proc.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]
    return [(path, mode) for mode, path in zip(fields[0::2], fields[1::2])]


def user_access_problems(config, user):
    """Files QEMU opens by path (kernel, initrd) that the unprivileged QEMU user could not read. Disks and taps are
    handed to it as file descriptors, so their paths may stay private to root."""
    parent = os.path.dirname(os.path.abspath(config["run_dir"]))
    checks = [(config[field], "r") for field in ("kernel", "initrd") if config.get(field)]
    if os.path.isdir(parent):  # a missing one is made world-traversable by prepare_run_dir
        checks.append((parent, "x"))
    problems = []
    for path, mode in accessible_as(user, checks):
        if path == parent and mode == "x":
            problems.append("VM %s: run_as: user %s cannot pass through %s to reach its run directory; let its group "
                            "traverse it (chgrp <the user's group>, chmod 0710), as the lab's host_prep role does"
                            % (config["name"], user["name"], parent))
        else:
            problems.append("VM %s: run_as: user %s cannot read %s; make it (and every directory above it) readable "
                            "by that user, or run QEMU as root" % (config["name"], user["name"], path))
    return problems


def vhost_usable(device="/dev/vhost-net"):
    """(usable, reason): vhost needs a /dev/vhost-net this process can open read-write."""
    if not os.path.exists(device):
        return False, "%s does not exist (vhost_net module not loaded or not available)" % device
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        return False, "%s cannot be opened: %s" % (device, exc.strerror)
    os.close(fd)
    return True, "%s is usable" % device


# vhost-net moves virtio queues into the kernel; an emulated e1000 or rtl8139 has none, so it never uses vhost.
VHOST_MODELS = ("virtio-net-pci",)


def decide_vhost(nic, usable, reason, vm, index):
    """(vhost on?, reason) for one tap NIC; `on` where impossible is an error, since QEMU 7.2 would abort.

    `auto` means on exactly for a virtio-net NIC on a host where /dev/vhost-net is usable (`usable`, `reason`).
    """
    wanted = nic.get("vhost", "auto")
    model = nic.get("model", "virtio-net-pci")
    if wanted == "off":
        return False, "vhost: off requested"
    if model not in VHOST_MODELS:
        if wanted == "on":
            raise QemuConfigError("VM %s: nics[%d].vhost is on but model %s has no virtio queues for vhost-net; "
                                  "use model virtio-net-pci, or vhost: auto or off" % (vm, index, model))
        return False, "model %s: vhost-net serves virtio-net only" % model
    if usable:
        return True, reason
    if wanted == "on":
        raise QemuConfigError("VM %s: nics[%d].vhost is on but %s; use vhost: auto or off, or load vhost_net"
                              % (vm, index, reason))
    return False, reason


_VERSIONS = {}


def qemu_version(binary):
    if binary not in _VERSIONS:
        _VERSIONS[binary] = _qemu_version(binary)
    return _VERSIONS[binary]


def _qemu_version(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else None


def boot_reaches_kernel(binary, kernel, accel, timeout):
    """(reached, seconds or error) for a bounded boot of `kernel` that must print "Linux version" on its serial.

    That line comes from start_kernel through earlyprintk, i.e. after the long-mode switch where KVM guests hang
    on some hosts although /dev/kvm opens and QMP says KVM is enabled.
    """
    work = tempfile.mkdtemp(prefix="qemulab-accel-probe-")
    serial = os.path.join(work, "serial.log")
    # -serial's file: backend takes the rest of the argument as the path, commas included (no option string).
    argv = [binary, "-accel", option_string(accel), "-m", "128", "-display", "none", "-nodefaults", "-no-user-config",
            "-kernel", kernel, "-append", "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1",
            "-serial", "file:" + serial, "-no-reboot"]
    proc = None
    try:
        started = time.time()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        while time.time() - started < timeout:
            if os.path.exists(serial):
                with open(serial, "rb") as f:
                    if b"Linux version" in f.read():
                        return True, round(time.time() - started, 1)
            if proc.poll() is not None:
                err = proc.stderr.read().decode("utf-8", "replace").strip()
                return False, "QEMU exited with %s: %s" % (proc.returncode, err[-300:])
            time.sleep(0.1)
        return False, "the guest printed nothing on its serial within %ds" % timeout
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def probe_kvm(binary, kernel, timeout=10.0):
    """(works, reason): KVM counts only when a guest under it really runs its kernel (see boot_reaches_kernel)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return False, "/dev/kvm cannot be opened: %s; using TCG" % exc.strerror
    if not kernel or not os.path.isfile(kernel):
        return False, "no kernel to probe KVM with; using TCG"
    reached, detail = boot_reaches_kernel(binary, kernel, "kvm", timeout)
    if reached:
        return True, "a KVM guest reached start_kernel in %ss" % detail
    return False, "KVM probe: %s; using TCG" % detail


_ACCEL_LOCK = threading.Lock()


@contextlib.contextmanager
def _cache_lock(cache_path):
    """An flock on the cache's directory: labs started together (other processes) probe once and never lose each
    other's entries in the read-modify-write of the cache. The kernel drops it when a killed holder dies."""
    directory = os.path.dirname(cache_path) or "."
    os.makedirs(directory, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def resolve_accelerator(requested, binary, kernel, cache_path=ACCEL_CACHE, probe=True):
    """(accelerator, reason). `auto` uses the per-host cache keyed by kernel release and QEMU version."""
    if requested in ("kvm", "tcg"):
        return requested, "%s requested" % requested
    with _ACCEL_LOCK:  # VMs started together probe once
        if not probe:  # check mode writes nothing, so it needs no lock (and may lack the directory)
            return _resolve_auto(binary, kernel, cache_path, probe)
        with _cache_lock(cache_path):
            return _resolve_auto(binary, kernel, cache_path, probe)


def _resolve_auto(binary, kernel, cache_path, probe):
    key = "%s|%s|%s" % (os.uname().release, binary, qemu_version(binary))
    cached = read_json(cache_path).get(key)
    if cached:
        return cached["accelerator"], "%s (cached probe %s)" % (cached["reason"], cached.get("probed_at", ""))
    if not probe:
        return "tcg", "KVM not probed yet (check mode); the real run probes it"
    if not kernel or not os.path.isfile(kernel):
        # Not cached: a later VM with a kernel can still run the real probe.
        return "tcg", "no kernel to probe KVM with; using TCG"
    works, reason = probe_kvm(binary, kernel)
    accel = "kvm" if works else "tcg"
    cache = read_json(cache_path)
    cache[key] = {"accelerator": accel, "reason": reason,
                  "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(cache_path, cache)
    return accel, reason


def kvm_for_user(accel, reason, requested, user, vm):
    """KVM is probed as root; an unprivileged QEMU also needs to open /dev/kvm itself."""
    if accel != "kvm" or not accessible_as(user, [("/dev/kvm", "r"), ("/dev/kvm", "w")]):
        return accel, reason
    if requested == "kvm":
        raise QemuConfigError("VM %s: accelerator is kvm but user %s (run_as) cannot open /dev/kvm; add the user "
                              "to the kvm group, or use accelerator: tcg or auto" % (vm, user["name"]))
    return "tcg", "%s, but user %s cannot open /dev/kvm; using TCG" % (reason, user["name"])


# a forward as build_argv writes it into a -netdev user option
_ARGV_HOSTFWD = re.compile(r"hostfwd=(tcp|udp):127\.0\.0\.1:(\d+)-")


def held_forwards(config, argv=None):
    """(port, protocol) of the forwards this VM's running QEMU holds: those of the configuration it was recorded with
    and those of its command line (a QEMU whose run was killed before its record was written has only these)."""
    held = set((fwd["host_port"], fwd["protocol"]) for nic in (config or {}).get("nics") or []
               for fwd in nic.get("hostfwd") or [])
    held.update((int(port), protocol) for arg in argv or [] for protocol, port in _ARGV_HOSTFWD.findall(arg))
    return held


def hostfwd_problems(config, held=(), open_socket=None):
    """Forwards whose port on 127.0.0.1 is taken, except those `held` by this VM's own QEMU (about to stop);
    open_socket: as port_in_use's."""
    problems = []
    for index, nic in enumerate(config["nics"]):
        for fwd in nic.get("hostfwd") or []:
            if (fwd["host_port"], fwd["protocol"]) in held:
                continue
            if port_in_use(fwd["host_port"], fwd["protocol"], open_socket):
                problems.append("VM %s: nics[%d].hostfwd host_port %d (%s) on 127.0.0.1 is already taken; pick a "
                                "free port" % (config["name"], index, fwd["host_port"], fwd["protocol"]))
    return problems
