#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: lab_host_info
short_description: What a lab host offers a lab before it starts - memory, CPUs and who claims the lab name
version_added: 0.2.0
description:
  - Read by the lab playbook once per run, before its plan is made, so the plan can refuse a lab that does not fit
    and a lab name another inventory holds before anything on the host changes.
  - C(mem_available_mib) is the kernel's C(MemAvailable) plus the resident memory of this lab's own running QEMU
    processes (a pidfile is trusted only when C(/proc/PID/cmdline) is a QEMU whose pidfile lies in the VM's run
    directory) and of the hugepages its DPDK datapaths reserved (M(qemulab.network.dpdk_datapath)), so a re-run of
    a running lab is judged as its first run was.
  - A O(lab) that is not a valid lab name is not an error here (the plan reports it); nothing is read for it.
  - O(disks) are looked into for an SSH server with e2fsprogs' C(debugfs) (read-only, regular files only); the
    plan reaches a VM on its own root disk without one through its serial console when its inventory does not set
    C(vm_connection).
  - It also reports who the lab host's user is (RV(euid), RV(rootless)) and where a lab of that user keeps its files
    (RV(roots)), so the plan renders its paths from the lab host's roots and refuses what a user without root cannot
    run (docs/rootless.md).
  - Read-only.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description: The lab whose claim and running QEMUs to read.
    type: str
    required: true
  run_root:
    description:
      - Root of the labs' run directories. When not given, the run root of the user the module runs as
        (C(/run/qemulab) for root, C($XDG_RUNTIME_DIR/qemulab) for any other user; see RV(roots)).
    type: path
  disks:
    description:
      - Own root disk images (C(vm_disk)) of VMs whose inventory does not set C(vm_connection), absolute paths on
        the lab host, to look into for an SSH server (C(/usr/sbin/sshd), dropbear).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Read what the lab host offers
  qemulab.network.lab_host_info:
    lab: seed
  register: lab_host
"""

RETURN = r"""
mem_available_mib:
  description: MemAvailable plus what this lab's running QEMUs and its datapaths' hugepages hold, in MiB.
  returned: always
  type: int
cpus:
  description: CPUs this process may run on.
  returned: always
  type: int
claim:
  description: The lab's claim (C(<run_root>/<lab>/lab.json) - C(lab), C(inventory), C(netns)), or null.
  returned: always
  type: dict
dpdk_segments:
  description: The user-space segments whose DPDK datapath this lab has on the host (running or left by a killed run).
  returned: always
  type: list
  elements: str
euid:
  description: The effective uid the module runs as on the lab host.
  returned: always
  type: int
rootless:
  description: Whether that user is not root, so a lab there would run rootless (docs/rootless.md).
  returned: always
  type: bool
roots:
  description:
    - Where a lab of that user keeps its files - C(run) (run state), C(cache) (images) and C(state) (disks, keys),
      as C(plugins/module_utils/_run_paths.py) decides; root's are C(/run/qemulab), C(/var/cache/qemulab) and
      C(/var/lib/qemulab).
  returned: always
  type: dict
  sample: {"run": "/run/qemulab", "cache": "/var/cache/qemulab", "state": "/var/lib/qemulab"}
runtime_dir_problem:
  description:
    - Null when the run root's parent (the user's runtime directory) is the user's own with mode 0700, or for root;
      else what is wrong and its fix.
  returned: always
  type: str
addresses:
  description:
    - The host's own IPv4 addresses (its network namespace, where its VXLAN tunnels have their sockets), each with
      C(address), C(interface) and that interface's C(mtu); the plan checks C(lab_underlay_address) and
      C(lab_underlay_mtu) against them. Null when they cannot be read (pyroute2 missing).
  returned: always
  type: list
  elements: dict
disks:
  description:
    - Per path of O(disks), C(ssh_server) (true, false, or null when the image is not ext2/3/4 debugfs can read, or
      is not a regular file), C(found) (the SSH server's path in the image) and C(reason) (what was seen).
  returned: always
  type: dict
  sample:
    /srv/yocto-lab/images/rt1.ext4: {path: /srv/yocto-lab/images/rt1.ext4, ssh_server: false, found: null,
                                     reason: "has no SSH server (/usr/sbin/sshd, ...)"}
"""

import os
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qemulab.network.plugins.module_utils._disk_probe import ssh_servers
from ansible_collections.qemulab.network.plugins.module_utils._dpdk_datapath import (
    HUGEPAGE_MIB,
    reserved_hugepages,
    segments as datapath_segments,
)
from ansible_collections.qemulab.network.plugins.module_utils._netlink import HAS_PYROUTE2, netlink
from ansible_collections.qemulab.network.plugins.module_utils import _run_paths

from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import (
    find_qemus,
    lab_run_dirs,
    process_status,
    read_json,
)
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_lab_name

CLAIM_MAX_BYTES = 64 * 1024


def _meminfo_kib(field):
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _addresses():
    """[{address, interface, mtu}] of this namespace's IPv4 addresses, or None without pyroute2."""
    if not HAS_PYROUTE2:
        return None
    with netlink() as ipr:
        links = dict((msg["index"], (msg.get_attr("IFLA_IFNAME"), msg.get_attr("IFLA_MTU"))) for msg in ipr.get_links())
        found = []
        for msg in ipr.get_addr(family=socket.AF_INET):
            name, mtu = links.get(msg["index"], (None, None))
            found.append({"address": msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"), "interface": name,
                          "mtu": mtu})
    return sorted(found, key=lambda item: (item["interface"] or "", item["address"] or ""))


def main():
    module = AnsibleModule(argument_spec=dict(lab=dict(type="str", required=True),
                                              run_root=dict(type="path"),
                                              disks=dict(type="list", elements="str", default=[])),
                           supports_check_mode=True)
    euid = os.geteuid()
    paths = _run_paths.current(euid=euid)
    lab, run_root = module.params["lab"], module.params["run_root"] or paths.run
    claim, lab_kib, datapaths = None, 0, []
    if check_lab_name(lab) is None:
        # bounded, never through a link, never blocking on a FIFO: the run directory's rules for any file root reads
        claim = read_json(os.path.join(run_root, lab, "lab.json"), limit=CLAIM_MAX_BYTES) or None
        for _name, run_dir in lab_run_dirs(run_root, lab):
            for pid in find_qemus(run_dir):
                lab_kib += process_status(pid, "VmRSS") or 0
        lab_kib += reserved_hugepages(os.path.join(run_root, lab)) * HUGEPAGE_MIB * 1024
        datapaths = datapath_segments(os.path.join(run_root, lab))
    disks = ssh_servers(module.params["disks"], module.get_bin_path("debugfs", opt_dirs=["/sbin", "/usr/sbin"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    module.exit_json(changed=False, mem_available_mib=(_meminfo_kib("MemAvailable") + lab_kib) // 1024, cpus=cpus,
                     claim=claim, addresses=_addresses(), dpdk_segments=datapaths, euid=euid,
                     rootless=paths.rootless, roots={"run": paths.run, "cache": paths.cache, "state": paths.state},
                     runtime_dir_problem=_run_paths.runtime_dir_problem(paths, euid=euid), disks=disks)


if __name__ == "__main__":
    main()
