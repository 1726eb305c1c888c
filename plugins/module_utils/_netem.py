# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Link impairment (netem) of one NIC: the value rules, the `tc` argv that sets or removes it, the reading of the
qdisc an interface has (`tc -j qdisc show`), the comparison want vs have, and where it can live.

Values are normalised once (times in microseconds, percentages rounded to 0.001, rates in bits per second as the
kernel keeps them, in whole bytes) on both sides, so a re-run compares like with like and changes nothing.
Pure but for `host_has_netem`, which asks the lab host's kernel.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import subprocess
import time

from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import read_json, write_json_atomic
from ansible_collections.qemulab.network.plugins.module_utils._run_paths import CURRENT as RUN_PATHS

# The keys of a NIC's `netem` mapping, in the order tc is given them.
KEYS = ("delay", "jitter", "loss", "duplicate", "reorder", "corrupt", "rate")
TIME_KEYS = ("delay", "jitter")
PERCENT_KEYS = ("loss", "duplicate", "reorder", "corrupt")
TIME_UNITS_US = {"us": 1, "ms": 1000, "s": 1000000}
RATE_UNITS_BIT = {"bit": 1, "kbit": 1000, "mbit": 1000 ** 2, "gbit": 1000 ** 3}
# A delay beyond this is a typo, not a link; tc's 32-bit ticks would overflow at about 274 s anyway.
TIME_MAX_US = 10 * 1000000
RATE_MIN_BIT = 8 * 1000  # 1 kB/s; below it a single full frame takes seconds
RATE_MAX_BIT = 100 * 1000 ** 3
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
_TIME_RE = re.compile(r"^\s*%s\s*(us|ms|s)\s*\Z" % _NUMBER)
_PERCENT_RE = re.compile(r"^\s*%s\s*%%\s*\Z" % _NUMBER)
_RATE_RE = re.compile(r"^\s*%s\s*(bit|kbit|mbit|gbit)\s*\Z" % _NUMBER, re.IGNORECASE)
PERCENT_DIGITS = 3

NETEM_CACHE = RUN_PATHS.netem_cache
# One command, no inventory value: a fresh namespace's own loopback takes the qdisc and vanishes with it.
PROBE_ARGV = ["unshare", "--net", "--", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]


def _describe(value):
    return repr(value) if isinstance(value, str) else "%r (%s)" % (value, type(value).__name__)


def parse_time(value):
    """(microseconds, None) or (None, why) for '40ms', '500us', '1.5s'."""
    match = _TIME_RE.match(value) if isinstance(value, str) else None
    if not match:
        return None, ("%s is not a time; write a number with us, ms or s, like 40ms" % _describe(value))
    us = int(round(float(match.group(1)) * TIME_UNITS_US[match.group(2)]))
    if us > TIME_MAX_US:
        return None, "%s is more than 10s; give at most 10s" % _describe(value)
    return us, None


def parse_percent(value):
    """(percent rounded to 0.001, None) or (None, why) for '2%', '0.1%'."""
    match = _PERCENT_RE.match(value) if isinstance(value, str) else None
    if not match:
        return None, ("%s is not a percentage; write a number from 0 to 100 with %%, like 2%%" % _describe(value))
    percent = round(float(match.group(1)), PERCENT_DIGITS)
    if percent > 100:
        return None, "%s is more than 100%%; give 0%% to 100%%" % _describe(value)
    return percent, None


def parse_rate(value):
    """(bits per second, None) or (None, why) for '10mbit', '500kbit'. tc's own 'mbps' means megabytes: refused."""
    match = _RATE_RE.match(value) if isinstance(value, str) else None
    if not match:
        hint = (" (tc reads 'bps' as bytes per second; write bit units)"
                if isinstance(value, str) and "bps" in value.lower() else "")
        return None, ("%s is not a rate%s; write a number with bit, kbit, mbit or gbit, like 10mbit"
                      % (_describe(value), hint))
    bits = float(match.group(1)) * RATE_UNITS_BIT[match.group(2).lower()]
    # the kernel keeps bytes per second (tc truncates bits / 8)
    bits = int(bits // 8) * 8
    if not RATE_MIN_BIT <= bits <= RATE_MAX_BIT:
        return None, "%s is outside 8kbit to 100gbit; give a rate in that range" % _describe(value)
    return bits, None


_READERS = dict([(k, parse_time) for k in TIME_KEYS] + [(k, parse_percent) for k in PERCENT_KEYS]
                + [("rate", parse_rate)])


def normalize(netem):
    """(want, problems) for a NIC's `netem` mapping (None: no impairment).

    want holds only the keys that impair ({} when nothing does: omitted and zero values are off); each problem
    names the key, the value and the fix, for the caller to prefix with host and field."""
    if netem is None:
        return {}, []
    if not isinstance(netem, dict):
        return {}, ["%s is not a mapping; write it like {delay: 40ms, loss: 2%%}" % _describe(netem)]
    problems = []
    want = {}
    for key in sorted(netem, key=str):
        if key not in _READERS:
            problems.append("%s is not a netem key; use %s" % (_describe(key), ", ".join(KEYS)))
            continue
        value, why = _READERS[key](netem[key])
        if why:
            problems.append("%s: %s" % (key, why))
        elif value:
            want[key] = value
    for key in ("jitter", "reorder"):
        if key in want and "delay" not in want:
            problems.append("%s needs a delay (netem varies or reorders only delayed packets); add delay" % key)
    return (want if not problems else {}), problems


def format_time(us):
    return "%dms" % (us // 1000) if us % 1000 == 0 else "%dus" % us


def format_percent(percent):
    return ("%.3f" % percent).rstrip("0").rstrip(".") + "%"


def format_rate(bits):
    for unit in ("gbit", "mbit", "kbit"):
        if bits % RATE_UNITS_BIT[unit] == 0:
            return "%d%s" % (bits // RATE_UNITS_BIT[unit], unit)
    return "%dbit" % bits


def describe(want):
    """The impairment as a reader writes it ('delay 40ms jitter 5ms loss 2%'), or 'none'."""
    if not want:
        return "none"
    return " ".join("%s %s" % (key, text) for key, text in zip(KEYS, _texts(want)) if text)


def _texts(want):
    out = []
    for key in KEYS:
        value = want.get(key)
        if not value:
            out.append(None)
        elif key in TIME_KEYS:
            out.append(format_time(value))
        elif key in PERCENT_KEYS:
            out.append(format_percent(value))
        else:
            out.append(format_rate(value))
    return out


def _tc(netns):
    return ["tc"] + (["-n", netns] if netns else [])


def replace_argv(dev, want, netns=None):
    """`tc qdisc replace dev DEV root netem ...` as an argv, for a non-empty want."""
    argv = _tc(netns) + ["qdisc", "replace", "dev", dev, "root", "netem"]
    texts = dict(zip(KEYS, _texts(want)))
    if texts["delay"]:
        argv += ["delay", texts["delay"]] + ([texts["jitter"]] if texts["jitter"] else [])
    for key in PERCENT_KEYS:
        if texts[key]:
            argv += [key, texts[key]]
    if texts["rate"]:
        argv += ["rate", texts["rate"]]
    return argv


def delete_argv(dev, netns=None):
    """Removes the root qdisc: the interface falls back to its default one."""
    return _tc(netns) + ["qdisc", "del", "dev", dev, "root"]


def show_argv(dev, netns=None):
    return _tc(netns) + ["-j", "qdisc", "show", "dev", dev]


def parse_show(text, dev):
    """(kind of dev's root qdisc or None, have) from `tc -j qdisc show dev DEV`; have is normalised like
    `normalize`'s want ({} unless the root qdisc is netem). ValueError when the text is not that output."""
    entries = json.loads(text) if str(text).strip() else []
    if not isinstance(entries, list):
        raise ValueError("tc -j qdisc show printed %s, not a list" % type(entries).__name__)
    root = next((e for e in entries if isinstance(e, dict) and e.get("root") and e.get("dev", dev) == dev), None)
    if root is None:
        return None, {}
    if root.get("kind") != "netem":
        return root.get("kind"), {}
    options = root.get("options") or {}
    have = {}
    delay = options.get("delay") or {}
    # tc prints times in seconds and percentages as fractions (iproute2's JSON output)
    for key in TIME_KEYS:
        seconds = delay.get(key) or 0
        if seconds:
            have[key] = int(round(float(seconds) * 1000000))
    sections = {"loss": "loss-random", "duplicate": "duplicate", "reorder": "reorder", "corrupt": "corrupt"}
    for key, section in sections.items():
        fraction = (options.get(section) or {}).get(key) or 0
        if fraction:
            have[key] = round(float(fraction) * 100, PERCENT_DIGITS)
    rate = (options.get("rate") or {}).get("rate") or 0
    if rate:
        have["rate"] = int(rate) * 8  # tc prints bytes per second
    return "netem", have


def plan(dev, want, kind, have, netns=None):
    """(argv to run or None, before text, after text) for one interface: replace when the impairment differs,
    delete only a netem root qdisc that is no longer wanted (never another kind someone else put there)."""
    before = describe(have) if kind == "netem" else "none"
    after = describe(want)
    if want:
        if kind == "netem" and have == want:
            return None, before, after
        return replace_argv(dev, want, netns), before, after
    if kind == "netem":
        return delete_argv(dev, netns), before, after
    return None, before, after


# ------------------------------------------------------------------ where it lives

def probe_host(run=subprocess.run):
    """(works, reason): whether this kernel takes a netem qdisc, tried in a throwaway network namespace."""
    try:
        proc = run(PROBE_ARGV, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, "netem probe could not run (%s)" % exc
    if proc.returncode == 0:
        return True, "the lab host's kernel takes netem qdiscs (sch_netem)"
    err = (proc.stderr or "").strip().splitlines()
    return False, ("the lab host's kernel has no sch_netem (`tc qdisc add dev lo root netem delay 1ms` in a new "
                   "namespace: %s); impairment lives in the guests" % (err[-1] if err else "rc %d" % proc.returncode))


def host_has_netem(cache_path=NETEM_CACHE, write=True, run=subprocess.run):
    """(works, reason), cached per kernel release like the accelerator probe: a kernel does not grow modules
    between runs, and a new kernel is a new key. Check mode (write=False) probes but writes nothing. Two labs
    probing together write the same answer, so the cache needs no lock."""
    key = os.uname().release
    cached = read_json(cache_path).get(key)
    if cached:
        return bool(cached["works"]), "%s (cached probe %s)" % (cached["reason"], cached.get("probed_at", ""))
    works, reason = probe_host(run)
    if write:
        cache = read_json(cache_path)
        cache[key] = {"works": works, "reason": reason,
                      "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        write_json_atomic(cache_path, cache)
    return works, reason


def placement(host_netem):
    """'host' (the NIC's tap on the lab host) or 'guest' (its ethN inside the guest)."""
    return "host" if host_netem else "guest"
