# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of qemulab.network.lab_lock: the lock must live as long as the ansible-playbook process."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

from ansible_collections.qemulab.network.plugins.module_utils._lock import take_run_lock

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    timeout=dict(type="int", default=600),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        validation = ArgumentSpecValidator(ARGUMENT_SPEC).validate(self._task.args)
        if validation.error_messages:
            return dict(result, failed=True, msg="lab_lock: " + "; ".join(validation.error_messages))
        args = validation.validated_parameters
        # Task workers are forked from the ansible-playbook process; that parent is the run the lock belongs to.
        playbook_pid = os.getppid()
        holder = take_run_lock(args["path"], playbook_pid, args["timeout"])
        if holder is not None:
            return dict(result, failed=True, changed=False, path=args["path"],
                        msg="lab lock %s is held by %s; another lab.yml run of this lab is still going. Wait for it "
                            "to finish (or raise lab_lock_timeout, now %d s) and run again"
                            % (args["path"], holder, args["timeout"]))
        return dict(result, changed=False, path=args["path"], holder_of=playbook_pid)
