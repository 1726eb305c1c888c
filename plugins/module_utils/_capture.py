# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tcpdump command of a capture (packet_capture writes it to a file, packet_stream to stdout): the filter is one
argument after `--`, never part of a shell line."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def capture_argv(netns, interface, expression):
    # -U: each packet leaves tcpdump as it is captured, so a stop loses nothing buffered and a stream is live
    argv = ["tcpdump", "-i", interface, "-U", "-n", "-w", "-", "--"] + ([expression] if expression else [])
    return (["ip", "netns", "exec", netns] if netns else []) + argv
