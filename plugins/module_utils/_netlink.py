# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Netlink access for qemulab modules: the one place that talks to pyroute2.

Private to the collection (underscore name). Callers use `netlink(netns)` and the helpers below; nothing else in
the collection imports pyroute2 directly.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import stat
import struct
import traceback

from ansible_collections.qemulab.network.plugins.module_utils._netlink_holder import (
    HolderError,
    HolderNamespace,
    holder_namespace,
    open_inside,
)
from ansible_collections.qemulab.network.plugins.module_utils._netlink_options import HOLDER_ARGUMENT_SPEC

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
CLONE_NEWNET = 0x40000000
SIOCGSKNS = 0x894C  # a socket's network namespace, as an fd
# linux/if_tun.h
TUNSETIFF, TUNSETPERSIST, TUNSETOWNER, TUNSETGROUP = 0x400454ca, 0x400454cb, 0x400454cc, 0x400454ce
IFF_TAP, IFF_MULTI_QUEUE, IFF_NO_PI, IFF_VNET_HDR, IFF_TUN_EXCL = 0x0002, 0x0100, 0x1000, 0x4000, 0x8000


class NetlinkError(Exception):
    """A netlink failure, with a message a person can act on."""


def netns_exists(name):
    """Whether namespace `name` exists: its /run/netns entry is a mount (an empty file there that is not one is what
    a create killed before its bind mount leaves behind). A holder's namespace (checked when it was resolved) does."""
    if isinstance(name, HolderNamespace):
        return True
    return bool(name) and os.path.ismount(os.path.join(NETNS_RUN_DIR, name))


def namespace_param(params):
    """The namespace a module works in, from its shared options (NETNS_ARGUMENT_SPEC): the name `netns`, or the
    lab namespace of holder `userns_pid` (a HolderNamespace, usable wherever a name is), or None for the caller's.
    NetlinkError when both are given or the holder is not the user's own running one."""
    pid = params.get("userns_pid")
    if pid is None:
        return params.get("netns") or None
    if params.get("netns"):
        raise NetlinkError("netns %s and userns_pid %s: give one of them (a namespace under /run/netns, or a rootless "
                           "lab's holder)" % (params["netns"], pid))
    try:
        return holder_namespace(pid)
    except HolderError as exc:
        raise NetlinkError(str(exc))


def _open_netlink(netns):
    if isinstance(netns, HolderNamespace):
        fd = _inside_holder(netns, [("netlink",)])[0]
        ipr = IPRoute(fileno=fd)
        ipr.qemulab_holder = netns  # _open_tun_beside opens /dev/net/tun through the holder too
        return ipr
    return NetNS(netns) if netns else IPRoute()


def _inside_holder(holder, items):
    """open_inside's fds; the first item's failure raised as OSError (what the callers expect)."""
    try:
        opened = open_inside(holder, items)
    except OSError as exc:
        raise NetlinkError(str(exc))
    problems = [item for item in opened if isinstance(item, OSError)]
    if problems:
        for item in opened:
            if not isinstance(item, OSError):
                os.close(item)
        raise problems[0]
    return opened


@contextlib.contextmanager
def netlink(netns=None):
    """Yield an IPRoute bound to `netns` (None or "" for the caller's namespace; a HolderNamespace for a rootless
    lab's)."""
    if netns and not netns_exists(netns):
        raise NetlinkError("network namespace %s does not exist; create it first with qemulab.network.netns" % netns)
    ipr = _open_netlink(netns)
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
        "group": _attr(msg, "IFLA_GROUP"),
        "master": master,
        "mtu": _attr(msg, "IFLA_MTU"),
        "mac": (_attr(msg, "IFLA_ADDRESS") or "").lower() or None,
        "up": bool(msg["flags"] & 1),
        "peer_index": _attr(msg, "IFLA_LINK") if kind == "veth" else None,
        "stp": _info_data(linkinfo, "IFLA_BR_STP_STATE", bool) if kind == "bridge" else None,
        "tun": _tun_info(linkinfo) if kind == "tun" else None,
        "vxlan": _vxlan_info(msg, linkinfo) if kind == "vxlan" else None,
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


def _vxlan_info(msg, linkinfo):
    """Creation-time properties of a vxlan. `link_netnsid` (IFLA_LINK_NETNSID) is set when its UDP socket lives in
    another namespace than the device: the one it was created from."""
    return {
        "vni": _info_data(linkinfo, "IFLA_VXLAN_ID", int),
        "local": _info_data(linkinfo, "IFLA_VXLAN_LOCAL", str) or _info_data(linkinfo, "IFLA_VXLAN_LOCAL6", str),
        "remote": _info_data(linkinfo, "IFLA_VXLAN_GROUP", str) or _info_data(linkinfo, "IFLA_VXLAN_GROUP6", str),
        "port": _info_data(linkinfo, "IFLA_VXLAN_PORT", int),
        "learning": _info_data(linkinfo, "IFLA_VXLAN_LEARNING", bool),
        "link_netnsid": _attr(msg, "IFLA_LINK_NETNSID"),
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


def create_netns(name, lo_alias=None):
    """Make namespace `name`, its `lo` already carrying `lo_alias` when it appears under /run/netns.

    A child process unshares a new namespace, writes the alias there and only then bind-mounts it (pyroute2's
    attach): killed before the mount, the namespace dies with the child; after it, it is marked."""
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        _remove_stale_mountpoint(path)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_end)
            status = 0
            try:
                _unshare_and_publish(name, lo_alias)
            except BaseException as exc:  # everything goes back to the parent as text
                os.write(write_end, _reason(exc).encode("utf-8", "replace")[:2000])
                status = 1
            os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            problem = pipe.read().decode("utf-8", "replace")
        status = os.waitpid(pid, 0)[1]
    except (OSError, _PyrouteNetlinkError) as exc:
        raise NetlinkError("namespace %s: cannot create it: %s" % (name, _reason(exc)))
    if status != 0:
        raise NetlinkError("namespace %s: cannot create it: %s" % (name, problem or "exit status %s" % status))


def stale_netns_mountpoint(name):
    """Whether /run/netns/<name> is an empty regular file, not a mount: the mount point of a create killed before its
    bind mount (no namespace; `ip netns add` of that name would fail)."""
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0 and not os.path.ismount(path)


def _remove_stale_mountpoint(path):
    if stale_netns_mountpoint(os.path.basename(path)):
        os.unlink(path)


def remove_stale_netns_mountpoint(name):
    try:
        _remove_stale_mountpoint(os.path.join(NETNS_RUN_DIR, name))
    except OSError as exc:
        raise NetlinkError("namespace %s: cannot remove its stale mount point: %s" % (name, _reason(exc)))


def _unshare_and_publish(name, lo_alias):  # pragma: no cover - runs in create_netns's child
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    if lo_alias:
        _set_alias_raw(1, lo_alias)  # lo is ifindex 1 in every namespace
    pr_netns.attach(name, os.getpid())


def _set_alias_raw(index, alias):
    """RTM_SETLINK with IFLA_IFALIAS over a bare netlink socket (the forked child keeps away from pyroute2's state)."""
    value = alias.encode("utf-8") + b"\0"
    attr = struct.pack("HH", 4 + len(value), 20) + value  # IFLA_IFALIAS
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + attr
    header = struct.pack("IHHII", 16 + len(body), 19, 0x1 | 0x4, 1, 0)  # RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:  # NETLINK_ROUTE
        sock.bind((0, 0))
        sock.send(header + body)
        reply = sock.recv(65536)
    kind = struct.unpack("H", reply[4:6])[0]
    code = -struct.unpack("i", reply[16:20])[0] if kind == 2 else 0  # NLMSG_ERROR carries -errno (0: the ack)
    if code:
        raise OSError(code, "set alias of lo: %s" % os.strerror(code))


def read_loopback_alias(netns):
    """The alias of `lo` in namespace `netns`, or None (also when there is no such namespace)."""
    if not HAS_PYROUTE2 or not netns_exists(netns):
        return None
    try:
        with netlink(netns) as ipr:
            link = get_link(ipr, "lo")
    except NetlinkError:
        return None
    return link["alias"] if link else None


def delete_netns(name):
    try:
        pr_netns.remove(name)
    except (OSError, _PyrouteNetlinkError) as exc:
        raise NetlinkError("namespace %s: cannot delete it: %s" % (name, _reason(exc)))


# Linux 5.14+; Python's socket module names it from 3.12 on
SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)


def netns_identity(name):
    """(device, inode, cookie) of the namespace: tells a namespace apart from a later one of the same name. The
    inode alone does not: the kernel gives a namespace's inode number to the next namespace made once the old one is
    gone (seen here: delete one, wait half a second, make another of the same name, same inode, every time). The
    cookie (SO_NETNS_COOKIE) is a 64-bit number the kernel never gives twice; None on a kernel without it."""
    stat = os.stat(os.path.join(NETNS_RUN_DIR, name))
    return stat.st_dev, stat.st_ino, netns_cookie(name)


def netns_cookie(name):
    """The namespace's SO_NETNS_COOKIE, read from a socket made inside it, or None on a kernel without it."""
    with _inside(name):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)   # a socket belongs to the namespace it was made in
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL):
            return None
        raise
    finally:
        sock.close()
    return struct.unpack("=Q", raw)[0]


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


def _holder_sysctls(holder, keys, flags):
    """{key: fd or None (no such key)} of sysctl files opened inside a holder's namespaces: /proc/sys/net shows the
    opener's namespace, and the user, root of the holder's user namespace, may write them from outside."""
    try:
        opened = open_inside(holder, [("file", _sysctl_path(key), flags) for key in keys])
    except OSError as exc:
        raise NetlinkError(str(exc))
    fds = {}
    for key, item in zip(keys, opened):
        if isinstance(item, OSError) and item.errno != errno.ENOENT:
            for fd in fds.values():
                if fd is not None:
                    os.close(fd)
            raise item
        fds[key] = None if isinstance(item, OSError) else item
    return fds


def read_netns_sysctls(netns, keys):
    """{key: value or None} for dotted sysctl keys inside namespace `netns`; None where the kernel offers no such key
    there (net.bridge.* exists only while br_netfilter is loaded)."""
    values = {}
    if isinstance(netns, HolderNamespace):
        for key, fd in _holder_sysctls(netns, list(keys), os.O_RDONLY).items():
            if fd is not None:
                with os.fdopen(fd) as handle:
                    values[key] = handle.read().strip()
            else:
                values[key] = None
        return values
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
        if isinstance(netns, HolderNamespace):
            for key, fd in _holder_sysctls(netns, list(values), os.O_WRONLY).items():
                if fd is None:
                    raise OSError(errno.ENOENT, "no such sysctl", key)
                with os.fdopen(fd, "w") as handle:
                    handle.write("%s\n" % values[key])
            return
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

def add_bridge(ipr, name, stp=None, mtu=None, group=None):
    """`group`: the device group set in the create request itself (the lab's pending mark, see _ownership)."""
    kwargs = {"ifname": name, "kind": "bridge"}
    if group is not None:
        kwargs["group"] = group
    if stp is not None:
        kwargs["br_stp_state"] = 1 if stp else 0
    if mtu is not None:
        kwargs["mtu"] = mtu
    _call("bridge %s: create" % name, ipr.link, "add", **kwargs)


def set_bridge_stp(ipr, name, stp):
    _call("bridge %s: set stp" % name, ipr.link, "set", index=_index(ipr, name), kind="bridge",
          br_stp_state=1 if stp else 0)


def _open_tun_beside(ipr):
    """/dev/net/tun opened in the namespace of ipr's socket (SIOCGSKNS), where a tap made through it appears."""
    holder = getattr(ipr, "qemulab_holder", None)
    if holder is not None:  # a user cannot setns() there from outside; the helper opens it inside
        return _inside_holder(holder, [("file", "/dev/net/tun", os.O_RDWR)])[0]
    libc = ctypes.CDLL(None, use_errno=True)

    def setns(fd):
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, "setns: %s" % os.strerror(code))

    target = fcntl.ioctl(ipr.fileno(), SIOCGSKNS)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        setns(target)
        try:
            return os.open("/dev/net/tun", os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)


def add_tap(ipr, name, owner=None, group=None, multi_queue=False, vnet_hdr=False, alias=None):
    """A persistent tap in ipr's namespace, `alias` written before it is made persistent: until TUNSETPERSIST it
    lives only as long as our tun descriptor, so a kill before its alias leaves no tap at all."""
    # IFF_NO_PI as `ip tuntap add` does (QEMU sets its own flags when it attaches); EXCL: never attach to a tap that
    # someone made since we looked.
    flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL | (IFF_MULTI_QUEUE if multi_queue else 0) | \
        (IFF_VNET_HDR if vnet_hdr else 0)

    def create():
        tun = _open_tun_beside(ipr)  # a tap is made in the namespace its tun descriptor was opened in
        try:
            fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH22x", name.encode("utf-8"), flags))
            if owner is not None:
                fcntl.ioctl(tun, TUNSETOWNER, owner)
            if group is not None:
                fcntl.ioctl(tun, TUNSETGROUP, group)
            if alias:
                ipr.link("set", index=_index(ipr, name), ifalias=alias)
            fcntl.ioctl(tun, TUNSETPERSIST, 1)
        finally:
            os.close(tun)
    _call("tap %s: create" % name, create)


def add_veth(ipr, name, peer, peer_netns=None, same_netns=True, group=None):
    """A veth pair: `name` in ipr's namespace, `peer` in `peer_netns` (None: the caller's own namespace); `group`:
    both ends' device group, set in the create request itself (the lab's pending mark, see _ownership)."""
    peer_spec = {"ifname": peer}
    marked = {} if group is None else {"group": group}
    peer_spec.update(marked)
    if not same_netns:
        if peer_netns:
            peer_spec["net_ns_fd"] = peer_netns
        else:
            peer_spec["net_ns_pid"] = os.getpid()
    _call("veth %s: create with peer %s" % (name, peer), ipr.link, "add", ifname=name, kind="veth", peer=peer_spec,
          **marked)


def add_vxlan(ipr, name, vni, local, remote, port, netns=None, group=None):
    """A unicast vxlan (learning off: its one remote is its default destination) made from ipr's namespace, which
    must hold `local`: its UDP socket stays there for good. With `netns` the device itself appears in that namespace
    (IFLA_NET_NS_FD in the create request), so no moment exists where it sits unplaced in ipr's. `group`: the lab's
    pending mark (see _ownership)."""
    family = "6" if ipaddress.ip_address(local).version == 6 else ""
    kwargs = {"ifname": name, "kind": "vxlan", "vxlan_id": vni, "vxlan_port": port, "vxlan_learning": 0,
              "vxlan_local" + family: local, "vxlan_group" + family: remote}
    if group is not None:
        kwargs["group"] = group
    if netns:
        kwargs["net_ns_fd"] = netns
    _call("vxlan %s: create" % name, ipr.link, "add", **kwargs)


def all_addresses(ipr):
    """Every address (IPv4 and IPv6, as text) of every interface in ipr's namespace."""
    found = set()
    for msg in ipr.get_addr():
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if address:
            found.add(str(ipaddress.ip_address(address.split("%")[0])))
    return found


def delete_link(ipr, name):
    _call("%s: delete" % name, ipr.link, "del", index=_index(ipr, name))


def set_link(ipr, name, up=None, mtu=None, master=None, alias=None, group=None):
    """Change what is given; master '' detaches from a bridge. Order: alias and group (one request, so a pending
    mark is never dropped before the alias is there), mtu, master, then up."""
    index = _index(ipr, name)
    mark = dict((key, value) for key, value in (("ifalias", alias), ("group", group)) if value is not None)
    if mark:
        what = " and ".join(text for text in ("alias %r" % alias if alias is not None else "",
                                              "group %s" % group if group is not None else "") if text)
        _call("%s: set %s" % (name, what), ipr.link, "set", index=index, **mark)
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


# The `netns` option shared by the host modules (documented in the qemulab.network.netns doc fragment), and
# `userns_pid`, a rootless lab's namespace by its holder (qemulab.network.netns.holder); read with namespace_param.
NETNS_ARGUMENT_SPEC = dict(netns=dict(type="str"))
NETNS_OR_HOLDER_ARGUMENT_SPEC = dict(NETNS_ARGUMENT_SPEC, **HOLDER_ARGUMENT_SPEC)
