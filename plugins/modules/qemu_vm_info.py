#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: qemu_vm_info
short_description: Report the QEMU guests of a lab started by qemulab.network.qemu_vm
version_added: 0.1.0
description:
  - Reads the run directories under O(run_root)/O(lab) and asks each VM's QMP socket for its status. A pidfile is
    trusted only when C(/proc/PID/cmdline) is a QEMU whose pidfile lies in that run directory.
  - Read-only.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description: Lab whose VMs to report (lower-case letters, digits and C(-), at most 15 characters).
    type: str
    default: default
  name:
    description: Report only this VM (lower-case letters, digits and C(-), at most 32 characters).
    type: str
  run_root:
    description: Root of the run directories.
    type: path
    default: /run/qemulab
  qom:
    description:
      - Also read each running VM's NICs as QEMU sees them, through QMP (RV(vms[].qom_nics)). Off by default, as it
        holds each VM's QMP monitor for a few dozen commands.
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Status of every VM of the seed lab
  qemulab.network.qemu_vm_info:
    lab: seed
  register: seed_vms

- name: Status of rt1 only
  qemulab.network.qemu_vm_info:
    lab: seed
    name: rt1
"""

RETURN = r"""
vms:
  description: One entry per VM run directory, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: VM name.
      type: str
    state:
      description: QMP status (running, paused, shutdown, ...), C(unresponsive), or C(not running).
      type: str
    pid:
      description: QEMU's process id when it is running.
      type: int
    uptime:
      description: Seconds since QEMU started, when running.
      type: float
    nics:
      description:
        - NICs as recorded at the last start. A tap NIC carries C(vhost) (true when QEMU was started with vhost-net
          for it) and C(vhost_reason) (why, e.g. C(/dev/vhost-net does not exist)).
      type: list
      elements: dict
    accelerator:
      description: Accelerator of the last start.
      type: str
    boot:
      description:
        - How the last start brought the guest up, C(clone) (restored from a booted template, see
          M(qemulab.network.vm_template)) or C(boot) (booted its kernel).
      type: str
    boot_reason:
      description: Why a VM that could have been a clone booted (empty for a clone, or when no clone was asked).
      type: str
    run_dir:
      description: Run directory.
      type: str
    qmp_socket:
      description: QMP socket path.
      type: str
    console_socket:
      description: Serial console socket path.
      type: str
    console_log:
      description:
        - Serial console log path, C(<run_dir>/console/console.log), on a tmpfs of its own whose size is the VM's
          O(qemulab.network.qemu_vm#module:console_log_limit).
      type: str
    log:
      description: QEMU log path.
      type: str
    fingerprint:
      description: Hash of the configuration the running VM was started with (what qemu_vm compares), or null.
      type: str
    fw_cfg:
      description: SHA-256 of each fw_cfg item's file as it is now, by name (the guest reads them at boot).
      type: dict
    qom_nics:
      description:
        - With O(qom), each NIC QEMU has, sorted by netdev, as QEMU reports it. C(qom_path), C(id) (null for a device
          without one, under C(/machine/peripheral-anon)), C(type), C(mac) and C(netdev) are the device's QOM path
          and C(qom-get) properties; C(rx_filter) and C(main_mac) its C(query-rx-filter) name and the MAC it filters
          on now (a guest that sets its MAC changes this one), C(promiscuous).
        - C(link) is C(up), C(down) or null, C(link_source) where it was read. QEMU 7.2 has no QMP read of a link, so
          it is the VIRTIO_NET_S_LINK_UP bit of a virtio-net device's configuration space, read through its legacy
          I/O BAR (C(query-pci), the monitor's C(i)); null with the reason otherwise.
        - C(vhost) and C(vhost_source) (C(argv), the netdev's -netdev option, or C(record), what qemu_vm recorded at
          the start), as netdevs are not QOM objects in QEMU 7.2.
        - Empty when the VM is not running; C(qom_error) says why when QMP could not be read.
      type: list
      elements: dict
    qom_error:
      description: With O(qom), why the NICs could not be read through QMP, or null.
      type: str
    user:
      description: The user the running QEMU process runs as (C(root) unless started with O(qemulab.network.qemu_vm#module:run_as)), or null.
      type: str
"""

import os
import pwd

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import vm_paths
from ansible_collections.qemulab.network.plugins.module_utils._qemu_qom import read_nics
from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient, QMPError
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import (
    file_sha256,
    lab_run_dirs,
    process_uid,
    process_uptime,
    read_state,
)
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name


def user_name(uid):
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _in_fw_cfg_dir(path, run_dir):
    """Only the VM's own fw_cfg files are hashed, whatever the stored configuration says."""
    return os.path.dirname(os.path.normpath(path)) == os.path.join(run_dir, "fw_cfg")


def qom_info(run_dir, pid, stored):
    """(NICs as QEMU reports them, why not), asked of the socket only when the VM's own QEMU (read_state's pid,
    found through /proc) serves it."""
    if not pid:
        return [], None
    try:
        with QMPClient(vm_paths(run_dir)["qmp_socket"], timeout=5,
                       peer_check=lambda peer, uid, gid: peer == pid) as qmp:
            return read_nics(qmp, stored.get("argv"), stored.get("nics") or []), None
    except QMPError as exc:
        return [], str(exc)


def vm_info(run_dir, qom=False):
    have = read_state(run_dir)
    stored = have["stored"] or {}
    info = dict(vm_paths(run_dir))
    del info["pidfile"], info["fingerprint"], info["console_dir"], info["go_socket"]
    info.update(name=os.path.basename(run_dir), state=have["status"], pid=have["pid"],
                uptime=process_uptime(have["pid"]) if have["pid"] else None,
                nics=stored.get("nics") or (stored.get("config") or {}).get("nics") or [],
                accelerator=stored.get("accelerator"),
                boot=stored.get("boot") or "boot", boot_reason=stored.get("boot_reason") or "",
                fingerprint=stored.get("fingerprint") if have["pid"] else None,
                user=user_name(process_uid(have["pid"])) if have["pid"] else None,
                fw_cfg=dict((item["name"], file_sha256(item["file"]) if _in_fw_cfg_dir(item["file"], run_dir)
                             else None) for item in (stored.get("config") or {}).get("fw_cfg") or []))
    if qom:
        info["qom_nics"], info["qom_error"] = qom_info(run_dir, have["pid"], stored)
    return info


def main():
    module = AnsibleModule(argument_spec=dict(
        lab=dict(type="str", default="default"),
        name=dict(type="str"),
        run_root=dict(type="path", default="/run/qemulab"),
        qom=dict(type="bool", default=False),
    ), supports_check_mode=True)
    for field, kind in (("lab", "lab"), ("name", "vm")):
        if module.params[field] is not None:
            problem = check_name(module.params[field], kind)
            if problem:
                module.fail_json(msg="qemu_vm_info: %s: %s" % (field, problem))
    vms = [vm_info(run_dir, module.params["qom"]) for name, run_dir in lab_run_dirs(module.params["run_root"], module.params["lab"])
           if not module.params["name"] or name == module.params["name"]]
    module.exit_json(changed=False, vms=vms)


if __name__ == "__main__":
    main()
