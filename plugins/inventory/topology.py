# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""topology: a lab's inventory from a short topology file; the compiler is plugins/plugin_utils/_topology.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: topology
short_description: A qemulab lab's inventory from a topology file (nodes and segments)
version_added: 0.1.0
description:
  - Reads a file whose name ends in C(.qemulab.yml) or C(.qemulab.yaml) listing a lab's nodes (routers and hosts)
    and segments, and produces the inventory a person would write by hand for the lab (see C(docs/inventory.md)),
    every value concrete - groups C(hypervisors), C(lab), C(routers) and C(hosts), connection variables, SSH ports,
    NICs with bridges, taps, MACs and addresses, the lab host's ports, static routes and gateways.
  - Static routes are computed by shortest router path (hop count); ties go to the next-hop router of lowest name;
    routes through one next hop are summarised only where the summary is exact; routes written on a node win.
    A host gets a default gateway, the router of lowest name on its segments. See C(docs/topology-files.md).
  - Every problem (a bad value, a name that breaks the name rule, a segment no router path reaches, a host with no
    router) fails the source, naming the file, the node or segment, the field, the value and the fix. The result is
    then checked by the same lab compiler that C(lab.yml) runs.
  - Enable it where C([inventory] enable_plugins) is set - add C(qemulab.network.topology), or keep C(auto), which
    loads it from the file's C(plugin) key.
options:
  plugin:
    description: The name of this plugin; the file's C(plugin) key.
    required: true
    type: str
    choices: [qemulab.network.topology]
  lab:
    description: The lab's name (C(lab_name)).
    required: true
    type: str
  netns:
    description: The lab's namespace (C(lab_netns)); default C(qemulab-<lab>), C("") for the root namespace.
    type: str
  pool:
    description: Segments without a C(subnet) get consecutive /24s of it, in file order, skipping given subnets.
    type: str
  ssh_port_base:
    description:
      - The first node's SSH port; each node gets this plus its position in C(nodes) unless it sets C(ssh_port).
      - Default a block of 100 ports in 20000-29999 chosen by the lab's name.
    type: int
  defaults:
    description: C(memory), C(vcpus) and C(image) for every node that does not set its own.
    type: dict
  vars:
    description: Further lab-wide variables (C(lab_qemu_user), C(lab_overcommit), role variables, ...).
    type: dict
  nodes:
    description:
      - Node name to C({role, memory, vcpus, image, ssh_port, forwarding, routes, gateway, nat, user_nics, vars}).
      - C(role) is C(router) or C(host).
    required: true
    type: dict
  segments:
    description:
      - A list of segments, each a list of members or C({members, subnet, name, model, vhost, mtu}).
      - A member is a node name, C(lab_host) (a veth host port of the lab host), or a one-key mapping from that name
        to overrides (C(address), C(mac), C(tap), C(model), C(vhost), C(mtu); C(address), C(name), C(peer) for
        C(lab_host)).
    required: true
    type: list
    elements: raw
"""

EXAMPLES = r"""
# tri.qemulab.yml; ansible-inventory -i tri.qemulab.yml --list
plugin: qemulab.network.topology
lab: tri
pool: 172.31.0.0/16
nodes:
  ra: {role: router}
  rb: {role: router}
  rc: {role: router}
  hb: {role: host}
segments:
  - [ra, rb]
  - [rb, rc]
  - {members: [rc, ra], model: e1000}
  - [ra, lab_host]
  - [rb, hb]
"""

import sys

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

from ansible_collections.qemulab.network.plugins.plugin_utils._topology import compile_topology

SUFFIXES = (".qemulab.yml", ".qemulab.yaml")


class InventoryModule(BaseInventoryPlugin):
    NAME = "qemulab.network.topology"
    # the file is the user's own inventory, trusted like a YAML inventory (Ansible 2.19 would otherwise hand every
    # string on as "unsafe", and `ansible-inventory --list` shows {"__ansible_unsafe": ...} to pytest-testinfra)
    trusted_by_default = True

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(SUFFIXES)

    def parse(self, inventory, loader, path, cache=False):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        # the file's own keys are the topology; the base class's option handling would only reject them
        data = self.loader.load_from_file(path, cache="none")
        # the lab host is this controller (local connection): its modules run with this very interpreter
        result = compile_topology(data, source=path, check_files=False, python=sys.executable)
        if result["errors"]:
            raise AnsibleParserError("%d problem(s) in the topology file:\n%s" % (
                len(result["errors"]), "\n".join(result["errors"])))
        for group in result["groups"]:
            self.inventory.add_group(group)
        for parent, children in result["children"].items():
            for child in children:
                self.inventory.add_child(parent, child)
        for group, members in result["groups"].items():
            for host in members:
                self.inventory.add_host(host, group=group)
        for host, values in result["host_vars"].items():
            self.inventory.add_host(host)
            for key, value in values.items():
                self.inventory.set_variable(host, key, value)
        for group, values in result["group_vars"].items():
            for key, value in values.items():
                self.inventory.set_variable(group, key, value)
