#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the ring recorder (lab_capture_ring) costs on the seed lab: the same seed lab brought up with the recorder off
and on, in the same run of this script (alternating which goes first), and per lab:

  - bring-up wall time (lab.yml to the end of its verify stage),
  - the recorders' own CPU time (utime + stime of every tcpdump of the lab) over the bring-up and over a 10 s
    iperf3 h1 -> h2 (three routers, every segment of the path recorded),
  - that iperf3's throughput, which is where the kernel's share shows: the bridges are promiscuous while recorded,
    so every forwarded frame is also passed up to the packet socket, work done in softirq context that no tcpdump
    is charged for,
  - the ring files on disk after the iperf3 run.

    .venv/bin/python bench/ring_cost.py [--runs N] [--out FILE.json]

Medians (and min/max) over --runs; see bench/README.md. Every lab lives in a namespace of its own and is removed again.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import BenchError, log, port_block, sigterm_as_interrupt  # noqa: E402
from _labs import SEED_VMS, CollectionLab, seed_variant_inventory, unique_lab_name  # noqa: E402
from run import H2, iperf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".build", "collections"))
from ansible_collections.qemulab.network.plugins.module_utils import _ring  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def recorder_cpu_s(lab_name):
    """CPU seconds used so far by the lab's recorders (utime + stime from /proc/<pid>/stat)."""
    total = 0
    for recorder in _ring.find_recorders(_ring.ring_root("/var/lib/qemulab", lab_name)).values():
        try:
            with open("/proc/%d/stat" % recorder["pid"]) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def ring_bytes(lab_name):
    root = _ring.ring_root("/var/lib/qemulab", lab_name)
    return sum(os.path.getsize(os.path.join(root, n)) for n in os.listdir(root)) if os.path.isdir(root) else 0


def with_ring(inventory, on):
    path = os.path.join(inventory, "group_vars", "all.yml")
    with open(path, "a") as f:
        f.write("lab_capture_ring: %s\n" % ("true" if on else "false"))


def measure(work, logs, r, mode):
    """One seed lab with the recorder `mode` (off|on): its figures, the lab removed again."""
    name = unique_lab_name("r%d%s" % (r, mode[:2]))
    inventory = os.path.join(work, name)
    ports = seed_variant_inventory(inventory, name, port_block(len(SEED_VMS)))
    with_ring(inventory, mode == "on")
    lab = CollectionLab(inventory, name, ports, logs, name)
    try:
        log("run %d, recorder %s: bring-up of %s" % (r, mode, name))
        seconds, _timing = lab.up()
        recorders = len(_ring.find_recorders(_ring.ring_root("/var/lib/qemulab", name)))
        cpu_up = recorder_cpu_s(name)
        cpu0 = time.monotonic()
        gbps, retrans = iperf(argparse.Namespace(logs=logs), lab.guest("h1"), lab.guest("h2"), H2,
                              "%s-%s" % (name, mode))
        cpu_iperf = recorder_cpu_s(name) - cpu_up
        result = {"run": r, "mode": mode, "lab": name, "bringup_s": round(seconds, 1), "recorders": recorders,
                  "recorder_cpu_bringup_s": round(cpu_up, 2), "recorder_cpu_iperf_s": round(cpu_iperf, 2),
                  "iperf_wall_s": round(time.monotonic() - cpu0, 1), "throughput_mbps": round(gbps * 1000, 1),
                  "retransmits": retrans, "ring_bytes": ring_bytes(name)}
        log("  %s" % json.dumps(result))
        return result
    finally:
        # also on a failure or Ctrl-C: the lab's own cleanup, then by pid, namespace and directory
        try:
            lab.down()
        except BenchError as exc:
            log("cleanup of %s failed (%s); removing it by pid and namespace" % (name, exc))
        left = lab.leftovers() + ["recorder %d" % r["pid"] for r in _ring.find_recorders(
            _ring.ring_root("/var/lib/qemulab", name)).values()]
        if left:
            lab.force_clean()
            raise BenchError("lab %s left %s" % (name, ", ".join(left)))


def summary(results):
    keys = ("bringup_s", "recorder_cpu_bringup_s", "recorder_cpu_iperf_s", "throughput_mbps", "ring_bytes")
    table = ["| metric | recorder off: median (min-max) | recorder on: median (min-max) |", "|---|---|---|"]
    for key in keys:
        cells = []
        for mode in ("off", "on"):
            values = [x[key] for x in results if x["mode"] == mode and x.get(key) is not None]
            cells.append("%s (%s-%s)" % (statistics.median(values), min(values), max(values)) if values else "-")
        table.append("| %s | %s | %s |" % (key, cells[0], cells[1]))
    runs = len([x for x in results if x["mode"] == "on"])
    table.append("")
    table.append("%d run(s) per mode; load average at the start: %s" % (runs, open("/proc/loadavg").read().split()[0]))
    return "\n".join(table)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="seed labs per mode (default 3)")
    p.add_argument("--out", help="write every figure as JSON here")
    args = p.parse_args(argv)
    sigterm_as_interrupt()
    work = tempfile.mkdtemp(prefix="qemulab-ring-bench-")
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    results = []
    try:
        for r in range(args.runs):
            # alternate which mode goes first, so a drift in the machine's load does not favour one
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                results.append(measure(work, logs, r, mode))
    finally:
        text = summary(results) if results else "no results"
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"results": results, "summary": text, "logs": logs}, f, indent=1)
        log("logs in %s" % logs)


if __name__ == "__main__":
    main()
