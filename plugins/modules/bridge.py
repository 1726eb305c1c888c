#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: bridge
short_description: Create, adjust or delete a Linux bridge owned by a qemulab lab
version_added: 0.1.0
description:
  - Makes a Linux bridge match the declaration (existence, MTU, STP, addresses, up), in the host namespace or in a
    lab namespace, through netlink. Only the options given are compared.
  - A bridge the lab creates gets the alias C(qemulab:<lab>). A bridge of the same name that is not this lab's
    (unmarked or another lab's) is neither adopted nor deleted unless O(force=true).
  - A new bridge carries the lab's pending mark as its device group from the create request on (the kernel ignores an
    alias there); its alias and group 0 follow in one request. A run killed in between leaves a bridge the next run of
    the lab recognises as its own and marks, never an unmarked one.
author:
  - qemulab developers (@qemulab)
requirements:
  - pyroute2
extends_documentation_fragment:
  - qemulab.network.netns
  - qemulab.network.netns.holder
  - qemulab.network.netns.ownership
options:
  name:
    description: Bridge name (lower-case letters, digits and C(-), starting with a letter or digit, at most 15 characters).
    type: str
    required: true
  state:
    description: Whether the bridge exists.
    type: str
    choices: [present, absent]
    default: present
  mtu:
    description: MTU of the bridge. Omit to leave it alone.
    type: int
  stp:
    description: Spanning tree on or off. Omit to leave it alone (the kernel creates bridges with STP off).
    type: bool
  arp_ignore:
    description:
      - The bridge device's own C(net.ipv4.conf.<bridge>.arp_ignore). With the kernel's default C(0) the bridge
        answers ARP requests that arrive on the segment for any address of its namespace, also one that lives on
        another interface (a host port's veth end). A guest that takes that answer sends its replies to the bridge
        device instead of the port, and they are lost to a socket bound to the port until the guest's ARP entry
        expires. C(1) answers only for addresses on the bridge itself, which makes a lab segment a plain layer-2
        segment. Omit to leave it alone; the lab's host_prep role sets C(1).
    type: int
    choices: [0, 1, 2, 3, 8]
  addresses:
    description:
      - Exactly the addresses (CIDR, like C(10.20.10.1/24)) the bridge carries; others are removed. Omit to leave
        addresses alone. IPv6 link-local addresses the kernel adds are ignored.
    type: list
    elements: str
  up:
    description: Bring the bridge up (V(true)) or down (V(false)). V(null) leaves it alone.
    type: bool
    default: true
attributes:
  check_mode:
    description: Reports what would change (C(changes), C(before), C(after)) without changing anything.
    support: full
  diff_mode:
    description: Returns C(before) and C(after) as the diff.
    support: full
"""

EXAMPLES = r"""
- name: The seed's first segment, inside the lab namespace
  qemulab.network.bridge:
    name: br1
    netns: qemulab-seed
    lab: seed

- name: Remove it again (only if lab seed made it)
  qemulab.network.bridge:
    name: br1
    netns: qemulab-seed
    lab: seed
    state: absent
"""

RETURN = r"""
name:
  description: The bridge name.
  returned: always
  type: str
  sample: br1
netns:
  description: The namespace worked in (null for the host's).
  returned: always
  type: str
  sample: qemulab-seed
changes:
  description: Fields that differ (and are, or in check mode would be, changed); C(state) for creation/deletion.
  returned: always
  type: list
  elements: str
  sample: [state, alias, up]
before:
  description: The bridge as found (C(state) absent or present, and its fields).
  returned: always
  type: dict
  sample: {state: absent}
after:
  description: The bridge as left (in check mode, as it would be left).
  returned: always
  type: dict
  sample: {state: present, kind: bridge, alias: "qemulab:seed", mtu: 1500, master: "", addresses: [], up: true,
           stp: false, arp_ignore: 1}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils._link import run_link_module
from ansible_collections.qemulab.network.plugins.module_utils._link_kinds import bridge_argument_spec as argument_spec
from ansible_collections.qemulab.network.plugins.module_utils._link_kinds import bridge_hooks


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    run_link_module(module, **bridge_hooks(module.params))


if __name__ == "__main__":
    main()
