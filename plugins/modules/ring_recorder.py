#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ring_recorder
short_description: Keep a bounded ring of each lab segment's recent packets (lab_capture_ring)
version_added: 0.1.0
description:
  - With O(state=present), one C(tcpdump) per bridge of O(bridges), inside O(netns), writes a ring of O(size)
    one-megabyte pcap files C(<state_dir>/labs/<lab>/rings/<bridge>.pcap<N>) (directory 0700, files 0600); the ring
    holds at most O(size) MB plus one packet per file. A recorder that already runs exactly so is left alone; one
    with other arguments or in another namespace is restarted with an empty ring; recorders of bridges not listed
    are stopped and their files removed.
  - With O(state=absent), every recorder of the lab is stopped and the C(rings) directory removed.
  - A recorder is the lab's only when C(/proc) shows C(tcpdump) run by root writing into this lab's rings
    directory; the pidfile C(<bridge>.pid) is a hint. Recorders run in a session of their own and outlive the run.
  - M(qemulab.network.ring_save) copies a ring out as one pcapng file.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description: The lab (lower-case letters, digits and C(-), at most 15 characters).
    type: str
    required: true
  netns:
    description: Namespace of the bridges; empty for the current one.
    type: str
    default: ""
  bridges:
    description: The segments to record (each must exist in O(netns)).
    type: list
    elements: str
    default: []
  size:
    description: Megabytes (10^6 bytes, tcpdump's unit) each segment's ring keeps, 2 to 64.
    type: int
    default: 8
  state_dir:
    description: Holds C(labs/<lab>/rings).
    type: path
    default: /var/lib/qemulab
  state:
    description: C(present) records O(bridges); C(absent) stops every recorder of the lab and removes its rings.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    description: Reports the recorders it would start, restart or stop, changing nothing.
    support: full
  diff_mode:
    description: Returns the recorded bridges (with their ring size) before and after.
    support: full
"""

EXAMPLES = r"""
- name: Record the seed's segments
  qemulab.network.ring_recorder:
    lab: seed
    netns: qemulab-seed
    bridges: [br1, br2, br3]
    size: 8
"""

RETURN = r"""
recorders:
  description: Each recorded bridge's pid (0 in check mode for one not started yet) and ring directory.
  returned: always
  type: dict
started:
  description: Bridges whose recorder was (or would be) started or restarted.
  returned: always
  type: list
  elements: str
stopped:
  description: Bridges whose recorder was (or would be) stopped.
  returned: always
  type: list
  elements: str
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils import _ring
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name


def main():
    module = AnsibleModule(
        argument_spec=dict(lab=dict(type="str", required=True), netns=dict(type="str", default=""),
                           bridges=dict(type="list", elements="str", default=[]),
                           size=dict(type="int", default=_ring.SIZE_DEFAULT),
                           state_dir=dict(type="path", default="/var/lib/qemulab"),
                           state=dict(type="str", choices=["present", "absent"], default="present")),
        supports_check_mode=True,
    )
    p = module.params
    problems = [("lab", check_name(p["lab"], "lab")), ("netns", check_name(p["netns"], "netns") if p["netns"] else None),
                ("size", _ring.check_size(p["size"]))]
    problems += [("bridges", check_name(bridge, "bridge")) for bridge in p["bridges"]]
    for field, why in problems:
        if why:
            module.fail_json(msg="ring_recorder: lab %s: %s: %s" % (p["lab"], field, why))
    root = _ring.ring_root(p["state_dir"], p["lab"])
    want = sorted(set(p["bridges"])) if p["state"] == "present" else []

    # read, plan
    have = _ring.find_recorders(root)
    start, stop = _ring.plan(have, want, root, p["size"], p["netns"])
    remove_root = p["state"] == "absent" and os.path.lexists(root)
    before = dict((b, {"size": int(r["argv"][r["argv"].index("-W") + 1])}) for b, r in have.items())
    after = dict((b, {"size": p["size"]}) for b in want)
    changed = bool(start or stop or remove_root)
    recorders = dict((b, {"pid": have[b]["pid"] if b not in start else 0, "ring": root}) for b in want)

    # act
    if changed and not module.check_mode:
        try:
            for bridge in stop:
                _ring.stop(have[bridge])
                if bridge not in want:
                    _ring.remove_files(root, bridge)
            for bridge in start:
                recorders[bridge]["pid"] = _ring.start(root, p["netns"], bridge, p["size"])
            if remove_root:
                # a link in its place is removed, never followed
                os.unlink(root) if os.path.islink(root) or not os.path.isdir(root) else shutil.rmtree(root)
        except (_ring.RingError, OSError) as exc:
            module.fail_json(msg="ring_recorder: lab %s: %s" % (p["lab"], exc), started=start, stopped=stop)
    module.exit_json(changed=changed, recorders=recorders, started=start, stopped=stop,
                     diff={"before": {"recorders": before}, "after": {"recorders": after}})


if __name__ == "__main__":
    main()
