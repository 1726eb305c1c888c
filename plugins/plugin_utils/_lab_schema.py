# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab model: every inventory field declared once.

Each `Field` holds the name, the scope it lives in, its type (a reader below), default, rule, meaning and example.
The compiler (`_lab_compiler`) validates and fills defaults from these declarations, and `docs/inventory.md`'s
tables are generated from them (`markdown_table`; tests/unit/plugins/plugin_utils/test_lab_schema.py fails when
the page and the schema differ). The rules themselves (names, MACs, memory) live once in
`plugins/module_utils/_validate.py`, which the modules call too.

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import os
import re

from ansible.module_utils.six.moves.collections_abc import Mapping

from ansible_collections.qemulab.network.plugins.module_utils import _netem
from ansible_collections.qemulab.network.plugins.module_utils import _ring
from ansible_collections.qemulab.network.plugins.module_utils._validate import (
    CONSOLE_LOG_LIMIT_DEFAULT,
    MTU_MAX,
    MTU_MIN,
    NAME_MAX_BYTES,
    check_name,
    normalize_mac,
    parse_console_log_limit,
    parse_memory,
)
from ansible_collections.qemulab.network.plugins.plugin_utils._nat_rules import parse_pool

MISSING = object()

NIC_MODELS = ("virtio-net-pci", "e1000", "rtl8139")
# Debian's useradd accepts these names (NAME_REGEX); a uid is accepted too.
QEMU_USER_RE = re.compile(r"^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})\Z")
DEFAULT_USER_NET = "10.0.3.0/24"
# Bytes VXLAN adds to each frame on the underlay: outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14.
VXLAN_OVERHEAD = 50
# A path handed to QEMU or read on the lab host: absolute, one line, no NUL.
PATH_RE = re.compile(r"^/[^\0\n\r]*\Z")


# ------------------------------------------------------------------ value readers
# Each takes the raw inventory value and returns (value, None) or (None, why); `why` names the value and the fix.

def describe(value):
    if isinstance(value, str):
        return repr(str(value))
    if value is None:
        return "nothing"
    # Ansible hands over tagged subclasses of the plain types: name the plain one
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (list, "a list"), (dict, "a mapping"))
    kind = next((name for base, name in kinds if isinstance(value, base)), "a " + type(value).__name__)
    plain = next((base for base in (bool, int, float) if isinstance(value, base)), None)
    return "%r (%s)" % (plain(value) if plain else value, kind)


def as_int(value):
    """Ints and digit strings (INI inventories give strings) as int; anything else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # ASCII digits only: str.isdigit() also holds for '²' and other scripts' digits
    if isinstance(value, str) and re.match(r"[0-9]+\Z", value.strip()):
        return int(value.strip())
    return None


def _name(kind):
    def read(value):
        why = check_name(value, kind)
        return (None, why) if why else (str(value), None)
    read.type_text = "name"
    return read


def _integer(low, high, what):
    def read(value):
        number = as_int(value)
        if number is None or not low <= number <= high:
            return None, "%s is not %s from %d to %d; give one, like %d" % (describe(value), what, low, high, low)
        return number, None
    read.type_text = "int"
    read.rule_text = "%d-%d" % (low, high)
    return read


def _port(value):
    number = as_int(value)
    if number is None:
        return None, "%s is not a port number; use an integer 1024-65535" % describe(value)
    if not 1024 <= number <= 65535:
        return None, "%d is outside 1024-65535; pick an unprivileged port" % number
    return number, None


_port.type_text = "int (port)"


def _memory(value):
    try:
        return parse_memory(value), None
    except ValueError as exc:
        return None, str(exc)


_memory.type_text = "int (MiB) or str"


def _log_limit(value):
    # qemu_vm's own rule; the value passes as written (qemu_vm reads the size again, as it reads any task's)
    try:
        parse_console_log_limit(value)
    except ValueError as exc:
        return None, str(exc)
    return value, None


_log_limit.type_text = "str (size) or int (bytes)"


def _boolean(value):
    if not isinstance(value, bool):
        return None, "%s is not a boolean; write true or false" % describe(value)
    return value, None


_boolean.type_text = "bool"


def _choice(options, booleans=None):
    def read(value):
        if isinstance(value, bool) and booleans:
            # YAML reads a bare on/off as a boolean
            value = booleans[value]
        if value not in options:
            return None, "%s is not one of %s; use one of them" % (describe(value), ", ".join(options))
        return str(value), None
    read.type_text = "str"
    return read


def _mac(value):
    # qemu_vm's own rule (_validate.normalize_mac); the plan words it for an inventory and adds the all-zero MAC
    try:
        mac = normalize_mac(value)
    except ValueError as exc:
        if isinstance(value, str) and "multicast" in str(exc):
            return None, "%s is a multicast MAC; a NIC needs a unicast one (even first octet)" % value
        return None, "%s is not a MAC address; write six hex pairs like 12:34:56:ab:cd:71" % describe(value)
    if mac == "00:00:00:00:00:00":
        return None, "00:00:00:00:00:00 is not usable; give the NIC a real MAC"
    return mac, None


_mac.type_text = "str (MAC)"


def interface(value):
    """An IPv4 'address/prefix' as ipaddress.IPv4Interface."""
    if isinstance(value, str) and "/" not in value:
        try:
            ipaddress.ip_address(value.strip())
            return None, "%s has no prefix length; write it with one, like %s/24" % (value, value.strip())
        except ValueError:
            pass
    if not isinstance(value, str) or "/" not in value:
        return None, "%s is not an address with prefix length; write it like 10.20.10.1/24" % describe(value)
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        return None, "%s is not an address with prefix length; write it like 10.20.10.1/24" % describe(value)
    if iface.version != 4:
        return None, "%s is not IPv4; the lab is IPv4 only" % value
    reserved = (iface.network.network_address, iface.network.broadcast_address)
    if iface.network.prefixlen < 31 and iface.ip in reserved:
        return None, "%s is the network or broadcast address of %s; pick a host address" % (value, iface.network)
    return iface, None


interface.type_text = "str (CIDR)"


def address(value):
    if not isinstance(value, str):
        return None, "%s is not an IPv4 address; write it like 10.20.10.1" % describe(value)
    try:
        result = ipaddress.ip_address(value.strip())
    except ValueError:
        return None, "%s is not an IPv4 address; write it like 10.20.10.1" % describe(value)
    if result.version != 4:
        return None, "%s is not IPv4; the lab is IPv4 only" % value
    return result, None


address.type_text = "str (IPv4)"


def network(value):
    """A route destination or user-mode network: CIDR with host bits clear, or 'default'."""
    if isinstance(value, str) and value.strip() == "default":
        return ipaddress.ip_network("0.0.0.0/0"), None
    if not isinstance(value, str):
        return None, "%s is not a network; write it like 10.20.60.0/24" % describe(value)
    try:
        result = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None, "%s is not a network; write it like 10.20.60.0/24" % describe(value)
    if result.version != 4:
        return None, "%s is not IPv4; the lab is IPv4 only" % value
    if "/" not in value:
        return None, "%s is an address, not a network; write it with its prefix, like %s/32" % (value, value)
    if str(result) != value.strip():
        return None, "%s has host bits set; the network is %s" % (value, result)
    return result, None


network.type_text = "str (CIDR)"


def _path(value):
    if not isinstance(value, str) or not PATH_RE.match(value) or not os.path.isabs(value):
        return None, "%s is not an absolute path; give the file's absolute path" % describe(value)
    return str(value), None


_path.type_text = "str (absolute path)"


def _qemu_user(value):
    if value == "" or value is None:
        return "", None
    if not (isinstance(value, str) or as_int(value) is not None) or not QEMU_USER_RE.match(str(value)):
        return None, ("%s is not a user name; give an unprivileged user's name (like qemulab) or \"\" to run QEMU "
                      "as root" % describe(value))
    return ("" if str(value) in ("root", "0") else str(value)), None


_qemu_user.type_text = "str"


def _hypervisor(value):
    if not isinstance(value, str):
        return None, "%s is not a host name; name a host of group hypervisors" % describe(value)
    return str(value), None


_hypervisor.type_text = "str"


def _pool(value):
    """A NAT pool 'first-last' of IPv4 addresses, normalised; order, family and size checked (`_nat_rules`)."""
    try:
        first, last = parse_pool(value)
    except ValueError as exc:
        return None, str(exc)
    return "%s-%s" % (first, last), None


_pool.type_text = "str (IPv4 range)"
_pool.rule_text = "first-last, at most 256 addresses"


def _items(scope):
    """A list of mappings whose keys are the fields of `scope`; the compiler reads each item."""
    def read(value):
        if not isinstance(value, (list, tuple)):
            return None, "%s is not a list; write a list of {%s}" % (
                describe(value), ", ".join(f.name for f in fields(scope) if not f.derived))
        return list(value), None
    read.type_text = "list of dicts"
    read.item_scope = scope
    return read


def _mapping(scope):
    """One mapping whose keys are the fields of `scope`; the compiler reads each key."""
    def read(value):
        if not isinstance(value, Mapping):
            return None, "%s is not a mapping; write {%s}" % (
                describe(value), ", ".join(f.name for f in fields(scope) if not f.derived))
        return dict(value), None
    read.type_text = "dict"
    read.item_scope = scope
    return read


def _pair(read_one, what, example):
    """Exactly two values, each read by `read_one` (a serial link's ends, its addresses)."""
    def read(value):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            return None, "%s is not a list of two %s; write [%s]" % (describe(value), what, example)
        out = []
        for item in value:
            one, why = read_one(item)
            if why:
                return None, why
            out.append(one)
        return out, None
    read.type_text = "list of two %s" % what
    return read


def _netem_value(value):
    # the rules live with the code that applies them (module_utils/_netem.py); here every problem is listed
    want, problems = _netem.normalize(dict(value) if isinstance(value, Mapping) else value)
    if problems:
        return None, "; ".join(problems)
    return want, None


_netem_value.type_text = "dict"
_netem_value.rule_text = ("keys %s; times with us/ms/s (at most 10s), percentages 0%%-100%%, rates 8kbit-100gbit; "
                          "jitter and reorder need delay" % ", ".join(_netem.KEYS))


def _text(value):
    if not isinstance(value, str):
        return None, "%s is not a string; write it as text" % describe(value)
    return str(value), None


_text.type_text = "str"


# ------------------------------------------------------------------ declarations

class Field(object):
    """One inventory field.

    scope: lab (lab-wide variables), hypervisor (a lab host's host variables), vm (a VM's host variables), nic,
    hostfwd, route, nat, host_port (list items).
    read: the value reader above. default: the value when unset (MISSING: required; a callable gets the VM's kind).
    """

    def __init__(self, scope, name, read, default, meaning, example, rule="", derived=False):
        self.scope = scope
        self.name = name
        self.read = read
        self.default = default
        self.meaning = meaning
        self.example = example
        self.rule = rule or getattr(read, "rule_text", "")
        self.derived = derived

    @property
    def required(self):
        return self.default is MISSING

    def default_for(self, context=None):
        return self.default(context) if callable(self.default) else self.default

    @property
    def type_text(self):
        return getattr(self.read, "type_text", "")


NAME_RULE = ("lower-case letters, digits and `-`, starting with a letter or digit, at most %d characters")

SCHEMA = (
    # -- lab-wide: read from the lab host's variables (group_vars/all.yml) -----------------------------------------
    Field("lab", "lab_name", _name("lab"), MISSING,
          "Names the run directory `/run/qemulab/<lab_name>`, the disks' directory and the ownership mark "
          "`qemulab:<lab_name>` on every interface the lab creates. A lab of the same name already running from "
          "another inventory directory is refused (its `lab.json` records the inventory). Cleanup refuses a name "
          "that breaks the rule before touching anything.", "`seed`", NAME_RULE % NAME_MAX_BYTES["lab"]),
    Field("lab", "lab_netns", _name("netns"), "",
          "Network namespace holding the whole lab: bridges, taps and both ends of the host ports. `\"\"` puts "
          "everything in the host's own namespace, as the seed's scripts do. QEMU itself stays in the root "
          "namespace (see `docs/architecture.md`).", "`qemulab-seed`",
          (NAME_RULE % NAME_MAX_BYTES["netns"]) + ", or `\"\"`"),
    Field("lab", "lab_host_ports", _items("host_port"), [],
          "veth pairs giving the lab host a port on a segment; see `lab_host_ports` items.", "see below"),
    Field("lab", "lab_serial_links", _items("serial_link"), [],
          "Serial lines between VMs, with IP over them (PPP, SLIP) or without (raw); see `lab_serial_links` items "
          "and `docs/serial-links.md`.", "`[{between: [rt1, rt2], protocol: ppp, addresses: [10.99.0.1, "
          "10.99.0.2]}]`"),
    Field("lab", "lab_uplink", _mapping("uplink"), None,
          "A way out of the lab to the lab host's upstream: a veth from a segment of the lab (`bridge`) to "
          "`upstream_netns`, whose end there carries `address` and masquerades the segment out of `upstream`; with "
          "`router`, that router masquerades its other segments onto `bridge`. See `lab_uplink` keys and "
          "`docs/uplink.md`.", "`{bridge: br2, address: 10.20.20.254/24, upstream: eth0, router: rt1}`"),
    Field("lab", "lab_qemu_user", _qemu_user, "",
          "Run every VM's QEMU as this unprivileged user instead of root (the user must exist on the lab host: "
          "`useradd --system --no-create-home --shell /usr/sbin/nologin qemulab`). The lab's taps are created owned "
          "by that user, and QEMU gets its taps, disks and `/dev/vhost-net` as file descriptors. Changing it on a "
          "running lab needs a cleanup first.", "`qemulab`", "a user name or uid; `root`/`0` mean root"),
    Field("lab", "lab_console_log_limit", _log_limit, CONSOLE_LOG_LIMIT_DEFAULT,
          "Largest size of each VM's serial console log, `/run/qemulab/<lab_name>/<vm>/console/console.log`: the "
          "log lies on a tmpfs of this size of its own, so a guest flooding its console fills that and no more of "
          "the lab host's memory or `/run`. Once it is full QEMU stops logging; the guest runs on and the console "
          "socket still carries everything. Digits with `K`, `M` or `G` (also `KiB`, `MB`, …, any case); a bare "
          "number is bytes. Changing it restarts the VMs.", "`16M`", "64 KiB to 1 GiB"),
    Field("lab", "lab_dpdk_cores", _integer(1, 64, "a number of cores"), 1,
          "Polling cores of each user-space (`backend: vhost-user`) segment's DPDK datapath; each is busy at 100 % "
          "while the lab runs. The plan refuses such segments when the lab host has fewer than their cores plus "
          "one CPUs (testpmd's main core, and the guests need a CPU that is not polled). See `docs/dpdk.md`.",
          "`2`"),
    Field("lab", "lab_overcommit", _boolean, False,
          "Start the lab even when the VMs' memory (plus QEMU's own overhead per VM) exceeds the lab host's "
          "available memory, or a VM has more vCPUs than the host has CPUs. Off, the plan refuses such a lab with "
          "the figures before anything changes.", "`true`"),
    Field("lab", "lab_lock_timeout", _integer(0, 86400, "a number of seconds"), 600,
          "How long a run of `lab.yml` waits for another run of the same lab (which holds "
          "`/run/qemulab/<lab_name>.lock`) to end before it fails naming that run.", "`1800`"),
    Field("lab", "lab_cleanup_force", _boolean, False,
          "Let a cleanup (`--tags cleanup`) remove a lab whose claim (`lab.json`) names another inventory "
          "directory; without it such a cleanup is refused before anything is removed. Meant for one run, as "
          "`-e '{\"lab_cleanup_force\": true}'`; a bring-up of a lab another inventory claims is refused whatever "
          "it says.", "`true`"),

    Field("lab", "lab_capture_ring", _boolean, False,
          "Keep a ring of each segment's recent packets from the moment its bridge is created (one `tcpdump` per "
          "bridge in the lab's namespace, files under `/var/lib/qemulab/labs/<lab_name>/rings/`, root only). When "
          "the verify stage fails, the rings of the segments on the failing paths are saved as pcapng files in "
          "`/run/qemulab/<lab_name>/verify-rings/<vm>/` and named in the failure. Cleanup stops the recorders and "
          "removes the rings; see `docs/links.md`.", "`true`"),
    Field("lab", "lab_capture_ring_size", _integer(_ring.SIZE_MIN, _ring.SIZE_MAX, "a number of megabytes"),
          _ring.SIZE_DEFAULT,
          "Megabytes (10^6 bytes) of recent packets each segment's ring keeps with `lab_capture_ring`: that many "
          "files of 1 MB, the oldest overwritten first; on disk at most this plus 64 KiB per file. Changing it "
          "restarts the recorders with empty rings.", "`16`"),
    Field("lab", "lab_vxlan_port", _integer(1, 65535, "a UDP port"), 4789,
          "UDP port of the VXLAN tunnels that join a segment spread over several lab hosts (see "
          "`docs/multi-host.md`); open it between the lab hosts' underlay addresses.", "`4790`"),
    Field("lab", "lab_underlay_mtu", _integer(MTU_MIN + VXLAN_OVERHEAD, MTU_MAX, "an MTU"), 1500,
          "MTU of the path between the lab hosts' underlay addresses. VXLAN adds 50 bytes, so every NIC, tap, "
          "host port and VXLAN port of a segment that spans lab hosts gets this less 50 (1450 by default) unless "
          "its `mtu` is set lower; a larger `mtu` there is refused. Each lab host's underlay interface is checked "
          "to carry it.", "`9000`"),

    # -- per lab host: host variables of the hosts of group hypervisors -----------------------------------------
    Field("hypervisor", "lab_underlay_address", address, None,
          "The lab host's own address that its VXLAN tunnels use, one the other lab hosts reach; required on every "
          "lab host a segment spans, unique among them, and checked to be an address of that host before anything "
          "changes.", "`192.0.2.11`"),

    # -- per VM: the VM's host variables ---------------------------------------------------------------------------
    Field("vm", "inventory_hostname", _name("vm"), MISSING,
          "The VM's own name: the inventory host name. It becomes the VM's run directory, its QEMU name and the "
          "guest's hostname.", "`rt1`", NAME_RULE % NAME_MAX_BYTES["vm"]),
    Field("vm", "ansible_port", _port, MISSING,
          "The 127.0.0.1 port forwarded to the guest's port 22, different for every VM and free on the lab host.",
          "`2201`", "1024-65535"),
    Field("vm", "vm_nics", _items("nic"), MISSING,
          "The VM's lab NICs in guest order: item 0 is `eth0`, item 1 `eth1`, … See `vm_nics` items.", "see below",
          "at least one"),
    Field("vm", "vm_routes", _items("route"), [],
          "Static routes; the plan adds `dev` (the NIC whose subnet holds `via`, or `ppp<n>`/`sl<n>` when `via` is "
          "the peer of one of the VM's `lab_serial_links`: docs/serial-links.md). A route to a segment the VM is "
          "attached to, or a second route to one destination, is refused (the kernel would refuse it too).",
          "`[{to: 10.20.60.0/24, via: 10.20.20.2}]`"),
    Field("vm", "vm_gateway", address, None,
          "Default gateway (the seed's `up route add default gw`), usually for hosts: on an attached subnet, not "
          "the VM's own address, not together with a `to: default` route. `\"\"` or null means none.",
          "`10.20.10.1`"),
    Field("vm", "vm_memory", _memory, 1024,
          "Guest memory: an integer in MiB, or digits with `M` or `G` (also `MB`, `MiB`, `GB`, `GiB`, any case). "
          "The sum over the lab, plus QEMU's own overhead per VM, must fit the lab host's available memory "
          "(see `lab_overcommit`).", "`512M`", "64 MiB to 1 TiB"),
    Field("vm", "vm_vcpus", _integer(1, 255, "a number of CPUs"), 1,
          "Virtual CPUs. More than the lab host has CPUs is refused (see `lab_overcommit`).", "`2`"),
    Field("vm", "vm_forwarding", _boolean, lambda kind: kind == "router",
          "IPv4 forwarding in the guest (the seed's `net.ipv4.ip_forward = 1`). Default: `true` for routers, "
          "`false` for hosts.", "`false`"),
    Field("vm", "vm_kernel", _path, None,
          "A kernel of your own for direct kernel boot; needs `vm_disk`. See `docs/own-images.md`. Must exist "
          "when the plan is made (looked up on the controller, which is the lab host).",
          "`/srv/yocto/vms/bzImagert1.bin`"),
    Field("vm", "vm_initrd", _path, None, "An initrd for your own kernel; only together with `vm_kernel`.",
          "`/srv/yocto/vms/initrd-rt1.img`"),
    Field("vm", "vm_disk", _path, None,
          "Your own root disk, attached as virtio `/dev/vda`; raw unless the name ends in `.qcow2`; needs "
          "`vm_kernel`. Used in place and writable (no overlay), as the seed does. Without `vm_kernel`, "
          "`vm_initrd` and `vm_disk` the VM boots the built guest image on a copy-on-write overlay.",
          "`/srv/yocto/vms/rt1.ext4`"),
    Field("vm", "vm_boot", _choice(("clone", "boot")), None,
          "How a VM on the built guest image starts: `clone` restores it from a booted template of its machine "
          "(see `docs/clones.md`), where that comes out exactly as a boot would (a new VM without extra QEMU "
          "arguments), `boot` boots its kernel. Default: the lab host's `vm_launch_boot` (`clone`). VMs on an "
          "image of their own always boot.", "`boot`"),
    Field("vm", "vm_connection", _choice(("ssh", "console")), None,
          "How Ansible reaches the guest to configure it: `ssh` through its management NIC's forwarded port, "
          "`console` through its serial console socket with the `qemulab.network.console` connection (for an image "
          "without sshd or Python, such as a Yocto `core-image-minimal`: the guest is configured with shell commands "
          "and busybox `ifup`, and not waited for on SSH; see `docs/own-images.md`). `vm_nat` needs `ssh`. "
          "Default: `ssh`, except for a VM on its own ext2/3/4 root disk (`vm_disk`) in which the lab host finds no "
          "SSH server (`/usr/sbin/sshd`, dropbear): `console`, and the status table says why.",
          "`console`"),
    Field("vm", "vm_nat", _items("nat"), [],
          "NAT on a router: masquerade (PAT), dynamic NAT from a pool and static 1:1; see `vm_nat` items.",
          "`[{type: masquerade, inside: eth0, outside: eth1}]`"),
    Field("vm", "vm_hypervisor", _hypervisor, None,
          "The lab host that runs this VM: a host of group `hypervisors` (default: the first one). A segment whose "
          "members sit on several lab hosts is joined by VXLAN between them, and a guest on a lab host reached over "
          "SSH is reached through that host (see `docs/multi-host.md`). Topology files: `host:` on a node.",
          "`labhost2`"),

    # -- vm_nics items ---------------------------------------------------------------------------------------------
    Field("nic", "backend", _choice(("tap", "user", "vhost-user")), "tap",
          "`tap`: a port of `bridge` through `tap`. `user`: QEMU user-mode networking (SLIRP), a private network "
          "of this VM alone, always `restrict=on` (`bridge`, `tap` and `vhost` are errors with it). `vhost-user`: "
          "a port of a segment switched in user space (DPDK `dpdk-testpmd` between exactly two such NICs named by "
          "`bridge`; no `tap`, `virtio-net-pci` only; see `docs/dpdk.md`).", "`user`"),
    Field("nic", "bridge", _name("bridge"), None,
          "The segment (Linux bridge) this NIC plugs into; required with backend `tap`. Bridges are derived from "
          "the NICs: there is no separate bridge list.", "`br1`", NAME_RULE % NAME_MAX_BYTES["bridge"]),
    Field("nic", "tap", _name("tap"), None,
          "The TAP port on the lab host (the seed's `vport11`); required with backend `tap`; unique in the lab and "
          "not a bridge's name.", "`vport11`", NAME_RULE % NAME_MAX_BYTES["tap"]),
    Field("nic", "mac", _mac, None,
          "Unicast (even first octet), not all zeros, unique in the lab; compared in lower case. When omitted, a "
          "stable locally administered MAC (`02:…`) is derived from lab name, VM and NIC index.",
          "`12:34:56:AB:CD:71`"),
    Field("nic", "address", interface, None,
          "IPv4 address with prefix length; not the network or broadcast address; unique in the lab (host ports "
          "included). All addresses on one bridge share a subnet, and two bridges' subnets may not overlap. With "
          "backend `user`: an address in `net` (default its `.15`), not SLIRP's `.2`/`.3`. Without an address the "
          "NIC is brought up unconfigured.", "`10.20.10.1/24`"),
    Field("nic", "model", _choice(NIC_MODELS), "virtio-net-pci",
          "The emulated NIC (measured throughput on this kind of host: ~4.2, ~1.4, ~1.1 Gb/s).", "`e1000`"),
    Field("nic", "vhost", _choice(("auto", "on", "off"), {True: "on", False: "off"}), "auto",
          "`auto` uses vhost-net for a `virtio-net-pci` NIC where `/dev/vhost-net` is usable (never for "
          "`e1000`/`rtl8139`), `on` requires it, `off` never uses it; `on` needs `model: virtio-net-pci`. A bare "
          "YAML `on`/`off` is accepted. What was decided is reported per NIC in the status table.", "`off`"),
    Field("nic", "mtu", _integer(MTU_MIN, MTU_MAX, "an MTU"), None,
          "The NIC's MTU, on both sides of the wire: the guest's interface, its tap on the lab host and what "
          "virtio-net announces (`host_mtu`). Every member of a bridge must agree (a bridge takes its smallest "
          "port's MTU). Unset: the kernel's 1500.", "`9000`"),
    Field("nic", "net", network, DEFAULT_USER_NET,
          "backend `user` only: the user-mode network; at most a /29, not overlapping the management NIC's "
          "`10.0.2.0/24` nor any bridge's subnet.", "`10.0.3.0/24`"),
    Field("nic", "hostfwd", _items("hostfwd"), [],
          "backend `user` only: forwards from `127.0.0.1:<host_port>` on the lab host (never another address) to "
          "the guest's `guest_port`.", "`[{host_port: 8080, guest_port: 80}]`"),

    Field("nic", "netem", _netem_value, None,
          "Impairment of the traffic this NIC sends (one direction: a symmetric link delay is set on both ends): "
          "`delay`, `jitter`, `loss`, `duplicate`, `reorder`, `corrupt` and `rate`, omitted keys and zero values "
          "off. Applied with a netem qdisc on the NIC's tap where the lab host's kernel has `sch_netem` (then it "
          "shapes what reaches the guest, i.e. the guest's receive side), otherwise inside the guest on its `ethN` "
          "(what the guest sends); the status table says which. A change applies to the running lab without "
          "restarting the VM (`--tags links`). See `docs/links.md`.",
          "`{delay: 40ms, jitter: 5ms, loss: 2%, rate: 10mbit}`"),
    Field("nic", "link", _choice(("up", "down"), {True: "up", False: "down"}), "up",
          "`down` pulls the cable: QEMU reports carrier loss to the guest (QMP `set_link`) and the tap goes down on "
          "the lab host, so the guest's routes through it go away; `up` restores it. Applies to the running lab "
          "without restarting the VM (`--tags links`).", "`down`"),

    # -- lab_serial_links items -------------------------------------------------------------------------------------
    Field("serial_link", "between", _pair(_name("vm"), "VM names", "rt1, rt2"), MISSING,
          "The two VMs the null-modem cable joins, both lab VMs, not one twice. Each VM's links are its `ttyS1`, "
          "`ttyS2`, `ttyS3` in list order (`ttyS0` stays its console), at most three per VM. The first one's QEMU "
          "serves the cable's unix socket in its run directory, the second's connects (and reconnects), so either "
          "may start first.", "`[rt1, rt2]`"),
    Field("serial_link", "protocol", _choice(("ppp", "slip", "raw")), MISSING,
          "What runs on the line: `ppp` (pppd, no authentication, fixed addresses, interface `ppp<n>`), `slip` "
          "(`slattach -p slip`, interface `sl<n>`) or `raw` (just the cable, no IP; the guest's `/dev/ttyS<n>` is "
          "yours).", "`slip`"),
    Field("serial_link", "addresses", _pair(address, "IPv4 addresses", "10.99.0.1, 10.99.0.2"), None,
          "`ppp` and `slip` only (required there): the first VM's and the second VM's address on the "
          "point-to-point link; on no segment of the lab and used by nobody else.", "`[10.99.0.1, 10.99.0.2]`"),

    Field("hostfwd", "host_port", _port, MISSING,
          "Port on the lab host's 127.0.0.1; unique in the lab and not a VM's `ansible_port`.", "`8080`",
          "1024-65535"),
    Field("hostfwd", "guest_port", _integer(1, 65535, "a port"), MISSING, "The guest's port.", "`80`"),
    Field("hostfwd", "protocol", _choice(("tcp", "udp")), "tcp", "The forwarded protocol.", "`udp`"),

    # -- routes (vm_routes and lab_host_ports[].routes) ------------------------------------------------------------
    Field("route", "to", network, MISSING,
          "Destination: a network in CIDR form with host bits clear, or `default`.", "`10.20.60.0/24`"),
    Field("route", "via", address, MISSING,
          "Gateway: an IPv4 address on the subnet of one of the owner's addressed interfaces, or a VM's ppp/slip "
          "serial link peer, not its own.",
          "`10.20.20.2`"),

    # -- vm_nat items ----------------------------------------------------------------------------------------------
    Field("nat", "type", _choice(("masquerade", "pool", "static")), MISSING,
          "`masquerade`: PAT, packets from `inside`'s segment leaving through `outside` get the router's outside "
          "address. `pool`: dynamic NAT, they get an address of `pool` (the kernel picks each inside host's by a "
          "hash of its address, so two hosts may share one; their ports then keep them apart). `static`: 1:1 NAT, "
          "`inside_address` is published as `outside_address`.", "`masquerade`"),
    Field("nat", "inside", _text, MISSING, "The NIC on the private segment (`eth0`, …): an addressed tap NIC.",
          "`eth0`"),
    Field("nat", "outside", _text, MISSING, "The NIC the translated traffic leaves through; not `inside`.",
          "`eth1`"),
    Field("nat", "pool", _pool, None,
          "`pool` only (required there): the addresses translated onto, `first-last`. Either on `outside`'s "
          "segment (not its network or broadcast address) or on no segment of the lab at all (the outside "
          "neighbours then need a route to it through the router); never an address anyone in the lab uses. The "
          "router holds each one on `lo`, so it answers ARP for them.", "`203.0.113.10-203.0.113.20`"),
    Field("nat", "inside_address", address, None,
          "`static` only (required there): the published host, on `inside`'s segment, not the router's own.",
          "`10.20.10.2`"),
    Field("nat", "outside_address", address, None,
          "`static` only (required there): the address it is published as, on `outside`'s segment, used by nobody "
          "else in the lab (the router answers ARP for it).", "`10.20.20.10`"),

    # -- lab_host_ports items --------------------------------------------------------------------------------------
    Field("host_port", "name", _name("veth"), MISSING,
          "The veth end that becomes a port of `bridge` (the seed's `veth0`); unique among taps and veth ends.",
          "`veth0`", NAME_RULE % NAME_MAX_BYTES["veth"]),
    Field("host_port", "peer", _name("veth"), MISSING,
          "The other end, which carries `address` (the seed's `veth1`).", "`veth1`",
          NAME_RULE % NAME_MAX_BYTES["veth"]),
    Field("host_port", "bridge", _name("bridge"), MISSING, "The segment the port joins: a bridge some VM NIC uses.",
          "`br1`"),
    Field("host_port", "address", interface, None,
          "IPv4 address with prefix length, in the bridge's subnet, used by nobody else.", "`10.20.10.4/24`"),
    Field("host_port", "routes", _items("route"), [],
          "Routes of the lab host through the lab; `via` in the port's subnet.",
          "`[{to: 10.20.60.0/24, via: 10.20.10.1}]`"),

    # -- lab_uplink keys -------------------------------------------------------------------------------------------
    Field("uplink", "bridge", _name("bridge"), MISSING,
          "The segment the way out joins: a bridge some VM NIC uses.", "`br2`"),
    Field("uplink", "address", interface, MISSING,
          "The lab host's address on `bridge` (IPv4 with prefix length, in the bridge's subnet, used by nobody "
          "else): the gateway of the segment's VMs to the world. It lives in `upstream_netns`.",
          "`10.20.20.254/24`"),
    # required on a lab host run as root only: _lab_uplink.plan says so (a rootless one's way out is slirp4netns)
    Field("uplink", "upstream", _name("interface"), None,
          "The interface of `upstream_netns` the lab's traffic leaves by (the lab host's link to the world); the "
          "segment is masqueraded to its address. Checked to exist and to forward (`net.ipv4.conf.<upstream>."
          "forwarding`) before anything changes. Required on a lab host run as root; not used on one run without "
          "root, whose way out is slirp4netns (docs/rootless.md).", "`eth0`", NAME_RULE % NAME_MAX_BYTES["interface"]),
    Field("uplink", "upstream_netns", _name("netns"), "",
          "The network namespace holding `upstream`; `\"\"` is the lab host's own (root) namespace.",
          "`wan`", (NAME_RULE % NAME_MAX_BYTES["netns"]) + ", or `\"\"`"),
    Field("uplink", "router", _name("vm"), None,
          "A router with an addressed NIC on `bridge`: its default route points at `address` and it masquerades "
          "its other addressed segments out of that NIC. Without it only the VMs on `bridge` get out.", "`rt1`"),
    Field("uplink", "name", _name("veth"), None,
          "The veth end on `bridge`, in the lab's namespace. Default: `qlu-<8 hex of the lab name>-l`.", "`uplink0`",
          NAME_RULE % NAME_MAX_BYTES["veth"]),
    Field("uplink", "peer", _name("veth"), None,
          "The veth end in `upstream_netns`, which carries `address`; not a name used there. Default: "
          "`qlu-<8 hex of the lab name>-u`.", "`uplink1`", NAME_RULE % NAME_MAX_BYTES["veth"]),
)

SCOPES = ("lab", "hypervisor", "vm", "nic", "hostfwd", "route", "nat", "host_port", "uplink", "serial_link")


def fields(scope):
    return [field for field in SCHEMA if field.scope == scope]


def field(scope, name):
    for item in SCHEMA:
        if item.scope == scope and item.name == name:
            return item
    raise KeyError("%s.%s" % (scope, name))


def keys(scope):
    return tuple(f.name for f in fields(scope))


def is_mapping(value):
    return isinstance(value, Mapping)


# ------------------------------------------------------------------ documentation

def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default_text(item):
    if item.required:
        return "— (required)"
    if callable(item.default):
        return "by group"
    if item.default is None:
        return "none"
    if item.default == "":
        return '`""`'
    if item.default == []:
        return "`[]`"
    if isinstance(item.default, bool):
        return "`%s`" % str(item.default).lower()
    return "`%s`" % item.default


def markdown_table(scope):
    """The docs/inventory.md table of one scope, generated from the declarations."""
    lines = ["| field | type | default | rule | meaning | example |", "|---|---|---|---|---|---|"]
    for item in fields(scope):
        lines.append("| `%s` | %s | %s | %s | %s | %s |" % (
            item.name, _cell(item.type_text), _cell(_default_text(item)), _cell(item.rule or "—"),
            _cell(item.meaning), _cell(item.example)))
    return "\n".join(lines)


def render_inventory_doc(text):
    """`text` (docs/inventory.md) with every `<!-- schema:SCOPE -->` … `<!-- /schema:SCOPE -->` block regenerated."""
    def replace(match):
        scope = match.group(1)
        return "<!-- schema:%s -->\n%s\n<!-- /schema:%s -->" % (scope, markdown_table(scope), scope)
    return re.sub(r"<!-- schema:(\w+) -->.*?<!-- /schema:\1 -->", replace, text, flags=re.S)
