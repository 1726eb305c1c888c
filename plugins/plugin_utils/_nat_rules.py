# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NAT rules owned by one name in a machine's iptables `nat` table: what they should be, what they are, the change.

The owner's rules live in two chains of its own, `<owner>-pre` (jumped to from PREROUTING) and `<owner>-post`
(from POSTROUTING), and the addresses the machine translates onto are held on `lo` with the label `lo:<owner>`. So
the owner can replace its rules as a whole and remove what the inventory no longer has, while a rule or an address
of anyone else in the same table (or on `lo`) is never read as its own. Pure functions; the action plugin
`nat_rules` reads the machine and applies `plan`'s result.

Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re
import shlex

from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name

# iptables refuses chain names above 28 characters (XT_EXTENSION_MAXNAMELEN minus the NUL); "-post" takes 5
OWNER_MAX = 23
# an address label is an interface name (15 bytes) that starts with the device's: "lo:" leaves 12
LABEL_OWNER_MAX = 12
COMMENT_RE = re.compile(r"^[a-z0-9][a-z0-9:._-]{0,31}\Z")
# a pool is held address by address on lo; more than a /24's worth is not a lab's pool
POOL_MAX = 256
KINDS = ("masquerade", "static", "pool")
# what the action runs to read the machine: fixed text, no inventory value in it
PROBE = "iptables-save -t nat && echo '%s' && ip -4 -j address show dev lo"
PROBE_MARK = "== qemulab nat: lo =="


def chains(owner):
    return owner + "-pre", owner + "-post"


def lo_label(owner):
    return "lo:" + owner


def check_owner(owner, holds_addresses=True):
    """Why `owner` cannot name the chains (and the lo label), or None."""
    why = check_name(owner, "vm")
    if why:
        return why
    if len(owner) > OWNER_MAX:
        return "%r is %d characters long; the chain %s-post would pass iptables' 28; use at most %d" % (
            owner, len(owner), owner, OWNER_MAX)
    if holds_addresses and len(owner) > LABEL_OWNER_MAX:
        return ("%r is %d characters long; the label lo:%s of the addresses held on lo would pass 15; use at most "
                "%d" % (owner, len(owner), owner, LABEL_OWNER_MAX))
    return None


def parse_pool(value):
    """(first, last) IPv4 addresses of 'first-last', or raise ValueError naming the value and the fix."""
    if not isinstance(value, str) or value.count("-") != 1:
        raise ValueError("%r is not a range; write it as first-last, like 203.0.113.10-203.0.113.20" % (value,))
    ends = []
    for text in value.split("-"):
        try:
            ends.append(ipaddress.ip_address(text.strip()))
        except ValueError:
            raise ValueError("%r in %r is not an IP address; write the range as first-last, like "
                             "203.0.113.10-203.0.113.20" % (text.strip(), value))
    first, last = ends
    if first.version != 4 or last.version != 4:
        raise ValueError("%r is not an IPv4 range (iptables' SNAT pool here is IPv4); give two IPv4 addresses, like "
                         "203.0.113.10-203.0.113.20" % value)
    if first > last:
        raise ValueError("%r runs backwards; put the lower address first: %s-%s" % (value, last, first))
    size = int(last) - int(first) + 1
    if size > POOL_MAX:
        raise ValueError("%r holds %d addresses; a pool holds at most %d (the router holds each one), like %s-%s"
                         % (value, size, POOL_MAX, first, first + POOL_MAX - 1))
    return first, last


def pool_addresses(first, last):
    return [ipaddress.ip_address(n) for n in range(int(first), int(last) + 1)]


def _rule_error(index, rule):
    """Why one planned rule cannot be rendered, or None (the lab plan checked it already; the role is reusable)."""
    where = "rules[%d]" % index
    if not isinstance(rule, dict) or rule.get("type") not in KINDS:
        return "%s: type must be one of %s" % (where, ", ".join(KINDS))
    for side in ("inside", "outside"):
        why = check_name(rule.get(side), "interface")
        if why:
            return "%s.%s: %s" % (where, side, why)
    keys = {"masquerade": ("inside_subnet",), "pool": ("inside_subnet", "pool"),
            "static": ("inside_address", "outside_address")}[rule["type"]]
    for key in keys:
        value = rule.get(key)
        try:
            if key == "inside_subnet":
                ipaddress.IPv4Network(value)
            elif key == "pool":
                parse_pool(value)
            else:
                ipaddress.IPv4Address(value)
        except (ValueError, TypeError) as exc:
            return "%s.%s: %r is not valid for a %s rule (%s)" % (where, key, value, rule["type"], exc)
    return None


def check_rules(rules):
    for index, rule in enumerate(rules):
        why = _rule_error(index, rule)
        if why:
            return why
    return None


def want(rules, owner, comment):
    """{pre: [rule lines], post: [rule lines], held: [addresses on lo]} in iptables-save's own form.

    POSTROUTING order: the static SNATs first, so a published host keeps its own address even when its segment is
    also masqueraded or pooled; then the others in inventory order."""
    pre, post = chains(owner)
    dnat, snat, others, held = [], [], [], []

    def line(chain, matches, text, target):
        return "-A %s %s -m comment --comment %s -j %s" % (chain, matches, _quote("%s %s" % (comment, text)), target)

    for rule in rules:
        kind, outside = rule["type"], rule["outside"]
        if kind == "static":
            ia, oa = str(ipaddress.IPv4Address(rule["inside_address"])), str(
                ipaddress.IPv4Address(rule["outside_address"]))
            dnat.append(line(pre, "-d %s/32 -i %s" % (oa, outside), "static %s -> %s" % (oa, ia),
                             "DNAT --to-destination %s" % ia))
            snat.append(line(post, "-s %s/32 -o %s" % (ia, outside), "static %s -> %s" % (ia, oa),
                             "SNAT --to-source %s" % oa))
            held.append(oa)
            continue
        subnet = str(ipaddress.IPv4Network(rule["inside_subnet"]))
        if kind == "masquerade":
            others.append(line(post, "-s %s -o %s" % (subnet, outside), "masquerade %s out of %s" % (subnet, outside),
                               "MASQUERADE"))
        else:
            first, last = parse_pool(rule["pool"])
            # --persistent: an inside host keeps one pool address whatever it talks to (the kernel hashes its
            # source address alone to pick it)
            others.append(line(post, "-s %s -o %s" % (subnet, outside), "pool %s out of %s as %s-%s" % (
                subnet, outside, first, last), "SNAT --to-source %s-%s --persistent" % (first, last)))
            held.extend(str(a) for a in pool_addresses(first, last))
    seen = set()
    held = [a for a in held if not (a in seen or seen.add(a))]
    return {"pre": dnat, "post": snat + others, "held": held}


def _quote(text):
    # iptables-save quotes a comment with a space in double quotes; ours never holds a quote or a backslash
    return '"%s"' % text if " " in text else text


def _tokens(line):
    return tuple(shlex.split(line))


def parse(probe_stdout, owner):
    """What the machine has of the owner's: {chains: {name: [rule lines]}, jumps: {builtin: count}, held: [addr],
    foreign_lo: [addr]}; raises ValueError when the output is not the probe's."""
    if PROBE_MARK not in probe_stdout:
        raise ValueError("the probe's output has no %s line: %r" % (PROBE_MARK, probe_stdout[-300:]))
    save, lo_json = probe_stdout.split(PROBE_MARK, 1)
    pre, post = chains(owner)
    ours = (pre, post)
    found = {"chains": {}, "jumps": {"PREROUTING": 0, "POSTROUTING": 0}}
    in_nat = False
    for raw in save.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif not in_nat or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name in ours:
                found["chains"].setdefault(name, [])
        elif line.startswith("-A "):
            tokens = line.split()
            chain = tokens[1]
            if chain in ours:
                found["chains"].setdefault(chain, []).append(line)
            elif chain in found["jumps"] and tokens[2:] == ["-j", pre if chain == "PREROUTING" else post]:
                found["jumps"][chain] += 1
    try:
        links = json.loads(lo_json.strip() or "[]")
    except ValueError:
        raise ValueError("ip -j address show dev lo gave no JSON: %r" % lo_json[-300:])
    held, foreign = [], []
    for link in links:
        for info in link.get("addr_info", []):
            if info.get("family") != "inet" or info.get("prefixlen") != 32:
                continue
            (held if info.get("label") == lo_label(owner) else foreign).append(info["local"])
    found["held"], found["foreign_lo"] = held, foreign
    return found


def plan(have, wanted, owner):
    """The change from `have` (parse) to `wanted` (want): {changed, restore, ip_batch, before, after}.

    `restore` is iptables-restore --noflush input touching only the owner's chains and its two jumps; `ip_batch`
    is `ip -batch` input adding and removing only lo addresses with the owner's label (an address someone else holds
    on lo counts as held and is never removed)."""
    pre, post = chains(owner)
    anything = bool(wanted["pre"] or wanted["post"])
    want_chains = {pre: wanted["pre"], post: wanted["post"]} if anything else {}
    have_chains = have["chains"]
    same_rules = (sorted(have_chains) == sorted(want_chains) and all(
        [_tokens(x) for x in have_chains[c]] == [_tokens(x) for x in want_chains[c]] for c in want_chains))
    want_jumps = {"PREROUTING": 1 if anything else 0, "POSTROUTING": 1 if anything else 0}
    restore = []
    if not same_rules or have["jumps"] != want_jumps:
        restore.append("*nat")
        for builtin, chain in (("PREROUTING", pre), ("POSTROUTING", post)):
            # a jump is deleted before its chain; extra copies of ours go too
            for _extra in range(max(0, have["jumps"][builtin] - want_jumps[builtin])):
                restore.append("-D %s -j %s" % (builtin, chain))
        if anything:
            # declaring an existing chain under --noflush empties it: the chain is rewritten as a whole
            restore += [":%s - [0:0]" % pre, ":%s - [0:0]" % post]
            restore += wanted["pre"] + wanted["post"]
            for builtin, chain in (("PREROUTING", pre), ("POSTROUTING", post)):
                if have["jumps"][builtin] == 0:
                    # first in the built-in chain: the lab's translations win over an older catch-all of anyone's
                    restore.append("-I %s 1 -j %s" % (builtin, chain))
        else:
            for chain in sorted(have_chains):
                restore += ["-F %s" % chain, "-X %s" % chain]
        restore.append("COMMIT")
    present = set(have["held"]) | set(have["foreign_lo"])
    adds = [a for a in wanted["held"] if a not in present]
    drops = [a for a in have["held"] if a not in wanted["held"]]
    ip_batch = (["address add %s/32 dev lo label %s" % (a, lo_label(owner)) for a in adds]
                + ["address del %s/32 dev lo" % a for a in drops])
    before = {"chains": dict((c, list(r)) for c, r in sorted(have_chains.items())), "jumps": dict(have["jumps"]),
              "lo": sorted(have["held"], key=ipaddress.ip_address)}
    after = {"chains": dict((c, list(r)) for c, r in sorted(want_chains.items())), "jumps": want_jumps,
             "lo": sorted([a for a in wanted["held"] if a not in have["foreign_lo"]], key=ipaddress.ip_address)}
    return {"changed": bool(restore or ip_batch), "restore": "\n".join(restore) + "\n" if restore else "",
            "ip_batch": "\n".join(ip_batch) + "\n" if ip_batch else "", "before": before, "after": after}
