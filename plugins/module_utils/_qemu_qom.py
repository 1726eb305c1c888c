# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each NIC of a running QEMU as QEMU itself sees it, read through QMP (QEMU's object model, QOM).

Pure functions of a QMP client (_qmp.QMPClient or anything with its `command`):
- the devices: `qom-list` of /machine/peripheral (devices with an id, e.g. one plugged in with device_add) and
  /machine/peripheral-anon (devices without one: a lab VM's NICs), `qom-get` of each child's type, mac and netdev;
- the MAC the NIC filters on now: `query-rx-filter`'s main-mac (a guest that sets its MAC, as a clone's NICs do after
  its restore, changes this, not the device's `mac` property);
- the link: QEMU 7.2 has no QMP read of a NIC's link state (set_link only writes it; `info network` does not print
  it), so for a virtio-net PCI device it is read where the guest reads it, the status word of the device's
  configuration space (VIRTIO_NET_S_LINK_UP), through its legacy I/O BAR (`query-pci`, then the monitor's `i`);
- the netdev's vhost: netdevs are not QOM objects in QEMU 7.2 (no `query-netdev` either), so it comes from the
  VM's recorded argv (its -netdev option), else from what qemu_vm recorded for the NIC at the start.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPError

PERIPHERAL = ("/machine/peripheral", "/machine/peripheral-anon")
# virtio-net (transitional) PCI ids; its legacy BAR 0 holds the device config after a 20-byte header, 24 with MSI-X
VIRTIO_VENDOR, VIRTIO_NET_DEVICE = 0x1af4, 0x1000
LEGACY_CONFIG_OFFSETS = (20, 24)
VIRTIO_NET_S_LINK_UP = 1
# query-rx-filter's tables (the VLAN table alone lists 4096 ids) are not what a status reader wants
RX_FILTER_TABLES = ("vlan-table", "unicast-table", "multicast-table")
NO_CONFIG_SPACE = "no virtio-net legacy I/O BAR assigned (another model, or the guest has not enabled the device)"
HMP_PORT_VALUE = re.compile(r"=\s*0x([0-9a-fA-F]+)\s*$")


def _get(qmp, path, prop):
    try:
        return qmp.command("qom-get", path=path, property=prop)
    except QMPError:
        return None


def nic_devices(qmp):
    """[{qom_path, id, type, mac, netdev}] of every device under the peripheral containers that has a netdev."""
    nics = []
    for base in PERIPHERAL:
        for child in qmp.command("qom-list", path=base):
            if not child.get("type", "").startswith("child<"):
                continue
            path = "%s/%s" % (base, child["name"])
            netdev = _get(qmp, path, "netdev")
            if netdev is None:  # a disk, a serial port, ...: no netdev property
                continue
            nics.append({"qom_path": path, "id": child["name"] if base == PERIPHERAL[0] else None,
                         "type": _get(qmp, path, "type"), "mac": _get(qmp, path, "mac"), "netdev": netdev,
                         "devfn": _get(qmp, path, "addr")})
    return nics


def rx_filters(qmp):
    """{NIC name: query-rx-filter entry without its tables}; the name is the device id, or `<type>.<n>` without one."""
    return dict((entry["name"], dict((k, v) for k, v in entry.items() if k not in RX_FILTER_TABLES))
                for entry in qmp.command("query-rx-filter"))


def _hmp(qmp, line):
    return qmp.command("human-monitor-command", **{"command-line": line})


def _port(qmp, size, address):
    match = HMP_PORT_VALUE.search(_hmp(qmp, "i /%s 0x%x" % (size, address)).strip())
    if not match:
        raise QMPError("unexpected answer of the monitor's i command at port 0x%x" % address)
    return int(match.group(1), 16)


def virtio_net_configs(qmp):
    """{(qdev_id, devfn): (config MAC, link up?)} of every virtio-net PCI device with a legacy I/O BAR.

    The config offset depends on whether the guest enabled MSI-X, which query-pci does not say: the offset whose six
    bytes are the MAC is the config (the MAC is checked against the device's rx-filter by the caller)."""
    configs = {}
    for bus in qmp.command("query-pci"):
        for dev in bus.get("devices", []):
            ident = dev.get("id", {})
            if ident.get("vendor") != VIRTIO_VENDOR or ident.get("device") != VIRTIO_NET_DEVICE:
                continue
            bars = [r for r in dev.get("regions", []) if r.get("bar") == 0 and r.get("type") == "io"
                    and 0 < r.get("address", -1) < 0x10000]
            if not bars:
                continue
            base = bars[0]["address"]
            found = []
            for offset in LEGACY_CONFIG_OFFSETS:
                mac = ":".join("%02x" % _port(qmp, "b", base + offset + i) for i in range(6))
                status = _port(qmp, "h", base + offset + 6)
                found.append((mac, bool(status & VIRTIO_NET_S_LINK_UP)))
            configs[(dev.get("qdev_id") or "", dev["slot"] << 3 | dev["function"])] = found
    return configs


def netdev_vhost(argv, recorded, netdev):
    """(vhost on?, where that was read) of netdev `netdev`: its -netdev option in the VM's argv, else qemu_vm's record
    of the NIC (netdev netN is recorded NIC N). None when neither says."""
    argv = list(argv or [])
    for flag, value in zip(argv, argv[1:]):
        if flag != "-netdev":
            continue
        opts = value.split(",")
        if "id=%s" % netdev in opts[1:]:
            return "vhost=on" in opts[1:], "argv"
    match = re.match(r"^net(\d+)$", netdev or "")
    if match and int(match.group(1)) < len(recorded or []):
        nic = recorded[int(match.group(1))]
        if "vhost" in nic:
            return bool(nic["vhost"]), "record"
    return None, None


def read_nics(qmp, argv=None, recorded=None):
    """Every NIC as QEMU sees it, sorted by netdev: QOM path, id, type, mac (the device's property), netdev, rx_filter
    (its name), main_mac (the MAC it filters on now), promiscuous, link (up, down or None), link_source, vhost,
    vhost_source."""
    devices = nic_devices(qmp)
    filters = rx_filters(qmp)
    try:
        configs = virtio_net_configs(qmp)
        config_problem = None
    except QMPError as exc:
        configs, config_problem = {}, str(exc)
    claimed = set(d["id"] for d in devices if d["id"] in filters)
    out = []
    for dev in devices:
        found = configs.get((dev["id"] or "", dev["devfn"])) if dev["devfn"] is not None else None
        rx = filters.get(dev["id"]) if dev["id"] in filters else None
        if rx is None:
            # an anonymous device's filter is named <type>.<n>: the one whose MAC its config space holds, or the
            # only one no device with an id claims
            left = [f for name, f in filters.items() if name not in claimed]
            macs = set(mac for mac, _up in found or [])
            by_mac = [f for f in left if f.get("main-mac") in macs]
            rx = by_mac[0] if len(by_mac) == 1 else left[0] if len(left) == 1 else None
            if rx is not None:
                claimed.add(rx["name"])
        main_mac = rx.get("main-mac") if rx else None
        link, link_source = None, config_problem or NO_CONFIG_SPACE
        for mac, up in found or []:
            if mac == (main_mac or dev["mac"]):
                link, link_source = ("up" if up else "down"), "virtio-net config status (legacy I/O BAR)"
                break
        else:
            if found:
                link_source = "the device's config space does not hold its MAC"
        vhost, vhost_source = netdev_vhost(argv, recorded, dev["netdev"])
        out.append({"qom_path": dev["qom_path"], "id": dev["id"], "type": dev["type"], "mac": dev["mac"],
                    "netdev": dev["netdev"], "rx_filter": rx["name"] if rx else None, "main_mac": main_mac,
                    "promiscuous": rx.get("promiscuous") if rx else None, "link": link, "link_source": link_source,
                    "vhost": vhost, "vhost_source": vhost_source})
    return sorted(out, key=lambda n: (n["netdev"] or "", n["qom_path"]))
