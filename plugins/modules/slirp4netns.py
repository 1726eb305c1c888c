#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: slirp4netns
short_description: Give a rootless lab's namespace a way out through slirp4netns, or end it
version_added: 0.1.0
description:
  - For a lab run by a user without root (docs/rootless.md). With O(state=present), starts C(slirp4netns) attached
    to the namespace of the M(qemulab.network.lab_userns) holder O(userns_pid), entered through the holder's
    namespace files as checked against its record. C(slirp4netns) makes the tap O(tap) there with
    C(10.0.4.100/24) and a default route via C(10.0.4.2), and carries what leaves through it out through sockets of
    the user's own in the host's namespace (user-mode NAT, no privilege).
  - It runs in a session of its own, so it outlives the Ansible run. Its pid, start time, argv and the holder it
    serves go to C(<run_root>/<lab>/slirp4netns.json) (C(0600)); its messages to C(slirp4netns.log) beside it. A
    later run takes the pid for it only while all of them match, so a running one asked for with the same options is
    no change, and a recycled pid is never taken for it, nor signalled. Another holder, O(tap), O(mtu) or
    O(host_loopback) restarts it.
  - O(forward_from) are interfaces of the namespace whose packets go out through the tap, for instance the bridge
    of the segment holding the lab's gateway address. Forwarding is turned on for them and the tap only, and proxy
    ARP on the tap, so the namespace answers slirp's ARP for the lab addresses it routes to.
  - With O(state=absent), ends the recorded process (SIGTERM, SIGKILL after 5 s; signalled through a pidfd taken
    before its identity is checked) and removes the record and the log. O(userns_pid) is not needed for that.
  - O(lab), O(tap) and O(forward_from) must follow the name rules; any other value is refused before anything is
    read or changed.
author:
  - qemulab developers (@qemulab)
options:
  userns_pid:
    description:
      - The pid of the rootless lab's M(qemulab.network.lab_userns) holder (its
        RV(qemulab.network.lab_userns#module:holder.pid)), whose namespaces slirp4netns is attached to. Required with
        O(state=present).
      - The module runs as the lab's user. The pid is trusted only when a holder record of that user (under the user's
        run root, C($XDG_RUNTIME_DIR/qemulab/_userns/)) names it and the process is still that holder (same start
        time and namespaces, the user's own process); otherwise the task fails before anything changes.
    type: int
  lab:
    description: Name of the lab whose way out this is.
    type: str
    required: true
  state:
    description: V(present) keeps slirp4netns running for the namespace; V(absent) ends it.
    type: str
    choices: [absent, present]
    default: present
  tap:
    description: The tap slirp4netns makes in the namespace (an interface name). Required with O(state=present).
    type: str
  mtu:
    description: MTU of the tap and of slirp4netns' side (68 to 65521).
    type: int
    default: 65520
  host_loopback:
    description:
      - Whether the namespace reaches the host's C(127.0.0.1) as C(10.0.4.2). Off by default
        (C(--disable-host-loopback)), so the lab reaches no service listening on the host's loopback.
    type: bool
    default: false
  forward_from:
    description: Interfaces of the namespace whose packets are forwarded out through the tap.
    type: list
    elements: str
    default: []
  run_root:
    description:
      - Directory holding the lab run state; the record is C(<run_root>/<lab>/slirp4netns.json). An absolute path.
      - When not given, the run root of the user the module runs as.
    type: path
attributes:
  check_mode:
    description: Reports whether slirp4netns would be started, restarted or ended and which sysctls would be set.
    support: full
  diff_mode:
    description: The process (pid, start time, options) and the namespace's sysctls before and after.
    support: full
requirements:
  - slirp4netns (Debian's slirp4netns package; the one admin step of docs/rootless.md)
"""

EXAMPLES = r"""
- name: Keep the namespaces of lab seed alive (run as the lab's user)
  qemulab.network.lab_userns:
    lab: seed
  register: seed_userns

- name: Give the lab a way out, routing what arrives on br2
  qemulab.network.slirp4netns:
    lab: seed
    userns_pid: "{{ seed_userns.holder.pid }}"
    tap: qlu-1a2b3c4d-s
    forward_from: [br2]

- name: End it
  qemulab.network.slirp4netns:
    lab: seed
    state: absent
"""

RETURN = r"""
record:
  description: Path of the process record.
  returned: always
  type: str
  sample: /run/user/1000/qemulab/seed/slirp4netns.json
process:
  description: The running slirp4netns after the task (null when there is none, or in check mode when one would
    start).
  returned: always
  type: dict
  sample: {pid: 4343, start_time: 1234567, tap: qlu-1a2b3c4d-s, mtu: 65520, host_loopback: false}
address:
  description: The tap's address in the namespace.
  returned: always
  type: str
  sample: 10.0.4.100/24
gateway:
  description: slirp4netns' address, the namespace's default route (the host's 127.0.0.1 when O(host_loopback)).
  returned: always
  type: str
  sample: 10.0.4.2
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.qemulab.network.plugins.module_utils import _run_paths, _slirp4netns
from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    NetlinkError,
    namespace_param,
    read_netns_sysctls,
    write_netns_sysctls,
)
from ansible_collections.qemulab.network.plugins.module_utils._netlink_options import HOLDER_ARGUMENT_SPEC
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_ifname, check_lab_name


def argument_spec():
    return dict(
        lab=dict(type="str", required=True),
        state=dict(type="str", choices=["absent", "present"], default="present"),
        tap=dict(type="str"),
        mtu=dict(type="int", default=65520),
        host_loopback=dict(type="bool", default=False),
        forward_from=dict(type="list", elements="str", default=[]),
        run_root=dict(type="path"),
        **HOLDER_ARGUMENT_SPEC
    )


def check_params(params):
    """The first problem with the parameters, or None (before anything is read)."""
    problem = check_lab_name(params["lab"])
    if problem:
        return "lab: %s" % problem
    if params["state"] == "absent":
        return None
    names = [("tap", params["tap"])] + [("forward_from[%d]" % i, n) for i, n in enumerate(params["forward_from"])]
    for field, name in names:
        problem = check_ifname(name)
        if problem:
            return "%s: %s" % (field, problem)
    if params["tap"] in params["forward_from"]:
        return "forward_from: %s is the tap itself; list the interfaces whose packets go out through it" % params["tap"]
    if not _slirp4netns.MTU_MIN <= params["mtu"] <= _slirp4netns.MTU_MAX:
        return "mtu: %d is not from %d to %d" % (params["mtu"], _slirp4netns.MTU_MIN, _slirp4netns.MTU_MAX)
    return None


def plan(live, want, state):
    """(start, stop): what happens to the process, from the running one (or None) and the wanted options."""
    if state == "absent":
        return False, live is not None
    if live is None:
        return True, False
    restart = bool(_slirp4netns.differs(live, want))
    return restart, restart


def shown(record):
    return None if record is None else dict((key, record[key]) for key in ("pid", "start_time", "tap", "mtu",
                                                                           "host_loopback", "holder"))


def present(module, holder, live, want, path):
    """Start or restart slirp4netns as needed and set the namespace's sysctls: (process after, sysctls before,
    sysctls after, started, stopped)."""
    params = module.params
    start, stop = plan(live, want, "present")
    wanted_sysctls = _slirp4netns.sysctls(params["tap"], params["forward_from"])
    # the interfaces to forward from must be there before anything starts
    theirs = [key for key in wanted_sysctls if key.split(".")[3] != params["tap"]]
    have = read_netns_sysctls(holder, theirs)
    missing = sorted(key.split(".")[3] for key in theirs if have[key] is None)
    if missing:
        module.fail_json(msg="lab %s: slirp4netns: forward_from: %s is no interface of %s; make it first (for instance "
                         "qemulab.network.bridge with userns_pid)" % (params["lab"], ", ".join(missing), holder))
    after = None if stop else live
    if not module.check_mode:
        if stop:
            _slirp4netns.stop(live)
        if start:
            _slirp4netns.remove_record(path)
            after = _slirp4netns.start(holder, params["tap"], params["mtu"], params["host_loopback"],
                                       os.path.dirname(path))
            try:
                _slirp4netns.write_record(path, after)
            except OSError:
                _slirp4netns.stop(after)  # an unrecorded process would be found by nothing
                raise
    # the tap's own keys exist only while slirp4netns runs: a check run that would (re)start it sees them unset
    ours = [key for key in wanted_sysctls if key not in theirs]
    have.update(read_netns_sysctls(holder, ours) if after is not None else dict((key, None) for key in ours))
    todo = dict((key, value) for key, value in wanted_sysctls.items() if have.get(key) != value)
    if todo and not module.check_mode:
        write_netns_sysctls(holder, todo)
    return after, have, wanted_sysctls, start, stop


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_if=[("state", "present", ("userns_pid", "tap"))])
    params = module.params
    lab, state = params["lab"], params["state"]
    problem = check_params(params)
    if problem:
        module.fail_json(msg="slirp4netns: %s" % problem)
    run_root = params["run_root"] or _run_paths.current().run
    path = _slirp4netns.record_path(run_root, lab)
    record = _slirp4netns.read_record(path)
    live = _slirp4netns.live(record)
    want, after, sysctls_before, sysctls_after = None, None, {}, {}
    try:
        if state == "present":
            holder = namespace_param(params)
            want = _slirp4netns.wanted(holder.record, params["tap"], params["mtu"], params["host_loopback"])
            after, sysctls_before, sysctls_after, start, stop = present(module, holder, live, want, path)
        else:
            start, stop = plan(live, want, state)
            if not module.check_mode:
                if stop:
                    _slirp4netns.stop(live)
                if record is not None:
                    _slirp4netns.remove_record(path)
    except (OSError, NetlinkError, _slirp4netns.Slirp4netnsError) as exc:
        module.fail_json(msg="lab %s: slirp4netns: %s" % (lab, exc))
    stale = record is not None and live is None
    changed = start or stop or stale or sysctls_before != sysctls_after
    result = dict(changed=changed, record=path, process=shown(after), address=_slirp4netns.ADDRESS,
                  gateway=_slirp4netns.GATEWAY)
    if module._diff:
        result["diff"] = {"before": {"process": shown(live), "sysctls": sysctls_before},
                          "after": {"process": shown(after) if after else (want if start else None),
                                    "sysctls": sysctls_after}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
