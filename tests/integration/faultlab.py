"""Small real labs for the fault-injection suite: inventories, runs of lab.yml that can be killed, leftovers.

A lab here is two VMs on the cached default guest image: router `r1` on segments A and B, host `h1` on A, and a
host port (veth) on B that routes to A through r1. Everything lives in the lab's own namespace, named per test.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import yaml

from conftest import ANSIBLE_PLAYBOOK, REPO_ROOT, PlaybookResult, playbook_env, run_playbook
from hostsnapshot import lab_leftovers, lab_qemu_processes
from pyroute2 import netns as pr_netns

LAB_YML = os.path.join(REPO_ROOT, "lab.yml")


def free_port():
    """A free 127.0.0.1 port below the kernel's ephemeral range, which outgoing connections (ssh) may take any time."""
    while True:
        port = secrets.randbelow(32000 - 20000) + 20000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Lab:
    """One 2-VM lab: its inventory in a temp dir, its unique lab name and namespace."""

    def __init__(self, prefix="qf", net=31, extra_vars=None, names=None):
        suffix = secrets.token_hex(3)
        self.names = {k: k for k in ("bra", "brb", "ta1", "tb1", "ta2", "hp0", "hp1")}
        self.names.update(names or {})
        n = self.names
        self.name = prefix + suffix
        self.netns = prefix + "ns" + suffix
        self.net = net
        self.dir = tempfile.mkdtemp(prefix="qemulab-faults-")
        self.ports = {"r1": free_port(), "h1": free_port()}
        lab_vars = {
            "lab_name": self.name,
            "lab_netns": self.netns,
            "lab_host_ports": [{"name": n["hp0"], "peer": n["hp1"], "bridge": n["brb"], "address": "10.%d.2.9/24" % net,
                                "routes": [{"to": "10.%d.1.0/24" % net, "via": "10.%d.2.1" % net}]}],
        }
        lab_vars.update(extra_vars or {})
        inventory = {"all": {
            "vars": lab_vars,
            "children": {
                "hypervisors": {"hosts": {"localhost": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": os.path.join(REPO_ROOT, ".venv", "bin", "python")}}},
                "lab": {
                    "vars": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                             "ansible_ssh_private_key_file": "/var/lib/qemulab/ssh/id_ed25519",
                             "ansible_python_interpreter": "/usr/bin/python3",
                             "vm_memory": "256M"},
                    "children": {
                        "routers": {"hosts": {"r1": {
                            "ansible_port": self.ports["r1"],
                            "vm_nics": [{"bridge": n["bra"], "tap": n["ta1"], "address": "10.%d.1.1/24" % net},
                                        {"bridge": n["brb"], "tap": n["tb1"], "address": "10.%d.2.1/24" % net}]}}},
                        "hosts": {"hosts": {"h1": {
                            "ansible_port": self.ports["h1"],
                            "vm_gateway": "10.%d.1.1" % net,
                            "vm_nics": [{"bridge": n["bra"], "tap": n["ta2"], "address": "10.%d.1.2/24" % net}]}}},
                    }},
            }}}
        self.inventory = os.path.join(self.dir, "hosts.yml")
        with open(self.inventory, "w") as f:
            yaml.safe_dump(inventory, f)

    def run(self, tags=None, extra_vars=None, timeout=1800):
        return run_playbook(LAB_YML, inventory=self.inventory, tags=tags, extra_vars=extra_vars, timeout=timeout)

    def cleanup(self):
        return self.run(tags="cleanup")

    def start(self, tags=None, extra_vars=None):
        """Start lab.yml in its own process group, without waiting (see wait_run / kill_run / wait_event)."""
        events = tempfile.mktemp(prefix="events-", suffix=".jsonl", dir=self.dir)
        proc = start_playbook(LAB_YML, self.inventory, tags=tags, extra_vars=extra_vars, events=events)
        proc.events = events
        return proc

    def ping_from_host_port(self, address="h1", count=1):
        """Ping h1 (or an address) from the host port, i.e. through r1; True when it answers."""
        target = "10.%d.1.2" % self.net if address == "h1" else address
        out = subprocess.run(["ip", "netns", "exec", self.netns, "ping", "-c", str(count), "-W", "2",
                              "-I", self.names["hp1"], target], capture_output=True, text=True)
        return out.returncode == 0

    def wait_routing(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping_from_host_port():
                return True
            time.sleep(1)
        return False

    def leftovers(self):
        left = lab_leftovers(self.name)
        left["netns"] = self.netns in pr_netns.listnetns()
        return left

    def force_remove(self):
        """Last resort after a failed test: whatever cleanup could not remove (never needed when tests pass)."""
        for pid in lab_qemu_processes(self.name):
            os.kill(pid, signal.SIGKILL)
        if self.netns in pr_netns.listnetns():
            pr_netns.remove(self.netns)
        for base in ("/run/qemulab", "/var/lib/qemulab/labs"):
            shutil.rmtree(os.path.join(base, self.name), ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_playbook(playbook, inventory, tags=None, extra_vars=None, events=None):
    cmd = [ANSIBLE_PLAYBOOK, playbook, "-i", inventory]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if tags:
        cmd += ["--tags", tags]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=playbook_env({"QEMULAB_TEST_EVENTS": events or ""}), start_new_session=True)


def wait_run(proc, timeout=1800):
    out, err = proc.communicate(timeout=timeout)
    return PlaybookResult(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


def _children():
    """{ppid: [pid, ...]} of every process now."""
    tree = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _is_qemu(pid):
    try:
        return "qemu-system" in os.path.basename(os.readlink("/proc/%d/exe" % pid))
    except OSError:
        return False


def kill_run(proc):
    """SIGKILL the playbook and all of Ansible under it, as a crash would: its process group, and the task workers,
    which ansible-core starts in sessions of their own. QEMU, which a crash leaves running, is spared."""
    os.kill(proc.pid, signal.SIGSTOP)  # no new workers while we look
    tree, found, todo = _children(), [], [proc.pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [child for child in tree.get(pid, []) if not _is_qemu(child)]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def read_events(path):
    """The events written so far (a line still being written is left for the next read)."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except OSError:
        return []
    return [json.loads(line) for line in lines[:-1] if line.strip()]


def wait_event(proc, match, timeout=600):
    """Wait until the run's callback reports an event for which match(event) is true (each event is offered once,
    in order, so match may keep state); the event, or None if the run ended (or the timeout passed) first."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        events = read_events(proc.events)
        for event in events[seen:]:
            if match(event):
                return event
        seen = len(events)
        if proc.poll() is not None:
            return None
        time.sleep(0.1)
    return None
