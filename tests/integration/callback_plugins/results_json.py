# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only stdout callback: the run's task results and stats as one JSON document (ansible.posix.json's shape).

ansible-core no longer ships a JSON stdout callback and this machine cannot fetch ansible.posix, so the integration
tests carry this small one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: results_json
type: stdout
short_description: Task results and stats as one JSON document (tests only)
description:
  - Prints every task's per-host results and the run's stats as one JSON document when the run ends.
  - With E(QEMULAB_TEST_EVENTS) set to a file, also appends one JSON line per task start and per result (with
    the time) as they happen, so a test can follow a run it may kill before the end.
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "results_json"

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.plays = []
        self.events = os.environ.get("QEMULAB_TEST_EVENTS")

    def _event(self, **event):
        if self.events:
            event["time"] = time.time()
            with open(self.events, "a") as f:
                f.write(json.dumps(event, default=str) + "\n")

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name(), "started": time.time()}, "hosts": {}})
        self._event(event="task_start", task=task.get_name())

    v2_playbook_on_handler_task_start = lambda self, task: self.v2_playbook_on_task_start(task, False)  # noqa: E731

    def _record(self, result, **extra):
        res = dict(result._result)
        res.update(extra)
        self._event(event="result", task=result._task.get_name(), host=result._host.get_name(),
                    changed=bool(res.get("changed")), failed=bool(res.get("failed")))
        if self.plays and self.plays[-1]["tasks"]:
            self.plays[-1]["tasks"][-1]["hosts"][result._host.get_name()] = res

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True, ignored=ignore_errors)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True, failed=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_runner_item_on_ok(self, result):
        self._event(event="item", task=result._task.get_name(), host=result._host.get_name(),
                    item=str(result._result.get("item", {}).get("name", "")
                             if isinstance(result._result.get("item"), dict) else result._result.get("item")),
                    changed=bool(result._result.get("changed")))

    def v2_playbook_on_stats(self, stats):
        summary = {}
        for host in sorted(stats.processed.keys()):
            summary[host] = stats.summarize(host)
        self._display.display(json.dumps({"plays": self.plays, "stats": summary}, default=str, sort_keys=True))
