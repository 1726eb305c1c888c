#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: lab_userns
short_description: Keep a rootless lab's user and network namespace alive in a holder process, or end it
version_added: 0.1.0
description:
  - For a lab run by a user without root (docs/rootless.md). A user cannot bind-mount a namespace under
    C(/run/netns), so the lab's namespaces live as long as a small holder process that owns them, a user namespace
    in which the user is root, and a network namespace inside it (the lab's bridges, taps and host ports go there).
  - With O(state=present), starts the holder when there is none (in a session of its own, so it outlives the
    Ansible run), and records its pid, its start time and the identity (device, inode) of both namespaces in
    C(<run_root>/_userns/<lab>.json) (directory C(0700), file C(0600)). A later run takes the recorded pid for the
    holder only when all of them still match, so a holder that is running is no change, and a recycled pid is
    never taken for it.
  - With O(state=absent), ends the recorded holder (SIGTERM, SIGKILL after 5 s; signalled through a pidfd taken
    before its identity is checked) and removes the record, and the record directory when it is empty. A record
    whose process is gone or is another process is only removed.
  - O(lab) must follow the lab name rule; any other value is refused before anything is read or changed.
  - Programs run inside the namespaces as the same user with RV(enter), e.g. C(nsenter --preserve-credentials -U -n
    -t <pid> ip link).
author:
  - qemulab developers (@qemulab)
options:
  lab:
    description: Name of the lab whose namespaces are held.
    type: str
    required: true
  state:
    description: V(present) keeps a holder running; V(absent) ends it.
    type: str
    choices: [absent, present]
    default: present
  run_root:
    description:
      - Directory holding the lab run state; the record is C(<run_root>/_userns/<lab>.json). An absolute path.
      - When not given, the run root of the user the module runs as (C(/run/qemulab) for root,
        C($XDG_RUNTIME_DIR/qemulab) for any other user).
    type: path
attributes:
  check_mode:
    description: Reports whether a holder would be started or ended, without starting or ending one.
    support: full
  diff_mode:
    description: The holder (pid, start time, namespaces) before and after, or null where there is none.
    support: full
"""

EXAMPLES = r"""
- name: Keep the namespaces of lab seed alive (run as the lab's user)
  qemulab.network.lab_userns:
    lab: seed
  register: seed_userns

- name: List the lab's interfaces inside them
  ansible.builtin.command:
    argv: "{{ seed_userns.enter + ['ip', '-br', 'link'] }}"
  changed_when: false

- name: End the holder (the namespaces go with it)
  qemulab.network.lab_userns:
    lab: seed
    state: absent
"""

RETURN = r"""
lab:
  description: The lab name.
  returned: always
  type: str
  sample: seed
record:
  description: Path of the holder's record.
  returned: always
  type: str
  sample: /run/user/1000/qemulab/_userns/seed.json
holder:
  description: The running holder after the task (null when there is none, or in check mode when one would start).
  returned: always
  type: dict
  sample: {lab: seed, pid: 4242, start_time: 1234567, userns: [4, 4026532330], netns: [4, 4026532331]}
enter:
  description: The command prefix that runs a program inside the holder's namespaces as the same user (empty
    without a holder).
  returned: always
  type: list
  elements: str
  sample: [nsenter, --preserve-credentials, -U, -n, -t, "4242"]
stale:
  description: Whether a record was found whose process is gone or is no longer the holder.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils import _run_paths, _userns
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_lab_name


def argument_spec():
    return dict(
        lab=dict(type="str", required=True),
        state=dict(type="str", choices=["absent", "present"], default="present"),
        run_root=dict(type="path"),
    )


def plan(record, live, state):
    """(start, stop, drop_record): what the task does, from the record and whether its holder still lives."""
    if state == "present":
        return live is None, False, record is not None and live is None
    return False, live is not None, record is not None


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    lab, state = module.params["lab"], module.params["state"]
    problem = check_lab_name(lab)
    if problem:
        module.fail_json(msg="lab_userns: lab: %s" % problem)
    run_root = module.params["run_root"]
    if not run_root:
        paths = _run_paths.current()
        problem = _run_paths.runtime_dir_problem(paths)
        if problem and state == "present":
            module.fail_json(msg="lab %s: %s" % (lab, problem))
        run_root = paths.run
    path = _userns.record_path(run_root, lab)
    record = _userns.read_record(path)
    live = _userns.live_holder(record, lab)
    start, stop, drop = plan(record, live, state)
    after = live if state == "present" else None
    if not module.check_mode:
        try:
            if stop:
                _userns.stop_holder(live, lab)
            if drop:
                _userns.remove_record(path)
            if start:
                after = _userns.start_holder(lab)
                try:
                    _userns.write_record(path, after)
                except OSError:
                    _userns.stop_holder(after, lab)  # an unrecorded holder would be found by nothing
                    raise
        except (OSError, _userns.UsernsError) as exc:
            module.fail_json(msg="lab %s: %s" % (lab, exc))
    result = dict(changed=start or stop or drop, lab=lab, record=path, holder=after, stale=record is not None
                  and live is None, enter=_userns.enter_command(after["pid"]) if after else [])
    if module._diff:
        result["diff"] = {"before": {"holder": live}, "after": {"holder": after}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
