"""_qemu_qom against a fake QMP client that answers as QEMU 7.2 did for a VM with a lab NIC plugged in with an id
`nic0` (/machine/peripheral) and the anonymous management NIC whose MAC the guest changed; a disk that has no
netdev."""
import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _qemu_qom
from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPError

pytestmark = pytest.mark.unit

LAB_MAC, MGMT_PROP, MGMT_GUEST = "52:54:00:71:01:10", "52:54:00:00:00:99", "52:54:00:c2:e8:86"


class FakeQMP(object):
    """Answers qom-list/qom-get/query-rx-filter/query-pci and the monitor's port reads from a table of ports."""

    def __init__(self, lab_link_up=True, lab_msix=True, hmp_fails=False):
        self.props = {
            "/machine/peripheral/nic0": {"type": "virtio-net-pci", "mac": LAB_MAC, "netdev": "net0", "addr": 4 << 3},
            "/machine/peripheral-anon/device[0]": {"type": "virtio-net-pci", "mac": MGMT_PROP, "netdev": "net1",
                                                   "addr": 3 << 3},
            "/machine/peripheral-anon/device[1]": {"type": "virtio-blk-pci", "addr": 5 << 3},
        }
        self.ports = {}
        # the lab NIC with MSI-X on (config at 24), the management NIC without (config at 20)
        self._config(0xc000, 24 if lab_msix else 20, LAB_MAC, lab_link_up)
        self._config(0xc040, 20, MGMT_GUEST, True)
        self.hmp_fails = hmp_fails
        self.calls = []

    def _config(self, base, offset, mac, up):
        for i, byte in enumerate(mac.split(":")):
            self.ports[base + offset + i] = int(byte, 16)
        self.ports[base + offset + 6] = 1 if up else 0

    def command(self, execute, **args):
        self.calls.append(execute)
        if execute == "qom-list":
            names = [p.rsplit("/", 1)[1] for p in self.props if p.rsplit("/", 1)[0] == args["path"]]
            return [{"name": "type", "type": "string"}] + [{"name": n, "type": "child<x>"} for n in names]
        if execute == "qom-get":
            try:
                return self.props[args["path"]][args["property"]]
            except KeyError:
                raise QMPError("QMP qom-get failed: GenericError: Property not found")
        if execute == "query-rx-filter":
            return [{"name": "nic0", "main-mac": LAB_MAC, "promiscuous": False, "vlan-table": list(range(4096))},
                    {"name": "virtio-net-pci.0", "main-mac": MGMT_GUEST, "promiscuous": False, "vlan-table": []}]
        if execute == "query-pci":
            def dev(qdev_id, slot, io, vendor=0x1af4, device=0x1000):
                return {"qdev_id": qdev_id, "slot": slot, "function": 0, "bus": 0,
                        "id": {"vendor": vendor, "device": device},
                        "regions": [{"bar": 0, "type": "io", "address": io}]}
            return [{"bus": 0, "devices": [dev("nic0", 4, 0xc000), dev("", 3, 0xc040),
                                           dev("", 5, 0xc080, device=0x1001)]}]
        if execute == "human-monitor-command":
            if self.hmp_fails:
                raise QMPError("QMP human-monitor-command failed: CommandNotFound")
            size, address = args["command-line"].split()[1:]
            address = int(address, 16)
            if size == "/b":
                return "portb[0x%04x] = 0x%02x\r\n" % (address, self.ports.get(address, 0xff))
            return "porth[0x%04x] = 0x%04x\r\n" % (address, self.ports.get(address, 0xffff))
        raise AssertionError("unexpected command %s" % execute)


ARGV = ["-netdev", "tap,id=net0,fd=5,vhost=on,vhostfd=7", "-netdev", "user,id=net1,restrict=on"]


def test_each_nic_as_qemu_sees_it():
    nics = _qemu_qom.read_nics(FakeQMP(), ARGV, [{"vhost": False}])
    assert [n["qom_path"] for n in nics] == ["/machine/peripheral/nic0", "/machine/peripheral-anon/device[0]"]
    lab, mgmt = nics
    assert lab == {"qom_path": "/machine/peripheral/nic0", "id": "nic0", "type": "virtio-net-pci", "mac": LAB_MAC,
                   "netdev": "net0", "rx_filter": "nic0", "main_mac": LAB_MAC, "promiscuous": False, "link": "up",
                   "link_source": "virtio-net config status (legacy I/O BAR)", "vhost": True, "vhost_source": "argv"}
    # the anonymous NIC: its rx-filter found by elimination, the MAC the guest set (not the property) as main_mac
    assert (mgmt["id"], mgmt["rx_filter"], mgmt["mac"], mgmt["main_mac"], mgmt["link"]) == \
        (None, "virtio-net-pci.0", MGMT_PROP, MGMT_GUEST, "up")
    assert mgmt["vhost"] is False and mgmt["vhost_source"] == "argv"


@pytest.mark.parametrize("msix", [True, False])
def test_a_link_set_down_reads_down_wherever_the_config_lies(msix):
    lab = _qemu_qom.read_nics(FakeQMP(lab_link_up=False, lab_msix=msix), ARGV)[0]
    assert lab["link"] == "down", lab


def test_rx_filter_tables_are_left_out():
    assert "vlan-table" not in _qemu_qom.rx_filters(FakeQMP())["nic0"]


def test_without_the_monitor_the_link_is_unknown_and_says_why():
    lab = _qemu_qom.read_nics(FakeQMP(hmp_fails=True), ARGV)[0]
    assert lab["link"] is None and "CommandNotFound" in lab["link_source"]
    assert lab["main_mac"] == LAB_MAC


def test_a_config_space_without_the_nics_mac_gives_no_link():
    qmp = FakeQMP()
    qmp.ports.update(dict((0xc000 + off, 0) for off in range(20, 32)))
    lab = _qemu_qom.read_nics(qmp, ARGV)[0]
    assert lab["link"] is None and "does not hold its MAC" in lab["link_source"]


@pytest.mark.parametrize("argv, recorded, netdev, want", [
    (ARGV, [], "net0", (True, "argv")),
    (ARGV, [], "net1", (False, "argv")),
    # a netdev added over QMP is not in the argv: qemu_vm's record of NIC N says
    ([], [{"vhost": False}, {"vhost": True}], "net1", (True, "record")),
    ([], [], "net3", (None, None)),
    # id=net1 must match the whole option, not net10's prefix
    (["-netdev", "tap,id=net10,vhost=on"], [{}, {"vhost": False}], "net1", (False, "record")),
])
def test_netdev_vhost(argv, recorded, netdev, want):
    assert _qemu_qom.netdev_vhost(argv, recorded, netdev) == want


class BootedQMP(FakeQMP):
    """A booted VM: every NIC anonymous, their rx-filters named <type>.<n> in an order that is not the devices'."""

    def __init__(self, **kwargs):
        FakeQMP.__init__(self, **kwargs)
        self.props["/machine/peripheral-anon/device[2]"] = self.props.pop("/machine/peripheral/nic0")

    def command(self, execute, **args):
        if execute == "query-rx-filter":
            return [{"name": "virtio-net-pci.0", "main-mac": MGMT_GUEST, "promiscuous": False},
                    {"name": "virtio-net-pci.1", "main-mac": LAB_MAC, "promiscuous": False}]
        if execute == "query-pci":
            answer = FakeQMP.command(self, execute, **args)
            answer[0]["devices"][0]["qdev_id"] = ""
            return answer
        return FakeQMP.command(self, execute, **args)


def test_anonymous_nics_are_told_apart_by_the_mac_in_their_config_space():
    nics = dict((n["netdev"], n) for n in _qemu_qom.read_nics(BootedQMP(lab_link_up=False), ARGV))
    assert (nics["net0"]["qom_path"], nics["net0"]["rx_filter"], nics["net0"]["link"]) == \
        ("/machine/peripheral-anon/device[2]", "virtio-net-pci.1", "down")
    assert (nics["net1"]["rx_filter"], nics["net1"]["main_mac"], nics["net1"]["link"]) == \
        ("virtio-net-pci.0", MGMT_GUEST, "up")
