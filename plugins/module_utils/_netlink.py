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
import ipaddress
import os
import socket
import traceback

PYROUTE2_IMPORT_ERROR = None
try:
    from pyroute2 import IPRoute, NetNS
    from pyroute2 import netns as pr_netns
    from pyroute2.netlink.exceptions import NetlinkError as _PyrouteNetlinkError
    HAS_PYROUTE2 = True
except ImportError:
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()

    class _PyrouteNetlinkError(Exception):
        """Stands in for pyroute2's NetlinkError when pyroute2 is missing; never raised."""

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
    except OSError as exc:
        # tap creation goes through ioctls on /dev/net/tun, which fail with OSError rather than NetlinkError
        raise NetlinkError("netlink: %s" % _reason(exc))
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
        "peer_index": _attr(msg, "IFLA_LINK") if kind == "veth" else None,
        "stp": _info_data(linkinfo, "IFLA_BR_STP_STATE", bool) if kind == "bridge" else None,
        "tun": _tun_info(linkinfo) if kind == "tun" else None,
    }


def _info_data(linkinfo, name, convert):
    data = linkinfo.get_attr("IFLA_INFO_DATA") if linkinfo is not None else None
    value = data.get_attr(name) if data is not None else None
    return None if value is None else convert(value)


def _tun_info(linkinfo):
    """Creation-time properties of a tun/tap; owner/group -1 (none) read as None."""
    def ident(value):
        return None if value in (None, 0xFFFFFFFF, -1) else int(value)
    return {
        "type": {1: "tun", 2: "tap"}.get(_info_data(linkinfo, "IFLA_TUN_TYPE", int)),
        "owner": ident(_info_data(linkinfo, "IFLA_TUN_OWNER", int)),
        "group": ident(_info_data(linkinfo, "IFLA_TUN_GROUP", int)),
        "multi_queue": _info_data(linkinfo, "IFLA_TUN_MULTI_QUEUE", bool),
        "vnet_hdr": _info_data(linkinfo, "IFLA_TUN_VNET_HDR", bool),
        "persist": _info_data(linkinfo, "IFLA_TUN_PERSIST", bool),
    }


def get_link(ipr, name):
    """The link called `name` as a dict (see link_info), or None when there is none."""
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        return None
    return link_info(ipr, ipr.get_links(indexes[0])[0])


# --- namespaces -------------------------------------------------------------------------------------------------

def list_netns():
    if not HAS_PYROUTE2:
        return sorted(os.listdir(NETNS_RUN_DIR)) if os.path.isdir(NETNS_RUN_DIR) else []
    return sorted(pr_netns.listnetns())


def create_netns(name):
    try:
        pr_netns.create(name)
    except (OSError, _PyrouteNetlinkError) as exc:
        raise NetlinkError("namespace %s: cannot create it: %s" % (name, _reason(exc)))


def delete_netns(name):
    try:
        pr_netns.remove(name)
    except (OSError, _PyrouteNetlinkError) as exc:
        raise NetlinkError("namespace %s: cannot delete it: %s" % (name, _reason(exc)))


def netns_identity(name):
    """(device, inode) of the namespace's bind mount: tells a namespace apart from a later one of the same name."""
    stat = os.stat(os.path.join(NETNS_RUN_DIR, name))
    return stat.st_dev, stat.st_ino


def _sysctl_path(key):
    return "/proc/sys/" + key.replace(".", "/")


@contextlib.contextmanager
def _inside(netns):
    """Run the block with this thread in namespace `netns` (/proc/sys/net then shows that namespace's values);
    None or "" is the caller's own namespace."""
    if not netns:
        yield
        return
    # pyroute2's pushns creates a namespace that does not exist (O_CREAT): reading one must never make one.
    if not netns_exists(netns):
        raise NetlinkError("network namespace %s does not exist; create it first with qemulab.network.netns" % netns)
    pr_netns.pushns(netns)
    try:
        yield
    finally:
        pr_netns.popns()


def read_netns_sysctls(netns, keys):
    """{key: value or None} for dotted sysctl keys inside namespace `netns`; None where the kernel offers no such key
    there (net.bridge.* exists only while br_netfilter is loaded)."""
    values = {}
    with _inside(netns):
        for key in keys:
            try:
                with open(_sysctl_path(key)) as handle:
                    values[key] = handle.read().strip()
            except FileNotFoundError:
                values[key] = None
    return values


def write_netns_sysctls(netns, values):
    try:
        with _inside(netns):
            for key, value in values.items():
                with open(_sysctl_path(key), "w") as handle:
                    handle.write("%s\n" % value)
    except OSError as exc:
        raise NetlinkError("namespace %s: cannot set %s: %s" % (netns, ", ".join(values), _reason(exc)))


# --- readable errors ----------------------------------------------------------------------------------------------

_HINTS = {
    errno.EEXIST: "it already exists",
    errno.ENODEV: "no such device",
    errno.ENOENT: "not found",
    errno.EPERM: "operation not permitted; run as root (become: true)",
    errno.EACCES: "permission denied; run as root (become: true)",
    errno.EBUSY: "device or resource busy; is a running QEMU still using it?",
    errno.EINVAL: "the kernel refused the value as invalid",
    errno.EOPNOTSUPP: "not supported by this kernel or link type",
    errno.ERANGE: "value out of range for this link",
}


def _reason(exc):
    code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
    if code in _HINTS:
        return "%s (%s)" % (_HINTS[code], errno.errorcode.get(code, code))
    if code:
        return "%s (%s)" % (os.strerror(code), errno.errorcode.get(code, code))
    return str(exc) or exc.__class__.__name__


def _call(what, func, *args, **kwargs):
    """Run one pyroute2 call; failures become NetlinkError('<what>: <reason>')."""
    try:
        return func(*args, **kwargs)
    except (_PyrouteNetlinkError, OSError, ValueError) as exc:
        raise NetlinkError("%s: %s" % (what, _reason(exc)))


def _index(ipr, name):
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        raise NetlinkError("%s: no such interface" % name)
    return indexes[0]


# --- links --------------------------------------------------------------------------------------------------------

def add_bridge(ipr, name, stp=None, mtu=None):
    kwargs = {"ifname": name, "kind": "bridge"}
    if stp is not None:
        kwargs["br_stp_state"] = 1 if stp else 0
    if mtu is not None:
        kwargs["mtu"] = mtu
    _call("bridge %s: create" % name, ipr.link, "add", **kwargs)


def set_bridge_stp(ipr, name, stp):
    _call("bridge %s: set stp" % name, ipr.link, "set", index=_index(ipr, name), kind="bridge",
          br_stp_state=1 if stp else 0)


def add_tap(ipr, name, owner=None, group=None, multi_queue=False, vnet_hdr=False):
    """A persistent tap (TUNSETIFF + TUNSETOWNER/GROUP + TUNSETPERSIST, done by pyroute2 in the namespace)."""
    kwargs = {"ifname": name, "kind": "tuntap", "mode": "tap",
              # IFF_NO_PI as `ip tuntap add` does; QEMU sets its own flags when it attaches anyway.
              "ifr": {"no_pi": True, "multi_queue": bool(multi_queue), "vnet_hdr": bool(vnet_hdr)}}
    if owner is not None:
        kwargs["uid"] = owner
    if group is not None:
        kwargs["gid"] = group
    _call("tap %s: create" % name, ipr.link, "add", **kwargs)


def add_veth(ipr, name, peer, peer_netns=None, same_netns=True):
    """A veth pair: `name` in ipr's namespace, `peer` in `peer_netns` (None: the caller's own namespace)."""
    peer_spec = {"ifname": peer}
    if not same_netns:
        if peer_netns:
            peer_spec["net_ns_fd"] = peer_netns
        else:
            peer_spec["net_ns_pid"] = os.getpid()
    _call("veth %s: create with peer %s" % (name, peer), ipr.link, "add", ifname=name, kind="veth", peer=peer_spec)


def delete_link(ipr, name):
    _call("%s: delete" % name, ipr.link, "del", index=_index(ipr, name))


def set_link(ipr, name, up=None, mtu=None, master=None, alias=None):
    """Change what is given; master '' detaches from a bridge. Order: alias, mtu, master, then up."""
    index = _index(ipr, name)
    if alias is not None:
        _call("%s: set alias %r" % (name, alias), ipr.link, "set", index=index, ifalias=alias)
    if mtu is not None:
        _call("%s: set mtu %s" % (name, mtu), ipr.link, "set", index=index, mtu=mtu)
    if master is not None:
        master_index = _index(ipr, master) if master else 0
        _call("%s: set master %s" % (name, master or "none"), ipr.link, "set", index=index, master=master_index)
    if up is not None:
        _call("%s: set %s" % (name, "up" if up else "down"), ipr.link, "set", index=index,
              state="up" if up else "down")


def move_link(ipr, name, netns):
    """Move `name` into namespace `netns` (None: the caller's own). Addresses, master and up state are lost."""
    target = {"net_ns_fd": netns} if netns else {"net_ns_pid": os.getpid()}
    _call("%s: move to namespace %s" % (name, netns or "(host)"), ipr.link, "set", index=_index(ipr, name),
          **target)


# --- addresses and routes -----------------------------------------------------------------------------------------

def get_addresses(ipr, name, include_link_local=False):
    """Addresses of `name` as sorted 'addr/prefix' strings; IPv6 link-local ones (kernel-made) left out."""
    out = []
    for msg in ipr.get_addr(index=_index(ipr, name)):
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if address is None:
            continue
        iface = ipaddress.ip_interface("%s/%d" % (address, msg["prefixlen"]))
        if iface.ip.is_link_local and iface.version == 6 and not include_link_local:
            continue
        out.append(str(iface))
    return sorted(out)


def add_address(ipr, name, cidr):
    iface = ipaddress.ip_interface(cidr)
    _call("%s: add address %s" % (name, cidr), ipr.addr, "add", index=_index(ipr, name), address=str(iface.ip),
          prefixlen=iface.network.prefixlen)


def delete_address(ipr, name, cidr):
    iface = ipaddress.ip_interface(cidr)
    _call("%s: delete address %s" % (name, cidr), ipr.addr, "del", index=_index(ipr, name), address=str(iface.ip),
          prefixlen=iface.network.prefixlen)


def get_routes(ipr, family=socket.AF_INET):
    """Gateway routes of the main table as dicts {to, via, dev}; 'default' for the default route."""
    out = []
    for msg in ipr.get_routes(family=family, table=254):
        gateway = msg.get_attr("RTA_GATEWAY")
        if not gateway:
            continue
        dst = msg.get_attr("RTA_DST")
        oif = msg.get_attr("RTA_OIF")
        dev = None
        if oif:
            found = ipr.get_links(oif)
            dev = found[0].get_attr("IFLA_IFNAME") if found else None
        out.append({"to": "%s/%d" % (dst, msg["dst_len"]) if dst else "default", "via": gateway, "dev": dev})
    return out


def add_route(ipr, to, via, dev=None):
    kwargs = {"dst": "0.0.0.0/0" if to == "default" else to, "gateway": via}
    if dev:
        kwargs["oif"] = _index(ipr, dev)
    _call("route %s via %s: add" % (to, via), ipr.route, "add", **kwargs)


def delete_route(ipr, to, via):
    _call("route %s via %s: delete" % (to, via), ipr.route, "del", dst="0.0.0.0/0" if to == "default" else to,
          gateway=via)


# The `netns` option shared by the host modules (documented in the qemulab.network.netns doc fragment).
NETNS_ARGUMENT_SPEC = dict(netns=dict(type="str"))
