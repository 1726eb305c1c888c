# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Clones: lab VMs restored from a booted template instead of booting.

A template is the default guest image booted once with what every clone of one NIC layout shares (memory, vCPUs,
its NIC devices with placeholder MACs, the management NIC, the go port), stopped by its init before anything that
makes it one VM rather than another (qemulab-init's qemulab.template=1), saved with QMP `migrate` to a file, its
disk frozen as the backing file of every clone's overlay. It lives beside its image (<image dir>/templates/<key>/),
built under a lock in .build-<key>-<pid> and renamed into place when complete, like the image; pruned with it.

A clone is QEMU started with the template's devices (its own MACs and backends: taps are passed as at a boot) and
`-incoming fd:` on the saved state; it runs and hears its own settings on the go port: hostname, NIC MACs, the
time. The guest moves each NIC from its placeholder MAC to the clone's (the stream carries the template's). Its
fw_cfg files are its own (QEMU serves the new command line's; the guest loads its fw_cfg driver only after "go").

A clone of a QEMU that runs as root shares its template's RAM: the template's guest RAM is a file (`ram`, sparse,
memory-backend-file share=on) saved with the `x-ignore-shared` migration capability, so `state` holds device state
only; each clone maps that file privately (share=off) and loads `state` with x-ignore-shared set over QMP (`-incoming
defer`, then migrate-incoming: QEMU 7.2 has no -global for it). Its RAM starts as the template's pages in the page
cache, one copy for every clone, and a page the guest writes is copied for that clone alone. A template's files are
never written after publication; removing one under running clones is safe (their mappings keep the inode). A QEMU
run as another user (run_as) could not open the root-owned file for the writable private mapping QEMU 7.2 makes, so
its template keeps the RAM in `state` (RAM mode "anon", part of the key).

One template per NIC layout rather than one per machine with the lab NICs hot-plugged into each clone: measured
on the seed lab (bench/README.md "Clones against boots"), a clone waited 2-9 s for its hot-plugged NICs while
seven started together (the guest's ACPI hotplug handling under TCG), against one more template build per layout.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time

from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import (
    NIC_DEVICE_OPTIONS,
    build_argv,
    nic_device,
    vm_paths,
)
from ansible_collections.qemulab.network.plugins.module_utils._image_prune import TEMPLATES_DIR, qcow2_backing
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import (
    _served_by,
    find_qemus,
    launch,
    prepare_run_dir,
    read_json,
    stop_vm,
    write_json_atomic,
)
from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient, QMPError

# Bumped when what a template holds changes in a way its inputs do not show (3: the RAM mode, `ram` file).
TEMPLATE_FORMAT = 3
STATE = "state"
RAM = "ram"
DISK = "disk.qcow2"
MANIFEST = "manifest.json"
# The template's MACs (management NIC, lab NIC <index>): the guest sets the clone's own on each NIC after "go"
# (the migration stream carries the template's).
TEMPLATE_MGMT_MAC = "52:54:00:00:00:01"
TEMPLATE_NIC_MAC = "52:54:00:00:01:%02x"
READY_TIMEOUT = 300.0


class CloneError(Exception):
    """A template could not be built or a clone not started; the message says why and what to do."""


def templates_dir(base_disk):
    """Where the templates of the image whose disk is `base_disk` live: inside that image's directory."""
    return os.path.join(os.path.dirname(os.path.abspath(base_disk)), TEMPLATES_DIR)


def clone_problem(config):
    """Why `config` (normalised) cannot be a clone of a template, or None. The reasons are the status table's."""
    if not config["nics"] or config["nics"][-1]["backend"] != "user":
        return "its last NIC is not the user-mode management NIC the template has"
    if len(config["nics"]) > 256:
        return "it has more NICs than a template's placeholder MACs number"
    if config["extra_args"]:
        return "extra_args may add devices a template does not have"
    if any(nic["backend"] == "vhost-user" for nic in config["nics"]):
        # a clone's RAM is a private mapping of its template's file; a vhost-user datapath needs it shared (memfd)
        return "a vhost-user NIC needs guest memory in a shared memory backend, which the template does not have"
    if len(config["disks"]) != 1 or config["disks"][0]["format"] != "qcow2" or config["disks"][0]["readonly"]:
        return "it has not exactly one writable qcow2 overlay disk"
    if not config["kernel"]:
        return "it boots without -kernel (the template boots the default image's kernel)"
    if config.get("userns_pid") is not None:
        # vm_template makes its templates as root in a named namespace, not inside a user's holder (docs/rootless.md)
        return "a rootless lab's VMs boot: clone templates are not made inside a user's lab namespace"
    return None


def ram_mode(config):
    """How a template for `config` holds its guest RAM: "file" (the `ram` file, shared by the clones' private
    mappings) for a QEMU that runs as root, "anon" (the pages in `state`, copied into each clone) for one run as
    another user: QEMU 7.2 opens a private file mapping read-write (readonly=on maps it read-only), and the template's
    files are root's and never writable by a clone."""
    return "anon" if config.get("run_as") else "file"


def _lab_nic_devices(config):
    """The lab NICs' devices as the migration stream sees them: model and device options, not the MAC."""
    return [[item for item in nic_device(index, nic) if not (isinstance(item, tuple) and item[0] == "mac")]
            for index, nic in enumerate(config["nics"][:-1])]


def template_config(config, base_disk, run_dir):
    """The template's configuration for clones of `config`: the same machine and NIC devices, without the VM's own
    parts (its MACs, taps, forwards, files). A lab NIC's backend in the template is a restricted user-mode network
    that nothing uses: a migration carries devices, not their backends."""
    template = copy.deepcopy(config)
    nics = []
    for index, nic in enumerate(config["nics"][:-1]):
        placeholder = dict((key, value) for key, value in nic.items() if key == "model" or key in NIC_DEVICE_OPTIONS)
        placeholder.update(mac=TEMPLATE_NIC_MAC % index, backend="user", restrict=True, hostfwd=[])
        nics.append(placeholder)
    mgmt = dict(config["nics"][-1])
    mgmt.update(mac=TEMPLATE_MGMT_MAC, hostfwd=[], restrict=True)
    # the serial links' UARTs are devices of the stream like the NICs; their backends are the clone's own
    serials = [{"socket": None} for _port in config.get("serial_ports") or []] or None
    template.update(name="template", lab="", run_dir=run_dir, nics=nics + [mgmt], fw_cfg=[], run_as=None, netns="",
                    serial_ports=serials,
                    append="qemulab.template=1 qemulab.mgmt=%s qemulab.nics=%s"
                    % (TEMPLATE_MGMT_MAC, ",".join(nic["mac"] for nic in nics)), extra_args=[],
                    disks=[{"file": os.path.join(run_dir, DISK), "interface": config["disks"][0]["interface"],
                            "format": "qcow2", "readonly": False}])
    template["base_disk"] = os.path.abspath(base_disk)
    return template


def template_key(config, base_disk, accelerator, qemu_version):
    """Everything the migration stream depends on: the QEMU binary and version, the accelerator, the machine's
    memory, vCPUs and translation cache, the kernel, initrd and disk it booted, the lab NICs' devices (models and
    options, in order) and the management NIC's model, the devices rng adds, the disk's interface, the number of
    serial link UARTs, how the template holds its RAM (ram_mode). Paths name the image (its key is in them)."""
    mgmt = config["nics"][-1] if config["nics"] else {}
    inputs = {
        "format": TEMPLATE_FORMAT,
        "qemu_binary": config["qemu_binary"],
        "qemu_version": qemu_version,
        "accelerator": accelerator,
        "tb_size": config.get("tb_size") if accelerator == "tcg" else None,
        "memory": config["memory"],
        "vcpus": config["vcpus"],
        "kernel": config["kernel"],
        "initrd": config["initrd"],
        "base_disk": os.path.abspath(base_disk),
        "disk_interface": config["disks"][0]["interface"] if config["disks"] else None,
        "lab_nics": _lab_nic_devices(config),
        "mgmt_model": mgmt.get("model"),
        "rng": bool(config.get("rng")),
        "ram": ram_mode(config),
    }
    if config.get("serial_ports"):
        # only when there are any: the templates of VMs without serial links keep their keys
        inputs["serial_ports"] = len(config["serial_ports"])
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return digest, inputs


def read_template(directory, key):
    """The published template `key` under `directory` ({"dir", "state", "disk", "ram", "manifest"}; ram is None for a
    template whose RAM is in its state) or None."""
    path = os.path.join(directory, key)
    manifest = read_json(os.path.join(path, MANIFEST), owner=os.geteuid())
    if not manifest or manifest.get("key") != key or not isinstance(manifest.get("inputs"), dict):
        return None
    files = {"state": os.path.join(path, STATE), "disk": os.path.join(path, DISK)}
    if manifest["inputs"].get("ram") == "file":
        files["ram"] = os.path.join(path, RAM)
    if not all(os.path.isfile(f) for f in files.values()):
        return None
    if "ram" in files and os.path.getsize(files["ram"]) != manifest["inputs"].get("memory", 0) * 1024 * 1024:
        return None  # QEMU would refuse it (or grow it) under a clone: not a template of this size
    return dict(files, ram=files.get("ram"), dir=path, manifest=manifest)


def _qemu_img_create(path, backing, backing_format):
    proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, path],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CloneError("qemu-img create %s failed: %s" % (path, proc.stderr.strip()))


def _connect(path, timeout):
    """A connection to QEMU's go port socket (a chardev server QEMU made before loading anything)."""
    deadline = time.time() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError as exc:
            sock.close()
            if time.time() > deadline:
                raise CloneError("cannot connect to %s: %s" % (path, exc))
            time.sleep(0.02)


def _wait_line(sock, want, timeout, pid, buf=b""):
    """Read the go port until a line `want` arrives (the template's init says "ready", a clone's "ok")."""
    deadline = time.time() + timeout
    sock.settimeout(min(1.0, timeout))
    while (want + "\n").encode() not in buf:
        if time.time() > deadline:
            raise CloneError("no %r on the go port within %ds" % (want, timeout))
        if pid is not None and not os.path.exists("/proc/%d" % pid):
            raise CloneError("QEMU (pid %d) ended before its guest said %r" % (pid, want))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            raise CloneError("the go port closed before the guest said %r" % want)
        buf = buf[-4096:] + chunk


def _console_tail(run_dir, size=1500):
    try:
        with open(vm_paths(run_dir)["console_log"], "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _ignore_shared(qmp):
    """x-ignore-shared: RAM blocks mapped shared (the template's `ram` file) are not in the stream."""
    qmp.command("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])


def _save_state(qmp_socket, path, pid, timeout=120.0, ignore_shared=False):
    """Stop the guest and write its state to `path` with QMP migrate over an fd we pass (no shell, no exec:).
    ignore_shared: its RAM is a shared file, left out of the stream."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with QMPClient(qmp_socket, timeout=30.0, peer_check=_served_by((pid,))) as qmp:
            qmp.command("stop")
            if ignore_shared:
                _ignore_shared(qmp)
            qmp.command_with_fds("getfd", [fd], fdname="template-state")
            qmp.command("migrate", uri="fd:template-state")
            deadline = time.time() + timeout
            while True:
                status = qmp.command("query-migrate")
                if status.get("status") == "completed":
                    try:
                        qmp.command("quit")
                    except QMPError:
                        pass  # QEMU may close the socket before it answers
                    return status
                if status.get("status") in ("failed", "cancelled") or time.time() > deadline:
                    raise CloneError("saving the template's state: migrate %s (%s)"
                                     % (status.get("status"), status.get("error-desc", "timed out")))
                time.sleep(0.05)
    finally:
        os.close(fd)


def build_template(config, base_disk, accelerator, key, inputs, log=None):
    """Boot the template of `key` in a build directory, save it, publish it. Returns read_template's dict.
    Callers hold the template lock (BuildLock over templates_dir)."""
    directory = templates_dir(base_disk)
    work = os.path.join(directory, ".build-%s-%d" % (key, os.getpid()))
    if os.path.lexists(work):
        shutil.rmtree(work)
    prepare_run_dir(work)
    os.mkdir(vm_paths(work)["console_dir"], 0o700)
    template = template_config(config, base_disk, work)
    ram_file = {"path": os.path.join(work, RAM), "share": True} if inputs.get("ram") == "file" else None
    started = time.time()
    pid = None
    try:
        _qemu_img_create(os.path.join(work, DISK), template["base_disk"], "raw")
        argv = build_argv(template, accelerator, layout="clone", ram_file=ram_file)
        pid = launch(template, argv, [])
        go = _connect(vm_paths(work)["go_socket"], 30.0)
        try:
            _wait_line(go, "ready", READY_TIMEOUT, pid)
            booted = time.time()
            migration = _save_state(vm_paths(work)["qmp_socket"], os.path.join(work, STATE), pid,
                                    ignore_shared=ram_file is not None)
        finally:
            go.close()
        saved = time.time()
        stop_vm(work, 0)  # waits for the QMP quit above; ends it if that did not
        pid = None
        own = (STATE, DISK, RAM) if ram_file else (STATE, DISK)
        if ram_file:
            # the guest's RAM as it stopped is the file's page cache; on disk before the template is published
            _fsync(ram_file["path"])
        manifest = {"key": key, "inputs": inputs, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "timings": {"boot_s": round(booted - started, 2), "save_s": round(saved - booted, 2)},
                    "state_bytes": os.path.getsize(os.path.join(work, STATE)),
                    "migration_total_ms": migration.get("total-time")}
        if ram_file:
            manifest["ram_allocated_bytes"] = os.stat(ram_file["path"]).st_blocks * 512
        for name in os.listdir(work):
            if name not in own:
                path = os.path.join(work, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
        os.chmod(work, 0o755)
        for name in own:
            os.chmod(os.path.join(work, name), 0o444)
        write_json_atomic(os.path.join(work, MANIFEST), manifest, mode=0o644)
        final = os.path.join(directory, key)
        if os.path.lexists(final):
            shutil.rmtree(final)  # an untrusted leftover (read_template said no)
        os.rename(work, final)
        if log:
            log("built template %s in %.1fs" % (final, time.time() - started))
        return read_template(directory, key)
    except (CloneError, QemuConfigError, QMPError, OSError) as exc:
        tail = _console_tail(work)
        raise CloneError("building the clone template %s: %s%s" % (key, exc, "; its console ended with: %s"
                                                                   % tail[-600:] if tail else ""))
    finally:
        if pid is not None or find_qemus(work):
            stop_vm(work, 0)
        if os.path.lexists(work):
            shutil.rmtree(work, ignore_errors=True)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fresh_overlay_over(path, backing):
    """Whether the qcow2 `path` is backed by `backing` and holds no data of its own (no L1 entry set): a disk that
    is exactly its backing file, so a clone's memory and disk are of the same moment. Reads the header only (the
    backing file's name as the image pruner reads it)."""
    name = qcow2_backing(path)
    if name is None:
        return False, "%s is not a qcow2 file" % path
    if os.path.realpath(name) != os.path.realpath(backing):
        return False, "its disk is backed by %s, not by the template's" % name
    try:
        with open(path, "rb") as f:
            l1_size, l1_offset = struct.unpack(">IQ", f.read(48)[36:48])
            f.seek(l1_offset)
            table = f.read(8 * l1_size)
    except (OSError, struct.error) as exc:
        return False, "cannot read %s: %s" % (path, exc)
    if table.strip(b"\0"):
        return False, "its disk holds what it wrote since it first started, newer than any template"
    return True, ""


def _settings_line(config, clock=time.time):
    """What the guest hears on the go port: the kernel command line it would have booted with, and the time,
    framed so the guest takes only a whole line (a read that timed out mid-line leaves it the tail alone)."""
    return "qemulab.go=1 %s qemulab.time=%d qemulab.end=1\n" % (config.get("append") or "", int(clock()))


def start_clone(config, pid, timeout=30.0, incoming_fd=None):
    """After QEMU loaded the template's state (paused): run, say go with the VM's settings. incoming_fd: QEMU was
    started with `-incoming defer` (its RAM is the template's file): set x-ignore-shared, as the template was saved,
    and load the state from that fd (QEMU's own copy, inherited at the same number) first."""
    paths = vm_paths(config["run_dir"])
    with QMPClient(paths["qmp_socket"], timeout=timeout, peer_check=_served_by((pid,))) as qmp:
        if incoming_fd is not None:
            try:
                _ignore_shared(qmp)
                qmp.command("migrate-incoming", uri="fd:%d" % incoming_fd)
            except QMPError as exc:
                raise CloneError("VM %s: loading the template's state: %s; see %s"
                                 % (config["name"], exc, paths["log"]))
        deadline = time.time() + timeout
        while True:
            status = qmp.command("query-status").get("status")
            if status == "paused":
                break
            if status not in ("inmigrate", "prelaunch") or time.time() > deadline:
                raise CloneError("VM %s: restoring the template left QEMU %s, not paused; see %s"
                                 % (config["name"], status, paths["log"]))
            time.sleep(0.02)
        go = _connect(paths["go_socket"], timeout)
        try:
            qmp.command("cont")
            _say_go(go, _settings_line(config).encode("utf-8"), timeout, config["name"])
        finally:
            go.close()


def _say_go(sock, line, timeout, name):
    """Send the settings line until the guest answers "ok" (a line sent while its port is closed is dropped)."""
    deadline = time.time() + timeout
    sock.settimeout(1.0)
    buf = b""
    while True:
        sock.sendall(line)
        try:
            _wait_line(sock, "ok", 2.0, None, buf)
            return
        except CloneError:
            if time.time() > deadline:
                raise CloneError("VM %s: the restored guest did not take its settings on the go port within %ds"
                                 % (name, timeout))


def clone_plan(config, template_dir, accelerator, qemu_version):
    """(the template to restore {"state", "disk", "ram", "dir"} or None, why not): a clone only when it comes out
    exactly as a boot would — the template was made for this machine and the VM's disk is a fresh overlay over its
    disk.
    qemu_version: a function, asked only when there is a template to compare with."""
    problem = clone_problem(config)
    if not template_dir:
        # no template offered: vm_template found none for this VM; if no clone could be made at all, the status
        # table still says why (a vhost-user NIC, an own image) instead of nothing
        return None, problem or ""
    if problem:
        return None, problem
    template = read_template(os.path.dirname(os.path.abspath(template_dir)), os.path.basename(template_dir))
    if template is None:
        return None, "no finished template at %s" % template_dir
    key, inputs = template_key(config, template["manifest"]["inputs"].get("base_disk", ""), accelerator,
                               qemu_version())
    if key != template["manifest"]["key"]:
        made = template["manifest"]["inputs"]
        differ = sorted(k for k in set(inputs) | set(made) if inputs.get(k) != made.get(k))
        return None, "the template at %s was made for another machine (%s differ)" % (template_dir, ", ".join(differ))
    fresh, why = fresh_overlay_over(config["disks"][0]["file"], template["disk"])
    if not fresh:
        return None, why
    return template, ""
