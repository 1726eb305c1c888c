#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmarks a person can rerun: lab lifecycle (collection vs the seed's scripts), data plane per NIC model, and
bring-up time and memory per lab size. Every lab lives in a namespace the benchmark creates and is removed again,
also on Ctrl-C. See bench/README.md.

    .venv/bin/python bench/run.py [--runs N] [--boot clone|boot] [--only lifecycle|dataplane|scale|rootless] [--sizes 2,7,16]
                                  [--lock FILE] [--out DIR]
"""

import argparse
import contextlib
import datetime
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (BENCH_DIR, REPO_ROOT, VENV_BIN, BenchError, Cleanups, host_memory_mib, loadavg,  # noqa: E402
                      log, port_block, sigterm_as_interrupt)
from _labs import (RUN_TAG, CollectionLab, SeedScriptLab, chain_inventory, guest_image_facts,  # noqa: E402
                   seed_variant_inventory, unique_lab_name, MODEL_SHORT)
from _rootless import rootless_seed  # noqa: E402
from _report import NIC_MODELS, TARGETS, Metrics, chart, fmt, markdown_table, target_met  # noqa: E402

SECTIONS = ("lifecycle", "dataplane", "scale", "rootless")
H2 = "10.20.60.2"
RT1 = "10.20.10.1"


class Context:
    def __init__(self, args, work, logs):
        self.args = args
        self.work = work
        self.logs = logs
        self.metrics = Metrics()
        self.details = {"lifecycle_stages": [], "seed_script_steps": [], "dataplane": [], "scale": [],
                        "rerun_changed_tasks": []}
        self.errors = []
        self.cleanups = Cleanups()
        self.labs = []
        self.image = None
        self.lock = HeavyLock(args.lock, args.lock_hold)
        self.vhost_available = os.path.exists("/dev/vhost-net")
        self.variants = [("virtio-net-pci", "virtio-net-pci", None), ("e1000", "e1000", None),
                         ("rtl8139", "rtl8139", None)]
        if self.vhost_available:
            self.variants = [("virtio-net-pci", "virtio-net-pci", "off"),
                             ("virtio-net-pci-vhost", "virtio-net-pci", "on")] + self.variants[1:]

    def error(self, where, exc):
        msg = "%s: %s" % (where, exc)
        log("FAILED " + msg)
        self.errors.append(msg)


def declare_metrics(ctx):
    m = ctx.metrics
    m.declare("lifecycle.collection.bringup_s", "seed lab: collection bring-up to h1 pings h2", "s")
    m.declare("lifecycle.seed_script.bringup_s", "seed lab: seed scripts bring-up to h1 pings h2", "s")
    m.declare("lifecycle.ratio.bringup", "bring-up ratio collection / seed scripts", "×")
    m.declare("lifecycle.collection.guests_to_ssh_s",
              "seed lab: seven guests from QEMU start to SSH (vm_launch's launch and SSH wait)", "s")
    m.declare("lifecycle.collection.rerun_s", "seed lab: collection idempotent re-run", "s")
    m.declare("lifecycle.collection.rerun_changed", "seed lab: changed tasks in the re-run", "count")
    m.declare("lifecycle.collection.cleanup_s", "seed lab: collection cleanup", "s")
    m.declare("lifecycle.seed_script.cleanup_s", "seed lab: seed scripts cleanup (stop VMs, cleanup.sh)", "s")
    m.declare("lifecycle.ratio.cleanup", "cleanup ratio collection / seed scripts", "×")
    for variant, _, _ in ctx.variants:
        m.declare("dataplane.%s.3hop.throughput_gbps" % variant, "%s h1→h2 (3 routers) TCP" % variant, "Gbit/s",
                  "higher")
        m.declare("dataplane.%s.3hop.ping_avg_ms" % variant, "%s h1→h2 (3 routers) ping avg" % variant, "ms")
        m.declare("dataplane.%s.3hop.retransmits" % variant, "%s h1→h2 (3 routers) TCP retransmits" % variant,
                  "count")
        m.declare("dataplane.%s.1hop.throughput_gbps" % variant, "%s h1→rt1 (1 hop) TCP" % variant, "Gbit/s",
                  "higher")
        m.declare("dataplane.%s.1hop.ping_avg_ms" % variant, "%s h1→rt1 (1 hop) ping avg" % variant, "ms")
    m.declare("dataplane.ratio.virtio_over_e1000", "throughput ratio virtio-net / e1000, 3 routers", "×", "higher")
    m.declare("rootless.bringup_s", "seed lab as a user without root: bring-up to h1 pings h2 (VMs boot)", "s")
    m.declare("rootless.ratio.bringup", "bring-up ratio rootless / root collection (same run)", "×")
    m.declare("rootless.rerun_s", "seed lab as a user without root: idempotent re-run", "s")
    m.declare("rootless.rerun_changed", "seed lab as a user without root: changed tasks in the re-run", "count")
    m.declare("rootless.cleanup_s", "seed lab as a user without root: cleanup", "s")
    for n in ctx.args.sizes:
        for key, label, unit in scale_metrics(n):
            m.declare(key, label, unit)


def scale_metrics(n):
    """(key, label, unit) of every metric of the n-VM chain, in table order."""
    c = "%d-VM chain: " % n
    k = "scale.%d." % n
    return [(k + "bringup_s", c + "bring-up to verified routing (lab.yml with verify)", "s"),
            (k + "cleanup_s", c + "cleanup", "s"),
            (k + "clones", c + "VMs restored from a template (the rest booted)", "count"),
            (k + "rss_per_vm_mib", c + "QEMU RSS, mean per VM", "MiB"),
            (k + "pss_per_vm_mib", c + "QEMU PSS, mean per VM", "MiB"),
            (k + "uss_per_vm_mib", c + "QEMU USS (private), mean per VM", "MiB"),
            (k + "rss_max_vm_mib", c + "QEMU RSS, largest VM", "MiB"),
            (k + "rss_total_mib", c + "QEMU RSS, all VMs", "MiB"),
            (k + "pss_total_mib", c + "QEMU PSS, all VMs", "MiB"),
            (k + "host_used_delta_mib", c + "machine's used memory, up minus before", "MiB"),
            (k + "host_available_up_mib", c + "machine's available memory while up", "MiB")]


# ---------------------------------------------------------------------------------------------------------------
def teardown_quietly(lab):
    """Best effort removal of a lab after a failure: its own cleanup first, then by pid/namespace/directory."""
    try:
        lab.down()
    except BenchError as exc:
        log("cleanup of %s failed (%s); removing it by pid and namespace" % (lab.label, exc))
    if lab.leftovers():
        lab.force_clean()


class HeavyLock:
    """With --lock: an flock on that file held while labs exist (up, measured, removed), so a machine shared with
    other heavy work runs one at a time. It is kept from one lab to the next until it has been held --lock-hold
    seconds, then released before the next lab so others get a turn. The wait is not timed."""

    def __init__(self, path, hold):
        self.path, self.hold = path, hold
        self.file, self.since = None, None

    @contextlib.contextmanager
    def held(self):
        if self.path and self.file and time.monotonic() - self.since > self.hold:
            self.release()
        if self.path and not self.file:
            self.file = open(self.path, "a")
            log("waiting for the lock %s" % self.path)
            fcntl.flock(self.file, fcntl.LOCK_EX)
            self.since = time.monotonic()
            log("holding the lock %s" % self.path)
        yield

    def release(self):
        if self.file:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
            log("released the lock %s" % self.path)


def guarded(ctx, lab, where, body):
    """Runs body(lab) under ctx.lock; the lab is registered for cleanup on Ctrl-C and removed here if body fails."""
    with ctx.lock.held():
        _guarded(ctx, lab, where, body)


def _guarded(ctx, lab, where, body):
    ctx.labs.append(lab)
    token = ctx.cleanups.push("%s (%s)" % (where, getattr(lab, "lab_name", lab.netns)), lambda: teardown_quietly(lab))
    try:
        body(lab)
    except BenchError as exc:
        ctx.error(where, exc)
        teardown_quietly(lab)
    ctx.cleanups.pop(token)
    left = lab.leftovers()
    if left:
        ctx.error(where, "left behind after cleanup: %s" % ", ".join(left))
        lab.force_clean()


def check_h1_reaches(guest_h1, address):
    """Our own check besides the playbook's: one ping from h1's shell."""
    guest_h1.run("ping -c 1 -W 2 %s" % address, timeout=30)


def image_rebuilt(ctx, where, timing):
    """A bring-up is meant to start with the image cached; say so when the guest_image role built it anyway."""
    for play in timing.get("plays", []):
        for task in play["tasks"]:
            if (task.get("role") or "").endswith("guest_image") and task["changed"] and "image" in task["name"]:
                ctx.error(where, "the guest image was rebuilt during this playbook run (its inputs, e.g. the files "
                                 "of roles/guest_image, changed since the warm-up), so its time includes an image "
                                 "build (%.0f s) and whatever that restarted" % (task.get("seconds") or 0))
                return True
    return False


def stages_of(timing):
    """Seconds per stage of a lab.yml run: per role (vm_launch split into its tasks: launching vs waiting for SSH),
    per play for tasks outside roles, in run order."""
    stages = {}
    for play in timing.get("plays", []):
        for task in play["tasks"]:
            role = (task.get("role") or "").split(".")[-1]
            name = task["name"].split(" : ", 1)[-1]
            if name.startswith("Validating arguments against arg spec"):
                continue
            if role == "vm_launch":
                key = "vm_launch: " + name
            else:
                key = role or play["name"]
            stages[key] = round(stages.get(key, 0) + (task.get("seconds") or 0), 3)
    return [{"name": k, "seconds": v} for k, v in stages.items() if v >= 0.05]


def guests_to_ssh(timing):
    """vm_launch's two tasks from the first QEMU's start to every guest's SSH banner (issue 20's "guests from QEMU
    start to SSH"); None when a run has neither (nothing started)."""
    wanted = ("Launch the VMs", "Wait until every guest answers on SSH")
    found = [t.get("seconds") or 0 for p in timing.get("plays", []) for t in p["tasks"]
             if t["name"].split(" : ", 1)[-1] in wanted]
    return sum(found) if len(found) == len(wanted) else None


def lifecycle_collection(ctx, r, measure_dataplane_here):
    name = unique_lab_name("s%d" % r)
    inv = os.path.join(ctx.work, "inv-" + name)
    ports = seed_variant_inventory(inv, name, port_block(7), boot=ctx.args.boot)
    lab = CollectionLab(inv, name, ports, ctx.logs, "lifecycle-collection-r%d" % r)

    def body(lab):
        log("lifecycle run %d: collection bring-up of the seed lab (%s)" % (r + 1, name))
        t_up, timing = lab.up()
        check_h1_reaches(lab.guest("h1"), H2)
        image_rebuilt(ctx, "lifecycle run %d (collection)" % (r + 1), timing)
        ctx.metrics.add("lifecycle.collection.bringup_s", t_up)
        ctx.metrics.add("lifecycle.collection.guests_to_ssh_s", guests_to_ssh(timing))
        ctx.details["lifecycle_stages"].append({
            "run": r, "seconds": round(t_up, 2),
            "plays": [{"name": p["name"], "seconds": p.get("seconds")} for p in timing.get("plays", [])],
            "stages": stages_of(timing),
            "slowest_tasks": sorted(({"play": p["name"], "task": t["name"].split(" : ", 1)[-1],
                                      "seconds": t.get("seconds", 0)}
                                     for p in timing.get("plays", []) for t in p["tasks"]),
                                    key=lambda t: -(t["seconds"] or 0))[:8]})
        log("  bring-up %.1f s; idempotent re-run" % t_up)
        t_re, timing_re = lab.playbook("rerun")
        image_rebuilt(ctx, "lifecycle run %d (collection re-run)" % (r + 1), timing_re)
        ctx.metrics.add("lifecycle.collection.rerun_s", t_re)
        ctx.metrics.add("lifecycle.collection.rerun_changed", timing_re.get("changed", -1))
        ctx.details["rerun_changed_tasks"].append(
            {"run": r, "tasks": ["%s / %s (%d)" % (p["name"], t["name"], t["changed"])
                                 for p in timing_re.get("plays", []) for t in p["tasks"] if t["changed"]]})
        log("  re-run %.1f s, changed=%s" % (t_re, timing_re.get("changed")))
        if measure_dataplane_here:
            try:
                dataplane_measure(ctx, r, "virtio-net-pci", lab, shared_with="lifecycle")
            except BenchError as exc:
                ctx.error("data plane run %d (virtio-net-pci, on the lifecycle lab)" % (r + 1), exc)
        t_down, _ = lab.down()
        ctx.metrics.add("lifecycle.collection.cleanup_s", t_down)
        log("  cleanup %.1f s" % t_down)

    guarded(ctx, lab, "lifecycle run %d (collection)" % (r + 1), body)


def lifecycle_seed_script(ctx, r):
    lab = SeedScriptLab(os.path.join(ctx.work, "seedscript-r%d" % r), ctx.image, ctx.logs,
                        "lifecycle-seedscript-r%d" % r)

    def body(lab):
        log("lifecycle run %d: the seed's scripts (bench/seed/, namespace %s)" % (r + 1, lab.netns))
        t_up, steps = lab.up()
        check_h1_reaches(lab.guest("h1"), H2)
        ctx.metrics.add("lifecycle.seed_script.bringup_s", t_up)
        ctx.details["seed_script_steps"].append({"run": r, "seconds": round(t_up, 2),
                                                 "steps": {k: round(v, 2) for k, v in steps.items()}})
        log("  bring-up %.1f s" % t_up)
        t_down = lab.down()
        ctx.metrics.add("lifecycle.seed_script.cleanup_s", t_down)
        log("  cleanup %.1f s" % t_down)

    guarded(ctx, lab, "lifecycle run %d (seed scripts)" % (r + 1), body)


def lifecycle_run(ctx, r, measure_dataplane_here):
    # Alternate which goes first so a slow drift of the shared host's load does not favour one side.
    steps = [lambda: lifecycle_collection(ctx, r, measure_dataplane_here), lambda: lifecycle_seed_script(ctx, r)]
    for step in (steps if r % 2 == 0 else steps[::-1]):
        step()
    ctx.metrics.pad("lifecycle.collection.", r + 1)
    ctx.metrics.pad("lifecycle.seed_script.", r + 1)
    for what in ("bringup", "cleanup"):
        c = ctx.metrics.data["lifecycle.collection.%s_s" % what]["values"][-1]
        s = ctx.metrics.data["lifecycle.seed_script.%s_s" % what]["values"][-1]
        ctx.metrics.add("lifecycle.ratio.%s" % what, c / s if c is not None and s else None)


def rootless_run(ctx, r, seed):
    """The seed lab as a user without root (bench/_rootless.py), right after root's lifecycle run r."""
    def body():
        with ctx.lock.held():
            log("rootless run %d: the seed lab as user %s" % (r + 1, seed.name))
            t_up, _ = seed.playbook()
            seed.h1_reaches_h2()
            t_re, out = seed.playbook()
            t_down, _ = seed.playbook("--tags", "cleanup")
        ctx.metrics.add("rootless.bringup_s", t_up)
        ctx.metrics.add("rootless.rerun_s", t_re)
        ctx.metrics.add("rootless.rerun_changed", seed.changed(out))
        ctx.metrics.add("rootless.cleanup_s", t_down)
        log("  bring-up %.1f s, re-run %.1f s, cleanup %.1f s" % (t_up, t_re, t_down))
    try:
        body()
    except BenchError as exc:
        ctx.error("rootless run %d" % (r + 1), exc)
        try:
            seed.playbook("--tags", "cleanup")
        except BenchError as again:
            ctx.error("rootless cleanup after run %d" % (r + 1), again)
    ctx.metrics.pad("rootless.bringup_s", r + 1)
    root = ctx.metrics.data["lifecycle.collection.bringup_s"]["values"]
    mine = ctx.metrics.data["rootless.bringup_s"]["values"][-1]
    same_run = root[r] if len(root) > r else None
    ctx.metrics.add("rootless.ratio.bringup", mine / same_run if mine is not None and same_run else None)
    ctx.metrics.pad("rootless.", r + 1)


# ---------------------------------------------------------------------------------------------------------------
def iperf(ctx, src, dst, address, tag):
    """iperf3 TCP 10 s, server on dst started here, client on src, JSON output (kept in the logs directory)."""
    last = ""
    for attempt in range(4):
        dst.run("iperf3 -s -D -1 >/dev/null 2>&1; sleep 0.5", timeout=30, check=False)
        rc, out = src.run("iperf3 -c %s -t 10 -J" % address, timeout=90, check=False)
        with open(os.path.join(ctx.logs, "iperf3-%s-%d.json" % (tag, attempt)), "w") as f:
            f.write(out)
        try:
            data = json.loads(out[out.index("{"):])
        except ValueError:
            data = {"error": out.strip()[-300:]}
        if rc == 0 and "error" not in data:
            end = data["end"]
            return end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"].get("retransmits")
        last = data.get("error", "rc %d" % rc)
        time.sleep(1)
    raise BenchError("iperf3 %s -> %s (%s) failed: %s" % (src.name, dst.name, address, last))


def ping_avg(src, address):
    rc, out = src.run("ping -c 20 -i 0.2 -q %s" % address, timeout=60)
    match = re.search(r"= [\d.]+/([\d.]+)/[\d.]+/[\d.]+ ms", out)
    if not match:
        raise BenchError("no rtt summary in ping output from %s: %s" % (src.name, out.strip()[-300:]))
    return float(match.group(1))


def dataplane_measure(ctx, r, variant, lab, shared_with=None):
    h1, h2, rt1 = lab.guest("h1"), lab.guest("h2"), lab.guest("rt1")
    log("  data plane %s: iperf3 and ping h1→h2 (3 routers), h1→rt1 (1 hop)" % variant)
    entry = {"run": r, "variant": variant, "lab": lab.lab_name, "measured_on": shared_with or "own lab"}
    gbps, retrans = iperf(ctx, h1, h2, H2, "%s-r%d-3hop" % (variant, r))
    ms = ping_avg(h1, H2)
    gbps1, retrans1 = iperf(ctx, h1, rt1, RT1, "%s-r%d-1hop" % (variant, r))
    ms1 = ping_avg(h1, RT1)
    for key, value in (("3hop.throughput_gbps", gbps), ("3hop.ping_avg_ms", ms), ("3hop.retransmits", retrans),
                       ("1hop.throughput_gbps", gbps1), ("1hop.ping_avg_ms", ms1)):
        ctx.metrics.add("dataplane.%s.%s" % (variant, key), value)
    entry.update(gbps_3hop=gbps, ping_ms_3hop=ms, retransmits_3hop=retrans, gbps_1hop=gbps1, ping_ms_1hop=ms1,
                 retransmits_1hop=retrans1)
    ctx.details["dataplane"].append(entry)
    log("    %s: %.2f Gbit/s, %.2f ms (3 routers); %.2f Gbit/s, %.2f ms (1 hop)" % (variant, gbps, ms, gbps1, ms1))


def dataplane_variant(ctx, r, variant, model, vhost):
    name = unique_lab_name("%s%s%d" % (MODEL_SHORT[model], "v" if vhost == "on" else "", r))
    inv = os.path.join(ctx.work, "inv-" + name)
    ports = seed_variant_inventory(inv, name, port_block(7), model=model, vhost=vhost)
    lab = CollectionLab(inv, name, ports, ctx.logs, "dataplane-%s-r%d" % (variant, r))

    def body(lab):
        log("data plane run %d: seed lab with every NIC %s%s (%s)"
            % (r + 1, model, (" vhost=" + vhost) if vhost else "", name))
        t_up, _ = lab.up()
        log("  bring-up %.1f s" % t_up)
        dataplane_measure(ctx, r, variant, lab)
        lab.down()

    guarded(ctx, lab, "data plane run %d (%s)" % (r + 1, variant), body)


def dataplane_run(ctx, r, virtio_done):
    for variant, model, vhost in ctx.variants:
        if variant == "virtio-net-pci" and virtio_done:
            continue
        dataplane_variant(ctx, r, variant, model, vhost)
    for variant, _, _ in ctx.variants:
        ctx.metrics.pad("dataplane.%s." % variant, r + 1)
    v = ctx.metrics.data["dataplane.virtio-net-pci.3hop.throughput_gbps"]["values"][-1]
    e = ctx.metrics.data["dataplane.e1000.3hop.throughput_gbps"]["values"][-1]
    ctx.metrics.add("dataplane.ratio.virtio_over_e1000", v / e if v is not None and e else None)


# ---------------------------------------------------------------------------------------------------------------
def memory_mib(lab):
    """{vm: {rss, pss, uss (MiB), clone}} of the lab's QEMUs."""
    return {vm: {k: (round(v / 1024.0, 1) if k != "clone" else v) for k, v in m.items()}
            for vm, m in sorted(lab.memory_kib().items())}


def scale_size(ctx, r, n):
    """The n-VM chain h1 - rt1 - ... - h2 brought up to verified routing (lab.yml's verify stage: every host pings
    every other host through the routers; then h1 -> h2 and h2 -> h1 once more from here), its memory read, and
    removed. The machine's used memory is read before, while up and after cleanup."""
    name = unique_lab_name("n%dr%d" % (n, r))
    inv = os.path.join(ctx.work, "inv-" + name)
    # the seed's 1 GiB per VM, as the lab compiler counts it (vm_memory + 96 MiB per VM + 128 MiB), against what
    # the machine has: beyond it the chain runs with lab_overcommit (the table says so)
    overcommit = n * (1024 + 96) + 128 > host_memory_mib()["available"]
    ports = chain_inventory(inv, n, name, port_block(n), overcommit=overcommit)
    lab = CollectionLab(inv, name, ports, ctx.logs, "scale-%d-r%d" % (n, r))
    got = {}

    def body(lab):
        load, before = loadavg(), host_memory_mib()
        log("scale run %d: chain of %d VMs (%s), load %s, %d MiB used%s"
            % (r + 1, n, name, "/".join(load), before["used"], ", lab_overcommit: true" if overcommit else ""))
        try:
            t_up, timing = lab.up()
        except BenchError:
            # the memory of a lab whose bring-up failed still says whether n VMs fit: kept in the JSON only
            ctx.details["scale"].append({"run": r, "size": n, "lab": name, "loadavg_at_start": load,
                                         "bringup_failed": True, "memory_mib": memory_mib(lab),
                                         "host_memory_mib": {"before": before, "up": host_memory_mib()},
                                         "guests_without_ssh": lab.guests_without_ssh()})
            raise
        check_h1_reaches(lab.guest("h1"), "10.77.%d.2" % (n - 2))
        check_h1_reaches(lab.guest("h2"), "10.77.0.1")
        image_rebuilt(ctx, "scale run %d (%d VMs)" % (r + 1, n), timing)
        per_vm, up = memory_mib(lab), host_memory_mib()
        if len(per_vm) != n:
            raise BenchError("found %d QEMU processes of lab %s, expected %d" % (len(per_vm), name, n))
        got.update(bringup=t_up, mem=per_vm, before=before, up=up)
        log("  bring-up %.1f s, %d clones, RSS %.0f / PSS %.0f MiB in all, machine %d -> %d MiB used"
            % (t_up, sum(m["clone"] for m in per_vm.values()), sum(m["rss"] for m in per_vm.values()),
               sum(m["pss"] for m in per_vm.values()), before["used"], up["used"]))
        t_down, _ = lab.down()
        got.update(cleanup=t_down, after=host_memory_mib())
        log("  cleanup %.1f s, machine %d MiB used" % (t_down, got["after"]["used"]))
        ctx.details["scale"].append({"run": r, "size": n, "lab": name, "loadavg_at_start": load,
                                     "lab_overcommit": overcommit, "bringup_s": round(t_up, 2),
                                     "cleanup_s": round(t_down, 2),
                                     "memory_mib": per_vm, "host_memory_mib": {
                                         "before": before, "up": up, "after": got["after"]},
                                     "stages": stages_of(timing)})

    guarded(ctx, lab, "scale run %d (%d VMs)" % (r + 1, n), body)
    mem = got.get("mem")
    k = "scale.%d." % n

    def total(field):
        return sum(m[field] for m in mem.values()) if mem else None

    ctx.metrics.add(k + "bringup_s", got.get("bringup"))
    ctx.metrics.add(k + "cleanup_s", got.get("cleanup"))
    ctx.metrics.add(k + "clones", total("clone"))
    for field in ("rss", "pss", "uss"):
        ctx.metrics.add(k + field + "_per_vm_mib", total(field) / len(mem) if mem else None)
    ctx.metrics.add(k + "rss_max_vm_mib", max(m["rss"] for m in mem.values()) if mem else None)
    ctx.metrics.add(k + "rss_total_mib", total("rss"))
    ctx.metrics.add(k + "pss_total_mib", total("pss"))
    ctx.metrics.add(k + "host_used_delta_mib", got["up"]["used"] - got["before"]["used"] if mem else None)
    ctx.metrics.add(k + "host_available_up_mib", got["up"]["available"] if mem else None)


# ---------------------------------------------------------------------------------------------------------------
def metric_order(ctx):
    order = ["lifecycle.collection.bringup_s", "lifecycle.seed_script.bringup_s", "lifecycle.ratio.bringup",
             "lifecycle.collection.guests_to_ssh_s", "lifecycle.collection.rerun_s", "lifecycle.collection.rerun_changed", "lifecycle.collection.cleanup_s",
             "lifecycle.seed_script.cleanup_s", "lifecycle.ratio.cleanup"]
    for variant, _, _ in ctx.variants:
        order += ["dataplane.%s.%s" % (variant, k) for k in ("3hop.throughput_gbps", "3hop.ping_avg_ms",
                                                             "3hop.retransmits", "1hop.throughput_gbps",
                                                             "1hop.ping_avg_ms")]
    order.append("dataplane.ratio.virtio_over_e1000")
    for n in ctx.args.sizes:
        order += [key for key, _, _ in scale_metrics(n)]
    order += ["rootless.bringup_s", "rootless.ratio.bringup", "rootless.rerun_s", "rootless.rerun_changed",
              "rootless.cleanup_s"]
    return [k for k in order if k in ctx.metrics.data and ctx.metrics.data[k]["values"]]


def stage_table(ctx):
    """Median seconds per play of the collection's seed bring-up, slowest first."""
    per_play = {}
    for run_ in ctx.details["lifecycle_stages"]:
        for p in run_["stages"]:
            per_play.setdefault(p["name"], []).append(p["seconds"] or 0)
    if not per_play:
        return ""
    import statistics
    rows = sorted(((statistics.median(v), k) for k, v in per_play.items()), reverse=True)
    lines = ["| stage (role, or play for tasks outside roles) | median s |", "|---|---|"]
    lines += ["| %s | %.1f |" % (k, v) for v, k in rows]
    slow = {}
    for run_ in ctx.details["lifecycle_stages"]:
        for t in run_["slowest_tasks"]:
            slow.setdefault(t["task"], []).append(t["seconds"])
    top = sorted(((statistics.median(v), k) for k, v in slow.items()), reverse=True)[:5]
    lines += ["", "Slowest tasks: " + "; ".join("%s %.1f s" % (k, v) for v, k in top)]
    return "\n".join(lines)


def seed_steps_table(ctx):
    per = {}
    for run_ in ctx.details["seed_script_steps"]:
        for k, v in run_["steps"].items():
            per.setdefault(k, []).append(v)
    if not per:
        return ""
    import statistics
    lines = ["| seed-script step | median s |", "|---|---|"]
    lines += ["| %s | %.1f |" % (k, statistics.median(v)) for k, v in per.items()]
    return "\n".join(lines)


def git_commit():
    try:
        out = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def qemu_version():
    try:
        return subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boot", choices=("clone", "boot"), default="clone",
                   help="how the collection's seed lab starts its VMs (vm_launch_boot; default clone, docs/clones.md)")
    p.add_argument("--runs", type=int, default=1, help="repetitions of each measurement (default 1: about 15 min)")
    p.add_argument("--only", choices=SECTIONS, action="append",
                   help="run only this section (repeatable); default: all four (rootless: the seed lab as a throwaway "
                   "user, beside the lifecycle section's root run)")
    p.add_argument("--sizes", default="2,7,16", help="lab sizes (VMs) for the scale section (default 2,7,16)")
    p.add_argument("--lock", metavar="FILE",
                   help="hold an flock on FILE while labs exist (a machine shared with other heavy work), e.g. "
                        "/tmp/qemulab-heavy.lock; released between labs once held --lock-hold seconds")
    p.add_argument("--lock-hold", type=float, default=300, metavar="SECONDS",
                   help="with --lock: start no further lab under the same hold after this long (default 300)")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"),
                   help="directory for <timestamp>.json/.md/.png and the logs (default bench/results)")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--sizes: %r is not a comma-separated list of integers" % args.sizes)
    if any(n < 2 for n in args.sizes):
        p.error("--sizes: a lab needs at least 2 VMs (h1 and h2)")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    args.only = args.only or list(SECTIONS)
    return args


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if os.geteuid() != 0:
        print("bench/run.py creates namespaces, bridges and taps: run it as root", file=sys.stderr)
        return 2
    if not os.path.exists(os.path.join(VENV_BIN, "ansible-playbook")):
        print("no .venv: run `make setup` first (or `make bench`)", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(args.out, exist_ok=True)
    logs = os.path.join(args.out, stamp + "-logs")
    os.makedirs(logs)
    work = tempfile.mkdtemp(prefix="qemulab-bench-")
    ctx = Context(args, work, logs)
    declare_metrics(ctx)
    sigterm_as_interrupt()
    interrupted = False
    log("results and logs: %s/%s.{json,md,png}, %s (labs named qlb%s-*)" % (args.out, stamp, logs, RUN_TAG))
    t0 = time.monotonic()
    stack = contextlib.ExitStack()
    try:
        log("guest image: build or reuse (not timed)")
        with ctx.lock.held():
            ctx.image = guest_image_facts(work, os.path.join(logs, "guest-image.log"))
        seed_as_user = None
        if "rootless" in args.only:
            with ctx.lock.held():
                seed_as_user = stack.enter_context(rootless_seed())
        for r in range(args.runs):
            virtio_done = False
            if "lifecycle" in args.only:
                share = "dataplane" in args.only and not ctx.vhost_available
                lifecycle_run(ctx, r, measure_dataplane_here=share)
                virtio_done = share and len(ctx.metrics.data["dataplane.virtio-net-pci.3hop.throughput_gbps"]
                                            ["values"]) > r
            if "dataplane" in args.only:
                dataplane_run(ctx, r, virtio_done)
            if seed_as_user is not None:
                rootless_run(ctx, r, seed_as_user)
            if "scale" in args.only:
                for n in args.sizes:
                    scale_size(ctx, r, n)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: removing every lab this run started")
    except BenchError as exc:
        ctx.error("setup", exc)
    finally:
        try:
            stack.close()  # the rootless user's lab, then the user
        except (BenchError, AssertionError) as exc:
            ctx.errors.append("rootless user: %s" % exc)
        for err in ctx.cleanups.run_all():
            ctx.errors.append("cleanup: " + err)
        ctx.lock.release()
        leftovers = []
        for lab in ctx.labs:
            leftovers += ["%s: %s" % (getattr(lab, "lab_name", lab.netns), x) for x in lab.leftovers()]
        shutil.rmtree(work, ignore_errors=True)
    if leftovers:
        log("LEFT BEHIND: " + "; ".join(leftovers))
    else:
        log("checked: no QEMU process, namespace, interface or run directory of these labs is left")

    results = {
        "meta": {"timestamp": stamp, "started_utc": started.isoformat(timespec="seconds"),
                 "duration_s": round(time.monotonic() - t0, 1), "host": platform.node(), "cpus": os.cpu_count(),
                 "loadavg_at_start": open("/proc/loadavg").read().split()[:3], "kernel": platform.release(),
                 "qemu": qemu_version(), "commit": git_commit(), "runs": args.runs, "only": args.only,
                 "sizes": args.sizes, "command": " ".join([".venv/bin/python", "bench/run.py"] + sys.argv[1:]),
                 "vhost": "available" if ctx.vhost_available else "not available on this host (no /dev/vhost-net)",
                 "image": ctx.image, "interrupted": interrupted},
        "metrics": ctx.metrics.data,
        "targets": [{"metric": k, "target": t, "met": target_met(ctx.metrics, k),
                     "met_worst_run": target_met(ctx.metrics, k, "worst")} for k, _, _, t in TARGETS],
        "dataplane_variants": [v for v, _, _ in ctx.variants],
        "scale_sizes": args.sizes,
        "details": ctx.details,
        "errors": ctx.errors,
        "leftovers": leftovers,
    }
    json_path = os.path.join(args.out, stamp + ".json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    png_path = os.path.join(args.out, stamp + ".png")
    chart(results, png_path)

    lines = ["# qemulab benchmark %s" % stamp, "",
             "`%s` — %s, %d CPUs, load %s at start, %s, commit %s, %d run(s), %.0f s in all."
             % (results["meta"]["command"], results["meta"]["host"], results["meta"]["cpus"],
                "/".join(results["meta"]["loadavg_at_start"]), results["meta"]["qemu"], results["meta"]["commit"],
                args.runs, results["meta"]["duration_s"]), "",
             markdown_table(ctx.metrics, metric_order(ctx)), ""]
    if "dataplane" in args.only:
        lines += ["vhost: " + results["meta"]["vhost"], ""]
    st = stage_table(ctx)
    if st:
        lines += ["Where the collection's seed bring-up spends its time:", "", st, ""]
    ss = seed_steps_table(ctx)
    if ss:
        lines += [ss, ""]
    changed = [t for run_ in ctx.details["rerun_changed_tasks"] for t in run_["tasks"]]
    if changed:
        lines += ["Tasks that changed in the idempotent re-run: " + "; ".join(changed), ""]
    if interrupted:
        lines += ["INTERRUPTED: the run was stopped before it finished; the table holds what was measured.", ""]
    if ctx.errors:
        lines += ["Errors:", ""] + ["- " + e for e in ctx.errors] + [""]
    if leftovers:
        lines += ["LEFT BEHIND: " + "; ".join(leftovers), ""]
    lines += ["![chart](%s)" % os.path.basename(png_path), "",
              "JSON: %s — compare two runs with `.venv/bin/python bench/compare.py OLD.json NEW.json`" % json_path]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, stamp + ".md"), "w") as f:
        f.write(text)
    print(text)
    if interrupted:
        return 130
    return 1 if (leftovers or ctx.errors) else 0


if __name__ == "__main__":
    sys.exit(main())
