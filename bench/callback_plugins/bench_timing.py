# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bench_timing: where an ansible-playbook run spent its time, for bench/run.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: bench_timing
type: aggregate
short_description: Writes per-play and per-task wall times and the run's stats to a JSON file
description:
  - Used by bench/run.py to split a lab bring-up into its stages. Does nothing unless
    C(QEMULAB_BENCH_TIMING) names the file to write.
requirements:
  - enable in configuration (ANSIBLE_CALLBACKS_ENABLED=bench_timing)
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._path = os.environ.get("QEMULAB_BENCH_TIMING")
        self._started = time.monotonic()
        self._plays = []
        self._task = None

    def _close_task(self):
        if self._task is not None:
            self._task["seconds"] = round(time.monotonic() - self._task.pop("_t0"), 3)
            self._task = None

    def _close_play(self):
        self._close_task()
        if self._plays and "seconds" not in self._plays[-1]:
            play = self._plays[-1]
            play["seconds"] = round(time.monotonic() - play.pop("_t0"), 3)

    def v2_playbook_on_play_start(self, play):
        self._close_play()
        self._plays.append({"name": play.get_name().strip(), "tasks": [], "_t0": time.monotonic()})

    def _start(self, task):
        self._close_task()
        if not self._plays:
            self._plays.append({"name": "", "tasks": [], "_t0": time.monotonic()})
        role = task._role.get_name() if getattr(task, "_role", None) else ""
        self._task = {"name": task.get_name().strip(), "role": role, "changed": 0, "_t0": time.monotonic()}
        self._plays[-1]["tasks"].append(self._task)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task)

    def v2_runner_on_ok(self, result):
        if self._task is not None and result._result.get("changed"):
            self._task["changed"] += 1

    def v2_playbook_on_stats(self, stats):
        self._close_play()
        if not self._path:
            return
        hosts = sorted(stats.processed.keys())
        summary = {h: stats.summarize(h) for h in hosts}
        data = {
            "seconds": round(time.monotonic() - self._started, 3),
            "plays": self._plays,
            "stats": summary,
            "changed": sum(s.get("changed", 0) for s in summary.values()),
            "failures": sum(s.get("failures", 0) + s.get("unreachable", 0) for s in summary.values()),
        }
        with open(self._path, "w") as f:
            json.dump(data, f, indent=1)
