# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu_vm arguments of a lab's VMs, and which of them qemu_vm would have to act on.

vm_launch completes the compiler's rendered VMs with its settings once (qemu_vm_specs) and calls qemu_vms (as qemu_vm_args) and disk_overlay
only for the VMs qemu_vms_pending names: a lab run would otherwise start Python on the lab host twice per VM only to hear "nothing
to do" (seven VMs: ~5 s of an idempotent run). The test is qemu_vm's own: the VM runs, its fingerprint (computed
here with the module's code and defaults) is the one it was started with, and its fw_cfg files hold the wanted
contents. Anything else goes to the module, which decides.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import (
    QEMU_VM_ARGUMENT_SPEC,
    QemuConfigError,
    fingerprint,
    normalise_config,
)


def qemu_vm_specs(vms, settings):
    """Rendered VMs (the compiler's `hosts[<lab host>].vms`) completed with vm_launch's settings: qemu_vm arguments
    plus `overlay`, the copy-on-write disk to create (null for a VM with its own disk).

    Nothing of the inventory is reshaped here; only what the lab host decides is added: the built image's files,
    the run and state directories, the accelerator and its translation cache, extra QEMU arguments, and whether
    the guest gets its configuration at boot, and where its vhost-user NICs' sockets lie. settings: lab, run_root,
    state_dir, default_kernel, default_initrd, default_disk, default_append, custom_append, accelerator, tb_size, extra_args, boot_config,
    userns_pid (a rootless lab's holder; 0 or absent for none).
    """
    specs = []
    for vm in vms or []:
        overlay = None if vm.get("disk") else "%s/labs/%s/%s.qcow2" % (settings["state_dir"], vm["lab"], vm["name"])
        disk = vm.get("disk") or overlay
        if vm.get("kernel"):
            kernel, initrd, append = vm["kernel"], vm.get("initrd"), settings["custom_append"]
        else:
            kernel, initrd, append = (settings["default_kernel"], settings["default_initrd"],
                                      settings["default_append"])
        spec = dict((key, value) for key, value in vm.items() if key not in ("disk", "ssh_port"))
        spec.update({
            "run_dir": "%s/%s/%s" % (settings["run_root"], vm["lab"], vm["name"]),
            "kernel": kernel,
            "initrd": initrd or None,
            "append": ("%s %s" % (append, vm["append"])).strip(),
            "disks": [{"file": disk, "format": "qcow2" if overlay or disk.endswith(".qcow2") else "raw"}],
            "accelerator": settings["accelerator"],
            "tb_size": settings["tb_size"],
            "extra_args": list(settings.get("extra_args") or []),
            "fw_cfg": list(vm.get("fw_cfg") or []) if settings.get("boot_config") else [],
            "overlay": overlay,
        })
        if vm.get("nics"):
            # a vhost-user NIC's socket (its datapath's, dpdk_datapath) is rendered relative to the run root
            spec["nics"] = [dict(nic, socket="%s/%s" % (settings["run_root"], nic["socket"]))
                            if nic.get("backend") == "vhost-user" and not str(nic.get("socket") or "/").startswith("/")
                            else nic for nic in vm["nics"]]
        if settings.get("userns_pid"):
            # a rootless lab (docs/rootless.md): QEMU and its taps in the holder's namespaces, not a named one
            spec["userns_pid"] = int(settings["userns_pid"])
            spec.pop("netns", None)
            spec["nics"] = [dict((k, v) for k, v in nic.items() if k != "netns") for nic in spec.get("nics") or []]
        specs.append(spec)
    return specs


# Spec keys for vm_launch itself, not qemu_vm options.
LAUNCH_KEYS = ("overlay", "boot")


def qemu_vm_args(specs, templates=None):
    """The specs as qemu_vm options (for qemulab.network.qemu_vms): without vm_launch's own keys and unset options;
    with `clone_from` where templates (qemulab.network.vm_template's `vms`) names a template for the VM."""
    templates = templates or {}
    out = []
    for spec in specs or []:
        args = dict((k, v) for k, v in spec.items() if k not in LAUNCH_KEYS and v is not None)
        template = (templates.get(spec["name"]) or {}).get("template")
        if template:
            args["clone_from"] = template
        out.append(args)
    return out


def clone_candidates(specs, default_boot="clone"):
    """The specs vm_template is asked about: VMs on the built image (they have an overlay) to be cloned (their
    `boot`, else the lab host's default)."""
    return [spec for spec in specs or [] if spec.get("overlay") and (spec.get("boot") or default_boot) == "clone"]


def vm_overlays(specs, templates, default_disk):
    """disk_overlay's items for the VMs to start: each VM's overlay over its clone template's disk (the template's
    directory holds disk.qcow2) or over the image; an existing overlay over either stays as it is."""
    templates = templates or {}
    items = []
    for spec in specs or []:
        if not spec.get("overlay"):
            continue
        template = (templates.get(spec["name"]) or {}).get("template")
        item = {"path": spec["overlay"], "backing": default_disk, "backing_format": "raw", "accept_backing": []}
        if template:
            item.update(backing=template + "/disk.qcow2", backing_format="qcow2", accept_backing=[default_disk])
        items.append(item)
    return items


def qemu_vms_pending(specs, running):
    """Names of the VMs whose qemu_vm task has something to do, given qemulab.network.qemu_vm_info's `vms`."""
    # Plain data first: ansible-core hands filters lazily templated containers, and the argument spec validation
    # below walks (and copies) them element by element, which took seconds per run.
    specs, running = json.loads(json.dumps(specs or [])), json.loads(json.dumps(running or []))
    by_name = dict((vm["name"], vm) for vm in running)
    pending = []
    for spec, args in zip(specs, qemu_vm_args(specs)):
        vm = by_name.get(spec["name"])
        # The module's own argument spec fills in defaults, also inside nics and disks, as AnsibleModule would.
        checked = ArgumentSpecValidator(QEMU_VM_ARGUMENT_SPEC).validate(args)
        try:
            if checked.error_messages:
                raise QemuConfigError("; ".join(checked.error_messages))
            wanted = fingerprint(normalise_config(checked.validated_parameters))
        except QemuConfigError:
            pending.append(spec["name"])  # the module reports the problem
            continue
        contents = dict((item["name"], hashlib.sha256(item["content"].encode("utf-8")).hexdigest())
                        for item in spec.get("fw_cfg") or [])
        if not vm or vm.get("state") != "running" or vm.get("fingerprint") != wanted \
                or (vm.get("fw_cfg") or {}) != contents:
            pending.append(spec["name"])
    return pending


class FilterModule(object):
    def filters(self):
        return {"qemu_vm_specs": qemu_vm_specs, "qemu_vms_pending": qemu_vms_pending, "qemu_vm_args": qemu_vm_args,
                "vm_clone_candidates": clone_candidates, "vm_overlays": vm_overlays}
