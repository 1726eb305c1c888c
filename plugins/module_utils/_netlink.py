# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Netlink access for qemulab modules: the one place that talks to pyroute2.

Private to the collection (underscore name). Callers use `netlink(netns)` and the helpers below; nothing else in
the collection imports pyroute2 directly.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import os
import traceback

PYROUTE2_IMPORT_ERROR = None
try:
    from pyroute2 import IPRoute, NetNS
    from pyroute2.netlink.exceptions import NetlinkError as _PyrouteNetlinkError
    HAS_PYROUTE2 = True
except ImportError:
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()
    _PyrouteNetlinkError = OSError

NETNS_RUN_DIR = "/var/run/netns"
IFNAMSIZ = 16  # kernel buffer size; usable names are at most 15 bytes


class NetlinkError(Exception):
    """A netlink failure, with a message a person can act on."""


def netns_exists(name):
    return bool(name) and os.path.exists(os.path.join(NETNS_RUN_DIR, name))


@contextlib.contextmanager
def netlink(netns=None):
    """Yield an IPRoute bound to `netns` (None or "" for the caller's namespace)."""
    if netns and not netns_exists(netns):
        raise NetlinkError("network namespace %s does not exist; create it first with qemulab.network.netns" % netns)
    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    except _PyrouteNetlinkError as exc:
        code = exc.code if hasattr(exc, "code") else getattr(exc, "errno", 0)
        raise NetlinkError("netlink: %s (%s)" % (errno.errorcode.get(code, code), os.strerror(code) if code else exc))
    finally:
        ipr.close()


def _attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


def link_info(ipr, msg):
    """A plain dict describing one link message (what the modules compare and return)."""
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    master_index = _attr(msg, "IFLA_MASTER")
    master = None
    if master_index:
        found = ipr.get_links(master_index)
        master = found[0].get_attr("IFLA_IFNAME") if found else None
    return {
        "name": _attr(msg, "IFLA_IFNAME"),
        "index": msg["index"],
        "kind": kind,
        "alias": _attr(msg, "IFLA_IFALIAS"),
        "master": master,
        "mtu": _attr(msg, "IFLA_MTU"),
        "mac": (_attr(msg, "IFLA_ADDRESS") or "").lower() or None,
        "up": bool(msg["flags"] & 1),
    }


def get_link(ipr, name):
    """The link called `name` as a dict (see link_info), or None when there is none."""
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        return None
    return link_info(ipr, ipr.get_links(indexes[0])[0])
