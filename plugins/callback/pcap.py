# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: pcap
type: stdout
short_description: Stdout carries only the packets a capture streams; Ansible's own output goes to stderr
version_added: 0.1.0
description:
  - Selected for one run with C(ANSIBLE_STDOUT_CALLBACK=qemulab.network.pcap), for
    C(ansible-playbook qemulab.network.capture -e follow=true | wireshark -k -i -).
  - As it loads, it keeps the process's stdout for the packets of M(qemulab.network.packet_stream) and points the
    process's own stdout at stderr, so the play's usual output (this callback is the default callback otherwise)
    and anything else Ansible prints reach stderr, and a reader of stdout gets a pcap stream and nothing else.
  - Lines Ansible prints before any callback loads (C(-v)'s config file line) still reach stdout; set
    C(ANSIBLE_VERBOSE_TO_STDERR=true) with C(-v).
author:
  - qemulab developers (@qemulab)
extends_documentation_fragment:
  - default_callback
  - result_format_callback
"""

from ansible.plugins.callback.default import CallbackModule as DefaultCallbackModule

from ansible_collections.qemulab.network.plugins.plugin_utils import _pcap_stdout


class CallbackModule(DefaultCallbackModule):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "qemulab.network.pcap"

    def __init__(self):
        # before the first line of the play: nothing of Ansible's may reach the packets' stdout
        _pcap_stdout.take()
        super(CallbackModule, self).__init__()
