# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is particular to a bridge and to a tap: their options, how each is created, and the fields only they have.

The bridge and tap modules (one object per task) and the links module (many per task) use the same hooks, so an
object comes out the same whichever made it. _link does the common reading, comparing and applying.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import pwd

from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    NETNS_OR_HOLDER_ARGUMENT_SPEC,
    add_bridge,
    add_tap,
    read_netns_sysctls,
    set_bridge_stp,
    write_netns_sysctls,
)
from ansible_collections.qemulab.network.plugins.module_utils._ownership import (
    OWNERSHIP_ARGUMENT_SPEC,
    alias_for,
    pending_group,
)

TAP_CREATION_FIELDS = ("owner", "group", "multi_queue")


def _link_argument_spec(**own):
    """The options every link module has (name, state, mtu, up, netns or userns_pid, lab, force) plus the kind's
    `own`."""
    spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        mtu=dict(type="int"),
        up=dict(type="bool", default=True),
    )
    spec.update(own)
    spec.update(NETNS_OR_HOLDER_ARGUMENT_SPEC)
    spec.update(OWNERSHIP_ARGUMENT_SPEC)
    return spec


def bridge_argument_spec():
    return _link_argument_spec(
        stp=dict(type="bool"),
        arp_ignore=dict(type="int", choices=[0, 1, 2, 3, 8]),
        addresses=dict(type="list", elements="str"),
    )


def tap_argument_spec():
    return _link_argument_spec(
        bridge=dict(type="str"),
        owner=dict(type="str"),
        group=dict(type="str"),
        multi_queue=dict(type="bool"),
        vnet_hdr=dict(type="bool", default=False),
    )


def bridge_hooks(params):
    """link_task's keyword arguments for a bridge: kind, creation, STP and arp_ignore."""
    stp, arp_ignore = params["stp"], params["arp_ignore"]
    key = "net.ipv4.conf.%s.arp_ignore" % params["name"]

    def plan_extra(tracker, have):
        if stp is not None:
            tracker.compare("stp", have["stp"] if have is not None else False, stp)
        if have is not None and have.get("kind") == "bridge":
            current = read_netns_sysctls(params["netns"], [key])[key]
            have["arp_ignore"] = int(current) if current is not None else None
        if arp_ignore is not None:
            # a new bridge starts with the namespace's default, 0 unless someone changed it
            tracker.compare("arp_ignore", have.get("arp_ignore") if have is not None else 0, arp_ignore)
        return None

    def apply_extra(ipr, tracker):
        if tracker.has("stp"):
            set_bridge_stp(ipr, params["name"], stp)
        if tracker.has("arp_ignore"):
            write_netns_sysctls(params["netns"], {key: arp_ignore})

    # made with the lab's pending mark as its group: a kill before the alias leaves it recognisably the lab's
    return dict(kind="bridge", expected_kinds=("bridge",),
                create=lambda ipr: add_bridge(ipr, params["name"], group=pending_group(params["lab"])),
                plan_extra=plan_extra, apply_extra=apply_extra, extra_fields=("stp", "arp_ignore"))


def resolve_id(value, lookup, what):
    """uid/gid from a name or a number; ValueError naming the field when there is no such user/group."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return lookup(value)[2]
    except KeyError:
        raise ValueError("%s %r does not exist on this host; create it or give a numeric id" % (what, value))


def tap_view(have):
    """The creation-time fields of an existing tap, as compared."""
    tun = (have or {}).get("tun") or {}
    return {"owner": tun.get("owner"), "group": tun.get("group"), "multi_queue": bool(tun.get("multi_queue"))}


def plan_creation_fields(tracker, have, want, name):
    """Record creation-time fields; an existing tap that differs is an error (it cannot change in place)."""
    current = tap_view(have) if have is not None else {"owner": None, "group": None, "multi_queue": False}
    for field in TAP_CREATION_FIELDS:
        if want[field] is None or current[field] == want[field]:
            continue
        if have is not None:
            return ("tap %s: %s is %r but %r is wanted; this is fixed when a tap is created, so delete the tap "
                    "(state: absent) and create it again" % (name, field, current[field], want[field]))
        tracker.add(field, current[field], want[field])
    return None


def tap_hooks(params):
    """link_task's keyword arguments for a tap; ValueError (naming the field) for an owner or group that is not
    on this host."""
    name = params["name"]
    try:
        want = {
            "owner": resolve_id(params["owner"], pwd.getpwnam, "owner: user"),
            "group": resolve_id(params["group"], grp.getgrnam, "group: group"),
            "multi_queue": params["multi_queue"],
        }
    except ValueError as exc:
        raise ValueError("tap %s: %s" % (name, exc))

    def create(ipr):
        # marked before it is made persistent: a kill before the alias leaves no tap
        add_tap(ipr, name, owner=want["owner"], group=want["group"], multi_queue=bool(want["multi_queue"]),
                vnet_hdr=params["vnet_hdr"], alias=alias_for(params["lab"]))

    def plan_extra(tracker, have):
        if have is not None and (have.get("tun") or {}).get("type") != "tap":
            return "tap %s: an interface of that name exists but is a tun, not a tap; pick another name" % name
        return plan_creation_fields(tracker, have, want, name)

    return dict(kind="tap", expected_kinds=("tun",), create=create, plan_extra=plan_extra,
                extra_fields=TAP_CREATION_FIELDS)
