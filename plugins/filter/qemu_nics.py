# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qemu_nics: a planned VM's NICs as qemulab.network.qemu_vm `nics`, the management NIC last."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: qemu_nics
short_description: A planned VM's NICs as qemu_vm nics
version_added: 0.1.0
description:
  - Turns one VM of the C(qemulab.network.lab_plan) plan into the O(qemulab.network.qemu_vm#module:nics) list
    the VM is launched with. Lab NICs keep the inventory's order (the guest's C(eth0), C(eth1), ...); a lab NIC with
    C(backend=user) is a restricted user-mode NIC on its own C(net) with its forwards on 127.0.0.1; the
    management NIC comes last, QEMU user-mode networking restricted to the guest, forwarding
    C(127.0.0.1:<ssh_port>) to the guest's port 22.
options:
  _input:
    description: One VM of the plan.
    type: dict
    required: true
  netns:
    description: Network namespace holding the VM's taps; empty for the host namespace.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Launch a planned VM
  qemulab.network.qemu_vm:
    name: "{{ vm.name }}"
    nics: "{{ vm | qemulab.network.qemu_nics(lab_plan.netns) }}"
"""

RETURN = r"""
_value:
  description: The O(qemulab.network.qemu_vm#module:nics) list.
  type: list
  elements: dict
"""


def _lab_nic(nic, netns):
    if nic.get("backend") == "user":
        # always restricted: a lab guest reaches SLIRP's gateway and its 127.0.0.1 forwards, nothing beyond
        return {
            "model": nic.get("model") or "virtio-net-pci",
            "mac": nic["mac"],
            "backend": "user",
            "restrict": True,
            "net": nic["net"],
            "hostfwd": [dict(fwd) for fwd in nic.get("hostfwd") or []],
        }
    return {
        "model": nic.get("model") or "virtio-net-pci",
        "mac": nic["mac"],
        "backend": "tap",
        "ifname": nic["tap"],
        "netns": netns or "",
        "vhost": nic.get("vhost") or "auto",
    }


def qemu_nics(vm, netns=""):
    nics = [_lab_nic(nic, netns) for nic in vm.get("nics", [])]
    nics.append({
        "model": "virtio-net-pci",
        "mac": vm["mgmt_mac"],
        "backend": "user",
        "restrict": True,
        "hostfwd": [{"host_port": int(vm["ssh_port"]), "guest_port": 22, "protocol": "tcp"}],
    })
    return nics


class FilterModule(object):
    def filters(self):
        return {"qemu_nics": qemu_nics}
