# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VXLAN port of a lab bridge: options, validation, read, plan, act (the vxlan module's body).

Where things live: the device is created from the namespace the module runs in (the lab host's own, which holds the
underlay address `local`) and appears directly in the lab namespace `netns`. Linux keeps a vxlan's UDP socket in the
namespace it was created from (the device's IFLA_LINK_NETNSID points there), so the underlay traffic stays on the
host while the lab namespace only sees an Ethernet port it can enslave to its bridge. No underlay address ever enters
the lab namespace.

What a vxlan is created with (vni, local, remote, port, learning, where its socket lives) cannot be changed in
place here: a difference there deletes and creates the device again (only ours). Everything else goes through
_link like a bridge, tap or veth: the ownership mark, MTU, master, up.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import socket

from ansible.module_utils.basic import missing_required_lib
from ansible_collections.qemulab.network.plugins.module_utils._link import (
    apply_link,
    check_bridge,
    link_view,
    new_tracker,
    param_errors,
    plan_link,
    predicted_view,
    read_link,
)
from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    NETNS_ARGUMENT_SPEC,
    PYROUTE2_IMPORT_ERROR,
    NetlinkError,
    add_vxlan,
    all_addresses,
    delete_link,
    netlink,
    netns_exists,
)
from ansible_collections.qemulab.network.plugins.module_utils._ownership import (
    OWNERSHIP_ARGUMENT_SPEC,
    pending_group,
    where_text,
)

VNI_MAX = 2 ** 24 - 1
DEFAULT_PORT = 4789  # IANA's VXLAN port
# Fixed when the device is created; `underlay_in_host`: its UDP socket lives outside the lab namespace.
CREATION_FIELDS = ("vni", "local", "remote", "port", "learning", "underlay_in_host")


def argument_spec():
    spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        vni=dict(type="int"),
        local=dict(type="str"),
        remote=dict(type="str"),
        port=dict(type="int", default=DEFAULT_PORT),
        bridge=dict(type="str"),
        mtu=dict(type="int"),
    )
    spec.update(NETNS_ARGUMENT_SPEC)
    spec.update(OWNERSHIP_ARGUMENT_SPEC)
    return spec


REQUIRED_IF = [("state", "present", ("vni", "local", "remote"))]


def vxlan_param_errors(params):
    """Every problem with the options, each naming the object, the field and the fix (before the host changes)."""
    name = params["name"]
    errors = param_errors("vxlan", name, params)
    if params["state"] != "present":
        return errors
    vni, port = params.get("vni"), params.get("port")
    if vni is not None and not 1 <= vni <= VNI_MAX:
        errors.append("vxlan %s: vni: %s is outside 1..%d; pick a VNI in that range" % (name, vni, VNI_MAX))
    if port is not None and not 1 <= port <= 65535:
        errors.append("vxlan %s: port: %s is not a UDP port; use 1..65535 (VXLAN's own is %d)"
                      % (name, port, DEFAULT_PORT))
    parsed = {}
    for field in ("local", "remote"):
        value = params.get(field)
        if value is None:
            continue
        try:
            parsed[field] = ipaddress.ip_address(value)
        except ValueError:
            errors.append("vxlan %s: %s: %r is not an IP address; give the lab host's underlay address, like "
                          "192.0.2.11" % (name, field, value))
            continue
        address = parsed[field]
        if address.is_multicast or address.is_unspecified or address.is_loopback:
            errors.append("vxlan %s: %s: %s is not a unicast address another lab host can reach; give that host's "
                          "underlay address" % (name, field, value))
    if len(parsed) == 2:
        if parsed["local"].version != parsed["remote"].version:
            errors.append("vxlan %s: local %s and remote %s are of different IP versions; give both as IPv4 or "
                          "both as IPv6" % (name, params["local"], params["remote"]))
        elif parsed["local"] == parsed["remote"]:
            errors.append("vxlan %s: remote %s is this host's own address (local); give the other lab host's "
                          "underlay address" % (name, params["remote"]))
    return errors


def normalized_address(value):
    return str(ipaddress.ip_address(value)) if value else None


def read_vxlan(ipr, name, netns):
    """The link (see _link.read_link) with its creation fields flattened in, or None."""
    link = read_link(ipr, name)
    if link is None or link["kind"] != "vxlan":
        return link
    info = link["vxlan"] or {}
    link.update(
        vni=info.get("vni"),
        local=normalized_address(info.get("local")),
        remote=normalized_address(info.get("remote")),
        port=info.get("port"),
        learning=bool(info.get("learning")),
        # in a lab namespace the socket must be elsewhere (the host's); without one, right where the device is
        underlay_in_host=(info.get("link_netnsid") is not None) if netns else info.get("link_netnsid") is None,
    )
    return link


def want_vxlan(params):
    """(creation fields, link fields) as compared; link fields None are left alone."""
    creation = {
        "vni": params["vni"],
        "local": normalized_address(params["local"]),
        "remote": normalized_address(params["remote"]),
        "port": params["port"],
        "learning": False,
        "underlay_in_host": True,
    }
    link = {"mtu": params.get("mtu"), "master": params.get("bridge"), "addresses": None, "up": True}
    return creation, link


def plan_vxlan(tracker, have, params):
    """Record what must change in `tracker`; returns (error or None, recreate). `recreate`: an existing vxlan of
    ours differs in a creation field, so it is deleted and made again."""
    name, netns, lab, state = params["name"], params.get("netns"), params["lab"], params["state"]
    if state == "absent":
        return plan_link(tracker, "vxlan", name, netns, have, {}, lab, params["force"], state, ("vxlan",)), False
    creation, link_want = want_vxlan(params)
    # ownership and kind first: a foreign device is refused before anything about it is compared
    error = plan_link(new_tracker(), "vxlan", name, netns, have, link_want, lab, params["force"], state, ("vxlan",))
    if error:
        return error, False
    recreate = have is not None and any(have.get(field) != creation[field] for field in CREATION_FIELDS)
    if recreate:
        for field in CREATION_FIELDS:
            tracker.compare(field, have.get(field), creation[field])
        fresh = new_tracker()
        plan_link(fresh, "vxlan", name, netns, None, link_want, lab, params["force"], state, ("vxlan",))
        for field in fresh.fields:
            before, after = fresh.get(field)
            if field == "state":
                tracker.add("state", "present", "recreated")
            else:
                tracker.add(field, have.get(field), after)
        return None, True
    if have is None:
        for field in CREATION_FIELDS:
            tracker.add(field, None, creation[field])
    plan_link(tracker, "vxlan", name, netns, have, link_want, lab, params["force"], state, ("vxlan",))
    return None, False


def local_error(params, addresses):
    """The refusal when this host does not have the underlay address `local`, or None."""
    local = normalized_address(params["local"])
    if local in addresses:
        return None
    return ("vxlan %s: local: %s is not an address of this lab host (%s; it has %s); set the host's "
            "lab_underlay_address to one of its own addresses" % (
                params["name"], local, socket.gethostname(), ", ".join(sorted(addresses)) or "none"))


def vxlan_view(have, tracker, state):
    """(before, after) as reported; after is predicted from the plan (check mode reports the same)."""
    before = link_view(have, CREATION_FIELDS)
    if state == "absent":
        return before, ({"state": "absent"} if tracker.changed or have is None else before)
    after = predicted_view(have, tracker, extra_fields=CREATION_FIELDS)
    after["kind"] = "vxlan"
    return before, after


def run_vxlan_module(module):
    """Read, plan, act for one vxlan port; exits the module."""
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    params = module.params
    name, netns, state = params["name"], params.get("netns") or None, params["state"]
    errors = vxlan_param_errors(params)
    if errors:
        module.fail_json(msg="; ".join(errors), errors=errors)
    warnings = []
    tracker = new_tracker()
    have = None
    try:
        with netlink(None) as host:
            if state == "present":
                error = local_error(params, all_addresses(host))
                if error:
                    module.fail_json(msg=error)
            if netns and not netns_exists(netns):
                if state == "absent":
                    module.exit_json(changed=False, name=name, netns=netns, changes=[], before={"state": "absent"},
                                     after={"state": "absent"})
                problem = "vxlan %s: namespace %s does not exist; create it first with qemulab.network.netns" % (
                    name, netns)
                if not module.check_mode:
                    module.fail_json(msg=problem)
                warnings.append(problem + " (check mode: assuming an earlier task creates it)")
                error, recreate = plan_vxlan(tracker, None, params)
            else:
                with netlink(netns) as ipr:
                    have = read_vxlan(ipr, name, netns)
                    error, recreate = plan_vxlan(tracker, have, params)
                    if not error and state == "present":
                        error = check_bridge(ipr, "vxlan", name, "bridge", params.get("bridge"), netns,
                                             module.check_mode, warnings)
                    if error:
                        module.fail_json(msg=error)
                    if tracker.changed and not module.check_mode:
                        if recreate:
                            delete_link(ipr, name)
                        apply_link(ipr, name, tracker, lambda: add_vxlan(
                            host, name, params["vni"], params["local"], params["remote"], params["port"],
                            netns=netns, group=pending_group(params["lab"])))
            if error:
                module.fail_json(msg=error)
    except NetlinkError as exc:
        module.fail_json(msg="vxlan %s%s: %s" % (name, where_text(netns), exc))
    before, after = vxlan_view(have, tracker, state)
    result = dict(changed=tracker.changed, name=name, netns=netns, changes=tracker.fields, before=before,
                  after=after, warnings=warnings)
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    module.exit_json(**result)
