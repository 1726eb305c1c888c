"""Real labs the integration suites run through lab.yml, runs of it that can be killed, and what a lab may leave.

`Lab`: a small 2-VM lab for the fault suite: router `r1` on segments A and B, host `h1` on A, and a host port (veth)
on B that routes to A through r1. `NetworkLab`: the 3-VM lab of the seed's other networks (NIC models, MTU, NAT,
user-mode networking), which test_networks.py and the fault suite's running-lab checks share: one per session
(`use_shared_lab`), so its guests boot once. Every lab lives in its own namespace, named per run, on the cached
default guest image.
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

from conftest import ANSIBLE_PLAYBOOK, REPO_ROOT, VENV_PYTHON, PlaybookResult, playbook_env, run_playbook
from hostsnapshot import lab_leftovers, lab_qemu_processes, snapshot
from pyroute2 import netns as pr_netns

LAB_YML = os.path.join(REPO_ROOT, "lab.yml")
# The key pair the guests accept for root: the guest_image role makes it on a lab host's first run (before any guest
# boots) and every lab uses it; the inventories name the role's own default, read from the role.
with open(os.path.join(REPO_ROOT, "roles", "guest_image", "defaults", "main.yml")) as _defaults:
    GUEST_KEY = yaml.safe_load(_defaults)["guest_image_ssh_key"]
PUBLISH_IMAGE = "qemulab.network.guest_image : Publish the image for the lab roles"
LAB_STATE_DIR = "/var/lib/qemulab/labs"

# -- what of the host a lab could touch ------------------------------------------------------------------------------

ROOT_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/forwarding",
                "net/bridge/bridge-nf-call-iptables")
# The shared lab's link names; a `Lab` given them (names=...) collides with it name for name in its own namespace.
NETWORK_LAB_LINKS = {"bra": "brin", "brb": "brout", "ta1": "tin1", "tb1": "tout1", "ta2": "tin2", "hp0": "hpin0",
                     "hp1": "hpin1"}
LAB_IFNAMES = ({"bra", "brb", "ta1", "tb1", "ta2", "hp0", "hp1", "ta2-sixteen-byte", "tout2"}
               | set(NETWORK_LAB_LINKS.values()))
LAB_NETS = ("10.31.", "10.32.", "10.33.", "10.34.", "10.66.")


def root_sysctls():
    """The host's own forwarding switches, read only."""
    values = {}
    for key in ROOT_SYSCTLS:
        with open("/proc/sys/" + key) as f:
            values[key] = f.read().strip()
    return values


def fifteen(prefix):
    return (prefix + "-fifteen-bytes-")[:15]


def root_picture():
    """What of the root namespace these labs could touch: links with their names or a qemulab:qf* mark, and
    addresses and routes in their subnets (other people's labs on this host come and go beside them)."""
    snap = snapshot()
    names = LAB_IFNAMES | {fifteen(name) for name in LAB_IFNAMES}
    return {
        "links": [link for link in snap["links"] if link[0] in names or (link[3] or "").startswith("qemulab:qf")],
        "addresses": [a for a in snap["addresses"] if str(a[1]).startswith(LAB_NETS)],
        "routes": [r for r in snap["routes"] if str(r[1]).startswith(LAB_NETS) or str(r[3]).startswith(LAB_NETS)],
        "sysctls": snap["sysctls"],
    }


def host_picture():
    """The root namespace's view above, the host's forwarding sysctls and the fault suite's namespaces."""
    ours = sorted(n for n in pr_netns.listnetns() if n.startswith("qf") or n == "qlab-bad")
    return {"root": root_picture(), "netns": ours, "sysctls": root_sysctls()}


def failure_text(res):
    """Every failure message of a run, the failed loop items' included."""
    messages = []
    for _name, _host, result in res.tasks():
        if result.get("failed"):
            messages.append(result.get("msg", ""))
            messages += [item.get("msg", "") for item in result.get("results", []) if item.get("failed")]
    return "\n".join(messages)


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


class _RunnableLab:
    """What every lab here offers: runs of lab.yml on its inventory, its routing check, its leftovers."""

    name = netns = dir = inventory = host_port = far_address = None
    ports = {}
    forwards = []

    def run(self, tags=None, extra_vars=None, timeout=1800, check=False):
        return run_playbook(LAB_YML, inventory=self.inventory, tags=tags, extra_vars=extra_vars, timeout=timeout,
                            check=check)

    def cleanup(self):
        return self.run(tags="cleanup")

    def start(self, tags=None, extra_vars=None):
        """Start lab.yml in its own process group, without waiting (see wait_run / kill_run / wait_event)."""
        events = tempfile.mktemp(prefix="events-", suffix=".jsonl", dir=self.dir)
        proc = start_playbook(LAB_YML, self.inventory, tags=tags, extra_vars=extra_vars, events=events)
        proc.events = events
        return proc

    def ping_from_host_port(self, count=1):
        """Ping the host behind the router from the host port, i.e. through the router; True when it answers."""
        out = subprocess.run(["ip", "netns", "exec", self.netns, "ping", "-c", str(count), "-W", "2",
                              "-I", self.host_port, self.far_address], capture_output=True, text=True)
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
        for base in ("/run/qemulab", LAB_STATE_DIR):
            shutil.rmtree(os.path.join(base, self.name), ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class Lab(_RunnableLab):
    """One 2-VM lab: its inventory in a temp dir, its unique lab name and namespace."""

    def __init__(self, prefix="qf", net=31, extra_vars=None, names=None):
        suffix = secrets.token_hex(3)
        self.names = {k: k for k in ("bra", "brb", "ta1", "tb1", "ta2", "hp0", "hp1")}
        self.names.update(names or {})
        n = self.names
        self.name = prefix + suffix
        self.netns = prefix + "ns" + suffix
        self.net = net
        self.host_port, self.far_address = n["hp1"], "10.%d.1.2" % net
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
                    "ansible_python_interpreter": VENV_PYTHON}}},
                "lab": {
                    "vars": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                             "ansible_ssh_private_key_file": GUEST_KEY,
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


class NetworkLab(_RunnableLab):
    """The seed's other networks in one three-VM lab:

        hpin1 (host port, 10.66.1.4) --+
        h1 (e1000, 10.66.1.10) --------+-- brin --(rtl8139) rt1 (virtio)-- brout -- h2 (virtio, 10.66.2.20)
                                                          rt1 eth2: QEMU user-mode, 10.0.3.15, 127.0.0.1:P -> 8000

    brout carries an MTU of 4000 (the NIC option `mtu` on both of its NICs). rt1 masquerades brin out of eth1 and
    publishes h1 as 10.66.2.10 (static 1:1 NAT). The host port routes 10.66.2.0/24 through rt1, so reaching h2 from
    it crosses the router. Every lab address lives in the lab's own namespace or inside the guests; the user-mode NIC
    is restricted and talked to only through its gateway and 127.0.0.1.
    """

    VMS = ("rt1", "h1", "h2")

    def __init__(self):
        suffix = secrets.token_hex(3)
        self.name, self.netns = "qltnw" + suffix, "qltnwns" + suffix
        self.dir = tempfile.mkdtemp(prefix="qemulab-networks-")
        self.inventory = os.path.join(self.dir, "inventory")
        self.ports = {vm: free_port() for vm in self.VMS}
        self.fwd = free_port()
        self.forwards = [self.fwd]
        self.host_port, self.far_address = NETWORK_LAB_LINKS["hp1"], "10.66.2.20"
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")
        self.key = self.up = self.before = None
        self._write_inventory()

    def _write_inventory(self):
        n = NETWORK_LAB_LINKS
        files = {
            "hosts.yml": {"all": {"children": {
                "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                        "ansible_python_interpreter": VENV_PYTHON}}},
                "lab": {"children": {"routers": {"hosts": {"rt1": None}},
                                     "hosts": {"hosts": {"h1": None, "h2": None}}}},
            }}},
            "group_vars/all.yml": {
                "lab_name": self.name, "lab_netns": self.netns,
                "lab_host_ports": [{"name": n["hp0"], "peer": n["hp1"], "bridge": n["bra"], "address": "10.66.1.4/24",
                                    "routes": [{"to": "10.66.2.0/24", "via": "10.66.1.1"}]}],
            },
            "group_vars/lab.yml": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                                   "ansible_ssh_private_key_file": GUEST_KEY,
                                   "ansible_python_interpreter": "/usr/bin/python3",
                                   "ansible_ssh_common_args":
                                       "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                                   "vm_memory": "256M"},
            "host_vars/rt1.yml": {
                "ansible_port": self.ports["rt1"],
                "vm_nics": [
                    {"bridge": n["bra"], "tap": n["ta1"], "address": "10.66.1.1/24", "model": "rtl8139"},
                    {"bridge": n["brb"], "tap": n["tb1"], "address": "10.66.2.1/24", "mtu": 4000},
                    {"backend": "user", "net": "10.0.3.0/24", "hostfwd": [{"host_port": self.fwd, "guest_port": 8000}]},
                ],
                "vm_nat": [
                    {"type": "masquerade", "inside": "eth0", "outside": "eth1"},
                    {"type": "static", "inside": "eth0", "outside": "eth1", "inside_address": "10.66.1.10",
                     "outside_address": "10.66.2.10"},
                ],
            },
            "host_vars/h1.yml": {"ansible_port": self.ports["h1"], "vm_gateway": "10.66.1.1",
                                 "vm_nics": [{"bridge": n["bra"], "tap": n["ta2"], "address": "10.66.1.10/24",
                                              "model": "e1000"}]},
            # h2 routes back through rt1 only so lab.yml's own reachability check passes; NAT is proven by the source
            # address h2 sees (and by its absence once the rules are flushed)
            "host_vars/h2.yml": {"ansible_port": self.ports["h2"], "vm_gateway": "10.66.2.1",
                                 "vm_nics": [{"bridge": n["brb"], "tap": "tout2", "address": "10.66.2.20/24",
                                              "mtu": 4000}]},
        }
        for rel, data in files.items():
            path = os.path.join(self.inventory, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(data, f)  # JSON is YAML

    def bring_up(self):
        """lab.yml on a host without this lab; the host picture before it, the run, its time and the guests' key."""
        self.before = host_picture()
        started = time.monotonic()
        self.up = self.run()
        self.up_seconds = time.monotonic() - started
        # the key the lab's own run made or found (guest_image role) and gave its guests at boot
        published = [res for name, _host, res in self.up.tasks("localhost") if name == PUBLISH_IMAGE]
        self.key = (published or [{}])[0].get("ansible_facts", {}).get("guest_image_ssh_key")

    def ssh(self, vm, command, input=None, timeout=60):
        """`command` on a guest as root, with the lab's key, checking the guest's host key against the lab's
        known_hosts."""
        argv = ["ssh", "-i", self.key, "-p", str(self.ports[vm]), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + self.known_hosts,
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "root@127.0.0.1", command]
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)

    def remove(self):
        """lab.yml --tags cleanup, then whatever it left; an error names what the cleanup failed to remove."""
        res = self.cleanup()
        left = self.leftovers()
        self.force_remove()
        assert res.rc == 0 and left == {"processes": [], "files": [], "netns": False}, \
            "cleanup of the shared lab %s: %s; it left %s" % (self.name, failure_text(res) or res, left)


# -- the shared lab ------------------------------------------------------------------------------------------------

# The test modules whose fixture `lab` is use_shared_lab: the lab stays up until the last of their tests has run.
SHARED_LAB_USERS = ("test_networks", "test_faults")
_SHARED = {}


def _uses_shared_lab(item):
    return item.module.__name__ in SHARED_LAB_USERS and "lab" in item.fixturenames


def _remove_shared():
    lab = _SHARED.pop("lab", None)
    if lab is not None:
        lab.remove()


def use_shared_lab(request):
    """The body of a test module's function-scoped fixture `lab`: the session's one NetworkLab, brought up by the
    first test that asks for it and removed after the last test of the session that asks for it (or at the end of
    a session stopped early), whichever module runs first."""
    lab = _SHARED.get("lab")
    if lab is None:
        lab = _SHARED["lab"] = NetworkLab()
        request.session.addfinalizer(_remove_shared)
        lab.bring_up()
    assert lab.up is not None and lab.up.rc == 0, lab.up and (failure_text(lab.up) or lab.up)
    assert lab.key and os.path.isfile(lab.key), \
        "the lab's run published the guests' key %r, which is not a file" % lab.key
    yield lab
    items = request.session.items
    if not any(_uses_shared_lab(item) for item in items[items.index(request.node) + 1:]):
        _remove_shared()


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
