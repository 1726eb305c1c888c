# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of qemulab.network.packet_stream: tcpdump's pcap stream goes straight to the stdout of the
`ansible-playbook` the user runs, which the qemulab.network.pcap stdout callback keeps for it (_pcap_stdout).

A module cannot stream (its output comes back when it ends) and a task worker's stdio is /dev/null, so the capture
runs here, in the worker, and only for a lab host reached with connection: local (the controller is the lab host)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import ctypes.util
import os
import signal
import subprocess
import tempfile
import time

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

from ansible_collections.qemulab.network.plugins.module_utils._capture import capture_argv
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_name
from ansible_collections.qemulab.network.plugins.plugin_utils import _pcap_stdout

ARGUMENT_SPEC = dict(
    netns=dict(type="str", default=""),
    interface=dict(type="str", required=True),
    seconds=dict(type="int", default=0),
    filter=dict(type="str", default=""),
)
SECONDS_MAX = 3600
POLL_SECONDS = 0.5
STOP_SECONDS = 5
CALLBACK = "qemulab.network.pcap"
PR_SET_PDEATHSIG = 1


def problems(args):
    """What is wrong with the arguments, each naming the field, the value and the fix."""
    found = [("netns", check_name(args["netns"], "netns") if args["netns"] else None),
             ("interface", check_name(args["interface"], "interface")),
             ("seconds", None if 0 <= args["seconds"] <= SECONDS_MAX else
              "%d is outside 0-%d; give seconds in that range (0 streams until stopped)" % (args["seconds"], SECONDS_MAX)),
             ("filter", "contains a line break; give one expression on one line"
              if "\n" in args["filter"] or "\r" in args["filter"] else None)]
    return ["%s: %s" % (field, why) for field, why in found if why]


def refusal(stream_fd, transport, euid):
    """Why this run cannot stream (before anything runs), or None."""
    if stream_fd is None:
        return ("stdout holds Ansible's own output, which would be mixed into the packets: select the callback that "
                "keeps it for them, ANSIBLE_STDOUT_CALLBACK=%s ansible-playbook ... -e follow=true | wireshark -k -i -"
                % CALLBACK)
    if transport != "local":
        return ("the lab host is reached with connection %s: a stream runs only where ansible-playbook runs (connection: "
                "local); run it on the lab host, e.g. ssh root@<lab host> 'ANSIBLE_STDOUT_CALLBACK=%s "
                "ansible-playbook ... -e follow=true' | wireshark -k -i -" % (transport, CALLBACK))
    if euid != 0:
        return "tcpdump in the lab's namespace needs root; run ansible-playbook as root on the lab host"
    return None


def outcome(returncode, stopped_by):
    """(failed, why) for a tcpdump that ended with `returncode`; `stopped_by` is what stopped it, or None when it
    ended by itself. A reader that went away (Wireshark closed) ends a stream as a stop does."""
    if stopped_by is not None:
        return False, stopped_by
    # tcpdump stops cleanly (rc 0) on SIGPIPE, so a closed reader reads as 0; a default SIGPIPE as -SIGPIPE
    if returncode in (0, -signal.SIGPIPE):
        return False, "the reader of stdout closed it"
    if returncode in (-signal.SIGINT, -signal.SIGTERM):
        return False, "tcpdump was stopped by a signal"
    return True, "tcpdump ended by itself (rc %s)" % returncode


def _die_with_worker():
    # a worker killed outright (SIGKILL) must not leave its tcpdump running
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stream(argv, out, seconds, parent):
    """Run argv with stdout `out` until it ends, `seconds` pass (0: no limit) or process `parent` (ansible-playbook)
    is gone; (returncode, stopped_by or None, tcpdump's stderr)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, preexec_fn=_die_with_worker)
        deadline = time.monotonic() + seconds if seconds else None
        stopped_by = None
        try:
            while stopped_by is None:
                try:
                    proc.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if os.getppid() != parent:
                        stopped_by = "ansible-playbook is gone"
                    elif deadline is not None and time.monotonic() >= deadline:
                        stopped_by = "%d seconds passed" % seconds
        finally:
            if proc.poll() is None:
                # SIGINT: tcpdump's own clean stop (it writes what it holds and exits)
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        err.seek(0)
        return proc.returncode, stopped_by, err.read().decode("utf-8", "replace").strip()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        validation = ArgumentSpecValidator(ARGUMENT_SPEC).validate(self._task.args)
        if validation.error_messages:
            return dict(result, failed=True, msg="packet_stream: " + "; ".join(validation.error_messages))
        args = validation.validated_parameters
        argv = capture_argv(args["netns"], args["interface"], args["filter"])
        why = problems(args) or [refusal(_pcap_stdout.fd(), self._connection.transport, os.geteuid())]
        if any(why):
            return dict(result, failed=True, changed=False, argv=argv, msg="packet_stream: %s" % "; ".join(why))
        if self._task.check_mode:
            return dict(result, changed=False, argv=argv, msg="check mode: nothing streamed")
        # the worker's parent is the ansible-playbook process whose stdout the packets go to
        returncode, stopped_by, err = stream(argv, _pcap_stdout.fd(), args["seconds"], os.getppid())
        failed, why = outcome(returncode, stopped_by)
        if failed:
            return dict(result, failed=True, changed=False, argv=argv, rc=returncode,
                        msg="packet_stream: %s on %s%s: %s" % (
                            why, args["interface"], " in namespace %s" % args["netns"] if args["netns"] else "",
                            err[-500:]))
        return dict(result, changed=False, argv=argv, rc=returncode, stopped=why)
