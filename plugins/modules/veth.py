#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: veth
short_description: Create, adjust or delete a veth pair owned by a qemulab lab, its ends in any namespaces
version_added: 0.1.0
description:
  - Makes a veth pair match the declaration. Each end has its own namespace, bridge, addresses and up state, so one
    end can be a port of a lab bridge inside the lab namespace while the other carries a host-side address
    elsewhere (the seed's C(veth0) on C(br1) and C(veth1) with C(10.20.10.4/24)).
  - An end found in the other end's namespace is moved where it is declared (it loses its addresses and bridge
    there, which are then set again).
  - Both ends get the alias C(qemulab:<lab>). A pair that is not this lab's (unmarked or another lab's) is neither
    adopted nor deleted unless O(force=true). Deleting either end deletes the pair.
  - A new pair carries the lab's pending mark as both ends' device group from the create request on (the kernel
    ignores an alias there); each end's alias and group 0 follow in one request. A run killed in between leaves ends
    the next run of the lab recognises as its own and marks, never unmarked ones.
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
    description: Name of the first end (lower-case letters, digits and C(-), at most 15 characters), in O(netns).
    type: str
    required: true
  peer:
    description: Name of the other end. Required with O(state=present).
    type: str
  state:
    description: Whether the pair exists.
    type: str
    choices: [present, absent]
    default: present
  mtu:
    description: MTU of both ends. Omit to leave it alone.
    type: int
  bridge:
    description: Bridge (in O(netns)) the first end is a port of; V("") for none. Omit to leave it alone.
    type: str
  addresses:
    description: Exactly the addresses (CIDR) the first end carries. Omit to leave them alone.
    type: list
    elements: str
  up:
    description: Bring the first end up (V(true)) or down (V(false)); V(null) leaves it alone.
    type: bool
    default: true
  peer_netns:
    description:
      - Namespace of the other end. Omit for the same namespace as O(name); V("") for the host's namespace.
      - Must be omitted with O(userns_pid) - both ends then lie in the rootless lab's namespace (a user cannot move
        a link into the host's namespace).
    type: str
  peer_bridge:
    description: Bridge (in O(peer_netns)) the other end is a port of; V("") for none. Omit to leave it alone.
    type: str
  peer_addresses:
    description: Exactly the addresses (CIDR) the other end carries, like C(10.20.10.4/24). Omit to leave them alone.
    type: list
    elements: str
  peer_up:
    description: Bring the other end up (V(true)) or down (V(false)); V(null) leaves it alone.
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
- name: The seed's host port, veth0 on br1 in the lab namespace, veth1 with the host-side address
  qemulab.network.veth:
    name: veth0
    netns: qemulab-seed
    bridge: br1
    peer: veth1
    peer_netns: qemulab-seed-host
    peer_addresses: [10.20.10.4/24]
    lab: seed

- name: Delete the pair (only if lab seed made it)
  qemulab.network.veth:
    name: veth0
    netns: qemulab-seed
    lab: seed
    state: absent
"""

RETURN = r"""
name:
  description: Name of the first end.
  returned: always
  type: str
  sample: veth0
peer:
  description: Name of the other end.
  returned: always
  type: str
  sample: veth1
changes:
  description: Fields that differ; those of the other end start with C(peer_); C(peer_netns) means a move.
  returned: always
  type: list
  elements: str
  sample: [state, alias, master, up, peer_state, peer_alias, peer_addresses, peer_up]
before:
  description: Both ends as found, under C(end) and C(peer).
  returned: always
  type: dict
  sample: {end: {state: absent}, peer: {state: absent}}
after:
  description: Both ends as left (in check mode, as they would be left).
  returned: always
  type: dict
  sample: {end: {state: present, master: br1}, peer: {state: present, addresses: [10.20.10.4/24]}}
"""

import contextlib

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.qemulab.network.plugins.module_utils._link import (
    apply_link,
    check_bridge,
    link_view,
    new_tracker,
    param_errors,
    plan_link,
    predicted_view,
    read_link,
    want_link,
)
from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    NETNS_OR_HOLDER_ARGUMENT_SPEC,
    PYROUTE2_IMPORT_ERROR,
    NetlinkError,
    add_veth,
    delete_link,
    move_link,
    namespace_param,
    netlink,
    netns_exists,
)
from ansible_collections.qemulab.network.plugins.module_utils._ownership import OWNERSHIP_ARGUMENT_SPEC, pending_group

# After a move the kernel has flushed the moved end's addresses, bridge and up state.
MOVED_RESET = {"master": "", "addresses": [], "up": False}


def argument_spec():
    spec = dict(
        name=dict(type="str", required=True),
        peer=dict(type="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        mtu=dict(type="int"),
        bridge=dict(type="str"),
        addresses=dict(type="list", elements="str"),
        up=dict(type="bool", default=True),
        peer_netns=dict(type="str"),
        peer_bridge=dict(type="str"),
        peer_addresses=dict(type="list", elements="str"),
        peer_up=dict(type="bool", default=True),
    )
    spec.update(NETNS_OR_HOLDER_ARGUMENT_SPEC)
    spec.update(OWNERSHIP_ARGUMENT_SPEC)
    return spec


def is_pair(end, peer):
    """Whether two veth links are each other's peer (IFLA_LINK holds the peer's index in its own namespace)."""
    return (end is not None and peer is not None and end["kind"] == "veth" and peer["kind"] == "veth"
            and end["peer_index"] == peer["index"] and peer["peer_index"] == end["index"])


def namespaces(params):
    end_ns = params["netns"] or None
    peer_ns = params["peer_netns"] if params["peer_netns"] is not None else params["netns"]
    return end_ns, (peer_ns or None)


def locate(ipr_end, ipr_peer, name, peer, end_ns, peer_ns, tracker):
    """Read both ends; an end sitting in the other end's namespace is planned to move. Returns (end, peer)."""
    end = read_link(ipr_end, name)
    other = read_link(ipr_peer, peer) if peer else None
    if end_ns == peer_ns or not peer:
        return end, other
    if end is not None and other is None:
        stray = read_link(ipr_end, peer)
        if is_pair(end, stray):
            tracker.add("peer_netns", end_ns, peer_ns)
            other = dict(stray, **MOVED_RESET)
    elif other is not None and end is None:
        stray = read_link(ipr_peer, name)
        if is_pair(stray, other):
            tracker.add("netns", peer_ns, end_ns)
            end = dict(stray, **MOVED_RESET)
    return end, other


def pair_error(name, peer, end, other, end_ns, peer_ns):
    def where(ns):
        return "namespace %s" % ns if ns else "the host namespace"
    if end is not None and other is not None and not is_pair(end, other):
        return ("veth %s: %s (in %s) and %s (in %s) both exist but are not one veth pair; pick other names or "
                "remove them" % (name, name, where(end_ns), peer, where(peer_ns)))
    if end is not None and other is None:
        return ("veth %s: exists in %s but its peer %s is not in %s; delete the pair (state: absent) and create "
                "it again, or fix peer/peer_netns" % (name, where(end_ns), peer, where(peer_ns)))
    if other is not None and end is None:
        return ("veth %s: the peer %s exists in %s without %s in %s; pick another peer name or remove %s"
                % (name, peer, where(peer_ns), name, where(end_ns), peer))
    return None


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_if=[("state", "present", ("peer",))])
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    params = module.params
    name, peer, state, lab, force = params["name"], params["peer"], params["state"], params["lab"], params["force"]
    errors = param_errors("veth", name, params)
    if peer:
        errors += param_errors("veth", peer, params, prefix="peer_")
    if errors:
        module.fail_json(msg="; ".join(errors), errors=errors)
    if params.get("userns_pid") is not None:
        if params["peer_netns"] is not None:
            module.fail_json(msg="veth %s: peer_netns %r and userns_pid %s: with a rootless lab's holder both ends lie "
                                 "in its namespace; omit peer_netns" % (name, params["peer_netns"], params["userns_pid"]))
        try:
            # a rootless lab's namespace, used wherever its name would be; both ends in it
            params["netns"] = namespace_param(params)
        except NetlinkError as exc:
            module.fail_json(msg="veth %s: %s" % (name, exc))
    end_ns, peer_ns = namespaces(params)
    missing = [ns for ns in (end_ns, peer_ns) if ns and not netns_exists(ns)]
    warnings = []
    if missing:
        if state == "absent" and end_ns in missing:
            module.exit_json(changed=False, name=name, peer=peer, changes=[], before={"end": {"state": "absent"}},
                             after={"end": {"state": "absent"}})
        problem = ("veth %s: namespace %s does not exist; create it first with qemulab.network.netns"
                   % (name, ", ".join(sorted(set(missing)))))
        if not module.check_mode:
            module.fail_json(msg=problem)
        warnings.append(problem + " (check mode: assuming an earlier task creates it)")

    tracker = new_tracker()
    end = other = None
    try:
        with contextlib.ExitStack() as stack:
            if missing:
                ipr_end = ipr_peer = None
            else:
                ipr_end = stack.enter_context(netlink(end_ns))
                ipr_peer = ipr_end if peer_ns == end_ns else stack.enter_context(netlink(peer_ns))
                end, other = locate(ipr_end, ipr_peer, name, peer, end_ns, peer_ns, tracker)
            if state == "present":
                error = pair_error(name, peer, end, other, end_ns, peer_ns)
                if error:
                    module.fail_json(msg=error)
            error = plan_link(tracker, "veth", name, end_ns, end, want_link(params), lab, force, state, ("veth",))
            if not error and peer and (state == "present" or end is None):
                error = plan_link(tracker, "veth", peer, peer_ns, other, want_link(params, "peer_"), lab, force, state,
                                  ("veth",), prefix="peer_")
            if error:
                module.fail_json(msg=error)
            for field, ipr, ns in (("bridge", ipr_end, end_ns), ("peer_bridge", ipr_peer, peer_ns)):
                if state == "present":
                    error = check_bridge(ipr, "veth", name, field, params[field], ns, module.check_mode, warnings)
                    if error:
                        module.fail_json(msg=error)
            if tracker.changed and not module.check_mode:
                if state == "absent":
                    if tracker.has("state"):
                        delete_link(ipr_end, name)
                    elif tracker.has("peer_state"):
                        delete_link(ipr_peer, peer)
                else:
                    if tracker.has("peer_netns"):
                        move_link(ipr_end, peer, peer_ns)
                    if tracker.has("netns"):
                        move_link(ipr_peer, name, end_ns)
                    apply_link(ipr_end, name, tracker,
                               lambda: add_veth(ipr_end, name, peer, peer_ns, same_netns=peer_ns == end_ns,
                                                group=pending_group(lab)))
                    apply_link(ipr_peer, peer, tracker, lambda: None, prefix="peer_")
    except NetlinkError as exc:
        module.fail_json(msg="veth %s: %s" % (name, exc))

    before = {"end": link_view(end), "peer": link_view(other)}
    after = {"end": predicted_view(end, tracker), "peer": predicted_view(other, tracker, prefix="peer_")}
    if state == "absent":
        after = {"end": {"state": "absent"}, "peer": {"state": "absent"}}
    for view in after.values():
        if view["state"] == "present":
            view["kind"] = "veth"
    for warning in warnings:   # module.warn, not a result key: ansible-core deprecates exit_json(warnings=)
        module.warn(warning)
    result = dict(changed=tracker.changed, name=name, peer=peer, changes=tracker.fields, before=before, after=after)
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
