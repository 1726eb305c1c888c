"""The lab the link tests share (test_capture.py, test_links.py): one boot per session.

    h1 (10.71.1.10) -- bra -- (eth0 10.71.1.1) r1 (eth1 10.71.2.1) -- brb -- h2 (10.71.2.20)

Fixed MACs, so a capture can be checked against them. The inventory is a directory of JSON files a test may rewrite
(`set_nic`) and re-run lab.yml on. Every lab address lives in the lab's own namespace or inside the guests.
"""
import json
import os
import secrets
import subprocess
import tempfile

from conftest import VENV_PYTHON
from faultlab import GUEST_KEY, LAB_STATE_DIR, _RunnableLab, failure_text, free_port

MACS = {("r1", 0): "52:54:00:71:01:01", ("r1", 1): "52:54:00:71:02:01",
        ("h1", 0): "52:54:00:71:01:10", ("h2", 0): "52:54:00:71:02:20"}
ADDRESSES = {("r1", 0): "10.71.1.1", ("r1", 1): "10.71.2.1", ("h1", 0): "10.71.1.10", ("h2", 0): "10.71.2.20"}
TAPS = {("r1", 0): "lka1", ("r1", 1): "lkb1", ("h1", 0): "lka2", ("h2", 0): "lkb2"}
BRIDGES = {("r1", 0): "lkbra", ("r1", 1): "lkbrb", ("h1", 0): "lkbra", ("h2", 0): "lkbrb"}


class LinkLab(_RunnableLab):
    VMS = ("r1", "h1", "h2")

    def __init__(self):
        suffix = secrets.token_hex(3)
        self.name, self.netns = "qltlk" + suffix, "qltlkns" + suffix
        self.dir = tempfile.mkdtemp(prefix="qemulab-links-")
        self.inventory = os.path.join(self.dir, "inventory")
        self.ports = {vm: free_port() for vm in self.VMS}
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")
        self.nic_extra = {}
        self.up = None
        self.write_inventory()

    def nics(self, vm):
        count = 2 if vm == "r1" else 1
        out = []
        for index in range(count):
            nic = {"bridge": BRIDGES[(vm, index)], "tap": TAPS[(vm, index)], "mac": MACS[(vm, index)],
                   "address": ADDRESSES[(vm, index)] + "/24"}
            nic.update(self.nic_extra.get((vm, index), {}))
            out.append(nic)
        return out

    def write_inventory(self):
        files = {
            "hosts.yml": {"all": {"children": {
                "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                        "ansible_python_interpreter": VENV_PYTHON}}},
                "lab": {"children": {"routers": {"hosts": {"r1": None}},
                                     "hosts": {"hosts": {"h1": None, "h2": None}}}},
            }}},
            "group_vars/all.yml": {"lab_name": self.name, "lab_netns": self.netns},
            "group_vars/lab.yml": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                                   "ansible_ssh_private_key_file": GUEST_KEY,
                                   # as docs/inventory.md says: a run of --tags links alone does not launch, so
                                   # only the inventory can point the guests' SSH at the lab's known_hosts (an
                                   # SSH master kept from the bring-up hid this while runs were close together)
                                   "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes"
                                                              % self.known_hosts,
                                   "ansible_python_interpreter": "/usr/bin/python3", "vm_memory": "256M"},
            "host_vars/r1.yml": {"ansible_port": self.ports["r1"], "vm_nics": self.nics("r1")},
            "host_vars/h1.yml": {"ansible_port": self.ports["h1"], "vm_gateway": "10.71.1.1",
                                 "vm_nics": self.nics("h1")},
            "host_vars/h2.yml": {"ansible_port": self.ports["h2"], "vm_gateway": "10.71.2.1",
                                 "vm_nics": self.nics("h2")},
        }
        for rel, data in files.items():
            path = os.path.join(self.inventory, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(data, f)  # JSON is YAML

    def set_nic(self, vm, index, **extra):
        """Give one NIC extra inventory keys (None removes a key) and rewrite the inventory."""
        current = dict(self.nic_extra.get((vm, index), {}))
        for key, value in extra.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        self.nic_extra[(vm, index)] = current
        self.write_inventory()

    def ssh_argv(self, vm, command):
        return ["ssh", "-i", GUEST_KEY, "-p", str(self.ports[vm]), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + self.known_hosts,
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "root@127.0.0.1", command]

    def ssh(self, vm, command, input=None, timeout=120):
        return subprocess.run(self.ssh_argv(vm, command), input=input, capture_output=True, text=True, timeout=timeout)

    def ok(self, vm, command, **kwargs):
        proc = self.ssh(vm, command, **kwargs)
        assert proc.returncode == 0, (vm, command, proc.returncode, proc.stdout, proc.stderr)
        return proc.stdout.strip()

    def remove(self):
        res = self.cleanup()
        left = self.leftovers()
        self.force_remove()
        assert res.rc == 0 and left == {"processes": [], "files": [], "netns": False}, \
            "cleanup of the link lab %s: %s; it left %s" % (self.name, failure_text(res) or res, left)


def own_link_lab():
    """Body of a module-scoped fixture: a LinkLab of the module's own, up for all its tests, removed after them."""
    lab = LinkLab()
    try:
        lab.up = lab.run()
        assert lab.up.rc == 0, failure_text(lab.up) or lab.up
        yield lab
    finally:
        lab.remove()


_SHARED = {}
USERS = ("test_capture", "test_links")


def shared_link_lab(request):
    """Body of a function-scoped fixture: the session's one LinkLab, up from the first test that needs it to the last
    test of the session that uses it."""
    lab = _SHARED.get("lab")
    if lab is None:
        lab = _SHARED["lab"] = LinkLab()
        request.session.addfinalizer(_remove)
        lab.up = lab.run()
    assert lab.up.rc == 0, failure_text(lab.up) or lab.up
    yield lab
    items = request.session.items
    rest = items[items.index(request.node) + 1:]
    if not any(item.module.__name__ in USERS and "link_lab" in item.fixturenames for item in rest):
        _remove()


def _remove():
    lab = _SHARED.pop("lab", None)
    if lab is not None:
        lab.remove()
