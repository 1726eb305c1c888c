# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_ring_segments: the segments on the paths of failing pings. A thin shim over
plugins/plugin_utils/_ring_segments.py; documented in lab_ring_segments.yml next to this file."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.qemulab.network.plugins.plugin_utils import _ring_segments


def lab_ring_segments(plan, source, addresses):
    if not isinstance(plan, dict) or not isinstance(plan.get("vms"), list):
        raise AnsibleFilterError("lab_ring_segments: the input is not a plan from qemulab.network.lab_plan (no list "
                                 "'vms'); pass lab_plan")
    return _ring_segments.segments(plan, source, list(addresses or []))


class FilterModule(object):
    def filters(self):
        return {"lab_ring_segments": lab_ring_segments}
