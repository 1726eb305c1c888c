# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of qemulab.network.nat_rules: read the machine with one shell command, compare here, write only
the difference, each write a fixed command fed on stdin (no rule, address or name is put into a shell line; only
`netns`, a name that passed the name rule, is, quoted, after `ip netns exec`).

Under TCG a Python module run inside a guest costs seconds; these three commands cost a fraction of that, and a run
that changes nothing makes only the first."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.text.converters import to_bytes
from ansible.module_utils.six.moves import shlex_quote
from ansible.plugins.action import ActionBase

from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name
from ansible_collections.qemulab.network.plugins.plugin_utils import _nat_rules

ARGUMENT_SPEC = dict(
    rules=dict(type="list", elements="dict", default=[]),
    owner=dict(type="str", default="qemulab"),
    comment=dict(type="str", default="qemulab"),
    netns=dict(type="str", default=""),
    started=dict(type="bool", default=False),
)

# What a machine started by this run holds of anyone's NAT: nothing (parse's shape).
NOTHING_HELD = {"chains": {}, "jumps": {"PREROUTING": 0, "POSTROUTING": 0}, "held": [], "foreign_lo": []}


def in_netns(command, netns):
    """`command` run in network namespace `netns` of the machine ("" its own); the name passed the name rule and is
    quoted besides, so it is one word of the line whatever it holds."""
    return "ip netns exec %s %s" % (shlex_quote(netns), command) if netns else command


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        validation = ArgumentSpecValidator(ARGUMENT_SPEC).validate(self._task.args)
        if validation.error_messages:
            return dict(result, failed=True, msg="nat_rules: " + "; ".join(validation.error_messages))
        args = validation.validated_parameters
        rules, owner, netns = args["rules"], args["owner"], args["netns"]
        why = _nat_rules.check_rules(rules)
        if not why and netns:
            why = check_name(netns, "netns")
            why = why and "netns: " + why
        if not why:
            why = _nat_rules.check_owner(owner, any(rule["type"] in ("static", "pool") for rule in rules))
            why = why and "owner: " + why
        if not why and not _nat_rules.COMMENT_RE.match(args["comment"]):
            why = "comment: %r is not lower-case letters, digits and . _ : - (at most 32); use one like qemulab" % (
                args["comment"],)
        if why:
            return dict(result, failed=True, changed=False, msg="nat_rules: " + why)
        wanted = _nat_rules.want(rules, owner, args["comment"])

        try:
            have = dict(NOTHING_HELD) if args["started"] else self._read(owner, netns)
        except ValueError as exc:
            return dict(result, failed=True, changed=False, msg="nat_rules: %s" % exc)
        change = _nat_rules.plan(have, wanted, owner)
        result.update(changed=change["changed"], chains=list(_nat_rules.chains(owner)),
                      rules=change["after"]["chains"], held=change["after"]["lo"],
                      foreign_lo=have["foreign_lo"])
        if self._play_context.diff:
            result["diff"] = {"before": change["before"], "after": change["after"]}
        if self._task.check_mode or not change["changed"]:
            return result
        # addresses first, so a translation never points at an address the router does not hold yet; the stale
        # ones last, once no rule of ours uses them
        adds = "".join(line + "\n" for line in change["ip_batch"].splitlines() if line.startswith("address add"))
        drops = "".join(line + "\n" for line in change["ip_batch"].splitlines() if line.startswith("address del"))
        for command, data in (("ip -batch -", adds), ("iptables-restore --noflush", change["restore"]),
                              ("ip -batch -", drops)):
            if not data:
                continue
            # bytes: the local connection (the lab host's way out) hands in_data to Popen.communicate as it is
            done = self._low_level_execute_command(in_netns(command, netns), sudoable=True, in_data=to_bytes(data))
            if done["rc"] != 0:
                return dict(result, failed=True,
                            msg="nat_rules: %s failed (rc %s): %s; its input was:\n%s" % (
                                in_netns(command, netns), done["rc"],
                                (done.get("stderr") or done.get("stdout") or "").strip(), data))
        return result

    def _read(self, owner, netns):
        """What the machine holds of the owner's rules and lo addresses (one shell command); ValueError if unread."""
        probe = self._low_level_execute_command(
            " && ".join(part if part.startswith("echo ") else in_netns(part, netns)
                        for part in (_nat_rules.PROBE % _nat_rules.PROBE_MARK).split(" && ")),
            sudoable=True)
        if probe["rc"] != 0:
            raise ValueError("reading the nat table and lo failed (rc %s): %s; the machine needs iptables and "
                             "iproute2" % (probe["rc"], (probe.get("stderr") or probe.get("stdout") or "").strip()))
        return _nat_rules.parse(probe["stdout"], owner)
