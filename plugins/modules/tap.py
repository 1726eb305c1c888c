#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: tap
short_description: Create, attach to a bridge, adjust or delete a persistent tap owned by a qemulab lab
version_added: 0.1.0
description:
  - Makes a persistent tap (as C(ip tuntap add mode tap) makes) match the declaration (existence, bridge, MTU,
    owner/group, multi-queue, up). Works in the host namespace or in a lab namespace, through netlink and
    C(/dev/net/tun) ioctls (C(TUNSETIFF), C(TUNSETOWNER), C(TUNSETGROUP), C(TUNSETPERSIST)).
  - A tap the lab creates gets the alias C(qemulab:<lab>). A tap of the same name that is not this lab's
    (unmarked or another lab's) is neither adopted nor deleted unless O(force=true).
  - The tap gets its alias before C(TUNSETPERSIST); until then it lives only as long as the module's tun descriptor,
    so a run killed before the alias leaves no tap at all. C(TUNSETIFF) is exclusive (C(IFF_TUN_EXCL)), so the
    module never attaches to a tap someone made after it looked.
  - O(owner), O(group) and O(multi_queue) are fixed when the tap is created. When an existing tap differs in one of
    them the task fails instead of recreating it under a running guest; delete it (O(state=absent)) first.
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
    description: Tap name (lower-case letters, digits and C(-), starting with a letter or digit, at most 15 characters).
    type: str
    required: true
  state:
    description: Whether the tap exists.
    type: str
    choices: [present, absent]
    default: present
  bridge:
    description:
      - Bridge the tap is a port of; it must exist in the same namespace. V("") detaches the tap from any bridge.
        Omit to leave it alone.
    type: str
  mtu:
    description: MTU of the tap. Omit to leave it alone.
    type: int
  owner:
    description: User (name or uid) allowed to open the tap without root. Omit for root only.
    type: str
  group:
    description: Group (name or gid) allowed to open the tap without root.
    type: str
  multi_queue:
    description: Create the tap with IFF_MULTI_QUEUE (needed for a guest NIC with more than one queue).
    type: bool
  vnet_hdr:
    description:
      - Create the tap with IFF_VNET_HDR. Only used at creation; QEMU sets this flag itself when it opens the tap,
        so it is not compared afterwards.
    type: bool
    default: false
  up:
    description: Bring the tap up (V(true)) or down (V(false)). V(null) leaves it alone.
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
- name: Tap vport11 on br1 in the lab namespace, as the seed's preparation script makes it
  qemulab.network.tap:
    name: vport11
    bridge: br1
    netns: qemulab-seed
    lab: seed

- name: A tap an unprivileged QEMU may open
  qemulab.network.tap:
    name: vport13
    bridge: br1
    owner: qemu
    lab: seed

- name: Delete it (only if lab seed made it)
  qemulab.network.tap:
    name: vport13
    lab: seed
    state: absent
"""

RETURN = r"""
name:
  description: The tap name.
  returned: always
  type: str
  sample: vport11
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
  sample: [state, alias, master, up]
before:
  description: The tap as found.
  returned: always
  type: dict
  sample: {state: absent}
after:
  description: The tap as left (in check mode, as it would be left).
  returned: always
  type: dict
  sample: {state: present, kind: tun, alias: "qemulab:seed", mtu: 1500, master: br1, addresses: [], up: true,
           owner: null, group: null, multi_queue: false}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils._link import run_link_module
from ansible_collections.qemulab.network.plugins.module_utils._link_kinds import tap_argument_spec as argument_spec
from ansible_collections.qemulab.network.plugins.module_utils._link_kinds import tap_hooks


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    try:
        hooks = tap_hooks(module.params)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    run_link_module(module, **hooks)


if __name__ == "__main__":
    main()
