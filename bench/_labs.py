# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The labs the benchmarks bring up: inventories (seed variants, chains) run by the collection, and the seed's own
scripts reconstructed in bench/seed/. Every lab lives in a namespace of its own with a lab name of its own."""

import json
import os
import re
import secrets
import shutil
import signal
import time

import yaml

from _harness import (BENCH_DIR, REPO_ROOT, RUN_ROOT, SSH_KEY, STATE_DIR, VENV_BIN, BenchError, Guest, log,
                      netns_list, port_block, processes_matching, qemu_vm_name, root_links_with_alias, run,
                      ssh_banner, vm_memory_kib)

SEED_INVENTORY = os.path.join(REPO_ROOT, "inventories", "seed")
SEED_VMS = ["rt1", "rt2", "rt3", "rt4", "h1", "h2", "htest"]
MODEL_SHORT = {"virtio-net-pci": "vio", "e1000": "e1k", "rtl8139": "rtl"}
RUN_TAG = secrets.token_hex(2)


def unique_lab_name(suffix):
    """qlb-<run tag>-<suffix>: at most 15 characters, a valid lab, namespace and interface-alias name."""
    name = "qlb%s-%s" % (RUN_TAG, suffix)
    if len(name) > 15:
        raise ValueError("lab name %s is longer than 15 characters" % name)
    return name


def _dump(path, data):
    with open(path, "w") as f:
        f.write("---\n")
        yaml.safe_dump(data, f, default_flow_style=False, sort_keys=False)


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _known_hosts_of(dst, lab_name):
    """The copied seed's group_vars/lab.yml, its guests' known_hosts pointed at this lab's (the seed names its own)."""
    path = os.path.join(dst, "group_vars", "lab.yml")
    lab_vars = _load(path)
    lab_vars["ansible_ssh_common_args"] = ("-o UserKnownHostsFile=/var/lib/qemulab/labs/%s/known_hosts "
                                           "-o StrictHostKeyChecking=yes" % lab_name)
    _dump(path, lab_vars)


def seed_variant_inventory(dst, lab_name, port_base, model=None, vhost=None, boot=None):
    """A copy of inventories/seed under its own lab name, namespace and SSH ports; `model`/`vhost` on every NIC;
    `boot`: vm_launch_boot (clone or boot) for every VM."""
    shutil.copytree(SEED_INVENTORY, dst)
    all_vars = _load(os.path.join(dst, "group_vars", "all.yml"))
    all_vars["lab_name"] = lab_name
    all_vars["lab_netns"] = lab_name
    if boot:
        all_vars["vm_launch_boot"] = boot
    _dump(os.path.join(dst, "group_vars", "all.yml"), all_vars)
    _known_hosts_of(dst, lab_name)
    ports = {}
    for index, vm in enumerate(SEED_VMS):
        path = os.path.join(dst, "host_vars", vm + ".yml")
        hv = _load(path)
        hv["ansible_port"] = port_base + index
        ports[vm] = port_base + index
        for nic in hv["vm_nics"]:
            if model:
                nic["model"] = model
            if vhost:
                nic["vhost"] = vhost
        _dump(path, hv)
    return ports


def chain_inventory(dst, size, lab_name, port_base, overcommit=False):
    """h1 - rt1 - ... - rt<size-2> - h2, one /24 per link (10.77.<k>.0/24 on bridge cb<k>), routes only where needed
    for the two hosts to reach each other (what the lab's verify stage checks). overcommit: lab_overcommit, for a
    chain whose 1 GiB per VM adds up to more than the machine has (the compiler refuses it otherwise; clones
    touch a fraction of their guest RAM)."""
    if size < 2:
        raise ValueError("a chain needs at least two VMs")
    names = ["h1"] + ["rt%d" % i for i in range(1, size - 1)] + ["h2"]
    last_seg = size - 2

    def addr(seg, host):
        return "10.77.%d.%d" % (seg, host)

    os.makedirs(os.path.join(dst, "group_vars"))
    os.makedirs(os.path.join(dst, "host_vars"))
    lab_children = {"hosts": {"hosts": {"h1": None, "h2": None}}}
    if size > 2:
        lab_children["routers"] = {"hosts": {n: None for n in names[1:-1]}}
    _dump(os.path.join(dst, "hosts.yml"), {"all": {"children": {
        "hypervisors": {"hosts": {"localhost": {
            "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            # a temp directory of this run's own: on a shared machine other work may clean ~/.ansible/tmp while
            # this lab's modules are being copied there (seen 2026-11-28: "Failed to transfer file")
            "ansible_remote_tmp": os.path.join(dst, ".ansible-tmp")}}},
        "lab": {"children": lab_children}}}})
    _dump(os.path.join(dst, "group_vars", "all.yml"), {
        "lab_name": lab_name, "lab_netns": lab_name, "lab_host_ports": [], "lab_overcommit": bool(overcommit),
        # clones answer within a minute or two even 32 at once on two cores, and VMs that boot instead (no
        # template) need ~4 s of CPU each; a guest that never answers should not hold a shared machine for long
        "vm_launch_wait_timeout": max(240, 8 * size)})
    shutil.copy(os.path.join(SEED_INVENTORY, "group_vars", "lab.yml"), os.path.join(dst, "group_vars", "lab.yml"))
    _known_hosts_of(dst, lab_name)
    ports = {}
    for pos, name in enumerate(names):
        nics, routes, hv = [], [], {}
        if pos > 0:   # left link: segment pos-1, this VM is .2 on it
            nics.append({"bridge": "cb%d" % (pos - 1), "tap": "%se%d" % (name, len(nics)),
                         "address": addr(pos - 1, 2) + "/24"})
        if pos < size - 1:   # right link: segment pos, this VM is .1 on it
            nics.append({"bridge": "cb%d" % pos, "tap": "%se%d" % (name, len(nics)),
                         "address": addr(pos, 1) + "/24"})
        if name == "h1" and size > 2:
            hv["vm_gateway"] = addr(0, 2)
        elif name == "h2" and size > 2:
            hv["vm_gateway"] = addr(last_seg, 1)
        elif name.startswith("rt"):
            if pos - 1 != 0:
                routes.append({"to": "10.77.0.0/24", "via": addr(pos - 1, 1)})
            if pos != last_seg:
                routes.append({"to": "10.77.%d.0/24" % last_seg, "via": addr(pos, 2)})
        hv["ansible_port"] = port_base + pos
        hv["vm_nics"] = nics
        if routes:
            hv["vm_routes"] = routes
        ports[name] = port_base + pos
        _dump(os.path.join(dst, "host_vars", name + ".yml"), hv)
    return ports


def _ansible_env(timing_path):
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": os.path.join(REPO_ROOT, "ansible.cfg"),
        # ssh control sockets in the checkout, not ~/.ansible/cp (the ssh plugin's default ignores `home`)
        "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(REPO_ROOT, ".build", "ansible", "cp"),
        "ANSIBLE_CALLBACK_PLUGINS": os.path.join(BENCH_DIR, "callback_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": "bench_timing",
        "QEMULAB_BENCH_TIMING": timing_path,
        "ANSIBLE_NOCOLOR": "1",
        "PATH": VENV_BIN + os.pathsep + env.get("PATH", ""),
    })
    return env


def _failure_summary(log_path, limit=3):
    try:
        with open(log_path, errors="replace") as f:
            lines = [ln.strip() for ln in f
                     if ln.startswith(("fatal:", "failed:", "[ERROR]", "ERROR!")) or "FAILED!" in ln]
    except OSError:
        return "(no log)"
    return " | ".join(ln[:400] for ln in lines[-limit:]) or "(no failed task in the log)"


def run_playbook(args, log_path, timeout):
    """ansible-playbook <args> from the repo root, timed; returns (rc, seconds, timing dict from bench_timing)."""
    timing_path = log_path + ".timing.json"
    if os.path.exists(timing_path):
        os.unlink(timing_path)
    rc, seconds, _ = run([os.path.join(VENV_BIN, "ansible-playbook")] + args, timeout=timeout, log_path=log_path,
                         env=_ansible_env(timing_path), cwd=REPO_ROOT)
    timing = {}
    if os.path.exists(timing_path):
        with open(timing_path) as f:
            timing = json.load(f)
    return rc, seconds, timing


def guest_image_facts(work_dir, log_path):
    """Builds the default guest image if it is not cached yet (not timed) and returns its kernel/initrd/disk/append."""
    out = os.path.join(work_dir, "image-facts.json")
    rc, seconds, _ = run_playbook(["-i", "localhost,", "-c", "local",
                                   "-e", "ansible_python_interpreter=" + os.path.join(VENV_BIN, "python"),
                                   "-e", "bench_image_facts=" + out,
                                   os.path.join(BENCH_DIR, "playbooks", "image_facts.yml")], log_path, timeout=1800)
    if rc != 0 or not os.path.exists(out):
        raise BenchError("the guest_image role failed (rc %d): %s" % (rc, _failure_summary(log_path)))
    with open(out) as f:
        facts = json.load(f)
    facts["seconds"] = round(seconds, 1)
    return facts


class CollectionLab:
    """One lab run by the collection: ansible-playbook lab.yml on an inventory of its own."""

    def __init__(self, inventory, lab_name, ports, logs_dir, label):
        self.inventory = inventory
        self.lab_name = lab_name
        self.netns = lab_name
        self.ports = ports
        self.logs_dir = logs_dir
        self.label = label
        self.run_dir = os.path.join(RUN_ROOT, lab_name)
        self.disk_dir = os.path.join(STATE_DIR, "labs", lab_name)
        self._count = 0

    def playbook(self, what, tags=None, timeout=1800):
        self._count += 1
        log_path = os.path.join(self.logs_dir, "%s-%d-%s.log" % (self.label, self._count, what))
        args = ["-i", self.inventory, "lab.yml"] + (["--tags", tags] if tags else [])
        rc, seconds, timing = run_playbook(args, log_path, timeout)
        if rc != 0:
            raise BenchError("%s of lab %s failed (rc %d, log %s): %s"
                             % (what, self.lab_name, rc, log_path, _failure_summary(log_path)))
        return seconds, timing

    def up(self):
        return self.playbook("up")

    def down(self):
        return self.playbook("cleanup", tags="cleanup", timeout=600)

    def guest(self, name):
        return Guest(name, self.ports[name])

    def qemu_pids(self):
        return processes_matching(self.run_dir + "/")

    def memory_kib(self):
        """{vm: {rss, pss, uss, clone}} of the lab's QEMU processes (KiB), named by their -name; clone is whether
        the QEMU was restored from a template (`-incoming` on its command line) rather than booted."""
        mem = {}
        for pid in self.qemu_pids():
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                incoming = b"-incoming" in f.read().split(b"\0")
            mem[qemu_vm_name(pid) or str(pid)] = dict(vm_memory_kib(pid), clone=incoming)
        return mem

    def guests_without_ssh(self):
        """The lab's VMs whose SSH forward (127.0.0.1 here: the lab's QEMUs run in this namespace) does not answer
        with a banner now (after a failed bring-up)."""
        silent = []
        for name, port in sorted(self.ports.items()):
            if not ssh_banner(port, timeout=3):
                silent.append(name)
        return silent

    def force_clean(self):
        """Last resort after a failed teardown: our QEMUs by pid, our namespace, our run and disk directories."""
        _kill_pids(self.qemu_pids())
        if self.netns in netns_list():
            run(["ip", "netns", "delete", self.netns], timeout=60)
        for path in (self.run_dir, self.disk_dir):
            shutil.rmtree(path, ignore_errors=True)

    def leftovers(self):
        left = ["QEMU pid %d" % p for p in self.qemu_pids()]
        if self.netns in netns_list():
            left.append("namespace %s" % self.netns)
        left += ["interface %s in the root namespace" % n for n in root_links_with_alias("qemulab:" + self.lab_name)]
        left += ["directory %s" % p for p in (self.run_dir, self.disk_dir) if os.path.exists(p)]
        return left


def _kill_pids(pids):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if os.path.exists("/proc/%d" % p)]
            time.sleep(0.1)
        if not alive:
            return


class SeedScriptLab:
    """The seed's own way, reconstructed in bench/seed/: setup.sh, configure.sh, verify.sh; stop-vms.sh, cleanup.sh."""

    SCRIPTS = os.path.join(BENCH_DIR, "seed")

    def __init__(self, work_dir, image, logs_dir, label):
        self.netns = unique_lab_name("seed")
        self.work_dir = work_dir
        self.disks = os.path.join(work_dir, "disks")
        self.consoles = os.path.join(work_dir, "consoles")
        self.logs_dir = logs_dir
        self.label = label
        self.log_path = os.path.join(logs_dir, "%s.log" % label)
        append = re.sub(r"(^|\s)(root=\S+|rw|ro)(?=\s|$)", " ", image.get("append") or "")
        self.env = dict(os.environ, SEED_NS=self.netns, SEED_KERNEL=image["kernel"], SEED_INITRD=image["initrd"],
                        SEED_BASE=image["disk"], SEED_DISKS=self.disks, SEED_APPEND=" ".join(append.split()),
                        SEED_LOGS=self.consoles, SEED_KEY=SSH_KEY)

    def _script(self, name, timeout):
        rc, seconds, _ = run([os.path.join(self.SCRIPTS, name)], timeout=timeout, log_path=self.log_path,
                             env=self.env)
        if rc != 0:
            raise BenchError("seed script %s failed (rc %d, log %s)" % (name, rc, self.log_path))
        return seconds

    def up(self):
        """Namespace, setup.sh, configure.sh, verify.sh; returns (total seconds, {step: seconds})."""
        os.makedirs(self.disks)
        os.makedirs(self.consoles)
        t0 = time.monotonic()
        steps = {}
        rc, steps["namespace"], _ = run(["ip", "netns", "add", self.netns], timeout=30, log_path=self.log_path)
        if rc != 0:
            raise BenchError("cannot create namespace %s (log %s)" % (self.netns, self.log_path))
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"], timeout=30, log_path=self.log_path, check=True)
        steps["setup.sh (bridges, taps, veth, 7 x qemu -daemonize)"] = self._script("setup.sh", 300)
        steps["configure.sh (wait for SSH, interfaces, sysctl, ifup)"] = self._script("configure.sh", 900)
        steps["verify.sh (until h1 pings h2)"] = self._script("verify.sh", 300)
        return time.monotonic() - t0, steps

    def down(self):
        """stop-vms.sh, the seed's cleanup.sh, namespace removal; returns seconds."""
        t0 = time.monotonic()
        self._script("stop-vms.sh", 120)
        self._script("cleanup.sh", 120)
        run(["ip", "netns", "delete", self.netns], timeout=60, log_path=self.log_path, check=True)
        return time.monotonic() - t0

    def guest(self, name):
        return Guest(name, 2201 + SEED_VMS.index(name), netns=self.netns)

    def qemu_pids(self):
        return processes_matching(self.disks + "/")

    def force_clean(self):
        _kill_pids(self.qemu_pids())
        if self.netns in netns_list():
            run(["ip", "netns", "delete", self.netns], timeout=60)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def leftovers(self):
        left = ["QEMU pid %d" % p for p in self.qemu_pids()]
        if self.netns in netns_list():
            left.append("namespace %s" % self.netns)
        return left
