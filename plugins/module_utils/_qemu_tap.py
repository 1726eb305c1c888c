# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's taps: checking they exist (and whom they belong to) before QEMU starts, and opening them inside their
namespace so QEMU gets a file descriptor.

Taps are opened with the tun ioctl after setns(2), not through pyroute2; pyroute2 (guarded in _netlink) only
reads them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import fcntl
import os
import socket
import struct

from ansible_collections.qemulab.network.plugins.module_utils._netlink import HAS_PYROUTE2, get_link, netlink
from ansible_collections.qemulab.network.plugins.module_utils._netlink_holder import (
    HolderError,
    HolderNamespace,
    holder_namespace,
    open_inside,
)

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454ca
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def _setns(fd):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_tap(ifname, netns=None):
    """An fd for the existing persistent tap `ifname`, opened inside `netns` (the tap stays there; we come back), or
    inside a rootless lab's namespaces (a HolderNamespace: a helper opens it there and sends the fd back)."""
    if isinstance(netns, HolderNamespace):
        fd = open_inside(netns, [("tap", ifname)])[0]
        if isinstance(fd, OSError):
            raise OSError(fd.errno, "tap %s in %s: %s" % (ifname, netns, fd.strerror))
        return fd
    own = ns_fd = None
    if netns:
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        ns_fd = os.open(os.path.join("/var/run/netns", netns), os.O_RDONLY)
    try:
        if netns:
            _setns(ns_fd)
        # TUNSETIFF would silently create a missing tap (one that vanishes with QEMU): require it to exist.
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            raise OSError(errno.ENODEV, "tap %s does not exist" % ifname)
        tun = os.open("/dev/net/tun", os.O_RDWR)
        try:
            ifr = struct.pack("16sH22x", ifname.encode("utf-8"), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(tun, TUNSETIFF, ifr)
        except Exception:
            os.close(tun)
            raise
        return tun
    finally:
        if own is not None:
            _setns(own)
            os.close(own)
        if ns_fd is not None:
            os.close(ns_fd)


def tap_namespace(config, nic):
    """Where a tap NIC's tap is: the holder's namespace for a rootless lab's VM (userns_pid; HolderError when that is
    not the user's running holder), else the NIC's netns name ("" for the root namespace)."""
    if config.get("userns_pid") is not None:
        return holder_namespace(config["userns_pid"])
    return nic["netns"]


def tap_problems(config, get_tap, user=None):
    """Problems with the taps the VM needs; get_tap(ifname, netns) -> link dict or None (raises on netlink errors).
    A QEMU that runs as an unprivileged user may only use taps that user owns; one inside a rootless lab's namespaces
    (userns_pid) is root there and may use any."""
    problems = []
    if config.get("userns_pid") is not None:
        user = None
    for index, nic in enumerate(config["nics"]):
        if nic["backend"] != "tap":
            continue
        netns = tap_namespace(config, nic)
        where = "namespace %s" % netns if netns else "the root namespace"
        link = get_tap(nic["ifname"], netns)
        if link is None:
            problems.append("VM %s: nics[%d] needs tap %s, which does not exist in %s; create it first with "
                            "qemulab.network.tap" % (config["name"], index, nic["ifname"], where))
            continue
        owner = (link.get("tun") or {}).get("owner")
        if user and user["uid"] != 0 and owner != user["uid"]:
            problems.append("VM %s: nics[%d]: tap %s in %s is owned by %s, but QEMU runs as %s (run_as); create "
                            "the tap with owner: %s (the lab does when lab_qemu_user is set)"
                            % (config["name"], index, nic["ifname"], where,
                               "no user (root only)" if owner is None else "uid %s" % owner, user["name"],
                               user["name"]))
    return problems


def _read_taps(netns, names):
    """{name: link dict or None} for `names` in `netns`, over one netlink socket."""
    if not HAS_PYROUTE2:
        raise RuntimeError("the Python library pyroute2 is needed to check taps; install it for the interpreter "
                           "that runs this module (pip install pyroute2, or Debian's python3-pyroute2)")
    with netlink(netns or None) as ipr:
        return dict((name, get_link(ipr, name)) for name in names)


def get_tap_netlink(ifname, netns):
    return _read_taps(netns, [ifname])[ifname]


def tap_reader(configs):
    """get_tap(ifname, netns) for tap_problems over the taps of normalised `configs`, read now, once per namespace:
    for VMs started from several threads (pyroute2 enters a namespace by forking, which is not safe once other
    threads run). A namespace that could not be read raises its error for every VM that uses it."""
    wanted, errors = {}, {}
    for config in configs:
        for nic in config["nics"]:
            if nic["backend"] != "tap":
                continue
            try:
                wanted.setdefault(tap_namespace(config, nic), set()).add(nic["ifname"])
            except HolderError:
                continue  # tap_problems meets it again, for that VM
    links = {}
    for netns, names in wanted.items():
        try:
            links.update(((netns, name), link) for name, link in _read_taps(netns, sorted(names)).items())
        except Exception as exc:  # the message is readable; tap_problems' caller reports it per VM
            errors[netns] = exc

    def get_tap(ifname, netns):
        if netns in errors:
            raise errors[netns]
        return links.get((netns, ifname))
    return get_tap
