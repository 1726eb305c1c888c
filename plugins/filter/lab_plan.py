# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_plan: the inventory turned into one normalised plan of the lab, with every problem listed.

A thin shim over the compiler in plugins/plugin_utils/_lab_compiler.py (fields: _lab_schema.py, per-host
arguments: _lab_render.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: lab_plan
short_description: The lab inventory as a normalised plan, with every problem listed
version_added: 0.1.0
description:
  - Reads the lab's VMs (hosts of the groups C(routers) and C(hosts), children of C(lab)) and the lab-wide
    variables, and returns the plan the roles act on - bridges, taps, host ports and VMs with every default filled
    in - together with C(errors), a list of every problem found. Each error names the host, the field and the fix.
    Bad input never raises; the playbook stops on a non-empty C(errors) before anything on the host changes.
  - Every field it reads is declared once in the lab schema (C(plugins/plugin_utils/_lab_schema.py)) with its type,
    default, rule, meaning and example; C(docs/inventory.md) lists them. Lab-wide variables are read from the first
    host of group C(hypervisors), or, without that group, from C(group_vars/all) with C(localhost) as the lab host.
  - Names of the lab, VMs, namespace, bridges, taps and veth ends pass one rule (lower-case letters, digits and
    C(-), starting with a letter or digit; interfaces at most 15 bytes). The VMs' memory and vCPUs are checked
    against O(host_resources) unless C(lab_overcommit) is true.
  - A NIC without C(mac) gets a stable locally administered MAC derived from the lab name, the VM and the NIC's index.
    Every VM gets a stable management MAC (C(52:54:00:...)) for its user-mode NIC.
options:
  _input:
    description: C(hostvars).
    type: dict
    required: true
  groups:
    description: C(groups).
    type: dict
    required: true
  claims:
    description:
      - Lab names already claimed on the lab host, lab name to the inventory directory that claimed it (read from
        C(/run/qemulab/<lab>/lab.json)). A claim by another inventory is an error.
    type: dict
    default: {}
  lab_name:
    description: Overrides the hypervisor's C(lab_name).
    type: str
  lab_netns:
    description: Overrides the hypervisor's C(lab_netns).
    type: str
  lab_host_ports:
    description: Overrides the hypervisor's C(lab_host_ports).
    type: list
    elements: dict
  inventory_dir:
    description: Overrides the hypervisor's C(inventory_dir), compared with C(claims).
    type: str
  check_files:
    description: Whether to check that C(vm_kernel), C(vm_initrd) and C(vm_disk) exist.
    type: bool
    default: true
  host_resources:
    description:
      - What the lab host has, for the capacity check - C(mem_available_mib) (available memory plus what this lab's
        running QEMUs already hold) and C(cpus). Unset figures are not checked.
    type: dict
    default: {}
  lab_hosts:
    description:
      - What each lab host offers, lab host name to the result of M(qemulab.network.lab_host_info) there
        (C(mem_available_mib), C(cpus), C(addresses); C(unreachable) and C(msg) for a host that could not be
        reached). When given it replaces O(host_resources) - each lab host's VMs are checked against its own figures
        - and each C(lab_underlay_address) is checked against its host's C(addresses).
    type: dict
"""

EXAMPLES = r"""
- name: Turn the inventory into a plan
  ansible.builtin.set_fact:
    lab_plan: "{{ hostvars | qemulab.network.lab_plan(groups) }}"

- name: Stop on an invalid inventory
  ansible.builtin.assert:
    that: lab_plan.errors | length == 0
    fail_msg: "{{ lab_plan.errors | join('\n') }}"
"""

RETURN = r"""
_value:
  description:
    - The plan - C(lab_name), C(netns) (empty when none), C(qemu_user) (empty for root), C(run_dir), C(hypervisor), C(bridges) (C(name), C(subnet)),
      C(taps) (C(name), C(bridge), C(vm)), C(host_ports) (C(name), C(peer), C(bridge), C(address), C(routes)),
      C(vms), C(errors) and C(hosts) - per lab host, the exact arguments of each module and role (C(links),
      C(host_ports), C(host_port_routes), C(vms), C(guests), C(vxlans), C(connections), C(teardown); empty while
      there are errors), and C(guests), every lab host's C(guests) by VM name.
    - For a lab over several lab hosts (docs/multi-host.md), each lab host's C(segments) (the segments it shares with
      other lab hosts - C(bridge), C(hosts), C(mtu), C(tunnels) with C(hosts), C(vni), C(name)), C(vxlans)
      (M(qemulab.network.vxlan)'s arguments per tunnel end) and C(connections) (VM to the connection variables that
      reach it through its lab host).
    - Each VM - C(name), C(kind) (router or host), C(hypervisor), C(ssh_port), C(memory_mb), C(vcpus), C(kernel),
      C(initrd), C(disk) (null for the built guest image), C(forwarding), C(gateway), C(routes) (C(to), C(via),
      C(dev)), C(nics) (C(index), C(dev), C(backend), C(bridge), C(tap), C(mac), C(address), C(model), C(vhost),
      C(net), C(hostfwd)), C(nat) (C(type), C(inside), C(outside), and C(inside_subnet) or C(inside_address) and
      C(outside_address)), C(mgmt_mac).
  type: dict
"""

from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab


def lab_plan(hostvars, groups, claims=None, lab_name=None, lab_netns=None, lab_host_ports=None, inventory_dir=None,
             check_files=True, host_resources=None, lab_hosts=None):
    """The plan of the lab described by `hostvars` and `groups`; see DOCUMENTATION."""
    overrides = {"lab_name": lab_name, "lab_netns": lab_netns, "lab_host_ports": lab_host_ports,
                 "inventory_dir": inventory_dir}
    return compile_lab(hostvars, groups, claims, overrides, check_files, host_resources, lab_hosts)


class FilterModule(object):
    def filters(self):
        return {"lab_plan": lab_plan}
