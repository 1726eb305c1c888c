#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: packet_capture
short_description: Capture a lab interface's packets for some seconds into a pcapng file
version_added: 0.1.0
description:
  - Runs C(tcpdump) on one interface (a lab bridge or tap) inside the lab's network namespace for O(seconds) and
    writes what it saw as a pcapng file (the interface's name recorded in it), readable by Wireshark and
    C(tcpdump -r).
  - Every run makes a new capture, so it always reports a change; check mode captures nothing.
author:
  - qemulab developers (@qemulab)
extends_documentation_fragment:
  - qemulab.network.capture
options:
  seconds:
    description: How long to capture, 1 to 3600.
    type: int
    default: 10
  path:
    description: The pcapng file to write (absolute, ending in C(.pcapng)); its directory is made (0700) if missing.
    type: path
    required: true
attributes:
  check_mode:
    description: Reports the capture it would take without taking it.
    support: full
  diff_mode:
    description: No diff is returned.
    support: none
"""

EXAMPLES = r"""
- name: Capture ICMP on the seed's br2 for 30 seconds
  qemulab.network.packet_capture:
    netns: qemulab-seed
    interface: br2
    seconds: 30
    filter: icmp
    path: /var/lib/qemulab/labs/seed/captures/br2.pcapng
"""

RETURN = r"""
path:
  description: The file written.
  returned: always
  type: str
packets:
  description: How many packets it holds (0 in check mode).
  returned: always
  type: int
argv:
  description: The capture command that ran (or would run).
  returned: always
  type: list
  elements: str
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils._capture import capture_argv
from ansible_collections.qemulab.network.plugins.module_utils._pcapng import PcapError, convert
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name


def write_file(path, data):
    """A new file, complete or not at all (0600: a capture may hold anything the lab carried)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".capture-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    module = AnsibleModule(
        argument_spec=dict(netns=dict(type="str", default=""), interface=dict(type="str", required=True),
                           seconds=dict(type="int", default=10), filter=dict(type="str", default=""),
                           path=dict(type="path", required=True)),
        supports_check_mode=True,
    )
    p = module.params
    problems = [("netns", check_name(p["netns"], "netns") if p["netns"] else None),
                ("interface", check_name(p["interface"], "interface")),
                ("seconds", None if 1 <= p["seconds"] <= 3600 else "%d is outside 1-3600; give seconds in that range"
                 % p["seconds"]),
                ("path", None if os.path.isabs(p["path"]) and p["path"].endswith(".pcapng") else
                 "%r is not an absolute path ending in .pcapng; give one" % p["path"]),
                ("filter", "contains a line break; give one expression on one line" if "\n" in p["filter"] else None)]
    for field, why in problems:
        if why:
            module.fail_json(msg="packet_capture: %s: %s" % (field, why))
    argv = capture_argv(p["netns"], p["interface"], p["filter"])
    if module.check_mode:
        module.exit_json(changed=True, path=p["path"], packets=0, argv=argv)
    os.makedirs(os.path.dirname(p["path"]), mode=0o700, exist_ok=True)
    # timeout(1) ends tcpdump with its own clean stop (SIGINT: it flushes and exits) and then exits 124
    rc, out, err = module.run_command(["timeout", "--signal=INT", str(p["seconds"])] + argv, encoding=None)
    err = (err or b"").decode("utf-8", "replace").strip()
    if rc not in (0, 124):
        module.fail_json(msg="packet_capture: tcpdump on %s%s failed (rc %s): %s" % (
            p["interface"], " in namespace %s" % p["netns"] if p["netns"] else "", rc, err[-500:]), argv=argv)
    try:
        data, count = convert(out, p["interface"], "qemulab capture of %s%s, filter %r" % (
            p["interface"], " in namespace %s" % p["netns"] if p["netns"] else "", p["filter"]))
    except PcapError as exc:
        module.fail_json(msg="packet_capture: %s (tcpdump said: %s)" % (exc, err[-300:]), argv=argv)
    write_file(p["path"], data)
    module.exit_json(changed=True, path=p["path"], packets=count, argv=argv)


if __name__ == "__main__":
    main()
