#!/usr/bin/env python3
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vhost-user (dpdk-testpmd) against tap + kernel bridge for the same two guests, in one run: vhost_user_repro.py
--iperf N on each switch, alternating which goes first, --runs times each; prints per switch the median (min-max) of
the iperf3 receiver throughput and of each host process's CPU (percent of one core) during it, and one JSON line.

    flock /tmp/qemulab-heavy.lock python3 bench/dpdk/compare.py --runs 3 --iperf 10
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

REPRO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vhost_user_repro.py")
SWITCHES = {"bridge": ["--switch", "bridge"], "testpmd": ["--switch", "testpmd", "--features", "vectors=0"]}


def one(switch, seconds):
    out = subprocess.run([sys.executable, REPRO, "--iperf", str(seconds)] + SWITCHES[switch],
                         capture_output=True, text=True, timeout=900).stdout
    iperf = json.loads(out[out.index("{"):]).get("iperf") or {}
    if iperf.get("rc") != 0 or not iperf.get("mbit_s"):
        raise SystemExit("%s: no iperf3 result: %s" % (switch, out[-1500:]))
    return {"mbit_s": iperf["mbit_s"][-1], "cpu": iperf["cpu_percent_of_one_core"]}


def spread(values):
    return "%.1f (%.1f-%.1f)" % (statistics.median(values), min(values), max(values))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--iperf", type=int, default=10, help="seconds of iperf3 per run")
    a = p.parse_args()
    got = {name: [] for name in SWITCHES}
    for r in range(a.runs):
        order = list(SWITCHES) if r % 2 == 0 else list(reversed(list(SWITCHES)))
        for switch in order:
            got[switch].append(one(switch, a.iperf))
            print("run %d %s: %s" % (r + 1, switch, got[switch][-1]), flush=True)
    summary = {}
    for switch, runs in got.items():
        procs = sorted(set(k for run in runs for k in run["cpu"]))
        summary[switch] = {"mbit_s": spread([run["mbit_s"] for run in runs]),
                           "cpu_percent": dict((k, spread([run["cpu"][k] for run in runs if k in run["cpu"]]))
                                               for k in procs)}
        print("%-8s receiver %s Mbit/s; CPU %% of one core: %s" % (
            switch, summary[switch]["mbit_s"],
            ", ".join("%s %s" % item for item in summary[switch]["cpu_percent"].items())))
    print(json.dumps({"runs": a.runs, "iperf_s": a.iperf, "summary": summary, "raw": got}))


if __name__ == "__main__":
    main()
