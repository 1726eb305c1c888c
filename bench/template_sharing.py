# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can clones share their template's unchanged guest RAM? Measured by hand on QEMU 7.2 (issue 20).

    .venv/bin/python bench/template_sharing.py [--clones 4] [--runs 1] [--memory 1024] [--modes anon,file]
                                               [--json FILE]

For each mode: boots one template guest (the collection's argv from module_utils normalise_config + build_argv,
default image, TCG, one vCPU, tb-size 64, one virtio-net-pci NIC on restricted user-mode networking), waits until
its serial root shell answers, saves it with QMP stop + migrate (over an fd, as _qemu_clone does), ends it, then
restores --clones clones from it one after the other (each its own qcow2 overlay over the template's disk) and
times each from QEMU's start to its serial shell answering. With all clones up and idle for a few seconds it reads
each QEMU's /proc/PID/smaps: RSS, PSS and USS of the whole process and of the guest RAM mapping alone ("idle");
then each clone runs a few programs and Python in its shell (WORK_CMD, roughly what a lab clone's configuration
does) and it reads them again ("after_work").

  anon  what the collection did before its templates shared their RAM (still its way for VMs with run_as,
        docs/clones.md): guest RAM is QEMU's anonymous memory; the saved state holds
        every page the template touched and each clone copies them into its own RAM. Nothing is shared.
  file  guest RAM is `memory-backend-file` on one file. The template maps it share=on, so its RAM *is* the file,
        and saves with the `x-ignore-shared` capability: the stream then holds device state only, no RAM pages.
        Each clone maps the same file share=off (MAP_PRIVATE) with x-ignore-shared on: its RAM starts as the
        template's pages in the page cache, shared by every clone until the guest writes a page (then the kernel
        copies that page for this clone alone). QEMU 7.2 has no `mapped-ram` (8.2+); this is what 7.2 can do, and
        what the collection's clones do now (_qemu_clone).

The RAM file lives in a temp directory on the disk's file system (/var/tmp), where a real template would live
beside its image. Everything it starts is stopped by pid and every file removed, on any exit. No lab, namespace or
tap: the clones use restricted user-mode networking. Hold the heavy lock around it on a shared machine.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
from _harness import host_memory_mib, loadavg, log, sigterm_as_interrupt, vm_memory_kib  # noqa: E402
from qemu_overhead import (UP_CMD, UP_RE, Console, _collection_function, _guest_image, _guest_image_root_args,  # noqa: E402
                           default_image, kernel_args, stop)
from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient  # noqa: E402

MAC = "52:54:00:0e:7e:02"
# What a lab clone does after its restore, roughly: runs a few programs (its init's ip commands, sshd, the shell of
# each SSH command) and Python (Ansible modules). The arithmetic keeps the echo of the command from matching.
WORK_CMD = ("ip -br addr > /dev/null; ip route > /dev/null; python3 -c 'import json, os, subprocess, shlex' ;"
            " ls -R /usr/lib/python3 > /dev/null 2>&1; echo QL_$((6*7))_WORKED\n")
WORK_RE = re.compile(rb"(?m)^QL_42_WORKED\r?\n")
RAM_ID = "ram"


def vm_argv(name, run_dir, disk, memory, image, mode, role, incoming_fd=None):
    """The collection's argv for one VM, plus in `file` mode the file-backed RAM (share=on for the template,
    share=off for a clone). A clone starts with `-incoming defer`: x-ignore-shared must be set on both ends (the
    stream's layout depends on it), and QEMU 7.2 takes it over QMP only."""
    paths, manifest = image
    config = _collection_function("normalise_config")({
        "name": name, "lab": "tsharing", "run_dir": run_dir,
        "kernel": _guest_image.boot_kernel(paths, manifest), "initrd": paths["initrd"],
        "append": "%s %s qemulab.hostname=%s qemulab.mgmt=%s" % (_guest_image_root_args(), kernel_args(), name, MAC),
        "disks": [{"file": disk, "format": "qcow2", "interface": "virtio"}],
        "memory": memory, "tb_size": 64,
        "nics": [{"backend": "user", "model": "virtio-net-pci", "mac": MAC, "restrict": True}]})
    os.makedirs(_collection_function("vm_paths")(run_dir)["console_dir"], exist_ok=True)
    argv = _collection_function("build_argv")(config, "tcg", daemon=True, incoming_fd=incoming_fd)
    if mode == "file":
        at = argv.index("-smp") + 2
        argv[at:at] = ["-object", "memory-backend-file,id=%s,size=%dM,mem-path=%s,share=%s"
                       % (RAM_ID, memory, os.path.join(os.path.dirname(run_dir), "template.ram"),
                          "on" if role == "template" else "off"),
                       "-machine", "memory-backend=" + RAM_ID]
        if incoming_fd is not None:
            argv[argv.index("fd:%d" % incoming_fd)] = "defer"
    return argv, _collection_function("vm_paths")(run_dir)


def start(argv, run_dir, pass_fds=()):
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=pass_fds,
                            stderr=open(os.path.join(run_dir, "stderr"), "wb"), start_new_session=True)


def ram_mapping_kib(pid, memory):
    """{rss, pss, uss} KiB of the guest RAM mapping alone: the mapping of exactly the guest's size."""
    found, current = None, False
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                current = found is None and hi - lo == memory * 1024 * 1024
                if current:
                    found = {"rss": 0, "pss": 0, "uss": 0}
            elif current and head[0] in ("Rss:", "Pss:"):
                found[head[0][:-1].lower()] += int(head[1])
            elif current and head[0] in ("Private_Clean:", "Private_Dirty:"):
                found["uss"] += int(head[1])
    return found or {"rss": 0, "pss": 0, "uss": 0}


def make_template(work, image, memory, mode, procs):
    run_dir = os.path.join(work, "template")
    os.makedirs(run_dir)
    disk = os.path.join(run_dir, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image[0]["disk"], "-F", "raw", disk],
                   check=True)
    argv, vpaths = vm_argv("template", run_dir, disk, memory, image, mode, "template")
    t0 = time.monotonic()
    proc = start(argv, run_dir)
    procs.append(proc)
    console = Console(vpaths["console_socket"], t0 + 10)
    try:
        if not console.wait_for(UP_RE, 120, resend=UP_CMD):
            raise RuntimeError("template: no shell on the serial console (%r)" % console.buf[-300:])
    finally:
        console.close()
    boot_s = time.monotonic() - t0
    time.sleep(2)
    state = os.path.join(work, "state")
    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    t1 = time.monotonic()
    try:
        with QMPClient(vpaths["qmp_socket"], timeout=60.0) as qmp:
            qmp.command("stop")
            if mode == "file":
                qmp.command("migrate-set-capabilities",
                            capabilities=[{"capability": "x-ignore-shared", "state": True}])
            qmp.command_with_fds("getfd", [fd], fdname="state")
            qmp.command("migrate", uri="fd:state")
            while True:
                status = qmp.command("query-migrate")
                if status.get("status") == "completed":
                    break
                if status.get("status") in ("failed", "cancelled"):
                    raise RuntimeError("template: migrate %s" % status)
                time.sleep(0.02)
    finally:
        os.close(fd)
    save_s = time.monotonic() - t1
    stop(proc)
    ram_file = os.path.join(work, "template.ram")
    ram_alloc = os.stat(ram_file).st_blocks * 512 if os.path.exists(ram_file) else 0
    return {"boot_s": round(boot_s, 2), "save_s": round(save_s, 2),
            "state_mib": round(os.path.getsize(state) / 2**20, 1),
            "ram_file_allocated_mib": round(ram_alloc / 2**20, 1)}, disk, state


def restore_clone(work, index, image, memory, mode, template_disk, state, procs):
    run_dir = os.path.join(work, "clone%d" % index)
    os.makedirs(run_dir)
    disk = os.path.join(run_dir, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", template_disk, "-F", "qcow2", disk], check=True)
    fd = os.open(state, os.O_RDONLY)
    try:
        argv, vpaths = vm_argv("clone%d" % index, run_dir, disk, memory, image, mode, "clone", incoming_fd=fd)
        t0 = time.monotonic()
        proc = start(argv, run_dir, pass_fds=(fd,))
        procs.append(proc)
    finally:
        os.close(fd)
    deadline = t0 + 60
    incoming = mode != "file"
    while True:
        try:
            with QMPClient(vpaths["qmp_socket"], timeout=10.0) as qmp:
                if not incoming:
                    qmp.command("migrate-set-capabilities",
                                capabilities=[{"capability": "x-ignore-shared", "state": True}])
                    qmp.command("migrate-incoming", uri="fd:%d" % fd)
                    incoming = True
                status = qmp.command("query-status").get("status")
                if status in ("paused", "prelaunch"):
                    qmp.command("cont")
                    break
                if status == "running":
                    break
        except Exception:  # noqa: BLE001 - the socket is not there yet
            if proc.poll() is not None:
                with open(os.path.join(run_dir, "stderr")) as f:
                    raise RuntimeError("clone %d: QEMU exited %s: %s" % (index, proc.returncode, f.read()))
        if time.monotonic() > deadline:
            raise RuntimeError("clone %d: not restored within 60 s" % index)
        time.sleep(0.02)
    running_s = time.monotonic() - t0
    console = Console(vpaths["console_socket"], t0 + 10)
    try:
        if not console.wait_for(UP_RE, 60, resend=UP_CMD, every=0.5):
            raise RuntimeError("clone %d: no shell on the serial console (%r)" % (index, console.buf[-300:]))
    finally:
        console.close()
    return proc, vpaths, {"running_s": round(running_s, 2), "shell_s": round(time.monotonic() - t0, 2)}


def snapshot(procs, entries, memory, phase):
    for proc, entry in zip(procs, entries):
        entry[phase] = {"process_mib": {k: round(v / 1024.0, 1) for k, v in vm_memory_kib(proc.pid).items()},
                        "guest_ram_mib": {k: round(v / 1024.0, 1)
                                          for k, v in ram_mapping_kib(proc.pid, memory).items()}}


def work(vpaths_list):
    """WORK_CMD in every clone's serial shell, one after the other; seconds each."""
    took = []
    for vpaths in vpaths_list:
        t0 = time.monotonic()
        console = Console(vpaths["console_socket"], t0 + 10)
        try:
            console.send(WORK_CMD)
            if not console.wait_for(WORK_RE, 120):
                raise RuntimeError("a clone did not finish the work command (%r)" % console.buf[-300:])
        finally:
            console.close()
        took.append(round(time.monotonic() - t0, 2))
    return took


def one_mode(image, memory, clones, mode):
    work_dir = tempfile.mkdtemp(prefix="qemulab-sharing-", dir="/var/tmp")
    procs = []
    try:
        before = host_memory_mib()
        template, disk, state = make_template(work_dir, image, memory, mode, procs)
        after_template = host_memory_mib()
        result = {"mode": mode, "loadavg": loadavg(), "template": template, "clones": []}
        live, consoles = [], []
        for i in range(clones):
            proc, vpaths, timing = restore_clone(work_dir, i, image, memory, mode, disk, state, procs)
            live.append(proc)
            consoles.append(vpaths)
            result["clones"].append(timing)
        time.sleep(5)
        up = host_memory_mib()
        snapshot(live, result["clones"], memory, "idle")
        result["work_s"] = work(consoles)
        time.sleep(2)
        snapshot(live, result["clones"], memory, "after_work")
        result["host_used_mib"] = {"before": before["used"], "after_template": after_template["used"],
                                   "clones_up": up["used"], "after_work": host_memory_mib()["used"]}
        return result
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(work_dir, ignore_errors=True)


def summary(results):
    lines = ["| mode | phase | template state file | restore to running, s | to shell, s | process RSS | PSS | USS | "
             "guest RAM RSS | PSS | USS | machine used − before the template, MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in sorted({r["mode"] for r in results}):
        runs = [r for r in results if r["mode"] == mode]
        cl = [c for r in runs for c in r["clones"]]

        def med(get, fmt="%.0f"):
            vals = [get(c) for c in cl]
            return ("%s (%s–%s)" % (fmt, fmt, fmt)) % (statistics.median(vals), min(vals), max(vals))
        for phase, host_key in (("idle", "clones_up"), ("after_work", "after_work")):
            lines.append("| %s | %s | %s MiB | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                mode, phase, "/".join("%.1f" % r["template"]["state_mib"] for r in runs),
                med(lambda c: c["running_s"], "%.2f"), med(lambda c: c["shell_s"], "%.2f"),
                med(lambda c: c[phase]["process_mib"]["rss"]), med(lambda c: c[phase]["process_mib"]["pss"]),
                med(lambda c: c[phase]["process_mib"]["uss"]), med(lambda c: c[phase]["guest_ram_mib"]["rss"]),
                med(lambda c: c[phase]["guest_ram_mib"]["pss"]), med(lambda c: c[phase]["guest_ram_mib"]["uss"]),
                "/".join("%d" % (r["host_used_mib"][host_key] - r["host_used_mib"]["before"]) for r in runs)))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clones", type=int, default=4)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--memory", type=int, default=1024, help="guest MiB (the seed lab's routers: 1024)")
    p.add_argument("--modes", default="anon,file")
    p.add_argument("--json")
    args = p.parse_args()
    sigterm_as_interrupt()
    image = default_image()
    if not image:
        raise SystemExit("no finished guest image in the cache (the guest_image role builds one)")
    results = []
    try:
        for run in range(args.runs):
            for mode in args.modes.split(","):
                r = one_mode(image, args.memory, args.clones, mode)
                results.append(r)
                log("%s run %d (load %s): template boot %.1f s, saved %.1f MiB in %.2f s; clones to shell %s s; "
                    "RSS/PSS/USS idle %s, after work (%s s) %s MiB"
                    % (mode, run + 1, "/".join(r["loadavg"]), r["template"]["boot_s"], r["template"]["state_mib"],
                       r["template"]["save_s"], [c["shell_s"] for c in r["clones"]],
                       ["%.0f/%.0f/%.0f" % tuple(c["idle"]["process_mib"][k] for k in ("rss", "pss", "uss"))
                        for c in r["clones"]], r["work_s"],
                       ["%.0f/%.0f/%.0f" % tuple(c["after_work"]["process_mib"][k] for k in ("rss", "pss", "uss"))
                        for c in r["clones"]]))
    except KeyboardInterrupt:
        log("interrupted; QEMU stopped, files removed")
        return 130
    print("\n%d clone(s) of a %d MiB guest per mode, %d run(s); MiB or s, median (min–max) over all clones\n"
          % (args.clones, args.memory, args.runs))
    print(summary(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
