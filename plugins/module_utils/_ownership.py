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

Rules, for every module: ``state: present`` on an existing object that is not ours (no mark, or another lab's)
fails naming it, unless ``force: true``, which adopts it (marks it as ours). ``state: absent`` on an existing object
that is not ours fails the same way unless ``force: true``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

ALIAS_PREFIX = "qemulab:"
# Beside the per-lab run directories /run/qemulab/<lab>/; no valid lab name starts with "_", so none collides.
NETNS_MARKER_DIR = "/run/qemulab/_netns"

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
    """The lab whose marker matches the namespace with this (dev, ino) identity, or None."""
    try:
        with open(marker_path(netns, marker_dir)) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or [data.get("dev"), data.get("ino")] != list(identity):
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
        json.dump({"lab": lab, "dev": identity[0], "ino": identity[1]}, handle)
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
