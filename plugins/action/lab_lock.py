# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of qemulab.network.lab_lock: the lock must live as long as the ansible-playbook process."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

from ansible_collections.qemulab.network.plugins.module_utils import _run_paths
from ansible_collections.qemulab.network.plugins.module_utils._lock import take_run_lock
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_lab_name
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_schema import field

ARGUMENT_SPEC = dict(
    path=dict(type="path"),
    lab=dict(type="str"),
    # None: the run root of the controller's user (_run_paths): the lock is the controller's, like the run it guards
    run_root=dict(type="path"),
    timeout=dict(type="raw", default=600),
)


def read_timeout(value):
    """(seconds, None) read as the lab plan reads lab_lock_timeout, or (None, why)."""
    return field("lab", "lab_lock_timeout").read(value)


def lock_path(args, paths=None):
    """(path, None), or (None, why nothing is locked) for a lab name that breaks the name rule (it becomes a path)
    or, without run_root, a user whose runtime directory is missing (the lab plan names its fix)."""
    if args["path"]:
        return args["path"], None
    problem = check_lab_name(args["lab"])
    if problem:
        return None, "lab name %r: %s" % (args["lab"], problem)
    run_root = args["run_root"]
    if not run_root:
        paths = paths or _run_paths.current()
        problem = _run_paths.runtime_dir_problem(paths)
        if problem:
            return None, problem
        run_root = paths.run
    return os.path.join(run_root, args["lab"] + ".lock"), None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        validation = ArgumentSpecValidator(ARGUMENT_SPEC, mutually_exclusive=[("path", "lab")],
                                           required_one_of=[("path", "lab")]).validate(self._task.args)
        if validation.error_messages:
            return dict(result, failed=True, msg="lab_lock: " + "; ".join(validation.error_messages))
        args = validation.validated_parameters
        path, why = lock_path(args)
        timeout, bad_timeout = read_timeout(args["timeout"])
        if why is None and bad_timeout:
            why = "timeout: %s" % bad_timeout
        if why is not None:
            # Not a failure here: the lab plan lists the inventory's problems, and nothing changes before it passes.
            return dict(result, changed=False, locked=False, lab=args["lab"], path=path,
                        msg="nothing locked: %s" % why)
        # Task workers are forked from the ansible-playbook process; that parent is the run the lock belongs to.
        playbook_pid = os.getppid()
        holder = take_run_lock(path, playbook_pid, timeout)
        if holder is not None:
            return dict(result, failed=True, changed=False, locked=False, lab=args["lab"], path=path,
                        msg="lab lock %s is held by %s; another lab.yml run of this lab is still going. Wait for it "
                            "to finish (or raise lab_lock_timeout, now %d s) and run again" % (path, holder, timeout))
        return dict(result, changed=False, locked=True, lab=args["lab"], path=path, holder_of=playbook_pid)
