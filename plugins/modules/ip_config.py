#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ip_config
short_description: Make a Linux host's live IPv4 addresses, static routes and forwarding match a declaration
version_added: 0.1.0
description:
  - Reads the addresses of the listed interfaces and the gateway routes leaving through them, compares them with
    what is declared and applies only the difference, live, without restarting anything.
  - Runs inside lab guests (the guest_network role) and on the lab host for host ports. Only the listed interfaces
    are touched, so a guest's management NIC and the host's own interfaces keep their configuration.
author:
  - qemulab developers (@qemulab)
requirements:
  - pyroute2 (Debian's python3-pyroute2 inside guests)
extends_documentation_fragment:
  - qemulab.network.netns.holder
options:
  interfaces:
    description:
      - Interfaces to manage. Each is brought up.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Interface name (lower-case letters, digits and C(-), at most 15 characters, like C(eth1)).
        type: str
        required: true
      addresses:
        description:
          - IPv4 addresses in CIDR form the interface must carry. Omit to leave its addresses alone.
        type: list
        elements: str
  routes:
    description:
      - Static routes that leave through the listed interfaces. C(to) is a network in CIDR form or C(default);
        C(via) is the gateway, which must be on a subnet of one of the interfaces.
    type: list
    elements: dict
    default: []
    suboptions:
      to:
        description: Destination network.
        type: str
        required: true
      via:
        description: Gateway address.
        type: str
        required: true
      dev:
        description: Interface the route leaves through; the kernel picks it from the gateway's subnet when omitted.
        type: str
  purge_addresses:
    description: Remove addresses of listed interfaces that are not declared.
    type: bool
    default: true
  purge_routes:
    description: Remove gateway routes leaving through listed interfaces that are not declared.
    type: bool
    default: true
  forwarding:
    description:
      - Set C(net.ipv4.ip_forward). Omit to leave it alone. Not available together with O(netns).
    type: bool
  netns:
    description: Network namespace to work in; empty for the current one. Lower-case letters, digits and C(-).
    type: str
    default: ""
attributes:
  check_mode:
    description: Reports what would change without changing anything.
    support: full
  diff_mode:
    description: Returns the state before and after.
    support: full
"""

EXAMPLES = r"""
- name: Configure rt2 as the seed does
  qemulab.network.ip_config:
    interfaces:
      - name: eth0
        addresses: [10.20.20.2/24]
      - name: eth1
        addresses: [10.20.40.2/24]
    routes:
      - {to: 10.20.10.0/24, via: 10.20.20.1}
      - {to: 10.20.60.0/24, via: 10.20.40.1}
    forwarding: true

- name: Give a lab host port in a namespace a route to a far segment
  qemulab.network.ip_config:
    netns: qemulab-seed
    interfaces:
      - name: veth1
    routes:
      - {to: 10.20.60.0/24, via: 10.20.10.1}
"""

RETURN = r"""
changes:
  description: What was (or, in check mode, would be) done, in order.
  returned: always
  type: list
  elements: str
  sample: ["route_add 10.20.60.0/24 via 10.20.40.1"]
diff:
  description: Addresses, routes and forwarding before and after.
  returned: always
  type: dict
"""


from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.qemulab.network.plugins.module_utils import _addressing as addressing
from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    NetlinkError,
    namespace_param,
    netlink,
)
from ansible_collections.qemulab.network.plugins.module_utils._netlink_options import HOLDER_ARGUMENT_SPEC
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_ifname, check_netns_name

FORWARDING = "/proc/sys/net/ipv4/ip_forward"


def describe(action, item):
    if action.startswith("route"):
        return "%s %s via %s" % (action, item["to"], item["via"])
    if action.startswith("addr"):
        return "%s %s %s" % (action, item["name"], item["address"])
    return "%s %s" % (action, item["name"])


def normalize(module):
    if module.params["netns"]:
        problem = check_netns_name(module.params["netns"])
        if problem:
            module.fail_json(msg="ip_config: netns: %s" % problem)
    interfaces, routes = [], []
    for i, iface in enumerate(module.params["interfaces"]):
        problem = check_ifname(iface["name"])
        if problem:
            module.fail_json(msg="interfaces[%d]: name: %s" % (i, problem))
        addresses = iface.get("addresses")
        if addresses is not None:
            try:
                addresses = sorted(set(addressing.normalize_address(a) for a in addresses))
            except ValueError as exc:
                module.fail_json(msg="interfaces[%d] (%s): addresses: %s; write them like 10.20.10.1/24"
                                 % (i, iface["name"], exc))
        interfaces.append({"name": iface["name"], "addresses": addresses})
    names = set(i["name"] for i in interfaces)
    for i, route in enumerate(module.params["routes"]):
        try:
            to, via = addressing.normalize_route(route)
        except ValueError as exc:
            module.fail_json(msg="routes[%d]: %s; write it like {to: 10.20.60.0/24, via: 10.20.20.2}" % (i, exc))
        if route.get("dev") and route["dev"] not in names:
            module.fail_json(msg="routes[%d]: dev %s is not one of the listed interfaces %s"
                             % (i, route["dev"], sorted(names)))
        routes.append({"to": to, "via": via, "dev": route.get("dev")})
    return interfaces, routes


def main():
    module = AnsibleModule(
        argument_spec=dict(
            interfaces=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                addresses=dict(type="list", elements="str"),
            )),
            routes=dict(type="list", elements="dict", default=[], options=dict(
                to=dict(type="str", required=True),
                via=dict(type="str", required=True),
                dev=dict(type="str"),
            )),
            purge_addresses=dict(type="bool", default=True),
            purge_routes=dict(type="bool", default=True),
            forwarding=dict(type="bool"),
            netns=dict(type="str", default=""),
            **HOLDER_ARGUMENT_SPEC
        ),
        mutually_exclusive=[("forwarding", "netns"), ("forwarding", "userns_pid")],
        supports_check_mode=True,
    )
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)

    interfaces, routes = normalize(module)
    names = [i["name"] for i in interfaces]
    changes = []
    try:
        netns = namespace_param(module.params)
        with netlink(netns) as ipr:
            have = addressing.read_state(ipr, names)
            missing = [n for n in names if n not in have["interfaces"]]
            if missing:
                where = " in namespace " + netns if netns else ""
                module.fail_json(msg="interface(s) %s do not exist%s; check the VM's NICs (vm_nics) or the host "
                                 "port names" % (", ".join(missing), where))
            changes = addressing.plan(have, interfaces, routes, module.params["purge_addresses"],
                                      module.params["purge_routes"])
            if changes and not module.check_mode:
                addressing.apply(ipr, changes)
    except NetlinkError as exc:
        module.fail_json(msg="ip_config: %s" % exc)
    except Exception as exc:  # pyroute2 raises its own NetlinkError types on apply
        module.fail_json(msg="ip_config: applying %s failed: %s" % ([describe(*c) for c in changes], exc))

    before = {
        "addresses": dict((n, v["addresses"]) for n, v in have["interfaces"].items()),
        "routes": ["%s via %s" % (r["to"], r["via"]) for r in have["routes"]],
    }
    after = {"addresses": dict(before["addresses"]), "routes": list(before["routes"])}
    for iface in interfaces:
        if iface["addresses"] is not None:
            kept = iface["addresses"] if module.params["purge_addresses"] else sorted(
                set(iface["addresses"]) | set(before["addresses"][iface["name"]]))
            after["addresses"][iface["name"]] = kept
    after["routes"] = sorted(set(
        (["%s via %s" % (r["to"], r["via"]) for r in routes])
        + ([] if module.params["purge_routes"] else before["routes"])))
    before["routes"] = sorted(before["routes"])

    forwarding = module.params["forwarding"]
    if forwarding is not None:
        with open(FORWARDING) as f:
            current = f.read().strip() == "1"
        before["forwarding"] = current
        after["forwarding"] = forwarding
        if current != forwarding:
            changes.append(("forwarding", {"name": "net.ipv4.ip_forward=%d" % int(forwarding)}))
            if not module.check_mode:
                with open(FORWARDING, "w") as f:
                    f.write("1\n" if forwarding else "0\n")

    module.exit_json(changed=bool(changes), changes=[describe(*c) for c in changes],
                     diff={"before": before, "after": after})


if __name__ == "__main__":
    main()
