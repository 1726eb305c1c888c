# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What serial links cost the default guest image: its size and one guest's boot to an SSH banner, for built images.

    python bench/serial_image.py [--runs N] KEY[:KERNEL_ARGS] ...

Each KEY is an image directory of the cache (/var/cache/qemulab/images/<key>); KERNEL_ARGS replaces the role's
default guest_image_kernel_args for it (the image before serial links booted with 8250.nr_uarts=1). Boots one 256 MiB
VM N times per image with guest_boot.py's direct QEMU command line (no lab, no fw_cfg) and prints a Markdown table
of medians. Everything it starts is stopped and every file it makes is removed.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import shutil

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import REPO_ROOT, log, sigterm_as_interrupt  # noqa: E402
from _harness import port_block  # noqa: E402
from guest_boot import QEMU_EXTRA, banner, start_vm  # noqa: E402

CACHE = "/var/cache/qemulab/images"
ROOT_ARGS = "root=/dev/vda rw init=/sbin/qemulab-init"


def role_kernel_args():
    with open(os.path.join(REPO_ROOT, "roles", "guest_image", "defaults", "main.yml")) as f:
        return yaml.safe_load(f)["guest_image_kernel_args"]


def boot_seconds(image, workdir, timeout=300):
    """QEMU start to the guest's SSH banner, one VM (the image carries no key: the banner is the mark)."""
    port = port_block(1)
    t0 = time.monotonic()
    proc = start_vm(image, workdir, "serialbench", port, 256, "seabios", "")
    try:
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise SystemExit("QEMU exited with %s" % proc.returncode)
            if banner(port):
                return time.monotonic() - t0
            time.sleep(0.05)
        raise SystemExit("no SSH banner in %d s" % timeout)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("images", nargs="+", help="KEY or KEY:KERNEL_ARGS")
    args = parser.parse_args()
    sigterm_as_interrupt()
    # as a lab VM has it (qemu_vm rng): without it the guest's first getrandom waits ~30 s for TCG timer entropy
    QEMU_EXTRA.extend(["-device", "virtio-rng-pci"])
    workdir = tempfile.mkdtemp(prefix="qemulab-serial-image-")
    rows = []
    try:
        for spec in args.images:
            key, _, kernel_args = spec.partition(":")
            directory = os.path.join(CACHE, key)
            image = {"kernel": os.path.join(directory, "vmlinuz"), "initrd": os.path.join(directory, "initrd.img"),
                     "disk": os.path.join(directory, "disk.ext4"),
                     "append": "%s %s" % (ROOT_ARGS, kernel_args or role_kernel_args())}
            used = int(subprocess.run(["du", "-k", image["disk"]], capture_output=True, text=True).stdout.split()[0])
            boots = []
            for run in range(args.runs):
                log("%s: boot %d/%d" % (key, run + 1, args.runs))
                boots.append(boot_seconds(image, workdir))
            rows.append((key, "%.0f MiB" % (used / 1024), "%.2f s" % statistics.median(boots),
                         ", ".join("%.2f" % s for s in boots)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("| image | disk used | boot to SSH banner (median) | runs (s) |")
    print("|---|---|---|---|")
    for row in rows:
        print("| %s | %s | %s | %s |" % row)


if __name__ == "__main__":
    main()
