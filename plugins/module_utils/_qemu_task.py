# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One VM's task, as qemu_vm runs it and qemu_vms runs it for many VMs in threads: read, plan, act."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import os
import shutil
import socket

from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import build_argv, vm_paths
from ansible_collections.qemulab.network.plugins.module_utils._qemu_clone import CloneError, clone_plan, start_clone
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import (
    CONFIG_FIELDS,
    QemuConfigError,
    config_diff,
    normalise_config,
    secret_contents,
)
from ansible_collections.qemulab.network.plugins.module_utils._netlink_holder import (
    HolderError,
    holder_namespace,
    open_inside,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_console import (
    mount_console,
    release,
    unbounded_console,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_host import (
    decide_vhost,
    qemu_version,
    held_forwards,
    hostfwd_problems,
    kvm_for_user,
    missing_files,
    resolve_accelerator,
    resolve_user,
    user_access_problems,
    vhost_usable,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import (
    fw_cfg_drift,
    launch,
    prepare_run_dir,
    proc_cmdline,
    read_json,
    read_state,
    stop_vm,
    write_fw_cfg,
    write_json_atomic,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_tap import get_tap_netlink, open_tap, tap_problems


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


class VmTaskError(Exception):
    """One VM's task failed: `msg` names the VM, the field and the fix; `result` is what was found so far."""

    def __init__(self, msg, result=None):
        Exception.__init__(self, msg)
        self.msg = msg
        self.result = result or {}


def bound_console(config, user, holder=None):
    """The console log's own tmpfs, mounted before QEMU opens the log (QemuConfigError when it cannot be). A rootless
    lab's user cannot mount in the host's mount namespace: its log is a plain file (unbounded, docs/rootless.md)."""
    try:
        if holder is not None:
            unbounded_console(config["run_dir"])
            return
        mount_console(config["run_dir"], config["console_log_limit"], (user["uid"], user["gid"]))
    except OSError as exc:
        fix = ("qemu_vm bounds the log with a tmpfs of its own, which needs root (CAP_SYS_ADMIN) in the host's mount "
               "namespace" if exc.errno == errno.EPERM else "then run this again")
        raise QemuConfigError("VM %s: console log: %s: %s; %s" % (config["name"], exc.filename, exc.strerror, fix))


def release_consoles(run_dir, name):
    """Unmount the console tmpfs under a run directory about to be removed (a killed run's too)."""
    try:
        release(run_dir)
    except OSError as exc:
        raise VmTaskError("VM %s: %s: %s; unmount it (umount -l %s) and run this again" % (
            name, exc.filename, exc.strerror, exc.filename))


def run_qemu_vm(module, get_tap=get_tap_netlink):
    """The qemu_vm module: one VM's task, failing the module on errors."""
    module.no_log_values.update(secret_contents(module.params))
    try:
        return qemu_vm_task(module.params, module.check_mode, get_tap)
    except VmTaskError as exc:
        module.fail_json(msg=exc.msg, **exc.result)


def holder_socket(holder):
    """port_in_use's open_socket for a VM inside a holder's namespaces: its forwards listen on that 127.0.0.1."""
    def open_socket(protocol):
        fd = open_inside(holder, [(protocol,)])[0]
        if isinstance(fd, OSError):
            raise fd
        return socket.socket(fileno=fd)
    return open_socket


def shown(content, secret):
    """A fw_cfg content as a diff shows it: a secret one (also the old one on disk, which no_log_values does not
    know) only by its digest."""
    if not secret or content is None:
        return content
    return "(secret, sha256 %s)" % hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


def qemu_vm_task(params, check_mode, get_tap=get_tap_netlink):
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
                  nics=nics_result(config, {}, {}), user=user["name"], started=False)
    if warnings:
        result["warnings"] = warnings
    if running and not changes and (have["stored"] or {}).get("nics"):
        # a VM left running reports the vhost decision QEMU was started with, not an empty guess
        result["nics"] = have["stored"]["nics"]
    if running and stored_config:
        result["boot"] = (have["stored"] or {}).get("boot") or "boot"
        result["boot_reason"] = (have["stored"] or {}).get("boot_reason") or ""
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
        secret = set(item["name"] for item in params.get("fw_cfg") or [] if item.get("secret"))
        before["fw_cfg_contents"] = dict((n, shown(old, n in secret)) for n, (old, new) in fw_cfg_changes.items())
        after["fw_cfg_contents"] = dict((n, shown(new, n in secret)) for n, (old, new) in fw_cfg_changes.items())
        result["fw_cfg_updated"] = sorted(fw_cfg_changes)
    result["diff"] = dict(before=before, after=after)

    vhost, vhost_reasons, fds = {}, {}, {}
    holder = None
    if need_start:
        missing = missing_files(config)
        held = held_forwards(stored_config, proc_cmdline(have["pid"])) if need_stop else ()
        problems = list(missing)
        if config["userns_pid"] is not None:
            try:
                holder = holder_namespace(config["userns_pid"])
            except HolderError as exc:
                problems.append("VM %s: %s" % (config["name"], exc))
        if holder is not None or config["userns_pid"] is None:
            try:
                problems += hostfwd_problems(config, held, holder_socket(holder) if holder is not None else None)
            except OSError as exc:
                problems.append("VM %s: cannot check its forwards in %s: %s" % (config["name"], holder, exc))
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
        if config["userns_pid"] is not None:
            usable, reason = False, "a rootless lab's QEMU runs in the user's own namespace, without /dev/vhost-net"
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
        clone, result["boot_reason"] = clone_plan(config, params.get("clone_from"), accel,
                                                  lambda: qemu_version(config["qemu_binary"]))
        result["boot"] = "clone" if clone else "boot"

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
        # An unprivileged QEMU cannot open /dev/net/tun, /dev/vhost-net or root's files: it gets fds opened here. One
        # inside a rootless lab's namespaces (holder) opens its own files; its taps are opened in there for it.
        unprivileged = user["uid"] != 0 and holder is None
        disk_fds, vhost_fds = {}, {}
        try:
            prepare_run_dir(config["run_dir"], user)
            write_fw_cfg(config, fw_cfg_contents, fw_cfg_contents, user)
            bound_console(config, user, holder)
            for index, nic in enumerate(config["nics"]):
                if nic["backend"] == "tap" and (nic["netns"] or unprivileged or holder is not None):
                    try:
                        fds[index] = open_tap(nic["ifname"], holder if holder is not None else nic["netns"])
                    except OSError as exc:
                        raise QemuConfigError("VM %s: nics[%d]: cannot open tap %s in %s: %s; check the tap exists "
                                              "and is not attached to another QEMU"
                                              % (config["name"], index, nic["ifname"],
                                                 "namespace %s" % (holder or nic["netns"])
                                                 if holder or nic["netns"] else
                                                 "the root namespace", exc))
                    if unprivileged and vhost.get(index):
                        vhost_fds[index] = os.open("/dev/vhost-net", os.O_RDWR | os.O_CLOEXEC)
            if unprivileged:
                disk_fds = open_disks(config)
            if clone:
                # the saved state, read by QEMU itself (an unprivileged one too) through an fd opened here
                fds["state"] = os.open(clone["state"], os.O_RDONLY | os.O_CLOEXEC)
            # a template whose RAM is its `ram` file: this clone maps it privately (_qemu_clone)
            ram_file = {"path": clone["ram"], "share": False} if clone and clone.get("ram") else None
            argv = build_argv(config, result["accelerator"], vhost, fds, disk_fds=disk_fds, vhost_fds=vhost_fds,
                              layout="clone" if clone else "boot", incoming_fd=fds.get("state"), ram_file=ram_file)
            passed = list(fds.values()) + list(vhost_fds.values()) + [fd for v in disk_fds.values() for fd in v]
            pid = launch(config, argv, passed, user, holder)
            if clone:
                start_clone(config, pid, incoming_fd=fds["state"] if ram_file else None)
        except (QemuConfigError, CloneError, OSError) as exc:
            if clone and os.path.isdir(config["run_dir"]):
                stop_vm(config["run_dir"], 0)
            raise VmTaskError(str(exc))
        finally:
            close_fds(fds)
            close_fds(vhost_fds)
            close_fds(disk_fds)
        stored = read_json(paths["fingerprint"], owner=os.geteuid())
        stored.update({"argv": argv, "accelerator": result["accelerator"],
                       "accelerator_reason": result["accelerator_reason"], "nics": result["nics"],
                       "boot": result["boot"], "boot_reason": result["boot_reason"]})
        write_json_atomic(paths["fingerprint"], stored, mode=0o600)
        result.update(pid=pid, argv=argv, started=True)
    if remove_dir:
        release_consoles(config["run_dir"], config["name"])
        shutil.rmtree(config["run_dir"])
    if os.path.isdir(config["run_dir"]):
        final = read_state(config["run_dir"])
    else:
        final = {"status": "not running", "pid": None}
    result.update(state=final["status"], pid=final["pid"])
    return result
