#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The documentation of an action plugin (plugins/action/packet_stream.py): the stream runs on the controller.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: packet_stream
short_description: Stream a lab interface's packets as pcap to the stdout of ansible-playbook
version_added: 0.1.0
description:
  - Runs C(tcpdump) on one interface (a lab bridge or tap) inside the lab's network namespace and writes its pcap
    stream, packet by packet, to the stdout of the C(ansible-playbook) process, for
    C(ansible-playbook ... | wireshark -k -i -).
  - Needs the stdout callback C(qemulab.network.pcap) (C(ANSIBLE_STDOUT_CALLBACK=qemulab.network.pcap)), which keeps
    stdout for the packets and moves Ansible's own output to stderr; without it the task fails before capturing.
  - Runs only for a lab host reached with the C(local) connection, as root (an action plugin, so the capture runs
    where ansible-playbook runs). For a remote lab host, run ansible-playbook on it through SSH.
  - The stream ends after O(seconds), when tcpdump's reader closes the pipe (Wireshark closed), or when
    ansible-playbook is stopped (Ctrl-C, SIGTERM); tcpdump ends with it. Nothing is written to disk.
author:
  - qemulab developers (@qemulab)
extends_documentation_fragment:
  - qemulab.network.capture
options:
  seconds:
    description: How long to stream, 1 to 3600; 0 streams until stopped.
    type: int
    default: 0
attributes:
  action:
    description: The stream is written by the controller.
    support: full
  check_mode:
    description: Streams nothing and says so.
    support: full
  diff_mode:
    description: No diff is returned.
    support: none
"""

EXAMPLES = r"""
# ANSIBLE_STDOUT_CALLBACK=qemulab.network.pcap ansible-playbook this.yml | wireshark -k -i -
- name: Stream ICMP on the seed's br2 for 60 seconds
  qemulab.network.packet_stream:
    netns: qemulab-seed
    interface: br2
    seconds: 60
    filter: icmp
"""

RETURN = r"""
argv:
  description: The capture command that ran (or would run).
  returned: always
  type: list
  elements: str
stopped:
  description: What ended the stream (seconds passed, the reader closed stdout, a signal).
  returned: when it streamed
  type: str
rc:
  description: tcpdump's exit status (negative, a signal's number).
  returned: when it streamed
  type: int
"""
