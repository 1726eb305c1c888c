# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How fast the default guest image boots under TCG: QEMU start to SSH banner for 1 VM and 7 VMs together, RSS.

    python bench/guest_boot.py [--runs N] [--cold-build] [--vms 7] [--firmware qboot|seabios] [--append-extra ARGS]
                               [--qemu-arg=-cpu --qemu-arg=max ...]

Builds (or reuses) the image through the guest_image role, boots VMs from per-run qcow2 overlays with direct
qemu-system-x86_64 command lines (the image is measured, not the launcher), and prints a Markdown table of medians.
--cold-build also times a build from scratch into a throwaway cache directory (minutes; debs come from the shared
debootstrap cache). Everything it starts is stopped and every file it makes is removed, on any exit.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import (REPO_ROOT, SSH_KEY, VENV_BIN, log, port_block, sigterm_as_interrupt, ssh_banner,  # noqa: E402
                      vm_rss_kib)

ROLE_PLAYBOOK = """
- name: Build or reuse the default guest image
  hosts: localhost
  gather_facts: false
  roles:
    - role: qemulab.network.guest_image
  tasks:
    - name: Record the image
      ansible.builtin.copy:
        dest: "{{ facts_file }}"
        content: "{{ {'kernel': guest_image_kernel, 'initrd': guest_image_initrd, 'disk': guest_image_disk,
                      'append': guest_image_append, 'result': __guest_image} | to_json }}"
        mode: "0600"
"""


def build_image(workdir, extra_vars=None):
    """Run the role; returns (facts dict, wall seconds of the whole playbook)."""
    playbook = os.path.join(workdir, "image.yml")
    facts_file = os.path.join(workdir, "image.json")
    with open(playbook, "w") as f:
        f.write(ROLE_PLAYBOOK)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO_ROOT, "ansible.cfg"))
    argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=" + os.path.join(VENV_BIN, "python"),
            "-e", json.dumps(dict(extra_vars or {}, facts_file=facts_file)), playbook]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=3600)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit("guest_image role failed:\n" + proc.stdout[-3000:] + proc.stderr[-2000:])
    with open(facts_file) as f:
        return json.load(f), seconds


def module_seconds(image, workdir):
    """Time of the guest_image module alone on a cache hit (what a second `make lab` pays)."""
    inputs = image["result"]["manifest"]["inputs"]
    files = os.path.join(REPO_ROOT, "roles", "guest_image", "files")
    # kernel_version left empty: the host's apt candidate lookup is part of what a cache hit pays.
    args = {"packages": inputs["packages"], "suite": inputs["suite"], "mirror": inputs["mirror"],
            "disk_size_mb": inputs["disk_size_mb"],
            "initramfs_modules": inputs["initramfs_modules"], "files_dir": os.path.join(files, "rootfs"),
            "initramfs_init": os.path.join(files, "initramfs-init")}
    args_file = os.path.join(workdir, "args.json")
    with open(args_file, "w") as f:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, f)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO_ROOT, ".build", "collections"))
    t0 = time.monotonic()
    proc = subprocess.run([os.path.join(VENV_BIN, "python"), "-m",
                           "ansible_collections.qemulab.network.plugins.modules.guest_image", args_file],
                          capture_output=True, text=True, env=env, timeout=120)
    seconds = time.monotonic() - t0
    result = json.loads(proc.stdout)
    if result.get("changed") or result.get("failed"):
        raise SystemExit(f"cache hit expected, got {result}")
    return seconds


# Extra QEMU arguments to try (--qemu-arg), the same for every VM.
QEMU_EXTRA = []


def start_vm(image, workdir, name, port, memory, firmware, append_extra):
    overlay = os.path.join(workdir, name + ".qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image["disk"], "-F", "raw", overlay],
                   check=True)
    mac = "52:54:00:fe:00:%02x" % (port % 256)
    append = f"{image['append']} {append_extra} qemulab.mgmt={mac} qemulab.hostname={name}".strip()
    argv = ["qemu-system-x86_64", "-accel", "tcg,tb-size=64", "-nodefaults", "-display", "none", "-m", str(memory),
            "-kernel", image["kernel"], "-initrd", image["initrd"], "-append", append,
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-netdev", f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", f"virtio-net-pci,netdev=mgmt,mac={mac}",
            "-serial", "file:" + os.path.join(workdir, name + ".console")]
    if firmware == "qboot":
        argv += ["-bios", "/usr/share/qemu/qboot.rom"]
    argv += QEMU_EXTRA
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def boot_together(image, workdir, count, memory, firmware, append_extra, timeout=300):
    """Start `count` VMs at once; seconds until the last banner, and each VM's RSS at that moment (MiB)."""
    base = port_block(count)
    procs = []
    try:
        t0 = time.monotonic()
        for i in range(count):
            procs.append(start_vm(image, workdir, f"b{os.getpid()}v{i}", base + i, memory, firmware, append_extra))
        waiting = set(range(count))
        while waiting and time.monotonic() - t0 < timeout:
            for i in sorted(waiting):
                if procs[i].poll() is not None:
                    raise SystemExit(f"VM {i} exited with {procs[i].returncode}; see {workdir}")
                if ssh_banner(base + i):
                    waiting.discard(i)
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        if waiting:
            raise SystemExit(f"no SSH banner from VMs {sorted(waiting)} in {timeout} s")
        # One SSH round trip proves the key works, not only sshd's banner.
        ssh = ["ssh", "-i", SSH_KEY, "-p", str(base), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1", "true"]
        subprocess.run(ssh, check=True, timeout=60)
        rss = [vm_rss_kib(p.pid) / 1024 for p in procs]
        return seconds, rss
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for name in os.listdir(workdir):
            if name.endswith((".qcow2", ".console")):
                os.unlink(os.path.join(workdir, name))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vms", type=int, default=7)
    parser.add_argument("--memory", type=int, default=1024, help="MiB per VM")
    parser.add_argument("--firmware", choices=["seabios", "qboot"], default="seabios")
    parser.add_argument("--append-extra", default="", help="extra kernel arguments to try")
    parser.add_argument("--qemu-arg", action="append", default=[], help="extra QEMU argument to try (repeatable), "
                        "e.g. --qemu-arg=-cpu --qemu-arg=max")
    parser.add_argument("--cold-build", action="store_true", help="also time a build from scratch (minutes)")
    args = parser.parse_args()
    QEMU_EXTRA.extend(args.qemu_arg)
    sigterm_as_interrupt()
    workdir = tempfile.mkdtemp(prefix="qemulab-guest-boot-")
    rows = []
    try:
        if args.cold_build:
            cache = os.path.join(workdir, "cache")
            cold, cold_s = build_image(workdir, {"guest_image_cache_dir": cache})
            manifest = cold["result"]["manifest"]
            rows.append(("image build, cold (debs cached)", f"{cold_s:.0f} s",
                         ", ".join(f"{k} {v}" for k, v in sorted(manifest["timings"].items()))))
            shutil.rmtree(cache)
        image, playbook_s = build_image(workdir)
        manifest = image["result"]["manifest"]
        sizes = manifest["sizes"]
        used = subprocess.run(["du", "-k", image["disk"]], capture_output=True, text=True).stdout.split()[0]
        rows.append(("image size", f"{int(used) / 1024:.0f} MiB used of {sizes['disk.ext4'] >> 20} MiB raw",
                     f"kernel {sizes['vmlinuz'] >> 20} MiB"
                     + (f" (booted uncompressed: vmlinux {sizes['vmlinux'] >> 20} MiB)" if "vmlinux" in sizes else "")
                     + f", initrd {sizes['initrd.img'] / 2**20:.1f} MiB"))
        hits = [module_seconds(image, workdir) for _ in range(args.runs)]
        rows.append(("cache hit, guest_image module", f"{statistics.median(hits):.2f} s",
                     f"role playbook {playbook_s:.1f} s"))
        one, together, rss = [], [], []
        for run in range(args.runs):
            log(f"run {run + 1}/{args.runs}: 1 VM")
            seconds, _ = boot_together(image, workdir, 1, args.memory, args.firmware, args.append_extra)
            one.append(seconds)
            log(f"run {run + 1}/{args.runs}: {args.vms} VMs")
            seconds, vm_rss = boot_together(image, workdir, args.vms, args.memory, args.firmware, args.append_extra)
            together.append(seconds)
            rss.extend(vm_rss)
        note = f"TCG tb-size=64, {args.memory} MiB, firmware {args.firmware}, runs {args.runs}"
        rows.append(("QEMU start to SSH banner, 1 VM", f"{statistics.median(one):.1f} s",
                     f"{note}; all {', '.join(f'{s:.1f}' for s in one)}"))
        rows.append((f"QEMU start to SSH banner, {args.vms} VMs together", f"{statistics.median(together):.1f} s",
                     f"all {', '.join(f'{s:.1f}' for s in together)}"))
        rows.append(("RSS per VM after boot", f"{statistics.median(rss):.0f} MiB", f"max {max(rss):.0f} MiB"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("| measure | median | notes |\n|---|---|---|")
    for row in rows:
        print("| %s | %s | %s |" % row)


if __name__ == "__main__":
    main()
