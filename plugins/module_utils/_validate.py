# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small pure checks shared by the modules and the inventory plan (lab_plan).

`check_*` functions return an error text (without the object's name, so callers can prefix it) or None;
`normalize_*`/`parse_*` functions return the canonical value or raise ValueError with such a text.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

IFNAME_MAX_BYTES = 15  # IFNAMSIZ (16) minus the terminating NUL
NETNS_NAME_MAX_BYTES = 255  # a file name under /run/netns
LAB_NAME_MAX_CHARS = 64
MTU_MIN = 68  # the IPv4 minimum; the kernel refuses less on most link types
MTU_MAX = 65535

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_LAB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_ifname(name):
    """Why `name` cannot be a Linux interface name, or None when it can."""
    if not isinstance(name, str) or not name:
        return "interface name must be a non-empty string"
    if name in (".", ".."):
        return "interface name must not be '.' or '..'"
    if len(name.encode("utf-8")) > IFNAME_MAX_BYTES:
        return "interface name %r is %d bytes; Linux allows at most %d, pick a shorter name" % (
            name, len(name.encode("utf-8")), IFNAME_MAX_BYTES)
    bad = sorted(set(ch for ch in name if ch in "/:" or ch.isspace()))
    if bad:
        return "interface name %r contains %s; use letters, digits, '-', '_' or '.'" % (
            name, ", ".join(repr(ch) for ch in bad))
    return None


def check_netns_name(name):
    """Why `name` cannot name a network namespace (a file in /run/netns), or None."""
    if not isinstance(name, str) or not name:
        return "namespace name must be a non-empty string"
    if name in (".", "..") or "/" in name or "\0" in name:
        return "namespace name %r must not be '.', '..' or contain '/'; pick a plain name" % name
    if len(name.encode("utf-8")) > NETNS_NAME_MAX_BYTES:
        return "namespace name is longer than %d bytes; pick a shorter name" % NETNS_NAME_MAX_BYTES
    if any(ch.isspace() for ch in name):
        return "namespace name %r contains whitespace; pick a name without it" % name
    return None


def check_lab_name(name):
    """Why `name` cannot be a lab name (it ends up in interface aliases and file names), or None."""
    if not isinstance(name, str) or not name:
        return "lab name must be a non-empty string"
    if len(name) > LAB_NAME_MAX_CHARS or not _LAB_NAME_RE.match(name):
        return ("lab name %r must be 1-%d characters of letters, digits, '.', '_' or '-', starting with a letter "
                "or digit" % (name, LAB_NAME_MAX_CHARS))
    return None


def normalize_mac(mac):
    """The MAC in lower case with colons; ValueError for anything else or a multicast address."""
    if not isinstance(mac, str):
        raise ValueError("MAC address must be a string like 52:54:00:12:34:56")
    text = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(text):
        raise ValueError("MAC address %r is not six hex pairs separated by ':' (like 52:54:00:12:34:56)" % mac)
    if int(text[:2], 16) & 1:
        raise ValueError("MAC address %r is multicast (lowest bit of the first byte set); a NIC needs a unicast "
                         "address, e.g. start it with 52:54:00" % mac)
    return text


def check_mac(mac):
    try:
        normalize_mac(mac)
    except ValueError as exc:
        return str(exc)
    return None


def parse_cidr(cidr):
    """An ipaddress interface (address with prefix) from 'a.b.c.d/n'; ValueError when it is not one."""
    if not isinstance(cidr, str) or "/" not in cidr:
        raise ValueError("address %r needs a prefix length, like 10.20.10.4/24" % (cidr,))
    try:
        return ipaddress.ip_interface(cidr.strip())
    except ValueError:
        raise ValueError("address %r is not an IPv4/IPv6 address with prefix length (like 10.20.10.4/24)" % cidr)


def normalize_cidr(cidr):
    """The canonical text of an address with prefix ('10.20.10.4/24')."""
    return str(parse_cidr(cidr))


def check_cidr(cidr):
    try:
        parse_cidr(cidr)
    except ValueError as exc:
        return str(exc)
    return None


def check_mtu(mtu):
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX:
        return "mtu %r must be an integer from %d to %d" % (mtu, MTU_MIN, MTU_MAX)
    return None
