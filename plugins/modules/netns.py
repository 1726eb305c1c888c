#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: netns
short_description: Create or delete a named network namespace owned by a qemulab lab
version_added: 0.1.0
description:
  - Makes a named network namespace (as C(ip netns add) makes, under C(/run/netns)) exist or not.
  - A namespace the lab creates gets a marker file C(/run/qemulab/_netns/<name>.owner) holding the lab name and
    the device, inode and cookie (C(SO_NETNS_COOKIE)) of the namespace, so a namespace someone else later creates
    under the same name is not taken for ours (the kernel reuses inode numbers; never a cookie). An existing
    namespace that is not this lab's (no marker, or another lab's) is neither adopted nor
    deleted unless O(force=true).
  - A new namespace is marked before it appears - a child process unshares it, writes C(qemulab:<lab>) as the alias
    of its C(lo), and only then bind-mounts it under C(/run/netns) - so a run killed at any point leaves either no
    namespace or one that names its lab. The next run of that lab writes the marker file of such a namespace (it is
    reported as a change of C(marker)). An empty file under C(/run/netns) that is not a mount (a create killed before
    its bind mount) is no namespace and is replaced.
  - Deleting a namespace deletes every interface in it (bridges, taps, veth ends).
  - O(sysctls) sets kernel parameters of the namespace itself (never of the host's namespace), for example to keep
    the host's bridge netfilter out of the lab's bridges.
author:
  - qemulab developers (@qemulab)
requirements:
  - pyroute2
extends_documentation_fragment:
  - qemulab.network.netns.ownership
options:
  name:
    description: Namespace name (lower-case letters, digits and C(-), starting with a letter or digit, at most 32 characters).
    type: str
    required: true
  state:
    description: Whether the namespace exists.
    type: str
    choices: [present, absent]
    default: present
  sysctls:
    description:
      - Kernel parameters to set inside the namespace, dotted keys (C(net.bridge.bridge-nf-call-iptables)) with their
        values; only the keys given are compared. Only with O(state=present).
      - A key the kernel does not offer in the namespace (C(net.bridge.*) while C(br_netfilter) is not loaded) is
        left alone and listed in RV(missing_sysctls).
    type: dict
    default: {}
attributes:
  check_mode:
    description: Reports what would change (C(changes), C(before), C(after)) without changing anything.
    support: full
  diff_mode:
    description: Returns C(before) and C(after) as the diff.
    support: full
"""

EXAMPLES = r"""
- name: The namespace the seed lab lives in
  qemulab.network.netns:
    name: qemulab-seed
    lab: seed

- name: Keep the host's iptables out of the lab's bridges (per namespace since Linux 5.3)
  qemulab.network.netns:
    name: qemulab-seed
    lab: seed
    sysctls:
      net.bridge.bridge-nf-call-iptables: 0

- name: Delete it (only if lab seed made it)
  qemulab.network.netns:
    name: qemulab-seed
    lab: seed
    state: absent
"""

RETURN = r"""
name:
  description: The namespace name.
  returned: always
  type: str
  sample: qemulab-seed
changes:
  description:
    - What differs (C(state), C(owner), C(marker) - the marker file of a namespace marked only inside,
      C(mountpoint) - with O(state=absent), the empty mount point a killed create left, removed).
  returned: always
  type: list
  elements: str
  sample: [state, owner]
before:
  description: The namespace as found (C(state), C(owner), and C(marker) - whether the marker file is there).
  returned: always
  type: dict
  sample: {state: absent, owner: null}
after:
  description: The namespace as left (in check mode, as it would be left).
  returned: always
  type: dict
  sample: {state: present, owner: seed}
missing_sysctls:
  description: Keys of O(sysctls) the kernel does not offer in the namespace (left alone).
  returned: always
  type: list
  elements: str
  sample: [net.bridge.bridge-nf-call-iptables]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.qemulab.network.plugins.module_utils._diff import DifferenceTracker
from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    NetlinkError,
    create_netns,
    delete_netns,
    netns_exists,
    netns_identity,
    read_netns_sysctls,
    remove_stale_netns_mountpoint,
    stale_netns_mountpoint,
    write_netns_sysctls,
)
from ansible_collections.qemulab.network.plugins.module_utils._ownership import (
    OWNERSHIP_ARGUMENT_SPEC,
    alias_for,
    foreign_object_error,
    read_netns_mark,
    read_netns_marker,
    remove_netns_owner,
    write_netns_owner,
)
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_lab_name, check_netns_name


def argument_spec():
    spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        sysctls=dict(type="dict", default={}),
    )
    spec.update(OWNERSHIP_ARGUMENT_SPEC)
    return spec


def read_netns(name, sysctl_keys=()):
    """{'state', 'owner', 'marker', 'sysctls'} of the namespace as it is now; the owner from the marker file, else
    from the mark inside (a namespace made by a run killed before it wrote the file)."""
    if not netns_exists(name):
        have = {"state": "absent", "owner": None, "marker": False, "sysctls": dict((key, None) for key in sysctl_keys)}
        if stale_netns_mountpoint(name):
            have["mountpoint"] = "stale"
        return have
    marker = read_netns_marker(name, netns_identity(name))
    return {"state": "present", "owner": marker or read_netns_mark(name), "marker": marker is not None,
            "sysctls": read_netns_sysctls(name, sysctl_keys)}


def plan_netns(name, have, lab, force, state, sysctls=None):
    """(tracker, error): what must change for namespace `name`."""
    tracker = DifferenceTracker()
    if have["state"] == "present" and have["owner"] != lab and not force:
        return None, foreign_object_error("namespace", name, "", have["owner"], lab, state)
    if state == "absent":
        if have["state"] == "present":
            tracker.add("state", "present", "absent")
            tracker.add("owner", have["owner"], None)
        elif have.get("mountpoint") == "stale":
            tracker.add("mountpoint", "stale", None)  # no namespace, only the file a killed create left
        return tracker, None
    tracker.compare("state", have["state"], "present")
    tracker.compare("owner", have["owner"], lab)
    if have["state"] == "present" and have["owner"] == lab and have.get("marker") is False:
        tracker.add("marker", False, True)
    for key, value in sorted((sysctls or {}).items()):
        if have["state"] == "present" and have["sysctls"].get(key) is None:
            continue  # the kernel offers no such key here: nothing to set
        want = str(int(value) if isinstance(value, bool) else value)
        tracker.compare("sysctls." + key, have["sysctls"].get(key), want)
    return tracker, None


def apply_netns(name, tracker, lab):
    """Make the changes; returns the sysctl keys the new namespace turned out not to offer."""
    if tracker.has("state") and tracker.get("state")[1] == "absent":
        delete_netns(name)
        remove_netns_owner(name)
        return []
    if tracker.has("mountpoint"):
        remove_stale_netns_mountpoint(name)
        return []
    if tracker.has("state"):
        remove_netns_owner(name)  # a stale marker of an earlier namespace of this name
        create_netns(name, lo_alias=alias_for(lab))
    if tracker.has("owner") or tracker.has("marker"):
        write_netns_owner(name, netns_identity(name), lab)
    values = dict((field[len("sysctls."):], tracker.get(field)[1]) for field in tracker.fields
                  if field.startswith("sysctls."))
    offered = read_netns_sysctls(name, values)
    missing = sorted(key for key in values if offered[key] is None)
    values = dict((key, value) for key, value in values.items() if key not in missing)
    if values:
        write_netns_sysctls(name, values)
    return missing


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    name, lab, state = module.params["name"], module.params["lab"], module.params["state"]
    for field, problem in (("name", check_netns_name(name)), ("lab", check_lab_name(lab))):
        if problem:
            module.fail_json(msg="namespace %s: %s: %s" % (name, field, problem))
    sysctls = module.params["sysctls"] if state == "present" else {}
    have = read_netns(name, sorted(sysctls))
    tracker, error = plan_netns(name, have, lab, module.params["force"], state, sysctls)
    if error:
        module.fail_json(msg=error)
    missing = sorted(key for key in sysctls if have["state"] == "present" and have["sysctls"][key] is None)
    if tracker.changed and not module.check_mode:
        try:
            missing = apply_netns(name, tracker, lab) or missing
        except (NetlinkError, OSError) as exc:
            module.fail_json(msg="namespace %s: %s" % (name, exc))
    after = dict(have, sysctls=dict(have["sysctls"]))
    for field in tracker.fields:
        if field.startswith("sysctls."):
            after["sysctls"][field[len("sysctls."):]] = tracker.get(field)[1]
        else:
            after[field] = tracker.get(field)[1]
    after["marker"] = after["state"] == "present" and bool(have.get("marker") or tracker.has("owner"))
    result = dict(changed=tracker.changed, name=name, changes=tracker.fields, before=have, after=after,
                  missing_sysctls=missing)
    if module._diff:
        result["diff"] = {"before": have, "after": after}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
