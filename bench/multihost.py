#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seed lab on one lab host against the same lab split over two simulated lab hosts (issue 17, docs/multi-host.md):
bring-up to a verified lab, and iperf3 throughput h1 -> h2, whose path crosses br2's VXLAN when split. Both on this
one machine, so no speed-up is expected: the figures show what the distribution costs (the second host's own plays,
the jump through its SSH, VXLAN encapsulation in the kernel).

    .venv/bin/python bench/multihost.py [--runs 3] [--seconds 5]

Each run: the one-host lab (all VMs on the controller, local connection), then the split lab (rt1, h1, htest and
br1's host port on simulated host 1; rt2, rt3, rt4, h2 on host 2), each brought up, measured and cleaned up, in its
own namespaces (tests/integration/simhosts.py makes the hosts; the seed inventory is copied and changed as
tests/integration/test_multihost.py does). Prints a JSON line per run and the medians.
"""

import argparse
import glob
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "integration"))

from _harness import port_block  # noqa: E402
from conftest import run_playbook  # noqa: E402
from simhosts import simulated_hosts  # noqa: E402
from test_multihost import LAB_YML, _guest, _inventory  # noqa: E402

GUEST_KEY = "/var/lib/qemulab/ssh/id_ed25519"
H2 = "10.20.60.2"
H1, H2_INDEX = 4, 5  # their places in test_multihost's port block (rt1..rt4, h1, h2, htest)


class LocalHost(object):
    """The controller as the only lab host, shaped like a SimHost for _inventory and for running guest commands."""
    name = "localhost"

    def hostvars(self):
        return {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}

    def run(self, argv, timeout=90):
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _iperf(h1_host, h2_host, lab, ports, seconds):
    """Mbit/s received by h2 from h1 (TCP, one stream), through whatever lies between them."""
    server = _guest(h2_host, lab, ports + H2_INDEX, "iperf3 -s -1 -D")
    if server.returncode != 0:
        raise RuntimeError("iperf3 server on h2: %s" % server.stderr)
    time.sleep(1)
    client = _guest(h1_host, lab, ports + H1, "iperf3 -J -t %d -c %s" % (seconds, H2))
    if client.returncode != 0:
        raise RuntimeError("iperf3 client on h1: %s %s" % (client.stdout[-300:], client.stderr))
    return json.loads(client.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6


def _image_copy_seconds(host):
    """Seconds to copy the newest built guest image (kernel, initrd, sparse disk, manifest) into `host` over its SSH,
    as a lab would to give a second lab host the controller's image instead of building it there."""
    manifests = sorted(glob.glob("/var/cache/qemulab/images/*/manifest.json"), key=os.path.getmtime)
    if not manifests:
        return None
    image = os.path.dirname(manifests[-1])
    hv = host.hostvars()
    ssh = (["ssh", "-i", hv["ansible_ssh_private_key_file"], "-l", hv["ansible_user"]]
           + shlex.split(hv["ansible_ssh_common_args"]) + [hv["ansible_host"]])
    target = "/run/qemulab-bench-image-copy"
    started = time.monotonic()
    tar = subprocess.Popen(["tar", "-cSf", "-", "-C", image, "."], stdout=subprocess.PIPE)
    copy = subprocess.run(ssh + ["mkdir -p %s && tar -xSf - -C %s" % (target, target)], stdin=tar.stdout,
                          capture_output=True, check=False)
    tar.stdout.close()
    tar.wait()
    seconds = time.monotonic() - started
    subprocess.run(ssh + ["rm -rf %s" % target], capture_output=True, check=False)
    if copy.returncode != 0 or tar.returncode != 0:
        raise RuntimeError("copying %s: %s" % (image, copy.stderr))
    return round(seconds, 1)


def _one(hosts, work, seconds):
    lab = "qlbm" + secrets.token_hex(3)
    ports = port_block(7)
    inventory = _inventory(os.path.join(work, lab), hosts, lab, ports)
    # the seed's guests check their host keys against the seed lab's known_hosts; this lab's are elsewhere, and
    # vm_launch points the guests at them when the inventory says nothing (a remote host's guests get their jump)
    guests = os.path.join(inventory, "group_vars", "lab.yml")
    with open(guests) as f:
        values = yaml.safe_load(f)
    values.pop("ansible_ssh_common_args", None)
    with open(guests, "w") as f:
        yaml.safe_dump(values, f)
    started = time.monotonic()
    up = run_playbook(LAB_YML, inventory=inventory, timeout=1200)
    bring_up = time.monotonic() - started
    try:
        if up.rc != 0:
            raise RuntimeError("bring-up of %s failed: %s" % (lab, up))
        h2_host = hosts[1] if len(hosts) > 1 else hosts[0]
        return {"bring_up_s": round(bring_up, 1), "iperf_mbit_s": round(_iperf(hosts[0], h2_host, lab, ports,
                                                                                seconds), 1)}
    finally:
        down = run_playbook(LAB_YML, inventory=inventory, tags="cleanup", timeout=900)
        if down.rc != 0:
            print("cleanup of %s failed: %s" % (lab, down), file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration")
    args = parser.parse_args()
    results = {"one host": [], "two hosts": []}
    with tempfile.TemporaryDirectory(prefix="qemulab-bench-mh-") as work:
        for run in range(args.runs):
            local = LocalHost()
            results["one host"].append(_one([local, local], work, args.seconds))
            print(json.dumps({"run": run, "one host": results["one host"][-1]}), flush=True)
            with simulated_hosts(2, "b" + secrets.token_hex(2)) as hosts:
                results["two hosts"].append(_one(hosts, work, args.seconds))
                results["two hosts"][-1]["image_copy_s"] = _image_copy_seconds(hosts[1])
            print(json.dumps({"run": run, "two hosts": results["two hosts"][-1]}), flush=True)
    print("| | one lab host | two simulated lab hosts |\n|---|---|---|")
    for key, label in (("bring_up_s", "seed lab bring-up to a verified lab, median (min-max), s"),
                       ("iperf_mbit_s", "iperf3 h1 -> h2, median (min-max), Mbit/s")):
        cells = []
        for where in ("one host", "two hosts"):
            values = [r[key] for r in results[where]]
            cells.append("%.1f (%.1f-%.1f)" % (statistics.median(values), min(values), max(values)))
        print("| %s | %s | %s |" % (label, cells[0], cells[1]))
    copies = [r["image_copy_s"] for r in results["two hosts"] if r.get("image_copy_s") is not None]
    if copies:
        print("copying the built guest image to the second host over its SSH: median %.1f s (%.1f-%.1f)"
              % (statistics.median(copies), min(copies), max(copies)))


if __name__ == "__main__":
    main()
