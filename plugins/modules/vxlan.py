#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vxlan
short_description: A unicast VXLAN port of a lab bridge, joining a segment to the same segment on another lab host
version_added: 0.1.0
description:
  - Makes a VXLAN device match the declaration (VNI, underlay addresses, UDP port, bridge, MTU), owned by a qemulab
    lab, one port per other lab host on a segment that spans hosts. Learning is off; the one O(remote) is the
    device's default destination.
  - The device is created from the namespace the module runs in, which must hold O(local) (checked before any
    change), and appears in the lab namespace O(netns). Linux keeps a VXLAN device's UDP socket in the namespace it
    was created from, so the underlay traffic stays in the lab host's own namespace and the lab namespace gets only
    the Ethernet port; no underlay address enters it.
  - The VNI, O(local), O(remote), O(port) and where the UDP socket lives are fixed when the device is made; a
    difference there deletes the device and makes it again (only one this lab owns). MTU and bridge change in place.
  - The device gets the alias C(qemulab:<lab>) (made with the lab's pending mark as its device group first, like a
    bridge). A device of the same name that is not this lab's is neither adopted nor deleted unless O(force=true).
author:
  - qemulab developers (@qemulab)
requirements:
  - pyroute2
extends_documentation_fragment:
  - qemulab.network.netns
  - qemulab.network.netns.ownership
options:
  name:
    description: Device name (lower-case letters, digits and C(-), starting with a letter or digit, at most 15 characters).
    type: str
    required: true
  state:
    description: Whether the device exists.
    type: str
    choices: [present, absent]
    default: present
  vni:
    description: VXLAN network identifier, 1 to 16777215; the same on both ends of a segment. Required with O(state=present).
    type: int
  local:
    description:
      - This lab host's underlay address (its C(lab_underlay_address)); the host must have it. Required with
        O(state=present).
    type: str
  remote:
    description: The other lab host's underlay address (unicast). Required with O(state=present).
    type: str
  port:
    description: UDP destination port of the encapsulated traffic; open it between the lab hosts.
    type: int
    default: 4789
  bridge:
    description: Bridge (in O(netns)) the device is a port of; V("") for none. Omit to leave it alone.
    type: str
  mtu:
    description:
      - MTU of the device. Omit to leave it alone. VXLAN adds 50 bytes (IPv4 underlay), so a 1500-byte underlay
        carries at most 1450 here.
    type: int
attributes:
  check_mode:
    description: Reports what would change (C(changes), C(before), C(after)) without changing anything.
    support: full
  diff_mode:
    description: Returns C(before) and C(after) as the diff.
    support: full
"""

EXAMPLES = r"""
- name: Segment br1 of lab seed, continued on the lab host 192.0.2.12
  qemulab.network.vxlan:
    name: vx-br1-2
    netns: qemulab-seed
    lab: seed
    vni: 1001
    local: 192.0.2.11
    remote: 192.0.2.12
    bridge: br1
    mtu: 1450

- name: Remove it again (only if lab seed made it)
  qemulab.network.vxlan:
    name: vx-br1-2
    netns: qemulab-seed
    lab: seed
    state: absent
"""

RETURN = r"""
name:
  description: The device name.
  returned: always
  type: str
  sample: vx-br1-2
netns:
  description: The lab namespace the device is in (null for the host's).
  returned: always
  type: str
  sample: qemulab-seed
changes:
  description:
    - Fields that differ; C(state) for creation or deletion, C(state) V(recreated) with the creation field that
      made it necessary.
  returned: always
  type: list
  elements: str
  sample: [vni, local, remote, port, learning, underlay_in_host, state, alias, master, up]
before:
  description:
    - The device as found. C(underlay_in_host) says its UDP socket lives outside the lab namespace (in the host
      namespace it was created from); for a device in the host's own namespace, that it lives there.
  returned: always
  type: dict
  sample: {state: absent}
after:
  description: The device as left (in check mode, as it would be left).
  returned: always
  type: dict
  sample: {state: present, kind: vxlan, alias: "qemulab:seed", mtu: 1450, master: br1, addresses: [], up: true,
           vni: 1001, local: 192.0.2.11, remote: 192.0.2.12, port: 4789, learning: false, underlay_in_host: true}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils._vxlan import REQUIRED_IF, argument_spec, run_vxlan_module


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True, required_if=REQUIRED_IF)
    run_vxlan_module(module)


if __name__ == "__main__":
    main()
