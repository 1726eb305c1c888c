#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: links
short_description: Many bridges and taps of a lab in one task, each exactly as the bridge and tap modules make it
version_added: 0.1.0
description:
  - Runs M(qemulab.network.bridge)'s task for each item of O(bridges), then M(qemulab.network.tap)'s for each item of
    O(taps) (so a tap finds its bridge), with the same checks, ownership marks, idempotence and results, over one
    netlink socket per namespace.
  - A lab brings up a dozen or more such objects; one module run per object cost the seed lab about 7 s of Python
    starts on the lab host. The host_prep role uses this module.
  - Every item is planned (as in check mode) before any is made. If one would fail (a foreign object of that name, a
    bad value, or a tap whose bridge fails), the task fails naming every such item and changes nothing.
  - With O(mark_pending=true) it first marks every link of O(lab) in O(netns) that a killed run made but could not
    mark (a bridge or veth end that still carries the lab's pending mark as its device group and no alias; see
    M(qemulab.network.bridge)), and lists them in RV(marked). The teardown role runs it so, with no items, before it
    reads what the lab owns, so such a link is removed with the lab. (An item is marked so by its own task anyway.)
author:
  - qemulab developers (@qemulab)
requirements:
  - pyroute2
options:
  bridges:
    description:
      - Bridges, each a dictionary of M(qemulab.network.bridge)'s options (validated as that module validates them).
        O(netns) and O(lab) fill in an item's C(netns) and C(lab) when it has none.
    type: list
    elements: dict
    default: []
  taps:
    description: Taps, each a dictionary of M(qemulab.network.tap)'s options, handled after the bridges.
    type: list
    elements: dict
    default: []
  netns:
    description: Namespace of the items that name none; empty for the host namespace.
    type: str
    default: ""
  userns_pid:
    description:
      - A rootless lab's namespace for the items that name no namespace, by its M(qemulab.network.lab_userns)
        holder's pid (see M(qemulab.network.bridge)'s O(qemulab.network.bridge#module:userns_pid)); excludes
        O(netns). One netlink socket through the holder serves every such item.
    type: int
  lab:
    description: Lab of the items that name none (lower-case letters, digits and C(-), at most 15 characters).
    type: str
    default: default
  mark_pending:
    description: First mark the links of O(lab) in O(netns) that carry only its pending mark (see RV(marked)).
    type: bool
    default: false
attributes:
  check_mode:
    description: Reports what each item's module would change, changing nothing.
    support: full
  diff_mode:
    description: Returns each object's before and after, by name.
    support: full
"""

EXAMPLES = r"""
- name: Two segments of the seed lab and the taps of rt1 on them
  qemulab.network.links:
    netns: qlab-seed
    lab: seed
    bridges:
      - {name: br1, arp_ignore: 1}
      - {name: br2, arp_ignore: 1}
    taps:
      - {name: vport11, bridge: br1}
      - {name: vport21, bridge: br2, owner: qemulab}
"""

RETURN = r"""
bridges:
  description: One result per item of O(bridges), as M(qemulab.network.bridge) returns it (C(name), C(changed),
    C(changes), C(before), C(after)), with C(failed) and C(msg) for an item that failed.
  returned: always
  type: list
  elements: dict
taps:
  description: One result per item of O(taps), as M(qemulab.network.tap) returns it.
  returned: always
  type: list
  elements: dict
marked:
  description: Links of O(lab) in O(netns) a killed run had left with only the pending mark, now marked (in check
    mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: [br1]
"""

import contextlib

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.qemulab.network.plugins.module_utils._diff import finish_items
from ansible_collections.qemulab.network.plugins.module_utils._link import (
    LinkTaskError,
    finish_pending_marks,
    link_task,
    param_errors,
)
from ansible_collections.qemulab.network.plugins.module_utils._link_kinds import (
    bridge_argument_spec,
    bridge_hooks,
    tap_argument_spec,
    tap_hooks,
)
from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    NetlinkError,
    namespace_param,
    netlink,
    netns_exists,
)
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name


def run_items(kind, items, spec, hooks_for, defaults, check_mode, sockets, failed_bridges):
    results = []
    validator = ArgumentSpecValidator(spec)
    for index, item in enumerate(items):
        item = dict(item)
        for key, value in defaults.items():
            if item.get(key) is None:
                item[key] = value
        name = item.get("name")
        checked = validator.validate(item)
        if checked.error_messages:
            results.append(dict(name=name, failed=True, changed=False, msg="%ss[%d] (%s): %s" % (
                kind, index, name, "; ".join(checked.error_messages))))
            continue
        params = checked.validated_parameters
        errors = param_errors(kind, name, params)
        if errors:  # before a namespace of that name is opened
            results.append(dict(name=name, failed=True, changed=False, msg="; ".join(errors), errors=errors))
            continue
        if kind == "tap" and params.get("bridge") in failed_bridges:
            results.append(dict(name=name, failed=True, changed=False,
                                msg="tap %s: its bridge %s failed (see that error)" % (name, params["bridge"])))
            continue
        try:
            result = link_task(params, check_mode=check_mode, ipr=sockets(params), **hooks_for(params))
        except (ValueError, LinkTaskError) as exc:
            result = dict(name=name, failed=True, changed=False, msg=getattr(exc, "msg", str(exc)))
        except NetlinkError as exc:
            result = dict(name=name, failed=True, changed=False, msg="%s %s: %s" % (kind, name, exc))
        results.append(result)
    return results


def main():
    module = AnsibleModule(argument_spec=dict(
        bridges=dict(type="list", elements="dict", default=[]),
        taps=dict(type="list", elements="dict", default=[]),
        netns=dict(type="str", default=""),
        userns_pid=dict(type="int"),
        lab=dict(type="str", default="default"),
        mark_pending=dict(type="bool", default=False),
    ), supports_check_mode=True)
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    for field, kind in (("netns", "netns"), ("lab", "lab")):
        problem = check_name(module.params[field], kind) if module.params[field] else None
        if problem:
            module.fail_json(msg="links: %s: %s" % (field, problem))
    defaults = {"netns": module.params["netns"], "lab": module.params["lab"]}
    if module.params["userns_pid"] is not None:
        defaults = {"userns_pid": module.params["userns_pid"], "lab": module.params["lab"]}
    with contextlib.ExitStack() as stack:
        opened = {}

        def sockets(params):
            """One netlink socket per namespace (a name, or a rootless lab's holder), kept for the whole task; None
            lets link_task report a missing one."""
            netns = namespace_param(params) or ""
            if netns not in opened:
                opened[netns] = stack.enter_context(netlink(netns)) if not netns or netns_exists(netns) else None
            return opened[netns]

        try:
            own = sockets(module.params) if module.params["mark_pending"] else None
            marked = finish_pending_marks(own, module.params["lab"], module.check_mode) if own is not None else []
            # Every object is planned (check mode) before any is made: a foreign br3 or a bad tap fails the task
            # with the host as it was, not after br1 and br2 were created.
            for check_mode in [True] if module.check_mode else [True, False]:
                bridges = run_items("bridge", module.params["bridges"], bridge_argument_spec(), bridge_hooks,
                                    defaults, check_mode, sockets, set())
                failed_bridges = set(r["name"] for r in bridges if r.get("failed"))
                taps = run_items("tap", module.params["taps"], tap_argument_spec(), tap_hooks, defaults,
                                 check_mode, sockets, failed_bridges)
                if failed_bridges or any(r.get("failed") for r in taps):
                    break
        except NetlinkError as exc:
            module.fail_json(msg=str(exc))
    finish_items(module, bridges + taps + [dict(name=name, changed=True) for name in marked], bridges=bridges,
                 taps=taps, marked=marked)


if __name__ == "__main__":
    main()
