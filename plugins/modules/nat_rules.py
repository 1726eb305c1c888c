#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nat_rules
short_description: Keep one owner's NAT rules in a machine's iptables nat table exactly as given
version_added: 0.1.0
description:
  - The owner's rules live in two chains of its own in table C(nat), C(<owner>-pre) (jumped to from the first rule of
    C(PREROUTING)) and C(<owner>-post) (from C(POSTROUTING)). Each run rewrites those chains as a whole when they
    differ from O(rules), so a rule dropped from O(rules) is removed; empty O(rules) removes both chains and their
    jumps. Rules of anyone else in the same table, built-in chains included, are never touched.
  - The addresses the machine translates onto (a static rule's C(outside_address), every address of a pool) are held
    on C(lo) as C(/32) with the label C(lo:<owner>), so the machine answers ARP for them; an address it no longer
    needs is removed only when it carries that label. An address someone else put on C(lo) counts as held and stays.
  - Runs as an action plugin - one shell command reads C(iptables-save -t nat) and C(ip -j address show dev lo), the
    comparison happens on the controller, and only a difference is written, with C(iptables-restore --noflush) (one
    atomic commit) and C(ip -batch), both fed on stdin. The machine needs C(iptables) and C(iproute2), no Python.
  - C(masquerade) - C(-s <inside_subnet> -o <outside> -j MASQUERADE). C(pool) - C(-s <inside_subnet> -o <outside> -j
    SNAT --to-source <first>-<last> --persistent); the kernel picks each inside host's pool address by a hash of its
    address, so two hosts may share one (their ports then keep them apart). C(static) - C(-d <outside_address> -i
    <outside> -j DNAT --to-destination <inside_address>) and C(-s <inside_address> -o <outside> -j SNAT --to-source
    <outside_address>), the static SNATs first in C(<owner>-post).
author:
  - qemulab developers (@qemulab)
options:
  rules:
    description:
      - The rules as the lab plan renders C(vm_nat) - C({type, inside, outside}) plus C(inside_subnet) (masquerade,
        pool), C(pool) as C(first-last) (pool), C(inside_address) and C(outside_address) (static).
    type: list
    elements: dict
    default: []
  owner:
    description:
      - Names the chains and the C(lo) label - lower-case letters, digits and C(-), at most 23 characters (12 when a
        rule holds addresses on C(lo)).
    type: str
    default: qemulab
  comment:
    description: Prefix of every rule's comment.
    type: str
    default: qemulab
  netns:
    description:
      - Network namespace of the machine whose nat table and C(lo) are kept (each command runs under C(ip netns exec));
        V("") is the machine's own. The lab host's way out (C(lab_uplink)) keeps its rules in the upstream
        namespace so.
    type: str
    default: ""
  started:
    description:
      - The machine was started by this run (a lab router just booted or restored from its template), so it holds
        none of anyone's NAT rules nor C(lo) addresses yet - the read is skipped and the rules are written at once
        (one SSH round trip less; seconds for a TCG guest). Never set it for a machine that was already running.
    type: bool
    default: false
attributes:
  check_mode:
    description: Reads the machine and reports the change without writing it.
    support: full
  diff_mode:
    description: Returns the owner's chains, their jumps and the held addresses before and after.
    support: full
"""

EXAMPLES = r"""
- name: Masquerade 10.79.1.0/24 out of eth1 and publish 10.79.1.10 as 10.79.2.10
  qemulab.network.nat_rules:
    rules:
      - {type: masquerade, inside: eth0, outside: eth1, inside_subnet: 10.79.1.0/24}
      - {type: static, inside: eth0, outside: eth1, inside_address: 10.79.1.10, outside_address: 10.79.2.10}

- name: Masquerade a lab segment out of eth0 of namespace wan, in chains of the owner qemulab-lab1
  qemulab.network.nat_rules:
    rules:
      - {type: masquerade, inside: qlu-1a2b3c4d-u, outside: eth0, inside_subnet: 10.79.2.0/24}
    owner: qemulab-lab1
    netns: wan

- name: Remove every rule and address of the owner qemulab, and nothing else
  qemulab.network.nat_rules:
    rules: []
"""

RETURN = r"""
chains:
  description: The owner's two chains, C([<owner>-pre, <owner>-post]).
  returned: success
  type: list
  elements: str
rules:
  description: The rule lines of each of the owner's chains after the run, in C(iptables-save) form (empty when none).
  returned: success
  type: dict
held:
  description: The addresses held on C(lo) for the rules after the run.
  returned: success
  type: list
  elements: str
foreign_lo:
  description: The C(/32) addresses on C(lo) without the owner's label, which the run leaves alone.
  returned: success
  type: list
  elements: str
"""
