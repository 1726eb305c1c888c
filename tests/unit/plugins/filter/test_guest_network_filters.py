"""Unit tests: filters used to launch VMs and render the seed's interfaces format."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.qemulab.network.plugins.filter.guest_network import cidr_parts, ip_config_interfaces
from ansible_collections.qemulab.network.plugins.filter.qemu_nics import qemu_nics

pytestmark = pytest.mark.unit


def test_cidr_parts_gives_the_seed_stanza_fields():
    assert cidr_parts("10.20.10.1/24") == {"address": "10.20.10.1", "netmask": "255.255.255.0",
                                           "broadcast": "10.20.10.255", "network": "10.20.10.0", "prefix": 24}
    with pytest.raises(AnsibleFilterError):
        cidr_parts("10.20.10.1/33")


def test_ip_config_interfaces_keeps_guest_order_and_empty_addresses():
    nics = [{"dev": "eth0", "address": "10.20.10.1/24"}, {"dev": "eth1", "address": None}]
    assert ip_config_interfaces(nics) == [{"name": "eth0", "addresses": ["10.20.10.1/24"]},
                                          {"name": "eth1", "addresses": []}]


def test_qemu_nics_puts_the_management_nic_last_bound_to_loopback_port():
    vm = {"name": "rt2", "ssh_port": 2202, "mgmt_mac": "52:54:00:00:00:02",
          "nics": [{"tap": "vport22", "mac": "12:34:56:ab:cd:74", "model": "e1000", "vhost": "off"},
                   {"tap": "vport42", "mac": "12:34:56:ab:cd:75"}]}
    nics = qemu_nics(vm, "qemulab-seed")
    assert [n["backend"] for n in nics] == ["tap", "tap", "user"]
    assert nics[0] == {"model": "e1000", "mac": "12:34:56:ab:cd:74", "backend": "tap", "ifname": "vport22",
                       "netns": "qemulab-seed", "vhost": "off"}
    assert nics[1]["model"] == "virtio-net-pci" and nics[1]["vhost"] == "auto"
    assert nics[2]["restrict"] is True
    assert nics[2]["hostfwd"] == [{"host_port": 2202, "guest_port": 22, "protocol": "tcp"}]
