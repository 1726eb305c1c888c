#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nic_links
short_description: Link state and impairment of the running VMs' NICs, without restarting them
version_added: 0.1.0
description:
  - For each lab NIC, takes the link down or up as a pulled cable would (QEMU's C(set_link) over QMP, so the guest
    sees carrier loss, and the tap down on the lab host) and applies its impairment (netem) where it lives.
  - Impairment lives on the NIC's tap when the lab host's kernel takes netem qdiscs (probed once per kernel release
    in a throwaway namespace, cached in O(netem_cache)), otherwise in the guest on its C(ethN), where the
    guest_network role applies it; each item of RV(links) says which (C(netem_where)).
  - QEMU starts every NIC up and only this module changes that, so the state it set is recorded per QEMU process
    (C(<run_root>/<lab>/links-<vm>.json), root's); a QEMU restarted since then is read as up.
author:
  - qemulab developers (@qemulab)
requirements:
  - pyroute2
options:
  lab:
    description: The lab's name.
    type: str
    required: true
  run_root:
    description: Where the labs' run directories are (C(<run_root>/<lab>/<vm>/qmp.sock)).
    type: path
    default: /run/qemulab
  userns_pid:
    description:
      - A rootless lab's namespace, by its M(qemulab.network.lab_userns) holder's pid (docs/rootless.md) - every item's
        tap is read and set there, whatever its C(netns). Impairment then lives in the guests (C(tc) is not run
        through the holder).
    type: int
  links:
    description: One item per lab NIC, as the lab plan renders them (C(nic_links)).
    type: list
    elements: dict
    default: []
    suboptions:
      vm:
        description: The VM.
        type: str
        required: true
      dev:
        description: The guest's name of the NIC (C(eth0), ...).
        type: str
        required: true
      netdev:
        description: QEMU's netdev id of the NIC (C(net0), ...).
        type: str
        required: true
      tap:
        description: The NIC's tap on the lab host; null for a user-mode NIC.
        type: str
      netns:
        description: The tap's namespace; empty for the current one.
        type: str
        default: ""
      link:
        description: The wanted link state.
        type: str
        choices: [up, down]
        default: up
      netem:
        description: The wanted impairment, normalised (C(delay)/C(jitter) in microseconds, percentages, C(rate) in
          bit/s); empty for none.
        type: dict
        default: {}
  host_netem:
    description: V(auto) puts impairment on the taps where the lab host's kernel takes netem; V(off) always in the
      guests.
    type: str
    choices: [auto, "off"]
    default: auto
  netem_cache:
    description: The cache of the lab host's netem probe.
    type: path
    default: /var/cache/qemulab/netem.json
attributes:
  check_mode:
    description: Reports what would change without changing anything.
    support: full
  diff_mode:
    description: Returns each NIC's link and host-side impairment before and after.
    support: full
"""

EXAMPLES = r"""
- name: Pull rt2's eth1 and delay rt1's eth1
  qemulab.network.nic_links:
    lab: seed
    links:
      - {vm: rt2, dev: eth1, netdev: net1, tap: vport42, netns: qemulab-seed, link: down}
      - {vm: rt1, dev: eth1, netdev: net1, tap: vport21, netns: qemulab-seed, netem: {delay: 40000}}
"""

RETURN = r"""
links:
  description: Per NIC, C(vm), C(dev), C(link) (as it is now), C(netem_where) (C(host) or C(guest)) and C(netem)
    (the impairment as text).
  returned: always
  type: list
  elements: dict
host_netem:
  description: Whether impairment lives on the lab host's taps, and why.
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.qemulab.network.plugins.module_utils import _netem
from ansible_collections.qemulab.network.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    NetlinkError,
    get_link,
    namespace_param,
    netlink,
    set_link,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import (
    find_qemus,
    read_json,
    vm_paths,
    write_json_atomic,
)
from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient, QMPError
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name

LINK_SPEC = dict(vm=dict(type="str", required=True), dev=dict(type="str", required=True),
                 netdev=dict(type="str", required=True), tap=dict(type="str"),
                 netns=dict(type="str", default=""), link=dict(type="str", choices=["up", "down"], default="up"),
                 netem=dict(type="dict", default={}))


def record_path(run_root, lab, vm):
    return os.path.join(run_root, lab, "links-%s.json" % vm)


def qemu_links(run_root, lab, vm, pid):
    """{netdev: 'down'} as recorded for this QEMU process; QEMU starts every NIC up, so anything else is up."""
    record = read_json(record_path(run_root, lab, vm), owner=os.geteuid())
    return record.get("down", {}) if record.get("pid") == pid else {}


def run_tc(module, argv):
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg="nic_links: %s failed: %s" % (" ".join(argv), err.strip() or out.strip()))
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(lab=dict(type="str", required=True), run_root=dict(type="path", default="/run/qemulab"),
                           userns_pid=dict(type="int"),
                           links=dict(type="list", elements="dict", default=[], options=LINK_SPEC),
                           host_netem=dict(type="str", choices=["auto", "off"], default="auto"),
                           netem_cache=dict(type="path", default=_netem.NETEM_CACHE)),
        supports_check_mode=True,
    )
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    p = module.params
    lab, run_root = p["lab"], p["run_root"]
    problems = [("lab", check_name(lab, "lab"))]
    for item in p["links"]:
        problems += [("vm", check_name(item["vm"], "vm")), ("tap", check_name(item["tap"], "tap") if item["tap"]
                                                            else None),
                     ("netns", check_name(item["netns"], "netns") if item["netns"] else None),
                     ("dev", check_name(item["dev"], "interface")), ("netdev", check_name(item["netdev"], "interface"))]
        want, why = _netem.normalize(_netem_text(item["netem"]))
        problems.append(("netem", "; ".join(why) if why else None))
        item["want"] = want
    for field, why in problems:
        if why:
            module.fail_json(msg="nic_links: %s: %s" % (field, why))

    if p["userns_pid"] is not None:
        try:
            holder = namespace_param({"userns_pid": p["userns_pid"]})
        except NetlinkError as exc:
            module.fail_json(msg="nic_links: %s" % exc)
        for item in p["links"]:
            item["netns"] = holder
        host_works, host_reason = False, "a rootless lab: tc is not run inside its namespace"
    elif p["host_netem"] == "off":
        host_works, host_reason = False, "host_netem: off"
    else:
        host_works, host_reason = _netem.host_has_netem(p["netem_cache"], write=not module.check_mode,
                                                        run=lambda argv, **kw: _run(module, argv))
    before, after, report, changed = {}, {}, [], False
    by_vm = {}
    for item in p["links"]:
        by_vm.setdefault(item["vm"], []).append(item)
    for vm, items in sorted(by_vm.items()):
        run_dir = os.path.join(run_root, lab, vm)
        pids = find_qemus(run_dir)
        pid = pids[0] if pids else None
        recorded = qemu_links(run_root, lab, vm, pid) if pid else {}
        qmp_changes, down_now = [], dict(recorded)
        for item in items:
            key = "%s:%s" % (vm, item["dev"])
            where = "host" if host_works and item["tap"] else "guest"
            tap_up = _tap_up(module, item)
            want_down = item["link"] == "down"
            qemu_down = bool(recorded.get(item["netdev"]))
            sides = [qemu_down] + ([not tap_up] if tap_up is not None else [])
            have_link = "down" if all(sides) else "up" if not any(sides) else "down in QEMU only" if qemu_down \
                else "tap down only"
            nic_before = {"link": have_link}
            nic_after = {"link": item["link"]}
            if any(side != want_down for side in sides):
                changed = True
                qmp_changes.append(item)
            if item["link"] == "down":
                down_now[item["netdev"]] = True
            else:
                down_now.pop(item["netdev"], None)
            if where == "host" and tap_up is not None:
                kind, have = _netem.parse_show(run_tc(module, _netem.show_argv(item["tap"], item["netns"] or None)),
                                               item["tap"])
                argv, text_before, text_after = _netem.plan(item["tap"], item["want"], kind, have,
                                                            item["netns"] or None)
                nic_before["netem"], nic_after["netem"] = text_before, text_after
                if argv:
                    changed = True
                    if not module.check_mode:
                        run_tc(module, argv)
            before[key], after[key] = nic_before, nic_after
            report.append({"vm": vm, "dev": item["dev"], "link": item["link"], "netem_where": where,
                           "netem": _netem.describe(item["want"])})
        if not qmp_changes or module.check_mode:
            continue
        if not pid:
            module.fail_json(msg="nic_links: VM %s is not running (no QEMU for %s); launch it first (lab.yml --tags "
                                 "launch)" % (vm, run_dir))
        _apply(module, vm, run_dir, pids, qmp_changes)
        write_json_atomic(record_path(run_root, lab, vm), {"pid": pid, "down": down_now}, 0o600)
    module.exit_json(changed=changed, links=report, host_netem={"on_taps": host_works, "reason": host_reason},
                     diff={"before": before, "after": after})


def _netem_text(want):
    """The plan hands over normalised values; read them back through the same rules (as text) to check them."""
    texts = {}
    for key, value in (want or {}).items():
        if key in _netem.TIME_KEYS:
            texts[key] = _netem.format_time(int(value))
        elif key in _netem.PERCENT_KEYS:
            texts[key] = _netem.format_percent(float(value))
        elif key == "rate":
            texts[key] = _netem.format_rate(int(value))
        else:
            texts[key] = value
    return texts


def _run(module, argv):
    rc, out, err = module.run_command(argv)

    class Result(object):
        returncode, stdout, stderr = rc, out, err
    return Result()


def _tap_up(module, item):
    """Whether the NIC's tap is up; None for a user-mode NIC, and in check mode for a tap the prep stage has not made
    yet (a check of a lab not brought up yet: it will be made up or down as planned)."""
    if not item["tap"]:
        return None
    try:
        with netlink(item["netns"] or None) as ipr:
            link = get_link(ipr, item["tap"])
    except NetlinkError as exc:
        if module.check_mode:
            return None
        module.fail_json(msg="nic_links: %s" % exc)
    if link is None:
        if module.check_mode:
            return None
        module.fail_json(msg="nic_links: tap %s of VM %s does not exist%s; run the prep stage (lab.yml --tags prep)"
                             % (item["tap"], item["vm"], " in namespace %s" % item["netns"] if item["netns"] else ""))
    return bool(link["up"])


def _apply(module, vm, run_dir, pids, items):
    """QEMU first (the guest sees the carrier go), then the tap; up in the reverse order."""
    try:
        with QMPClient(vm_paths(run_dir)["qmp_socket"], timeout=5, peer_check=lambda pid, uid, gid: pid in pids) as qmp:
            for item in items:
                up = item["link"] == "up"
                if up:
                    _set_tap(module, item, True)
                qmp.command("set_link", name=item["netdev"], up=up)
                if not up:
                    _set_tap(module, item, False)
    except QMPError as exc:
        module.fail_json(msg="nic_links: VM %s: %s" % (vm, exc))


def _set_tap(module, item, up):
    if not item["tap"]:
        return
    try:
        with netlink(item["netns"] or None) as ipr:
            set_link(ipr, item["tap"], up=up)
    except NetlinkError as exc:
        module.fail_json(msg="nic_links: tap %s: %s" % (item["tap"], exc))


if __name__ == "__main__":
    main()
