#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: interface_info
short_description: List the interfaces of a namespace and which qemulab lab owns each
version_added: 0.1.0
description:
  - Reads every link of a network namespace with its kind, bridge, alias and owning lab (from the
    C(qemulab:<lab>) alias the plumbing modules set), and whether the namespace itself was created by the lab.
  - The teardown role uses it to find exactly what a lab created, even after an interrupted bring-up.
author:
  - qemulab developers (@qemulab)
requirements:
  - pyroute2
extends_documentation_fragment:
  - qemulab.network.netns.holder
options:
  netns:
    description:
      - Network namespace to read; empty for the current one. A namespace that does not exist has no interfaces.
      - Lower-case letters, digits and C(-), at most 32 characters.
    type: str
    default: ""
  lab:
    description: Only return interfaces owned by this lab; all interfaces when omitted. At most 15 characters.
    type: str
attributes:
  check_mode:
    description: Reports what would change without changing anything.
    support: full
  diff_mode:
    description: No diff is returned.
    support: none
"""

EXAMPLES = r"""
- name: Find what the seed lab created in its namespace
  qemulab.network.interface_info:
    netns: qemulab-seed
    lab: seed
  register: seed_links
"""

RETURN = r"""
interfaces:
  description: The interfaces, sorted by name.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "br1", "kind": "bridge", "master": null, "alias": "qemulab:seed", "owner": "seed", "up": true,
            "mac": "6e:1c:...", "tun": null},
           {"name": "vport11", "kind": "tun", "master": "br1", "alias": "qemulab:seed", "owner": "seed", "up": true,
            "mac": "...", "tun": {"type": "tap", "owner": null, "group": null, "multi_queue": false,
                                  "vnet_hdr": true, "persist": true}}]
netns_exists:
  description: Whether the namespace exists (always true for the current one).
  returned: always
  type: bool
netns_owned:
  description: Whether the namespace carries the mark of lab O(lab).
  returned: always
  type: bool
foreign:
  description: Names of the namespace's interfaces (other than C(lo)) that do not belong to lab O(lab); empty when
    O(lab) is not given. Teardown keeps a lab's namespace that holds any, so they survive.
  returned: always
  type: list
  elements: str
  sample: [docker0]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.qemulab.network.plugins.module_utils import _ownership as ownership
from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    NetlinkError,
    HolderNamespace,
    link_info,
    namespace_param,
    netlink,
    netns_exists,
    netns_identity,
)
from ansible_collections.qemulab.network.plugins.module_utils._netlink_options import HOLDER_ARGUMENT_SPEC
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name


def main():
    module = AnsibleModule(
        argument_spec=dict(netns=dict(type="str", default=""), lab=dict(type="str"), **HOLDER_ARGUMENT_SPEC),
        supports_check_mode=True,
    )
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    netns, lab = module.params["netns"], module.params["lab"]
    for field, value, kind in (("netns", netns, "netns"), ("lab", lab, "lab")):
        problem = check_name(value, kind) if value else None
        if problem:
            module.fail_json(msg="interface_info: %s: %s" % (field, problem))
    try:
        netns = namespace_param(module.params)
    except NetlinkError as exc:
        module.fail_json(msg="interface_info: %s" % exc)

    if netns and not netns_exists(netns):
        module.exit_json(changed=False, interfaces=[], netns_exists=False, netns_owned=False, foreign=[])

    netns_owned = False
    if netns and lab and not isinstance(netns, HolderNamespace):
        netns_owned = ownership.read_netns_owner(netns, netns_identity(netns)) == lab
    try:
        with netlink(netns or None) as ipr:
            links = [link_info(ipr, msg) for msg in ipr.get_links()]
    except NetlinkError as exc:
        module.fail_json(msg="interface_info: %s" % exc)

    interfaces, foreign = [], []
    for link in sorted(links, key=lambda item: item["name"]):
        owner = ownership.owner_from_alias(link["alias"])
        if lab and owner != lab:
            if link["name"] != "lo":
                foreign.append(link["name"])
            continue
        interfaces.append({"name": link["name"], "kind": link["kind"], "master": link["master"],
                           "alias": link["alias"], "owner": owner, "up": link["up"], "mac": link["mac"],
                           "tun": link["tun"]})
    module.exit_json(changed=False, interfaces=interfaces, netns_exists=True, netns_owned=netns_owned, foreign=foreign)


if __name__ == "__main__":
    main()
