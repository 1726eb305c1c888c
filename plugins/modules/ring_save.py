#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ring_save
short_description: Save the rings of some lab segments as pcapng files
version_added: 0.1.0
description:
  - For each bridge of O(bridges), joins the files of its ring (see M(qemulab.network.ring_recorder)), oldest first,
    into one pcapng file C(<dest>/<bridge>.pcapng) (0600, in a 0700 directory) that names the bridge, readable by
    Wireshark and C(tcpdump -r).
  - It first waits a little over a second, the longest libpcap holds packets before tcpdump sees them, then has each
    running recorder write out what it buffers (SIGUSR2, only to a recorder C(/proc) shows as the lab's), so the
    packets of the moment the save was asked for are in it.
  - A bridge without a ring (the recorder is off, or never ran) is listed in RV(missing), not an error.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description: The lab (lower-case letters, digits and C(-), at most 15 characters).
    type: str
    required: true
  bridges:
    description: The segments whose rings to save.
    type: list
    elements: str
    required: true
  dest:
    description: Directory (absolute) to write C(<bridge>.pcapng) into; made 0700 if missing.
    type: path
    required: true
  state_dir:
    description: Holds C(labs/<lab>/rings).
    type: path
    default: /var/lib/qemulab
attributes:
  check_mode:
    description: Reports the files it would write, writing nothing.
    support: full
  diff_mode:
    description: No diff is returned.
    support: none
"""

EXAMPLES = r"""
- name: Save the rings of br1 and br2 beside the lab's logs
  qemulab.network.ring_save:
    lab: seed
    bridges: [br1, br2]
    dest: /run/qemulab/seed/verify-rings/h1
"""

RETURN = r"""
saved:
  description: One item per saved ring, C({bridge, path, packets}) (packets 0 in check mode).
  returned: always
  type: list
  elements: dict
missing:
  description: Bridges that had no ring to save.
  returned: always
  type: list
  elements: str
"""

import os
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils import _ring
from ansible_collections.qemulab.network.plugins.module_utils._pcapng import PcapError
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name


def write_file(directory, name, data):
    """A complete file or none (0600: a ring holds whatever the segment carried)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ring-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    module = AnsibleModule(
        argument_spec=dict(lab=dict(type="str", required=True), bridges=dict(type="list", elements="str", required=True),
                           dest=dict(type="path", required=True),
                           state_dir=dict(type="path", default="/var/lib/qemulab")),
        supports_check_mode=True,
    )
    p = module.params
    problems = [("lab", check_name(p["lab"], "lab")),
                ("dest", None if os.path.isabs(p["dest"]) else "%r is not an absolute path; give one" % p["dest"])]
    problems += [("bridges", check_name(bridge, "bridge")) for bridge in p["bridges"]]
    for field, why in problems:
        if why:
            module.fail_json(msg="ring_save: lab %s: %s: %s" % (p["lab"], field, why))
    root = _ring.ring_root(p["state_dir"], p["lab"])
    bridges = list(dict.fromkeys(p["bridges"]))
    have = [b for b in bridges if _ring.ring_files(root, b)]
    missing = [b for b in bridges if b not in have]
    saved = [{"bridge": b, "path": os.path.join(p["dest"], b + ".pcapng"), "packets": 0} for b in have]
    if module.check_mode or not have:
        module.exit_json(changed=bool(have), saved=saved, missing=missing)
    time.sleep(_ring.HANDOVER_SECONDS)
    running = _ring.find_recorders(root)
    # every recorder of the list, not up to the first that answers (any() over a generator stops there)
    flushed = [_ring.flush(running[b]) for b in have if b in running]
    if any(flushed):
        time.sleep(_ring.FLUSH_SECONDS)
    os.makedirs(p["dest"], mode=0o700, exist_ok=True)
    for item in saved:
        try:
            data, item["packets"] = _ring.merge(_ring.ring_files(root, item["bridge"]), item["bridge"],
                                                "qemulab ring of %s, lab %s" % (item["bridge"], p["lab"]))
            write_file(p["dest"], item["bridge"] + ".pcapng", data)
        except (_ring.RingError, PcapError, OSError) as exc:
            module.fail_json(msg="ring_save: lab %s: ring of %s: %s" % (p["lab"], item["bridge"], exc), saved=saved)
    module.exit_json(changed=True, saved=saved, missing=missing)


if __name__ == "__main__":
    main()
