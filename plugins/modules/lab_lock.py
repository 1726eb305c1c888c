#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: lab_lock
short_description: Hold a lab's run lock for the rest of the playbook run
version_added: 0.1.0
description:
  - Takes an exclusive C(flock) on O(path) and keeps it until the C(ansible-playbook) process that ran the task
    ends, however it ends. The kernel drops the lock when its holder dies, so a killed run never leaves the lab locked.
  - A second run of the same lab waits up to O(timeout) seconds for the first one to finish, then fails naming the
    process that holds the lock. Runs of one lab are therefore serialised, never interleaved.
  - Runs on the controller (an action plugin), which is the lab host while the only supported hypervisor is local.
  - The lock file is removed when the run that holds it ends normally.
author:
  - qemulab developers (@qemulab)
options:
  path:
    description: The lock file, conventionally C(/run/qemulab/<lab>.lock), beside the lab's run directory.
    type: path
    required: true
  timeout:
    description: Seconds to wait for another run to release the lock.
    type: int
    default: 600
attributes:
  check_mode:
    description: Takes the lock in check mode too, so a check run never reads a lab that another run is changing.
    support: full
  diff_mode:
    description: No diff is returned.
    support: none
"""

EXAMPLES = r"""
- name: Serialise runs of the seed lab
  qemulab.network.lab_lock:
    path: /run/qemulab/seed.lock
    timeout: 600
"""

RETURN = r"""
path:
  description: The lock file.
  returned: always
  type: str
holder_of:
  description: The ansible-playbook process id the lock is held for.
  returned: success
  type: int
"""
