# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which lab owns a host object, so teardown removes only what the lab made.

Interfaces: the lab writes the alias ``qemulab:<lab>`` (IFLA_IFALIAS, what ``ip link show`` prints as ``alias``) on
every bridge, tap and veth end it creates. The alias lives in the kernel with the interface, so it cannot go stale.

Namespaces cannot carry an alias, so the lab writes a marker file ``/run/qemulab/_netns/<name>.owner`` holding JSON
``{"lab": ..., "dev": ..., "ino": ...}``: the lab name plus the device/inode of the namespace's bind mount in
/run/netns. A marker whose device/inode do not match the namespace now present (someone deleted ours and made
another of the same name) does not count, and /run is a tmpfs, so markers never survive a reboot that took the
namespaces with it.

A kill must never leave an object of the lab without its mark (it would block every later bring-up, and teardown
would keep it). The kernel ignores IFLA_IFALIAS in a create request, so each kind is made marked in one step:

- a tap is created attached to our tun file descriptor, not persistent; it gets its alias and only then
  TUNSETPERSIST. A kill before that closes the descriptor, and the kernel deletes the tap with it.
- a bridge or veth is created with the lab's pending mark in the create request itself: the device group
  (IFLA_GROUP, which the kernel does honour there) ``pending_group(lab)``, a 32-bit value derived from the lab name.
  The alias and group 0 then follow in one request. A link found with that group and no alias is one the lab made
  and was killed before marking; every module completes the mark (``link_owner``), and the links module completes
  it for all of a namespace's links (teardown runs it first).
- a namespace is made in a child process that unshares a new one, writes ``qemulab:<lab>`` as the alias of its
  ``lo`` and only then bind-mounts it under /run/netns: before the mount a kill takes the namespace with the child,
  after it the namespace carries the mark inside (``read_netns_mark``), and the next run writes the marker file.

Rules, for every module: ``state: present`` on an existing object that is not ours (no mark, or another lab's)
fails naming it, unless ``force: true``, which adopts it (marks it as ours). ``state: absent`` on an existing object
that is not ours fails the same way unless ``force: true``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os

from ansible_collections.qemulab.network.plugins.module_utils._netlink import read_loopback_alias
from ansible_collections.qemulab.network.plugins.module_utils._run_paths import CURRENT as RUN_PATHS

ALIAS_PREFIX = "qemulab:"
# Beside the per-lab run directories (/run/qemulab/<lab>/ for root; _run_paths decides).
NETNS_MARKER_DIR = RUN_PATHS.netns_markers

OWNERSHIP_ARGUMENT_SPEC = dict(
    lab=dict(type="str", default="default"),
    force=dict(type="bool", default=False),
)


def alias_for(lab):
    return ALIAS_PREFIX + lab


def owner_from_alias(alias):
    """The lab named in an interface alias, or None when the alias is not one of ours."""
    if alias and alias.startswith(ALIAS_PREFIX) and len(alias) > len(ALIAS_PREFIX):
        return alias[len(ALIAS_PREFIX):]
    return None


def pending_group(lab):
    """The device group a bridge or veth of `lab` is created with, until its alias is written (never 0)."""
    digest = hashlib.sha256(alias_for(lab).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") or 1


def link_owner(link, lab):
    """The lab owning `link` (a _netlink.link_info dict): its alias's, or `lab` when it carries no alias but lab's
    pending mark (created by lab, killed before the alias was written)."""
    owner = owner_from_alias(link.get("alias"))
    if owner is None and not link.get("alias") and lab and link.get("group") == pending_group(lab):
        return lab
    return owner


def mark_is_pending(link, lab):
    return owner_from_alias(link.get("alias")) is None and link_owner(link, lab) == lab


def describe_owner(owner):
    return "lab %s" % owner if owner else "nobody (no qemulab mark)"


def foreign_object_error(kind, name, where, owner, lab, state):
    """The refusal for touching an object that lab `lab` does not own, or None when it does own it."""
    if owner == lab:
        return None
    whose = "lab %s" % owner if owner else "no qemulab lab (it carries no qemulab mark)"
    if state == "absent":
        fix = ("leave it alone, or delete it with force: true if you are sure it is not in use")
    else:
        fix = ("pick another name, remove it yourself, or adopt it with force: true "
               "(it is then marked as belonging to lab %s)" % lab)
    return "%s %s%s exists and belongs to %s, not to lab %s; %s" % (
        kind, name, where, whose, lab, fix)


def where_text(netns):
    return " in namespace %s" % netns if netns else ""


# --- namespace markers --------------------------------------------------------------------------------------------

def marker_path(netns, marker_dir=NETNS_MARKER_DIR):
    return os.path.join(marker_dir, netns + ".owner")


def read_netns_owner(netns, identity, marker_dir=NETNS_MARKER_DIR):
    """The lab owning the namespace: the one whose marker file matches its (dev, ino, cookie) identity, else the one
    named by the mark inside it (see read_netns_mark), or None."""
    return read_netns_marker(netns, identity, marker_dir) or read_netns_mark(netns)


def read_netns_mark(netns):
    """The lab named by the alias of the namespace's `lo` (written before the namespace was published), or None."""
    return owner_from_alias(read_loopback_alias(netns))


def read_netns_marker(netns, identity, marker_dir=NETNS_MARKER_DIR):
    """The lab whose marker file matches the namespace with this (dev, ino, cookie) identity (netns_identity), or
    None. A marker without a cookie (written before the cookie was recorded) matches no namespace: the lab's own
    namespace is still known by its loopback's alias, and the lab's next run writes the marker again."""
    try:
        with open(marker_path(netns, marker_dir)) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "cookie" not in data \
            or [data.get("dev"), data.get("ino"), data.get("cookie")] != list(identity):
        return None
    lab = data.get("lab")
    return lab if isinstance(lab, str) and lab else None


def write_netns_owner(netns, identity, lab, marker_dir=NETNS_MARKER_DIR):
    """Write the marker atomically (temp file + rename), directory 0700."""
    path = marker_path(netns, marker_dir)
    tmp = path + ".tmp.%d" % os.getpid()
    for attempt in (1, 2):
        os.makedirs(marker_dir, mode=0o700, exist_ok=True)
        try:
            handle = open(tmp, "w")
            break
        except FileNotFoundError:
            # Another lab's teardown removed the then empty directory between makedirs and open.
            if attempt == 2:
                raise
    with handle:
        json.dump({"lab": lab, "dev": identity[0], "ino": identity[1], "cookie": identity[2]}, handle)
    os.rename(tmp, path)


def remove_netns_owner(netns, marker_dir=NETNS_MARKER_DIR):
    """Remove the marker, and the marker directory once no lab has one there (a cleanup leaves nothing behind)."""
    try:
        os.unlink(marker_path(netns, marker_dir))
    except FileNotFoundError:
        pass
    try:
        os.rmdir(marker_dir)
    except OSError:
        pass  # other labs' markers are still there (or it is gone already)
