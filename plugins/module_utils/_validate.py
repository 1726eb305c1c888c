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
MTU_MIN = 68  # the IPv4 minimum; the kernel refuses less on most link types
MTU_MAX = 65535
# A guest below this does not boot the default image's kernel; the same floor for the plan and qemu_vm.
MEMORY_MIN_MIB = 64
MEMORY_MAX_MIB = 1024 * 1024

# The one name rule. Every name that becomes a path, an interface, a QEMU option or a hostname passes it: no '.',
# '/', ',', '=', whitespace or shell metacharacter can reach a path, an option string or a command line.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*\Z")
# Longest name per kind, in bytes. Interfaces: IFNAMSIZ. A lab name is part of the qemulab:<lab> alias and of
# directory names; a VM name of its run directory, whose unix socket paths must stay under 108 bytes.
NAME_MAX_BYTES = {"lab": 15, "vm": 32, "netns": 32, "bridge": IFNAME_MAX_BYTES, "tap": IFNAME_MAX_BYTES,
                  "veth": IFNAME_MAX_BYTES, "vxlan": IFNAME_MAX_BYTES, "interface": IFNAME_MAX_BYTES}
LAB_NAME_MAX_CHARS = NAME_MAX_BYTES["lab"]
NETNS_NAME_MAX_BYTES = NAME_MAX_BYTES["netns"]
_KIND_TEXT = {"lab": "a lab", "vm": "a VM", "netns": "a namespace", "bridge": "a bridge", "tap": "a tap",
              "veth": "a veth", "vxlan": "a vxlan", "interface": "an interface"}

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# a bare number is MiB; "B" only after a unit ("1024B" would read as bytes, so it is refused)
_MEMORY_RE = re.compile(r"^\s*([0-9]+)\s*(?:([kmgt])(i?b)?)?\s*$", re.IGNORECASE)
_MEMORY_UNITS_MIB = {"": 1, "m": 1, "g": 1024, "t": 1024 * 1024}
# A VM's console log lies on a tmpfs of this size of its own (_qemu_console): below the floor a guest's boot messages
# do not fit, above the ceiling the bound no longer protects the host's memory.
CONSOLE_LOG_LIMIT_DEFAULT = "4M"
CONSOLE_LOG_MIN_BYTES = 64 * 1024
CONSOLE_LOG_MAX_BYTES = 1024 * 1024 * 1024
# a bare number is bytes; K, M, G with an optional i and B, any case
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*(?:([kmg])(i?b)?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024, "g": 1024 * 1024 * 1024}


def check_name(name, kind):
    """Why `name` cannot be a name of this kind (lab, vm, netns, bridge, tap, veth, interface), or None.

    The text names the value and the fix; callers prefix the object and the field."""
    limit = NAME_MAX_BYTES[kind]
    what = _KIND_TEXT[kind]
    if not isinstance(name, str) or not name:
        return "%r is not %s name; give a non-empty name of lower-case letters, digits and '-'" % (name, what)
    if not NAME_RE.match(name):
        bad = sorted(set(ch for ch in name if not ("0" <= ch <= "9" or "a" <= ch <= "z" or ch == "-")))
        why = ("contains %s" % ", ".join(repr(ch) for ch in bad)) if bad else "starts with '-'"
        return ("%r is not %s name (it %s); use lower-case letters, digits and '-', starting with a letter or "
                "digit, at most %d characters" % (name, what, why, limit))
    if len(name) > limit:
        return "%r is %d characters long; %s name has at most %d, pick a shorter one" % (name, len(name), what, limit)
    return None


def check_ifname(name):
    """Why `name` cannot be a lab interface name (bridge, tap, veth end), or None when it can."""
    return check_name(name, "interface")


def check_netns_name(name):
    """Why `name` cannot name a lab's network namespace (a file in /run/netns), or None."""
    return check_name(name, "netns")


def check_lab_name(name):
    """Why `name` cannot be a lab name (it ends up in interface aliases and directory names), or None."""
    return check_name(name, "lab")


def parse_memory(value):
    """Memory in MiB from an int (MiB) or a string like 512M, 1G, 1GiB; ValueError with the fix otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("%r is not a memory size; give MiB as an integer or a size like 512M or 1G" % (value,))
    if isinstance(value, int):
        mib = value
    else:
        match = _MEMORY_RE.match(value)
        if not match or (match.group(2) or "").lower() == "k":
            raise ValueError("%r is not a memory size; give MiB as an integer or a size like 512M or 1G" % value)
        mib = int(match.group(1)) * _MEMORY_UNITS_MIB[(match.group(2) or "").lower()]
    if mib < MEMORY_MIN_MIB:
        raise ValueError("%r is below %d MiB, too little for a guest to boot; give at least %dM"
                         % (value, MEMORY_MIN_MIB, MEMORY_MIN_MIB))
    if mib > MEMORY_MAX_MIB:
        raise ValueError("%r is over %d MiB; give a size like 512M or 2G" % (value, MEMORY_MAX_MIB))
    return mib


def parse_console_log_limit(value):
    """A console log limit in bytes from an int (bytes) or a string like 256K, 4M, 4MiB; ValueError with the fix."""
    text = value if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    match = _SIZE_RE.match(text) if text is not None else None
    if not match:
        raise ValueError("%r is not a size; give digits with K, M or G, like 256K or 4M" % (value,))
    size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
    if size < CONSOLE_LOG_MIN_BYTES:
        raise ValueError("%r is below 64 KiB, too small for a guest's boot messages (a bare number is bytes); give "
                         "at least 64K, like 4M" % (value,))
    if size > CONSOLE_LOG_MAX_BYTES:
        raise ValueError("%r is over 1 GiB, which a console log held in the host's memory never needs; give at most "
                         "1G, like 4M" % (value,))
    return size


def qemu_opt(value):
    """A value placed inside a QEMU option string (`key=value,...`): QEMU reads ',,' as a literal comma."""
    return str(value).replace(",", ",,")


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
