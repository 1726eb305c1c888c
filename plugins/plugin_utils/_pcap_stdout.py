# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stdout of `ansible-playbook`, kept for packets (`-e follow=true` of qemulab.network.capture).

The stdout callback qemulab.network.pcap calls take() in the ansible-playbook process as it loads: the real stdout
is kept on a new descriptor and descriptor 1 becomes a copy of stderr, so everything Ansible prints from then on
(the play's progress, warnings, -v lines) reaches stderr and the kept descriptor carries only what is written to it.
Task workers are forked from that process, so the action qemulab.network.packet_stream finds the kept descriptor
here (fd()) although its own stdio is /dev/null. Controller-only: modules never import this.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import sys

_KEPT = {"fd": None}


def take(stdout=1, stderr=2):
    """Keep `stdout` for packets and send what the process itself writes there to `stderr`; the kept descriptor.
    Taking it twice keeps the first (a second callback instance must not lose the real stdout)."""
    if _KEPT["fd"] is None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        _KEPT["fd"] = os.dup(stdout)
        os.dup2(stderr, stdout)
    return _KEPT["fd"]


def fd():
    """The kept stdout, or None when the qemulab.network.pcap callback is not this run's stdout callback."""
    return _KEPT["fd"]
