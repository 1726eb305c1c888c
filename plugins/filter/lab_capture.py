# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_capture: what playbooks/capture.yml captures, checked against the plan (documented in lab_capture.yml)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import shlex

from ansible.errors import AnsibleFilterError

from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name

CAPTURE_DIR = "%s/labs/%s/captures"
_NIC_RE = re.compile(r"^([a-z0-9][a-z0-9-]*):eth([0-9]+)\Z")
SECONDS_MAX = 3600


def _seconds(value):
    text = str(value).strip()
    return int(text) if re.match(r"[0-9]+\Z", text) else None


def lab_capture(plan, segment="", nic="", seconds=10, expression="", follow=False, stamp="",
                state_dir="/var/lib/qemulab"):
    """{errors, netns, interface, seconds, filter, path, follow_command} for a capture on a bridge of the plan
    (segment) or one VM's NIC (nic: '<vm>:eth<N>', its tap); every problem names the value and the fix."""
    if not isinstance(plan, dict) or not isinstance(plan.get("vms"), list):
        raise AnsibleFilterError("lab_capture: the input is not a plan from qemulab.network.lab_plan")
    errors = ["inventory: %s" % e for e in plan.get("errors") or []]
    segment, nic, expression = str(segment or ""), str(nic or ""), str(expression or "")
    bridges = sorted(b["name"] for b in plan.get("bridges") or [])
    interface = None
    if bool(segment) == bool(nic):
        errors.append("give exactly one of -e segment=<bridge> (one of %s) or -e nic=<vm>:eth<N>"
                      % ", ".join(bridges))
    elif segment:
        if segment not in bridges:
            errors.append("segment %r is not a bridge of lab %s; use one of %s"
                          % (segment, plan.get("lab_name"), ", ".join(bridges)))
        else:
            interface = segment
    else:
        match = _NIC_RE.match(nic)
        vm = next((v for v in plan["vms"] if match and v["name"] == match.group(1)), None)
        index = int(match.group(2)) if match else -1
        if vm is None:
            errors.append("nic %r is not <vm>:eth<N> for a VM of the lab (%s); write it like %s:eth0"
                          % (nic, ", ".join(v["name"] for v in plan["vms"]),
                             plan["vms"][0]["name"] if plan["vms"] else "rt1"))
        elif index >= len(vm["nics"]):
            errors.append("nic %r: VM %s has eth0 to eth%d; pick one of them" % (nic, vm["name"], len(vm["nics"]) - 1))
        elif not vm["nics"][index].get("tap"):
            errors.append("nic %r has no tap (backend %s); capture a tap NIC or a segment"
                          % (nic, vm["nics"][index].get("backend")))
        else:
            interface = vm["nics"][index]["tap"]
    count = _seconds(seconds)
    if count is None or not 1 <= count <= SECONDS_MAX:
        errors.append("seconds %r is not a number from 1 to %d; give one, like 30" % (seconds, SECONDS_MAX))
    if "\n" in expression or "\r" in expression:
        errors.append("filter %r spans lines; give one tcpdump expression, like 'icmp'" % expression)
    if not re.match(r"[0-9TZ]*\Z", str(stamp)):
        errors.append("stamp %r is not a UTC time stamp like 20261127T131500Z" % stamp)
    lab = str(plan.get("lab_name") or "")
    if check_name(lab, "lab"):
        errors.append("the lab's name %r breaks the name rule" % lab)
    if errors:
        return {"errors": errors}
    netns = plan.get("netns") or ""
    name = segment or nic.replace(":", "-")
    tcpdump = ["tcpdump", "-i", interface, "-U", "-n", "-w", "-", "--"] + ([expression] if expression else [])
    follow_argv = (["ip", "netns", "exec", netns] if netns else []) + tcpdump
    return {
        "errors": [],
        "netns": netns,
        "interface": interface,
        "seconds": count,
        "filter": expression,
        "path": "%s/%s-%s.pcapng" % (CAPTURE_DIR % (state_dir, lab), name, stamp),
        "follow_command": " ".join(shlex.quote(a) for a in follow_argv),
        "follow": str(follow).lower() in ("true", "yes", "1", "on"),
    }


class FilterModule(object):
    def filters(self):
        return {"lab_capture": lab_capture}
