# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Desired vs actual for one host interface (bridge, tap, veth end): read, plan, apply.

The bridge, tap and veth modules share this so that ownership, comparison and the order of kernel calls are the
same everywhere. Only fields the user set are compared; both sides are normalised first.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import missing_required_lib
from ansible_collections.qemulab.network.plugins.module_utils._diff import DifferenceTracker
from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    NetlinkError,
    add_address,
    delete_address,
    delete_link,
    get_addresses,
    get_link,
    link_info,
    namespace_param,
    netlink,
    netns_exists,
    set_link,
)
from ansible_collections.qemulab.network.plugins.module_utils._ownership import (
    alias_for,
    foreign_object_error,
    link_owner,
    mark_is_pending,
    where_text,
)
from ansible_collections.qemulab.network.plugins.module_utils._validate import (
    check_cidr,
    check_mtu,
    check_name,
    normalize_cidr,
)

LINK_FIELDS = ("alias", "mtu", "master", "addresses", "up")
# What a link we are about to create looks like, for comparing before it exists.
FRESH_LINK = {"alias": None, "mtu": None, "master": "", "addresses": [], "up": False}


def read_link(ipr, name):
    """The link as a dict (see _netlink.link_info) plus its addresses, or None."""
    link = get_link(ipr, name)
    if link is not None:
        link["addresses"] = get_addresses(ipr, name)
        link["master"] = link["master"] or ""
        tun = link.get("tun")
        if tun:
            link.update(owner=tun["owner"], group=tun["group"], multi_queue=bool(tun["multi_queue"]))
    return link


def link_view(link, extra_fields=()):
    """What a module reports about a link: state plus the comparable fields."""
    if link is None:
        return {"state": "absent"}
    view = {"state": "present", "kind": link["kind"]}
    for field in LINK_FIELDS + tuple(extra_fields):
        view[field] = link.get(field)
    return view


def want_link(params, prefix=""):
    """Desired link fields from module params (`prefix` selects e.g. the peer_ options); None = not compared."""
    addresses = params.get(prefix + "addresses")
    want = {
        "mtu": params.get("mtu"),
        "master": params.get(prefix + "bridge"),
        "addresses": sorted(normalize_cidr(a) for a in addresses) if addresses is not None else None,
        "up": params.get(prefix + "up"),
    }
    return want


def param_errors(kind, name, params, prefix=""):
    """Validation errors for the link options of one end (kind: bridge, tap or veth), each naming object, field and
    fix. Names pass the one name rule (_validate.check_name) before any of them reaches the kernel or a path."""
    errors = []
    problem = check_name(name, kind)
    if problem:
        errors.append("%s %s: %sname: %s" % (kind, name, prefix, problem))
    if params.get(prefix + "bridge"):
        problem = check_name(params[prefix + "bridge"], "bridge")
        if problem:
            errors.append("%s %s: %sbridge: %s" % (kind, name, prefix, problem))
    if params.get(prefix + "netns"):
        problem = check_name(params[prefix + "netns"], "netns")
        if problem:
            errors.append("%s %s: %snetns: %s" % (kind, name, prefix, problem))
    if not prefix:
        if params.get("mtu") is not None:
            problem = check_mtu(params["mtu"])
            if problem:
                errors.append("%s %s: %s" % (kind, name, problem))
        problem = check_name(params.get("lab"), "lab")
        if problem:
            errors.append("%s %s: lab: %s" % (kind, name, problem))
    for index, address in enumerate(params.get(prefix + "addresses") or []):
        problem = check_cidr(address)
        if problem:
            errors.append("%s %s: %saddresses[%d]: %s" % (kind, name, prefix, index, problem))
    return errors


def plan_link(tracker, kind, name, netns, have, want, lab, force, state, expected_kinds, prefix=""):
    """Record in `tracker` what must change for `name` to match `want`; returns an error text or None.

    A field is recorded as `<prefix><field>`; creation/deletion as `<prefix>state`.
    """
    where = where_text(netns)
    if have is not None and have["kind"] not in expected_kinds:
        return ("%s %s%s: an interface of that name exists but is of kind %s, not %s; pick another name or remove "
                "it" % (kind, name, where, have["kind"] or "(plain device)", "/".join(expected_kinds)))
    owner = link_owner(have, lab) if have is not None else None
    if have is not None and owner != lab and not force:
        return foreign_object_error(kind, name, where, owner, lab, state)
    if state == "absent":
        if have is not None:
            tracker.add(prefix + "state", "present", "absent")
        return None
    if have is not None and mark_is_pending(have, lab):
        # made by this lab and killed before its alias: the alias (compared below) and group 0 complete the mark
        tracker.add(prefix + "group", have["group"], 0)
    if have is None:
        tracker.add(prefix + "state", "absent", "present")
    base = have if have is not None else FRESH_LINK
    full_want = dict(want, alias=alias_for(lab))
    for field in LINK_FIELDS:
        if full_want.get(field) is None:
            continue
        tracker.compare(prefix + field, base.get(field), full_want[field])
    return None


def apply_link(ipr, name, tracker, create, prefix=""):
    """Do what plan_link recorded: create (via `create()`) or delete, then fields; up comes last. A link just made
    gets its alias and group 0 in one request (a bridge or veth is made with the lab's pending mark as its group)."""
    created = False
    if tracker.has(prefix + "state"):
        if tracker.get(prefix + "state")[1] == "absent":
            delete_link(ipr, name)
            return
        create()
        created = True

    def after(field):
        return tracker.get(prefix + field)[1] if tracker.has(prefix + field) else None

    set_link(ipr, name, alias=after("alias"), group=0 if created else after("group"), mtu=after("mtu"),
             master=after("master"))
    if tracker.has(prefix + "addresses"):
        before, wanted = tracker.get(prefix + "addresses")
        for address in sorted(set(before or []) - set(wanted)):
            delete_address(ipr, name, address)
        for address in sorted(set(wanted) - set(before or [])):
            add_address(ipr, name, address)
    if after("up") is not None:
        set_link(ipr, name, up=after("up"))


def finish_pending_marks(ipr, lab, check_mode=False):
    """Write the alias (and group 0) of every link in ipr's namespace that carries lab's pending mark: made by the
    lab, killed before it was marked. Returns their names."""
    pending = [link for link in (link_info(ipr, msg) for msg in ipr.get_links()) if mark_is_pending(link, lab)]
    if not check_mode:
        for link in pending:
            set_link(ipr, link["name"], alias=alias_for(lab), group=0)
    return sorted(link["name"] for link in pending)


def predicted_view(have, tracker, prefix="", extra_fields=()):
    """The view of the link after applying `tracker` (what check mode reports as `after`)."""
    if tracker.has(prefix + "state") and tracker.get(prefix + "state")[1] == "absent":
        return {"state": "absent"}
    view = link_view(have, extra_fields) if have is not None else {"state": "present", "kind": None}
    if have is None:
        for field in LINK_FIELDS + tuple(extra_fields):
            view[field] = FRESH_LINK.get(field)
    view["state"] = "present"
    for field in LINK_FIELDS + tuple(extra_fields):
        if tracker.has(prefix + field):
            view[field] = tracker.get(prefix + field)[1]
    return view


def new_tracker():
    return DifferenceTracker()


class LinkTaskError(Exception):
    """One interface's task failed; `msg` names the object, the field and the fix."""

    def __init__(self, msg, **extra):
        Exception.__init__(self, msg)
        self.msg = msg
        self.extra = extra


def run_link_module(module, kind, expected_kinds, create, plan_extra=None, apply_extra=None, extra_fields=()):
    """Read, plan, act for a module managing one interface (bridge, tap); exits the module.

    `create(ipr)` makes the interface; `plan_extra(tracker, have)` records kind-specific differences and returns an
    error text or None; `apply_extra(ipr, tracker)` applies them after the common fields.
    """
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    try:
        result = link_task(module.params, kind, expected_kinds, create, module.check_mode, plan_extra=plan_extra,
                           apply_extra=apply_extra, extra_fields=extra_fields)
    except LinkTaskError as exc:
        module.fail_json(msg=exc.msg, **exc.extra)
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


def link_task(params, kind, expected_kinds, create, check_mode, plan_extra=None, apply_extra=None, extra_fields=(),
              ipr=None):
    """One interface's task (params validated against the module's spec): the result, with `diff`; raises
    LinkTaskError. `ipr`: an open netlink socket of the interface's namespace to use instead of opening one (the
    links module shares one among many objects)."""
    errors = param_errors(kind, params["name"], params)
    if errors:
        raise LinkTaskError("; ".join(errors), errors=errors)
    if params.get("userns_pid") is not None:
        try:
            # a rootless lab's namespace, used wherever the name would be (the kind's hooks read it from params)
            params["netns"] = namespace_param(params)
        except NetlinkError as exc:
            raise LinkTaskError("%s %s: %s" % (kind, params["name"], exc))
        if getattr(ipr, "qemulab_holder", None) != params["netns"]:
            ipr = None  # a links module's shared socket of another namespace
    name, netns, state = params["name"], params.get("netns"), params["state"]
    warnings = []
    netns_missing = bool(netns) and not netns_exists(netns)
    if netns_missing and state == "present":
        problem = "%s %s: namespace %s does not exist; create it first with qemulab.network.netns" % (kind, name, netns)
        if not check_mode:
            raise LinkTaskError(problem)
        warnings.append(problem + " (check mode: assuming an earlier task creates it)")

    tracker = new_tracker()
    have = None
    error = None

    def act(ipr):
        have = read_link(ipr, name)
        error = _plan(tracker, kind, name, netns, have, params, expected_kinds, plan_extra, check_mode, warnings, ipr)
        if not error and tracker.changed and not check_mode:
            apply_link(ipr, name, tracker, lambda: create(ipr))
            if apply_extra and state == "present":
                apply_extra(ipr, tracker)
        return have, error

    try:
        if netns_missing:
            error = _plan(tracker, kind, name, netns, None, params, expected_kinds, plan_extra, check_mode, warnings)
        elif ipr is not None:
            have, error = act(ipr)
        else:
            with netlink(netns) as own:
                have, error = act(own)
    except NetlinkError as exc:
        raise LinkTaskError("%s %s%s: %s" % (kind, name, where_text(netns), exc))
    if error:
        raise LinkTaskError(error)

    before = link_view(have, extra_fields)
    after = predicted_view(have, tracker, extra_fields=extra_fields)
    if after["state"] == "present" and after.get("kind") is None:
        after["kind"] = expected_kinds[0]
    return dict(changed=tracker.changed, name=name, netns=netns, changes=tracker.fields, before=before,
                after=after, warnings=warnings, diff={"before": before, "after": after})


def check_bridge(ipr, kind, name, field, bridge, netns, check_mode, warnings):
    """An error when `bridge` (option `field`) cannot be the interface's master; None when it can or is not set.

    In check mode a missing bridge only warns, since an earlier task in the same run would have created it.
    """
    if not bridge:
        return None
    master = read_link(ipr, bridge) if ipr is not None else None
    where = "namespace %s" % netns if netns else "the host namespace"
    if master is not None and master["kind"] != "bridge":
        return ("%s %s: %s %s in %s is a %s, not a bridge; pick the right bridge"
                % (kind, name, field, bridge, where, master["kind"] or "plain device"))
    if master is None:
        problem = ("%s %s: %s %s does not exist in %s; create it first with qemulab.network.bridge"
                   % (kind, name, field, bridge, where))
        if not check_mode:
            return problem
        warnings.append(problem + " (check mode: assuming an earlier task creates it)")
    return None


def _plan(tracker, kind, name, netns, have, params, expected_kinds, plan_extra, check_mode, warnings, ipr=None):
    state = params["state"]
    error = plan_link(tracker, kind, name, netns, have, want_link(params), params["lab"], params["force"], state,
                      expected_kinds)
    if error or state == "absent":
        return error
    error = check_bridge(ipr, kind, name, "bridge", params.get("bridge"), netns, check_mode, warnings)
    if error:
        return error
    if plan_extra:
        return plan_extra(tracker, have)
    return None
