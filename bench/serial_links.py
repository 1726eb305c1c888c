# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Throughput and round-trip time over a PPP and a SLIP serial link against the virtio path, between the same two VMs.

    python bench/serial_links.py [--seconds 10] [--pings 20]

Brings up a lab of two 256 MiB routers (lab.yml) joined by one Ethernet segment (virtio-net-pci on a bridge), a PPP
link (ttyS1) and a SLIP link (ttyS2), as in docs/serial-links.md; runs iperf3 (TCP, rt1 -> rt2, --seconds) and ping
(--pings, 0.2 s apart) over each path, and prints a Markdown table; cleans the lab up on any exit.
"""

import argparse
import os
import re
import shutil
import tempfile
import time

from _harness import SSH_KEY, VENV_BIN, BenchError, log, port_block, sigterm_as_interrupt
from _labs import CollectionLab, _dump, unique_lab_name

PATHS = (("virtio-net-pci (Ethernet)", "10.98.0.2"), ("PPP, ttyS1", "10.99.0.2"), ("SLIP, ttyS2", "10.99.1.2"))


def inventory(dst, lab_name, ports):
    routers = dict((vm, {"ansible_port": ports[vm],
                         "vm_nics": [{"bridge": "br0", "tap": "t%d" % i, "address": "10.98.0.%d/24" % (i + 1)}]})
                   for i, vm in enumerate(("rt1", "rt2")))
    _dump(os.path.join(dst, "hosts.yml"), {"all": {
        "vars": {"lab_name": lab_name, "lab_netns": lab_name, "lab_serial_links": [
            {"between": ["rt1", "rt2"], "protocol": "ppp", "addresses": ["10.99.0.1", "10.99.0.2"]},
            {"between": ["rt1", "rt2"], "protocol": "slip", "addresses": ["10.99.1.1", "10.99.1.2"]}]},
        "children": {
            "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                    "ansible_python_interpreter": os.path.join(VENV_BIN, "python")}}},
            "lab": {"vars": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                             "ansible_ssh_private_key_file": SSH_KEY,
                             "ansible_python_interpreter": "/usr/bin/python3", "vm_memory": "256M",
                             "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"},
                    "children": {"routers": {"hosts": routers}}}}}})
    return os.path.join(dst, "hosts.yml")


def measure(rt1, address, seconds, pings):
    deadline = time.monotonic() + 90
    while rt1.run("ping -c 1 -W 2 %s" % address, check=False)[0] != 0:
        if time.monotonic() > deadline:
            raise BenchError("%s does not answer from rt1" % address)
        time.sleep(2)
    _, out = rt1.run("ping -q -i 0.2 -c %d %s" % (pings, address), timeout=120)
    rtt = re.search(r"= [\d.]+/([\d.]+)/([\d.]+)/", out)
    loss = re.search(r"([\d.]+)% packet loss", out)
    _, out = rt1.run("iperf3 -c %s -t %d -f k" % (address, seconds), timeout=seconds + 60)
    sender = re.search(r"([\d.]+) Kbits/sec\s+(\d*)\s*sender", out)
    return {"rtt_ms": float(rtt.group(1)) if rtt else None, "rtt_max_ms": float(rtt.group(2)) if rtt else None,
            "loss": loss.group(1) if loss else "?", "kbit_s": float(sender.group(1)) if sender else None,
            "retransmits": sender.group(2) if sender else ""}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--pings", type=int, default=20)
    args = parser.parse_args()
    sigterm_as_interrupt()
    work = tempfile.mkdtemp(prefix="qemulab-serial-bench-")
    name = unique_lab_name("ser")
    base = port_block(2)
    ports = {"rt1": base, "rt2": base + 1}
    lab = CollectionLab(inventory(work, name, ports), name, ports, work, "serial")
    rows = []
    try:
        seconds, _ = lab.up()
        log("lab up in %.0f s" % seconds)
        rt1, rt2 = lab.guest("rt1"), lab.guest("rt2")
        rt2.run("iperf3 -s -D")
        for label, address in PATHS:
            log("measuring %s" % label)
            rows.append((label, measure(rt1, address, args.seconds, args.pings)))
    finally:
        try:
            lab.down()
        finally:
            left = lab.leftovers()
            if left:
                lab.force_clean()
                log("cleanup left %s" % left)
            shutil.rmtree(work, ignore_errors=True)
    print("| path (rt1 -> rt2) | TCP throughput (iperf3 %d s) | retransmits | RTT avg / max (ping x%d) | loss |"
          % (args.seconds, args.pings))
    print("|---|---|---|---|---|")
    for label, m in rows:
        print("| %s | %s | %s | %s / %s ms | %s%% |" % (
            label, "%.1f kbit/s" % m["kbit_s"] if m["kbit_s"] is not None else "?", m["retransmits"],
            m["rtt_ms"], m["rtt_max_ms"], m["loss"]))


if __name__ == "__main__":
    main()
