# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""guest_netem_probe, guest_netem_plan: a guest's NIC impairment read with one shell command and compared with the
plan on the controller, so a Python module (the tc command) runs in the guest only for a NIC that differs.
Documented in guest_netem_probe.yml and guest_netem_plan.yml."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.qemulab.network.plugins.module_utils import _netem
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name

MARK = "@@qemulab:qdisc:%s@@"


def _devs(nics):
    devs = [str(nic["dev"]) for nic in nics or []]
    for dev in devs:
        if check_name(dev, "interface"):
            raise AnsibleFilterError("guest_netem: %s" % check_name(dev, "interface"))
    return devs


def guest_netem_probe(nics):
    """One shell line printing `tc -j qdisc show` of each NIC after a marker (the names pass the name rule)."""
    return "; ".join("echo; echo '%s'; tc -j qdisc show dev %s 2>/dev/null" % (MARK % dev, dev)
                     for dev in _devs(nics)) + "; echo"


def guest_netem_plan(probe_stdout, nics):
    """[{dev, argv (or null), before, after}] per NIC in `nics` ({dev, netem}, netem normalised by the plan)."""
    text = str(probe_stdout).replace("\r\n", "\n")
    out = []
    for dev in _devs(nics):
        marker = MARK % dev
        if marker not in text:
            raise AnsibleFilterError("guest_netem_plan: the guest printed nothing for %s; is tc (iproute2) there?"
                                     % dev)
        shown = text.split(marker, 1)[1].split("@@qemulab:", 1)[0].strip()
        try:
            kind, have = _netem.parse_show(shown, dev)
        except ValueError as exc:
            raise AnsibleFilterError("guest_netem_plan: tc's output for %s does not parse (%s): %r" % (dev, exc, shown))
        want = next(nic.get("netem") or {} for nic in nics if str(nic["dev"]) == dev)
        argv, before, after = _netem.plan(dev, dict(want), kind, have)
        out.append({"dev": dev, "argv": argv, "before": before, "after": after})
    return out


def netem_text(netem):
    """A NIC's planned (normalised) impairment as a reader writes it: 'delay 50ms loss 20%'."""
    return _netem.describe(dict(netem or {}))


class FilterModule(object):
    def filters(self):
        return {"guest_netem_probe": guest_netem_probe, "guest_netem_plan": guest_netem_plan, "netem_text": netem_text}
