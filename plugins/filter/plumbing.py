# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which of a lab's bridges and taps need their module run, from one interface_info reading.

A lab run calls the bridge and tap modules once per object; on a lab that is already up every call finds nothing
to do and still costs a Python start on the host (~0.4 s each, 16 for the seed). The host_prep role reads the
namespace once and runs the modules only for the objects named here. The test is deliberately narrow: an object
is skipped only when it exists as this lab's, of the right kind, up, and (taps) enslaved to the planned bridge
with the planned owner; anything else, including a foreign object of that name, goes to the module, which
decides and explains.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.qemulab.network.plugins.module_utils._ownership import owner_from_alias


def _ours(link, lab, up=True):
    # a tap whose NIC's link is down is planned down (up: false), as nic_links leaves it
    return link is not None and owner_from_alias(link.get("alias")) == lab and bool(link.get("up")) == up


def plumbing_pending(interfaces, lab, bridges=None, taps=None):
    """{bridges: [names], taps: [names]} of the planned objects whose module must run."""
    links = dict((link["name"], link) for link in interfaces or [])
    pending = {"bridges": [], "taps": []}
    for bridge in bridges or []:
        link = links.get(bridge["name"])
        if not (_ours(link, lab) and link.get("kind") == "bridge"
                and (not bridge.get("mtu") or link.get("mtu") == bridge["mtu"])):
            pending["bridges"].append(bridge["name"])
    for tap in taps or []:
        link = links.get(tap["name"])
        tun = (link or {}).get("tun") or {}
        if not (_ours(link, lab, tap.get("up", True)) and link.get("kind") == "tun" and tun.get("type") == "tap"
                and link.get("master") == tap.get("bridge") and tun.get("owner") == tap.get("owner_uid")
                and (not tap.get("mtu") or link.get("mtu") == tap["mtu"])):
            pending["taps"].append(tap["name"])
    return pending


class FilterModule(object):
    def filters(self):
        return {"plumbing_pending": plumbing_pending}
