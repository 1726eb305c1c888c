# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a clone costs in CPU from its QEMU's start to its first SSH banner, and what that means for a lab (issue 20).

    .venv/bin/python bench/clone_cpu.py [--lab seed|chain] [--size 2] [--runs 3] [--json FILE]

Brings a lab up with lab.yml (the seed lab's seven VMs, or the chain h1 - rt1 - ... - h2 of --size VMs: two VMs on
two cores start with little contention) on an inventory of its own, and meanwhile, every 50 ms, asks each VM's SSH
forward (127.0.0.1) for a banner. At the first banner of a VM it reads its QEMU's CPU time from /proc (user + system
of every thread: the main thread's device emulation, the restore and user-mode networking, and the vCPU thread, where
TCG translates and runs the guest) and the wall time since that QEMU started; and the CPU time of ansible-playbook
with every process it waited for (the controller's share of the bring-up). Then the lab is removed.

The sum of the VMs' CPU to SSH over the machine's CPUs is a floor for "every guest from QEMU start to SSH" that no
scheduling can beat on this machine; the table puts the measured wall time beside it. The script's own probes cost
each guest one sshd fork per answer, as the lab's own wait does. Hold the heavy lock on a shared machine.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
from _harness import (BenchError, log, loadavg, port_block, processes_matching, qemu_vm_name,  # noqa: E402
                      sigterm_as_interrupt, ssh_banner)
from _labs import CollectionLab, chain_inventory, seed_variant_inventory, unique_lab_name  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path):
    with open(path) as f:
        text = f.read()
    # the command name (field 2) may hold spaces; everything after its closing parenthesis is space-separated
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid):
    """(main thread, other threads) CPU seconds of a process, user + system."""
    main = other = 0.0
    for tid in os.listdir("/proc/%d/task" % pid):
        fields = _stat_fields("/proc/%d/task/%s/stat" % (pid, tid))
        seconds = (int(fields[11]) + int(fields[12])) / TICK   # utime, stime
        if int(tid) == pid:
            main += seconds
        else:
            other += seconds
    return main, other


def started_at(pid):
    """The process's start on the CLOCK_MONOTONIC-like scale of /proc/uptime (seconds since boot)."""
    return int(_stat_fields("/proc/%d/stat" % pid)[19]) / TICK


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def watch(lab, done):
    """{vm: {main_cpu_s, vcpu_cpu_s, cpu_s, wall_s, start}} at each VM's first banner, until `done` is set."""
    got, pids = {}, {}
    while not done.is_set() and len(got) < len(lab.ports):
        for pid in processes_matching(lab.run_dir + "/"):
            if pid not in pids.values():
                try:
                    name = qemu_vm_name(pid)
                except OSError:
                    continue
                if name in lab.ports:
                    pids[name] = pid
        for name, pid in pids.items():
            if name in got or not ssh_banner(lab.ports[name], timeout=0.3):
                continue
            try:
                main, other = cpu_seconds(pid)
                start = started_at(pid)
            except OSError:
                continue
            got[name] = {"main_cpu_s": main, "vcpu_cpu_s": other, "cpu_s": main + other,
                         "wall_s": uptime() - start, "start": start, "ssh_at": uptime()}
        time.sleep(0.05)
    return got


def one_run(args, r, work, logs):
    name = unique_lab_name("c%s%d" % (args.lab[0], r))
    inv = os.path.join(work, "inv-" + name)
    if args.lab == "seed":
        ports = seed_variant_inventory(inv, name, port_block(7))
    else:
        ports = chain_inventory(inv, args.size, name, port_block(args.size))
    lab = CollectionLab(inv, name, ports, logs, "clone-cpu-r%d" % r)
    result, failure = {}, []
    done = threading.Event()

    def up():
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            result["bringup_s"], _timing = lab.up()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # ansible-playbook and everything it waited for (modules, ssh clients); not the QEMUs, which the
            # launcher leaves running on their own
            result["controller_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        except BenchError as exc:
            failure.append(exc)
        finally:
            done.set()

    log("run %d: %s lab %s (%d VMs), load %s" % (r + 1, args.lab, name, len(ports), "/".join(loadavg())))
    thread = threading.Thread(target=up)
    thread.start()
    try:
        per_vm = watch(lab, done)
    finally:
        thread.join()   # the bring-up ends (or fails) before its lab is removed
        try:
            qemu_cpu = sum(sum(cpu_seconds(pid)) for pid in processes_matching(lab.run_dir + "/"))
        except OSError:
            qemu_cpu = None
        lab.down()
    if failure:
        raise failure[0]
    if len(per_vm) != len(ports):
        raise BenchError("only %d of %d guests answered on SSH while the lab came up" % (len(per_vm), len(ports)))
    first_start = min(v["start"] for v in per_vm.values())
    last_ssh = max(v["ssh_at"] for v in per_vm.values())
    total_cpu = sum(v["cpu_s"] for v in per_vm.values())
    run = {"lab": name, "vms": per_vm, "bringup_s": result.get("bringup_s"),
           "controller_cpu_s": result.get("controller_cpu_s"), "qemu_cpu_bringup_s": qemu_cpu,
           "all_to_ssh_s": last_ssh - first_start, "cpu_sum_s": total_cpu,
           "floor_s": total_cpu / os.cpu_count()}
    log("  every guest from the first QEMU's start to the last banner %.2f s; CPU to SSH %.2f s in all (floor on %d "
        "CPUs %.2f s); per VM median %.2f s (main %.2f, vCPU %.2f)"
        % (run["all_to_ssh_s"], total_cpu, os.cpu_count(), run["floor_s"],
           statistics.median(v["cpu_s"] for v in per_vm.values()),
           statistics.median(v["main_cpu_s"] for v in per_vm.values()),
           statistics.median(v["vcpu_cpu_s"] for v in per_vm.values())))
    return run


def med(runs, key):
    values = [r[key] for r in runs]
    return "%.2f (%.2f–%.2f)" % (statistics.median(values), min(values), max(values))


def per_vm_med(runs, key):
    values = [v[key] for r in runs for v in r["vms"].values()]
    return "%.2f (%.2f–%.2f)" % (statistics.median(values), min(values), max(values))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lab", choices=("seed", "chain"), default="seed")
    p.add_argument("--size", type=int, default=2, help="VMs in the chain (--lab chain)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", help="write every run's figures here")
    args = p.parse_args()
    sigterm_as_interrupt()
    runs = []
    with tempfile.TemporaryDirectory(prefix="qemulab-clone-cpu-") as work:
        logs = os.path.join(work, "logs")
        os.makedirs(logs)
        for r in range(args.runs):
            runs.append(one_run(args, r, work, logs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"lab": args.lab, "size": args.size, "cpus": os.cpu_count(), "runs": runs}, f, indent=1)
    vms = len(runs[0]["vms"])
    print("| %s lab, %d VMs, %d runs, median (min–max) | s |" % (args.lab, vms, len(runs)))
    print("|---|---|")
    print("| every guest from the first QEMU's start to the last SSH banner | %s |" % med(runs, "all_to_ssh_s"))
    print("| CPU from QEMU start to SSH, all VMs together | %s |" % med(runs, "cpu_sum_s"))
    print("| that CPU over the machine's %d CPUs (a floor for the line above) | %s |" % (os.cpu_count(),
                                                                                        med(runs, "floor_s")))
    print("| per VM: CPU to SSH | %s |" % per_vm_med(runs, "cpu_s"))
    print("| per VM: of it QEMU's main thread (start, restore, devices, user-mode network) | %s |"
          % per_vm_med(runs, "main_cpu_s"))
    print("| per VM: of it the other threads (the vCPU: the guest's own start under TCG) | %s |"
          % per_vm_med(runs, "vcpu_cpu_s"))
    print("| per VM: wall time from its QEMU's start to its banner | %s |" % per_vm_med(runs, "wall_s"))
    print("| lab.yml bring-up to verified routing | %s |" % med(runs, "bringup_s"))
    print("| of it the controller's CPU (ansible-playbook, its modules and ssh clients; not QEMU) | %s |"
          % med(runs, "controller_cpu_s"))
    print("| of it the QEMUs' CPU, all VMs, from their start to the end of the bring-up | %s |"
          % med(runs, "qemu_cpu_bringup_s"))


if __name__ == "__main__":
    main()
