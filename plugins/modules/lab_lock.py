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
  - Takes an exclusive C(flock) on the lock file (of O(lab), or O(path)) and keeps it until the C(ansible-playbook) process that ran the task
    ends, however it ends. The kernel drops the lock when its holder dies, so a killed run never leaves the lab locked.
  - A second run of the same lab waits up to O(timeout) seconds for the first one to finish, then fails naming the
    process that holds the lock. Runs of one lab are therefore serialised, never interleaved.
  - Runs on the controller (an action plugin), which is the lab host while the only supported hypervisor is local.
  - The lock file is removed when the run that holds it ends normally.
  - One of O(lab) and O(path) is required; they are mutually exclusive.
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description:
      - The lab whose lock to take - C(<run_root>/<lab>.lock). A name that breaks the lab name rule (lower-case
        letters, digits and C(-), starting with a letter or digit, at most 15 characters) locks nothing and is no
        failure here; RV(locked) is then false and the result's C(msg) says why (the lab plan lists the inventory's problems
        before anything changes).
      - The lab playbook takes this lock first, before it reads the lab's claim, so two runs of one lab name never
        both read a claim that neither has written yet.
    type: str
  run_root:
    description:
      - Directory the lock file of O(lab) lies in, beside the labs' run directories. When not given, the run root of
        the user the controller runs as (C(/run/qemulab) for root, C($XDG_RUNTIME_DIR/qemulab) for any other user,
        made mode 0700); a user whose runtime directory is missing locks nothing (RV(locked) false, the result's
        C(msg) names the fix).
    type: path
  path:
    description: The lock file itself, instead of O(lab) and O(run_root).
    type: path
  timeout:
    description:
      - Seconds to wait for another run to release the lock, 0 to 86400, read as the lab plan reads
        C(lab_lock_timeout). Any other value locks nothing (RV(locked) false; the plan reports the field).
    type: raw
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
    lab: seed
    timeout: 600
  register: seed_lock

- name: Stop unless the lock is held
  ansible.builtin.assert:
    that: seed_lock.locked
"""

RETURN = r"""
locked:
  description: Whether this run now holds the lock.
  returned: always
  type: bool
lab:
  description: O(lab) as given.
  returned: always
  type: str
path:
  description: The lock file (null when O(lab) breaks the name rule).
  returned: always
  type: str
holder_of:
  description: The ansible-playbook process id the lock is held for.
  returned: success
  type: int
"""
