# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU for qemulab modules: config normalisation, argv builder, accelerator probe, vhost decision, fingerprint,
process identification and tap file descriptors opened inside a namespace.

Nothing here imports pyroute2: tap fds are opened with the tun ioctl, namespaces are entered with setns(2).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient, QMPError, query_status

RUN_ROOT = "/run/qemulab"
ACCEL_CACHE = "/var/cache/qemulab/accel.json"
NIC_MODELS = ("virtio-net-pci", "e1000", "rtl8139")
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
MEMORY_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
MEMORY_UNITS_MIB = {"": 1, "m": 1, "g": 1024, "t": 1024 * 1024}

# Fields that change what QEMU runs; state, timeouts and on_change do not.
CONFIG_FIELDS = ("name", "lab", "run_dir", "kernel", "initrd", "append", "disks", "memory", "vcpus", "accelerator",
                 "tb_size", "nics", "netns", "qemu_binary", "extra_args", "sandbox", "fw_cfg", "run_as", "rng")
# Fields added after labs were already running: left out of the fingerprint while unset, so an upgrade does not
# restart every VM.
OPTIONAL_FIELDS = ("run_as",)
# fw_cfg items are matched by name and file: their contents are read only at boot, so new contents are written for
# the next boot without restarting the VM (the lab's config stage changes the running guest itself).
FW_CFG_NAME_RE = re.compile(r"^opt/[A-Za-z0-9._/-]{1,51}$")


class QemuConfigError(Exception):
    """The requested VM cannot be built as asked; the message names the VM, the field and the fix."""


# ---------------------------------------------------------------- normalisation


def parse_memory(value, vm="", field="memory"):
    """Memory in MiB from an int (MiB) or a string like `512M`, `1G`, `1GiB`."""
    where = "VM %s: %s" % (vm, field) if vm else field
    if isinstance(value, bool):
        raise QemuConfigError("%s: %r is not a size; give MiB as an integer or a string like 512M or 1G" % (where, value))
    if isinstance(value, int):
        mib = value
    else:
        match = MEMORY_RE.match(str(value))
        if not match or match.group(2).lower() == "k":
            raise QemuConfigError("%s: %r is not a size; give MiB as an integer or a string like 512M or 1G"
                                  % (where, value))
        mib = int(match.group(1)) * MEMORY_UNITS_MIB[match.group(2).lower()]
    if mib < 16:
        raise QemuConfigError("%s: %r is below 16 MiB; give at least 16M" % (where, value))
    return mib


def normalise_mac(mac, vm, index):
    text = str(mac).strip().strip("'\"").lower().replace("-", ":")
    if not MAC_RE.match(text):
        raise QemuConfigError("VM %s: nics[%d].mac %r is not a MAC address like 52:54:00:12:34:56" % (vm, index, mac))
    if int(text[:2], 16) & 1:
        raise QemuConfigError("VM %s: nics[%d].mac %s is a multicast address; the first octet must be even"
                              % (vm, index, text))
    return text


def normalise_config(params):
    """The VM's desired configuration as a plain, comparable dict (defaults filled, values normalised)."""
    name = params["name"]
    lab = params.get("lab") or "default"
    run_dir = params.get("run_dir") or os.path.join(RUN_ROOT, lab, name)
    netns = params.get("netns") or ""
    disks = []
    for disk in params.get("disks") or []:
        disks.append({
            "file": disk["file"],
            "interface": disk.get("interface") or "virtio",
            "format": disk.get("format") or "raw",
            "readonly": bool(disk.get("readonly")),
        })
    nics = []
    seen_macs = {}
    for index, nic in enumerate(params.get("nics") or []):
        backend = nic.get("backend") or "tap"
        mac = normalise_mac(nic["mac"], name, index) if nic.get("mac") else None
        if mac:
            if mac in seen_macs:
                raise QemuConfigError("VM %s: nics[%d].mac %s is already used by nics[%d]; give every NIC its own MAC"
                                      % (name, index, mac, seen_macs[mac]))
            seen_macs[mac] = index
        entry = {"model": nic.get("model") or "virtio-net-pci", "mac": mac, "backend": backend}
        if backend == "tap":
            if not nic.get("ifname"):
                raise QemuConfigError("VM %s: nics[%d] has backend tap but no ifname; name the tap it uses"
                                      % (name, index))
            entry.update({"ifname": nic["ifname"], "netns": nic.get("netns") if nic.get("netns") is not None
                          else netns, "vhost": nic.get("vhost") or "auto"})
        else:
            forwards = []
            for fwd in nic.get("hostfwd") or []:
                forwards.append({"host_port": int(fwd["host_port"]), "guest_port": int(fwd["guest_port"]),
                                 "protocol": fwd.get("protocol") or "tcp"})
            entry.update({"hostfwd": forwards, "net": nic.get("net") or None,
                          "restrict": True if nic.get("restrict") is None else bool(nic["restrict"])})
        nics.append(entry)
    fw_cfg = []
    for index, item in enumerate(params.get("fw_cfg") or []):
        if not FW_CFG_NAME_RE.match(item["name"] or "") or "//" in item["name"] or ".." in item["name"]:
            raise QemuConfigError("VM %s: fw_cfg[%d].name %r is not usable; QEMU wants opt/<path> of letters, digits, "
                                  "'.', '_', '-' and '/', at most 55 characters (like opt/qemulab/interfaces)"
                                  % (name, index, item["name"]))
        if item["name"] in [f["name"] for f in fw_cfg]:
            raise QemuConfigError("VM %s: fw_cfg[%d].name %s is given twice" % (name, index, item["name"]))
        fw_cfg.append({"name": item["name"],
                       "file": os.path.join(run_dir, "fw_cfg", item["name"][len("opt/"):].replace("/", "_"))})
    return {
        "name": name,
        "lab": lab,
        "run_dir": run_dir,
        "kernel": params.get("kernel") or None,
        "initrd": params.get("initrd") or None,
        "append": params.get("append") or None,
        "disks": disks,
        "memory": parse_memory(params.get("memory") if params.get("memory") is not None else 512, name),
        "vcpus": int(params.get("vcpus") or 1),
        "accelerator": params.get("accelerator") or "auto",
        "tb_size": int(params["tb_size"]) if params.get("tb_size") is not None else 64,
        "nics": nics,
        "netns": netns,
        "qemu_binary": params.get("qemu_binary") or "qemu-system-x86_64",
        "extra_args": list(params.get("extra_args") or []),
        "sandbox": True if params.get("sandbox") is None else bool(params["sandbox"]),
        "fw_cfg": fw_cfg,
        "run_as": str(params["run_as"]) if params.get("run_as") not in (None, "") else None,
        "rng": True if params.get("rng") is None else bool(params["rng"]),
    }


def fingerprint(config):
    data = json.dumps(dict((k, config.get(k)) for k in CONFIG_FIELDS
                           if not (k in OPTIONAL_FIELDS and config.get(k) is None)), sort_keys=True)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def config_diff(old, new):
    """(before, after) holding only the top-level fields that differ."""
    old = old or {}
    before, after = {}, {}
    for key in CONFIG_FIELDS:
        if old.get(key) != new.get(key):
            before[key] = old.get(key)
            after[key] = new.get(key)
    return before, after


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


def port_in_use(port, protocol="tcp"):
    """Whether QEMU could not listen on 127.0.0.1:port. TCP binds with SO_REUSEADDR as QEMU's forwards do: connections
    of a stopped guest lingering in TIME_WAIT (for a minute) do not count, a listener still does."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
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
    """{name, uid, gid, groups} QEMU runs as: root unless run_as names an unprivileged user (QemuConfigError if none)."""
    run_as = config.get("run_as")
    if run_as is None:
        return {"name": "root", "uid": 0, "gid": 0, "groups": []}
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
    proc = subprocess.run(argv, capture_output=True, user=user["uid"], group=user["gid"],
                          extra_groups=user["groups"], cwd="/", check=False)
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


# ---------------------------------------------------------------- host capabilities


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


def decide_vhost(nic, usable, reason, vm, index):
    """(vhost on?, reason) for one tap NIC; `on` where impossible is an error, since QEMU 7.2 would abort."""
    wanted = nic.get("vhost", "auto")
    if wanted == "off":
        return False, "vhost: off requested"
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


def _read_cache(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_atomic(path, text, mode=0o644, owner=None):
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


def _write_json_atomic(path, data, mode=0o644):
    _write_atomic(path, json.dumps(data, indent=2, sort_keys=True), mode)


def boot_reaches_kernel(binary, kernel, accel, timeout):
    """(reached, seconds or error) for a bounded boot of `kernel` that must print "Linux version" on its serial.

    That line comes from start_kernel through earlyprintk, i.e. after the long-mode switch where KVM guests hang
    on some hosts although /dev/kvm opens and QMP says KVM is enabled.
    """
    work = tempfile.mkdtemp(prefix="qemulab-accel-probe-")
    serial = os.path.join(work, "serial.log")
    argv = [binary, "-accel", accel, "-m", "128", "-display", "none", "-nodefaults", "-no-user-config",
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


def resolve_accelerator(requested, binary, kernel, cache_path=ACCEL_CACHE, probe=True):
    """(accelerator, reason). `auto` uses the per-host cache keyed by kernel release and QEMU version."""
    if requested in ("kvm", "tcg"):
        return requested, "%s requested" % requested
    with _ACCEL_LOCK:  # VMs started together probe once
        return _resolve_auto(binary, kernel, cache_path, probe)


def _resolve_auto(binary, kernel, cache_path, probe):
    key = "%s|%s|%s" % (os.uname().release, binary, qemu_version(binary))
    cached = _read_cache(cache_path).get(key)
    if cached:
        return cached["accelerator"], "%s (cached probe %s)" % (cached["reason"], cached.get("probed_at", ""))
    if not probe:
        return "tcg", "KVM not probed yet (check mode); the real run probes it"
    if not kernel or not os.path.isfile(kernel):
        # Not cached: a later VM with a kernel can still run the real probe.
        return "tcg", "no kernel to probe KVM with; using TCG"
    works, reason = probe_kvm(binary, kernel)
    accel = "kvm" if works else "tcg"
    cache = _read_cache(cache_path)
    cache[key] = {"accelerator": accel, "reason": reason,
                  "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json_atomic(cache_path, cache)
    return accel, reason


# ---------------------------------------------------------------- paths and argv


def vm_paths(run_dir):
    return {
        "run_dir": run_dir,
        "pidfile": os.path.join(run_dir, "qemu.pid"),
        "qmp_socket": os.path.join(run_dir, "qmp.sock"),
        "console_socket": os.path.join(run_dir, "console.sock"),
        "console_log": os.path.join(run_dir, "console.log"),
        "log": os.path.join(run_dir, "qemu.log"),
        "fingerprint": os.path.join(run_dir, "fingerprint.json"),
    }


def _netdev_tap(index, nic, vhost, tap_fd, vhost_fd=None):
    parts = ["tap", "id=net%d" % index]
    if tap_fd is not None:
        parts.append("fd=%d" % tap_fd)
    else:
        parts += ["ifname=%s" % nic["ifname"], "script=no", "downscript=no"]
    if vhost:
        parts.append("vhost=on")
        if vhost_fd is not None:
            parts.append("vhostfd=%d" % vhost_fd)
    return ",".join(parts)


def _netdev_user(index, nic):
    parts = ["user", "id=net%d" % index]
    if nic.get("net"):
        parts.append("net=%s" % nic["net"])
    if nic.get("restrict", True):
        parts.append("restrict=on")
    for fwd in nic.get("hostfwd") or []:
        parts.append("hostfwd=%s:127.0.0.1:%d-:%d" % (fwd["protocol"], fwd["host_port"], fwd["guest_port"]))
    return ",".join(parts)


def build_argv(config, accelerator, vhost=None, tap_fds=None, daemon=True, disk_fds=None, vhost_fds=None):
    """QEMU's argv for `config`. vhost: {nic index: bool}; tap_fds / vhost_fds: {nic index: fd} and disk_fds:
    {disk index: [fds]} for files we opened for it (an unprivileged QEMU gets its disks as an fd set: QEMU picks
    the fd whose access mode matches each open it makes, so a writable disk comes read-write and read-only)."""
    vhost = vhost or {}
    tap_fds = tap_fds or {}
    disk_fds = disk_fds or {}
    vhost_fds = vhost_fds or {}
    paths = vm_paths(config["run_dir"])
    accel = accelerator
    if accelerator == "tcg" and config.get("tb_size"):
        accel = "tcg,tb-size=%d" % config["tb_size"]
    argv = [config["qemu_binary"], "-name", config["name"], "-accel", accel,
            "-m", str(config["memory"]), "-smp", str(config["vcpus"])]
    if config.get("kernel"):
        argv += ["-kernel", config["kernel"]]
    if config.get("initrd"):
        argv += ["-initrd", config["initrd"]]
    if config.get("append"):
        argv += ["-append", config["append"]]
    for index, disk in enumerate(config["disks"]):
        path = disk["file"]
        if disk_fds.get(index):
            for fd in disk_fds[index]:
                argv += ["-add-fd", "fd=%d,set=%d,opaque=disks[%d]" % (fd, index + 1, index)]
            path = "/dev/fdset/%d" % (index + 1)
        drive = "file=%s,if=%s,format=%s" % (path.replace(",", ",,"), disk["interface"], disk["format"])
        if disk.get("readonly"):
            drive += ",readonly=on"
        argv += ["-drive", drive]
    for index, nic in enumerate(config["nics"]):
        device = "%s,netdev=net%d" % (nic["model"], index)
        if nic.get("mac"):
            device += ",mac=%s" % nic["mac"]
        if nic["backend"] == "tap":
            netdev = _netdev_tap(index, nic, vhost.get(index, False), tap_fds.get(index), vhost_fds.get(index))
        else:
            netdev = _netdev_user(index, nic)
        argv += ["-device", device, "-netdev", netdev]
    for item in config.get("fw_cfg") or []:
        argv += ["-fw_cfg", "name=%s,file=%s" % (item["name"], item["file"].replace(",", ",,"))]
    if config.get("rng"):
        argv += ["-device", "virtio-rng-pci"]
    argv += ["-display", "none", "-nodefaults", "-no-user-config"]
    if daemon:
        argv += ["-pidfile", paths["pidfile"],
                 "-qmp", "unix:%s,server=on,wait=off" % paths["qmp_socket"],
                 "-chardev", "socket,id=console,path=%s,server=on,wait=off,logfile=%s"
                 % (paths["console_socket"], paths["console_log"]),
                 "-serial", "chardev:console", "-D", paths["log"]]
    if config.get("sandbox"):
        argv += ["-sandbox", SANDBOX]
    argv += config.get("extra_args") or []
    return argv


# ---------------------------------------------------------------- processes


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


def process_uid(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, IOError, ValueError, IndexError):
        pass
    return None


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
    stored = _read_cache(paths["fingerprint"]) or None
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


# ---------------------------------------------------------------- taps

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454ca
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def _setns(fd):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_tap(ifname, netns=None):
    """An fd for the existing persistent tap `ifname`, opened inside `netns` (the tap stays there; we come back)."""
    own = ns_fd = None
    if netns:
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        ns_fd = os.open(os.path.join("/var/run/netns", netns), os.O_RDONLY)
    try:
        if netns:
            _setns(ns_fd)
        # TUNSETIFF would silently create a missing tap (one that vanishes with QEMU): require it to exist.
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            raise OSError(errno.ENODEV, "tap %s does not exist" % ifname)
        tun = os.open("/dev/net/tun", os.O_RDWR)
        try:
            ifr = struct.pack("16sH22x", ifname.encode("utf-8"), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(tun, TUNSETIFF, ifr)
        except Exception:
            os.close(tun)
            raise
        return tun
    finally:
        if own is not None:
            _setns(own)
            os.close(own)
        if ns_fd is not None:
            os.close(ns_fd)


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
            _write_atomic(item["file"], contents[item["name"]], mode=0o600, owner=owner)


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
    _write_json_atomic(paths["fingerprint"], {"fingerprint": fingerprint(config), "config": config,
                                              "started_at": time.time()}, mode=0o600)
    return proc.pid


# ---------------------------------------------------------------- the qemu_vm module's logic

QEMU_VM_ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    lab=dict(type="str", default="default"),
    state=dict(type="str", default="running", choices=["running", "stopped", "absent", "restarted"]),
    run_dir=dict(type="path"),
    kernel=dict(type="path"),
    initrd=dict(type="path"),
    append=dict(type="str"),
    disks=dict(type="list", elements="dict", default=[], options=dict(
        file=dict(type="path", required=True),
        interface=dict(type="str", default="virtio", choices=["virtio", "ide", "scsi", "none"]),
        format=dict(type="str", default="raw", choices=["raw", "qcow2"]),
        readonly=dict(type="bool", default=False),
    )),
    memory=dict(type="raw", default=512),
    vcpus=dict(type="int", default=1),
    accelerator=dict(type="str", default="auto", choices=["auto", "kvm", "tcg"]),
    tb_size=dict(type="int", default=64),
    nics=dict(type="list", elements="dict", default=[], options=dict(
        model=dict(type="str", default="virtio-net-pci", choices=list(NIC_MODELS)),
        mac=dict(type="str"),
        backend=dict(type="str", default="tap", choices=["tap", "user"]),
        ifname=dict(type="str"),
        netns=dict(type="str"),
        vhost=dict(type="str", default="auto", choices=["auto", "on", "off"]),
        hostfwd=dict(type="list", elements="dict", options=dict(
            host_port=dict(type="int", required=True),
            guest_port=dict(type="int", required=True),
            protocol=dict(type="str", default="tcp", choices=["tcp", "udp"]),
        )),
        net=dict(type="str"),
        restrict=dict(type="bool", default=True),
    ), required_if=[("backend", "tap", ("ifname",))]),
    netns=dict(type="str", default=""),
    stop_timeout=dict(type="int", default=10),
    on_change=dict(type="str", default="restart", choices=["restart", "report"]),
    qemu_binary=dict(type="str", default="qemu-system-x86_64"),
    extra_args=dict(type="list", elements="str", default=[]),
    sandbox=dict(type="bool", default=True),
    fw_cfg=dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True),
        content=dict(type="str", required=True),
    )),
    run_as=dict(type="str"),
    rng=dict(type="bool", default=True),
)


def tap_problems(config, get_tap, user=None):
    """Problems with the taps the VM needs; get_tap(ifname, netns) -> link dict or None (raises on netlink errors).
    A QEMU that runs as an unprivileged user may only use taps that user owns."""
    problems = []
    for index, nic in enumerate(config["nics"]):
        if nic["backend"] != "tap":
            continue
        where = "namespace %s" % nic["netns"] if nic["netns"] else "the root namespace"
        link = get_tap(nic["ifname"], nic["netns"])
        if link is None:
            problems.append("VM %s: nics[%d] needs tap %s, which does not exist in %s; create it first with "
                            "qemulab.network.tap" % (config["name"], index, nic["ifname"], where))
            continue
        owner = (link.get("tun") or {}).get("owner")
        if user and user["uid"] != 0 and owner != user["uid"]:
            problems.append("VM %s: nics[%d]: tap %s in %s is owned by %s, but QEMU runs as %s (run_as); create "
                            "the tap with owner: %s (the lab does when lab_qemu_user is set)"
                            % (config["name"], index, nic["ifname"], where,
                               "no user (root only)" if owner is None else "uid %s" % owner, user["name"],
                               user["name"]))
    return problems


def _forwards(config):
    return set((fwd["host_port"], fwd["protocol"]) for nic in (config or {}).get("nics") or []
               for fwd in nic.get("hostfwd") or [])


def hostfwd_problems(config, held=()):
    """Forwards whose port on 127.0.0.1 is taken, except those `held` by this VM's own QEMU (about to stop)."""
    problems = []
    for index, nic in enumerate(config["nics"]):
        for fwd in nic.get("hostfwd") or []:
            if (fwd["host_port"], fwd["protocol"]) in held:
                continue
            if port_in_use(fwd["host_port"], fwd["protocol"]):
                problems.append("VM %s: nics[%d].hostfwd host_port %d (%s) on 127.0.0.1 is already taken; pick a "
                                "free port" % (config["name"], index, fwd["host_port"], fwd["protocol"]))
    return problems


def _read_taps(netns, names):
    """{name: link dict or None} for `names` in `netns`, over one netlink socket."""
    from ansible_collections.qemulab.network.plugins.module_utils._netlink import HAS_PYROUTE2, get_link, netlink
    if not HAS_PYROUTE2:
        raise RuntimeError("the Python library pyroute2 is needed to check taps; install it for the interpreter "
                           "that runs this module (pip install pyroute2, or Debian's python3-pyroute2)")
    with netlink(netns or None) as ipr:
        return dict((name, get_link(ipr, name)) for name in names)


def _get_tap_netlink(ifname, netns):
    return _read_taps(netns, [ifname])[ifname]


def tap_reader(configs):
    """get_tap(ifname, netns) for tap_problems over the taps of normalised `configs`, read now, once per namespace:
    for VMs started from several threads (pyroute2 enters a namespace by forking, which is not safe once other
    threads run). A namespace that could not be read raises its error for every VM that uses it."""
    wanted = {}
    for config in configs:
        for nic in config["nics"]:
            if nic["backend"] == "tap":
                wanted.setdefault(nic["netns"], set()).add(nic["ifname"])
    links, errors = {}, {}
    for netns, names in wanted.items():
        try:
            links.update(((netns, name), link) for name, link in _read_taps(netns, sorted(names)).items())
        except Exception as exc:  # the message is readable; tap_problems' caller reports it per VM
            errors[netns] = exc

    def get_tap(ifname, netns):
        if netns in errors:
            raise errors[netns]
        return links.get((netns, ifname))
    return get_tap


def nics_result(config, vhost, vhost_reasons):
    out = []
    for index, nic in enumerate(config["nics"]):
        entry = dict(nic)
        if nic["backend"] == "tap":
            entry["vhost"] = vhost.get(index, False)
            entry["vhost_reason"] = vhost_reasons.get(index, "")
        out.append(entry)
    return out


def open_disks(config):
    """{disk index: [fds]} for an unprivileged QEMU: read-write and read-only fds of each writable disk, a read-only
    fd of a read-only one. Its paths may then stay private to root (the lab's overlays are)."""
    fds = {}
    try:
        for index, disk in enumerate(config["disks"]):
            modes = [os.O_RDONLY] if disk["readonly"] else [os.O_RDWR, os.O_RDONLY]
            fds[index] = []
            for mode in modes:
                fds[index].append(os.open(disk["file"], mode | os.O_CLOEXEC))
    except OSError as exc:
        close_fds(fds)
        raise QemuConfigError("VM %s: disks[%d].file %s cannot be opened: %s"
                              % (config["name"], index, disk["file"], exc.strerror))
    return fds


def close_fds(fds):
    for value in fds.values():
        for fd in (value if isinstance(value, list) else [value]):
            os.close(fd)


def kvm_for_user(accel, reason, requested, user, vm):
    """KVM is probed as root; an unprivileged QEMU also needs to open /dev/kvm itself."""
    if accel != "kvm" or not accessible_as(user, [("/dev/kvm", "r"), ("/dev/kvm", "w")]):
        return accel, reason
    if requested == "kvm":
        raise QemuConfigError("VM %s: accelerator is kvm but user %s (run_as) cannot open /dev/kvm; add the user "
                              "to the kvm group, or use accelerator: tcg or auto" % (vm, user["name"]))
    return "tcg", "%s, but user %s cannot open /dev/kvm; using TCG" % (reason, user["name"])


class VmTaskError(Exception):
    """One VM's task failed: `msg` names the VM, the field and the fix; `result` is what was found so far."""

    def __init__(self, msg, result=None):
        Exception.__init__(self, msg)
        self.msg = msg
        self.result = result or {}


def run_qemu_vm(module, get_tap=_get_tap_netlink):
    """The qemu_vm module: one VM's task, failing the module on errors."""
    try:
        return qemu_vm_task(module.params, module.check_mode, get_tap)
    except VmTaskError as exc:
        module.fail_json(msg=exc.msg, **exc.result)


def qemu_vm_task(params, check_mode, get_tap=_get_tap_netlink):
    """Read, plan, act for one VM (params validated against QEMU_VM_ARGUMENT_SPEC). Returns the task's result;
    raises VmTaskError. Safe to run for several VMs at once in threads (qemulab.network.qemu_vms does)."""
    try:
        config = normalise_config(params)
        user = resolve_user(config)
    except QemuConfigError as exc:
        raise VmTaskError(str(exc))
    paths = vm_paths(config["run_dir"])
    have = read_state(config["run_dir"])
    running = have["pid"] is not None
    stored_config = (have["stored"] or {}).get("config") if running else None
    before_diff, after_diff = config_diff(stored_config, config) if running else ({}, {})
    changes = sorted(after_diff)
    state = params["state"]
    warnings = []
    if changes and state == "running" and params["on_change"] == "report":
        warnings.append("VM %s runs with an older configuration (%s differ); restart it (state: restarted) to apply"
                        % (config["name"], ", ".join(changes)))

    need_stop = running and (state in ("stopped", "absent", "restarted")
                             or (state == "running" and changes and params["on_change"] == "restart"))
    need_start = state == "restarted" or (state == "running" and (not running or need_stop))
    remove_dir = state == "absent" and os.path.isdir(config["run_dir"])
    fw_cfg_contents = dict((item["name"], item["content"]) for item in params.get("fw_cfg") or [])
    fw_cfg_changes = fw_cfg_drift(config, fw_cfg_contents) if state in ("running", "restarted") else {}
    changed = bool(need_stop or need_start or remove_dir or fw_cfg_changes)

    result = dict(changed=changed, changes=changes, run_dir=paths["run_dir"], qmp_socket=paths["qmp_socket"],
                  console_socket=paths["console_socket"], console_log=paths["console_log"], log=paths["log"],
                  pid=have["pid"], state=have["status"], argv=(have["stored"] or {}).get("argv", []),
                  nics=nics_result(config, {}, {}), user=user["name"])
    if warnings:
        result["warnings"] = warnings
    if running and not changes and (have["stored"] or {}).get("nics"):
        # a VM left running reports the vhost decision QEMU was started with, not an empty guess
        result["nics"] = have["stored"]["nics"]
    if running and stored_config:
        result["accelerator"] = (have["stored"] or {}).get("accelerator")
        result["accelerator_reason"] = (have["stored"] or {}).get("accelerator_reason")
    before = {"state": "running" if running else "not running"}
    after_state = {"running": "running", "restarted": "running", "stopped": "stopped", "absent": "absent"}[state]
    after = {"state": after_state}
    if changes:
        before.update(before_diff)
        after.update(after_diff)
    elif need_start and not running:
        after.update(dict((k, config[k]) for k in CONFIG_FIELDS))
    if fw_cfg_changes:
        before["fw_cfg_contents"] = dict((n, old) for n, (old, new) in fw_cfg_changes.items())
        after["fw_cfg_contents"] = dict((n, new) for n, (old, new) in fw_cfg_changes.items())
        result["fw_cfg_updated"] = sorted(fw_cfg_changes)
    result["diff"] = dict(before=before, after=after)

    vhost, vhost_reasons, fds = {}, {}, {}
    if need_start:
        missing = missing_files(config)
        problems = missing + hostfwd_problems(config, _forwards(stored_config) if need_stop else ())
        if not missing:
            problems += user_access_problems(config, user)
        try:
            problems += tap_problems(config, get_tap, user)
        except Exception as exc:  # netlink errors carry a readable message already
            problems.append("VM %s: cannot check taps: %s" % (config["name"], exc))
        if problems and check_mode:
            # In a check-mode run of the whole lab the taps and images of earlier tasks were not created either.
            result["warnings"] = warnings + ["would fail unless an earlier task creates it: %s" % p for p in problems]
        elif problems:
            raise VmTaskError("; ".join(problems), dict((k, v) for k, v in result.items() if k != "changed"))
        usable, reason = vhost_usable()
        try:
            for index, nic in enumerate(config["nics"]):
                if nic["backend"] == "tap":
                    vhost[index], vhost_reasons[index] = decide_vhost(nic, usable, reason, config["name"], index)
        except QemuConfigError as exc:
            raise VmTaskError(str(exc))
        result["nics"] = nics_result(config, vhost, vhost_reasons)
        accel, accel_reason = resolve_accelerator(config["accelerator"], config["qemu_binary"], config["kernel"],
                                                  probe=not check_mode)
        try:
            accel, accel_reason = kvm_for_user(accel, accel_reason, config["accelerator"], user, config["name"])
        except QemuConfigError as exc:
            raise VmTaskError(str(exc))
        result["accelerator"], result["accelerator_reason"] = accel, accel_reason

    if check_mode:
        return result

    if need_stop or (state in ("stopped", "absent") and have["pid"]):
        result["stopped_by"] = stop_vm(config["run_dir"], params["stop_timeout"])
        if result["stopped_by"] == "still running":
            raise VmTaskError("VM %s: QEMU (pid %s) survived powerdown, QMP quit, SIGTERM and SIGKILL; see %s"
                              % (config["name"], have["pid"], paths["log"]), result)
    if fw_cfg_changes and not need_start and os.path.isdir(config["run_dir"]):
        write_fw_cfg(config, fw_cfg_contents, fw_cfg_changes, user)
    if need_start:
        # An unprivileged QEMU cannot open /dev/net/tun, /dev/vhost-net or root's files: it gets fds opened here.
        unprivileged = user["uid"] != 0
        disk_fds, vhost_fds = {}, {}
        try:
            prepare_run_dir(config["run_dir"], user)
            write_fw_cfg(config, fw_cfg_contents, fw_cfg_contents, user)
            for index, nic in enumerate(config["nics"]):
                if nic["backend"] == "tap" and (nic["netns"] or unprivileged):
                    try:
                        fds[index] = open_tap(nic["ifname"], nic["netns"])
                    except OSError as exc:
                        raise QemuConfigError("VM %s: nics[%d]: cannot open tap %s in %s: %s; check the tap exists "
                                              "and is not attached to another QEMU"
                                              % (config["name"], index, nic["ifname"],
                                                 "namespace %s" % nic["netns"] if nic["netns"] else
                                                 "the root namespace", exc))
                    if unprivileged and vhost.get(index):
                        vhost_fds[index] = os.open("/dev/vhost-net", os.O_RDWR | os.O_CLOEXEC)
            if unprivileged:
                disk_fds = open_disks(config)
            argv = build_argv(config, result["accelerator"], vhost, fds, disk_fds=disk_fds, vhost_fds=vhost_fds)
            passed = list(fds.values()) + list(vhost_fds.values()) + [fd for v in disk_fds.values() for fd in v]
            pid = launch(config, argv, passed, user)
        except QemuConfigError as exc:
            raise VmTaskError(str(exc))
        finally:
            close_fds(fds)
            close_fds(vhost_fds)
            close_fds(disk_fds)
        stored = _read_cache(paths["fingerprint"])
        stored.update({"argv": argv, "accelerator": result["accelerator"],
                       "accelerator_reason": result["accelerator_reason"], "nics": result["nics"]})
        _write_json_atomic(paths["fingerprint"], stored, mode=0o600)
        result.update(pid=pid, argv=argv)
    if remove_dir:
        shutil.rmtree(config["run_dir"])
    if os.path.isdir(config["run_dir"]):
        final = read_state(config["run_dir"])
    else:
        final = {"status": "not running", "pid": None}
    result.update(state=final["status"], pid=final["pid"])
    return result
