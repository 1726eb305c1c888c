# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters the guest_network role uses to render the seed's interfaces format and to call ip_config."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.errors import AnsibleFilterError


def cidr_parts(cidr):
    """'10.20.10.1/24' -> the fields of an ifupdown static stanza (address, netmask, broadcast, network, prefix)."""
    try:
        iface = ipaddress.ip_interface(str(cidr))
    except ValueError as exc:
        raise AnsibleFilterError("cidr_parts: %s is not an address in CIDR form (%s)" % (cidr, exc))
    net = iface.network
    return {
        "address": str(iface.ip),
        "netmask": str(net.netmask),
        "broadcast": str(net.broadcast_address),
        "network": str(net.network_address),
        "prefix": net.prefixlen,
    }


def ip_config_interfaces(nics):
    """Planned NICs -> qemulab.network.ip_config `interfaces` (name and the addresses it should carry)."""
    return [{"name": nic["dev"], "addresses": [nic["address"]] if nic.get("address") else []} for nic in nics]


class FilterModule(object):
    def filters(self):
        return {"cidr_parts": cidr_parts, "ip_config_interfaces": ip_config_interfaces}
