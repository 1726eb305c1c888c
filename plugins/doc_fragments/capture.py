# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # Where a capture (packet_capture to a file, packet_stream to stdout) listens and what it keeps.
    DOCUMENTATION = r"""
options:
  netns:
    description: Network namespace of the interface; empty for the current one.
    type: str
    default: ""
  interface:
    description: The interface to capture on (a bridge sees every packet of its segment, a tap one NIC's).
    type: str
    required: true
  filter:
    description:
      - A tcpdump (pcap-filter) expression, like C(icmp) or C(host 10.20.20.1); empty keeps everything.
      - Handed to tcpdump as its own argument after C(--), never through a shell.
    type: str
    default: ""
"""
