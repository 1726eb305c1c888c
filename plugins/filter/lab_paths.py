# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_paths, lab_path_problems: the plan's reachability matrix, and a traced path compared with it.

A thin shim over plugins/plugin_utils/_lab_paths.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# Each filter is documented in its own file next to this one (lab_paths.yml, lab_path_problems.yml).

from ansible.errors import AnsibleFilterError

from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_paths


def lab_paths(plan):
    """The reachability matrix of a plan without errors, with each source's probe arguments."""
    if not isinstance(plan, dict) or not isinstance(plan.get("vms"), list):
        raise AnsibleFilterError("lab_paths: the input is not a plan from qemulab.network.lab_plan (no list 'vms'); "
                                 "pass hostvars | qemulab.network.lab_plan(groups)")
    if plan.get("errors"):
        raise AnsibleFilterError("lab_paths: the plan has %d error(s), fix the inventory first: %s"
                                 % (len(plan["errors"]), "; ".join(str(e) for e in plan["errors"])))
    result = _lab_paths.matrix(plan)
    sources = sorted(set(pair["source"] for pair in result["pairs"]))
    result["arguments"] = dict((source, _lab_paths.probe_arguments(result["pairs"], source)) for source in sources)
    result["lab_host"] = _lab_paths.LAB_HOST
    return result


def lab_path_problems(stdout, paths, source):
    """Each pair of `source` whose traced hops differ from the planned path, with the first hop that differs."""
    return _lab_paths.path_problems(stdout, paths, source)


class FilterModule(object):
    def filters(self):
        return {"lab_paths": lab_paths, "lab_path_problems": lab_path_problems}
