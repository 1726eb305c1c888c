#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compare two bench/run.py results: median of every metric both measured, the change, and whether it is better.

    .venv/bin/python bench/compare.py bench/results/OLD.json bench/results/NEW.json [--threshold 10]

A change smaller than --threshold percent (default 10) is shown as "≈" (noise on a shared 2-core TCG host is
easily 5-10 %); a larger one as "better" or "WORSE" according to the metric's direction. Exit status 0 unless a
file cannot be read.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import Metrics, fmt, target_for  # noqa: E402


def verdict(old, new, better, threshold):
    if old is None or new is None:
        return "", "only in one"
    if old == new:
        return "0 %", "≈"
    if old == 0:
        return "n/a", ("better" if (new > old) == (better == "higher") else "WORSE")
    change = (new - old) / abs(old) * 100.0
    if abs(change) < threshold:
        return "%+.0f %%" % change, "≈"
    improved = (change > 0) == (better == "higher")
    return "%+.0f %%" % change, "better" if improved else "WORSE"


def compare(old, new, threshold=10.0):
    a, b = Metrics(old["metrics"]), Metrics(new["metrics"])
    lines = ["Comparing %s (%s, commit %s, %d run(s)) → %s (%s, commit %s, %d run(s))"
             % (old["meta"]["timestamp"], old["meta"]["host"], old["meta"]["commit"], old["meta"]["runs"],
                new["meta"]["timestamp"], new["meta"]["host"], new["meta"]["commit"], new["meta"]["runs"]), "",
             "| metric | unit | old median | new median | change | verdict | target |",
             "|---|---|---|---|---|---|---|"]
    keys = [k for k in new["metrics"] if a.values(k) or b.values(k)]
    keys += [k for k in old["metrics"] if k not in new["metrics"] and a.values(k)]
    for key in keys:
        meta = new["metrics"].get(key) or old["metrics"][key]
        mo, mn = a.median(key), b.median(key)
        change, word = verdict(mo, mn, meta.get("better", "lower"), threshold)
        tgt = target_for(key)
        cells = (meta["label"], meta["unit"], fmt(mo, meta["unit"]), fmt(mn, meta["unit"]), change, word,
                 tgt[2] if tgt else "")
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % cells)
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threshold", type=float, default=10.0, help="percent below which a change is noise (10)")
    args = p.parse_args(argv)
    try:
        with open(args.old) as f:
            old = json.load(f)
        with open(args.new) as f:
            new = json.load(f)
    except (OSError, ValueError) as exc:
        print("cannot read results: %s" % exc, file=sys.stderr)
        return 2
    print(compare(old, new, args.threshold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
