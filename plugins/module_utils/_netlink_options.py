# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The option naming a rootless lab's namespace by its holder, shared by every module that works in a namespace
(documented once, in the qemulab.network.netns.holder doc fragment). Pure: _qemu_config imports it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

HOLDER_ARGUMENT_SPEC = dict(userns_pid=dict(type="int"))
