"""Guests without SSH, configured over their serial consoles: docs/own-images.md's walkthrough, run as written.

The inventory is the walkthrough's own YAML blocks (`# yocto-lab/...`), read from the page, with this run's lab name,
namespace, ports and image directory put in. Its two routers boot a stand-in for a Yocto core-image-minimal
(console_image.py: Debian's kernel as bzImage, an ext4 with busybox-static as init, a login prompt on ttyS0, no sshd,
no Python), each from its own disk copy; the two hosts boot the built image. The lab comes up through lab.yml, h1
reaches h2 through both routers, a second run changes nothing, and cleanup leaves nothing.

The console connection itself is also checked on a default-image guest (h1, configured over SSH): `raw` with its
output, a failing command's exit status, `script` (a file put and run) and a put/fetch round trip of random bytes.
"""
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

import console_image
from conftest import REPO_ROOT, VENV_PYTHON, playbook_env, run_playbook
from faultlab import GUEST_KEY, LAB_STATE_DIR, LAB_YML, _RunnableLab, failure_text, free_port

from ansible_collections.qemulab.network.plugins.connection.console import ConsoleSession, open_socket
from ansible_collections.qemulab.network.plugins.module_utils._disk_probe import SSH_SERVERS

pytestmark = pytest.mark.integration

DOC = os.path.join(REPO_ROOT, "docs", "own-images.md")
DOC_DIR = "/srv/yocto-lab"
ANSIBLE = os.path.join(REPO_ROOT, ".venv", "bin", "ansible")
BLOCK = re.compile(r"^```yaml\n# yocto-lab/(\S+)\n(.*?)^```$", re.S | re.M)


def walkthrough_files():
    """{relative path: YAML text} of the walkthrough's inventory blocks."""
    with open(DOC) as handle:
        return dict((path, text) for path, text in BLOCK.findall(handle.read()))


class ConsoleLab(_RunnableLab):
    VMS = ("rt1", "rt2", "h1", "h2")

    def __init__(self):
        files = walkthrough_files()
        assert {"hosts.yml", "group_vars/all.yml", "group_vars/lab.yml", "group_vars/routers.yml"} <= set(files), \
            "docs/own-images.md lost a block of its walkthrough: %s" % sorted(files)
        self.dir = tempfile.mkdtemp(prefix="qemulab-console-")
        images = os.path.join(self.dir, "images")
        os.makedirs(images)
        built = console_image.build()
        shutil.copy(built["kernel"], os.path.join(images, "bzImage"))
        shutil.copy(built["initrd"], os.path.join(images, "initrd.gz"))
        for vm in ("rt1", "rt2"):
            shutil.copy(built["disk"], os.path.join(images, vm + ".ext4"))
        suffix = os.path.basename(self.dir)[-6:].lower()
        suffix = re.sub(r"[^a-z0-9]", "0", suffix)
        self.name, self.netns = "qltcg" + suffix, "qltcgns" + suffix
        self.inventory = os.path.join(self.dir, "hosts.yml")
        self.ports = {}
        for rel, text in files.items():
            data = yaml.safe_load(text.replace(DOC_DIR, self.dir))
            if rel == "group_vars/all.yml":
                data.update(lab_name=self.name, lab_netns=self.netns)
            elif rel == "group_vars/lab.yml":
                data["ansible_ssh_private_key_file"] = GUEST_KEY
            elif rel == "group_vars/routers.yml":
                # Debian's kernel has virtio and ext4 as modules (a Yocto qemux86-64 kernel builds them in)
                data["vm_initrd"] = os.path.join(images, "initrd.gz")
            elif rel.startswith("host_vars/"):
                vm = os.path.splitext(os.path.basename(rel))[0]
                data["ansible_port"] = self.ports[vm] = free_port()
            path = os.path.join(self.dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                yaml.safe_dump(data, handle)
        assert sorted(self.ports) == sorted(self.VMS)
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")

    def ssh(self, vm, command):
        return subprocess.run(["ssh", "-i", GUEST_KEY, "-p", str(self.ports[vm]), "-o", "BatchMode=yes",
                               "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + self.known_hosts,
                               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "root@127.0.0.1", command],
                              capture_output=True, text=True, timeout=120)

    def console_socket(self, vm):
        return "/run/qemulab/%s/%s/console.sock" % (self.name, vm)


@pytest.fixture(scope="module")
def lab():
    lab = ConsoleLab()
    try:
        lab.up = lab.run()
        assert lab.up.rc == 0, failure_text(lab.up) or lab.up
        yield lab
    finally:
        res = lab.cleanup()
        left = lab.leftovers()
        lab.force_remove()
        assert res.rc == 0 and left == {"processes": [], "files": [], "netns": False}, \
            "cleanup of %s: %s; it left %s" % (lab.name, failure_text(res) or res, left)


def test_the_routers_are_configured_over_their_consoles_and_route_h1_to_h2(lab):
    # the walkthrough does not set vm_connection: the lab host found no SSH server in the routers' disks
    assert not any("vm_connection" in (yaml.safe_load(text) or {}) for text in walkthrough_files().values())
    status = lab.up.result("Show each VM, its state, addresses, SSH and console")["msg"]
    for vm in ("rt1", "rt2"):
        disk = os.path.join(lab.dir, "images", vm + ".ext4")
        assert any(line.strip() == "Ansible reaches it through its console: vm_disk %s has no SSH server (%s)"
                   % (disk, ", ".join(SSH_SERVERS)) for line in status), status
    assert sum("through its console" in line for line in status) == 2, status
    # the console path ran for the routers, with changes; the hosts took the SSH path
    for vm in ("rt1", "rt2"):
        result = lab.up.result("qemulab.network.guest_network : Bring the guest's files, forwarding, addresses and "
                               "routes to the plan", vm)
        assert result.get("changed") and "changed:" in result["stdout"], result
    ping = lab.up.result("Ping every other host's addresses", "h1")
    assert not ping.get("failed") and not ping.get("skipped"), ping
    # the walkthrough's step 4, as written there: the route rt1 got through its console
    proc = subprocess.run([ANSIBLE, "-i", lab.inventory, "rt1", "-c", "qemulab.network.console", "-m", "raw",
                           "-a", "ip route"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=playbook_env({"ANSIBLE_STDOUT_CALLBACK": "default"}))
    assert proc.returncode == 0 and "10.81.3.0/24 via 10.81.2.2 dev eth1" in proc.stdout, (proc.stdout, proc.stderr)
    # h1 -> h2 goes through rt1 (10.81.1.1) and rt2 (10.81.2.2): their addresses are the hops
    trace = lab.ssh("h1", "traceroute -n -w 2 -q 1 10.81.3.20")
    hops = re.findall(r"^\s*\d+\s+(\S+)", trace.stdout, re.M)
    assert trace.returncode == 0 and hops[:3] == ["10.81.1.1", "10.81.2.2", "10.81.3.20"], (trace.stdout,
                                                                                              trace.stderr)
    # no sshd and no Python on the routers: they really are reached only by the console
    with open_socket(lab.console_socket("rt2")) as sock:
        session = ConsoleSession(sock, timeout=60, command_timeout=60)
        session.open()
        try:
            rc, out, _err = session.run("command -v sshd dropbear python3; ls /usr/bin/python* 2>/dev/null; "
                                        "cat /etc/network/interfaces; cat /proc/sys/net/ipv4/ip_forward")
        finally:
            session.close()
    assert b"sshd" not in out and b"python" not in out, out
    assert b"up route add -net 10.81.1.0/24 gw 10.81.2.1 dev eth0" in out and out.endswith(b"1\n"), out


def test_a_second_run_changes_nothing(lab):
    again = lab.run()
    assert {host: again.changed(host) for host in again.stats} == dict((host, 0) for host in again.stats), again


PLAY = """
- hosts: h1
  gather_facts: false
  vars:
    ansible_connection: qemulab.network.console
  tasks:
    - name: Name
      ansible.builtin.raw: uname -n
      register: name
    - name: Fail
      ansible.builtin.raw: echo before; echo to stderr >&2; exit 3
      register: fail
      ignore_errors: true
    - name: Script
      ansible.builtin.script: "%s one 'two words'"
      register: script
    - name: Show
      ansible.builtin.debug:
        msg: "{{ {'name': name.stdout, 'fail_rc': fail.rc, 'fail_out': fail.stdout, 'fail_err': fail.stderr,
                  'script': script.stdout} }}"
"""


def test_the_console_connection_on_a_default_image_guest(lab, tmp_path):
    script = tmp_path / "args.sh"
    script.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"arg:$a\"; done\n")
    res = run_playbook(PLAY % script, inventory=lab.inventory)
    shown = res.result("Show", "h1")["msg"]
    assert shown["name"].strip() == "h1", shown
    assert shown["fail_rc"] == 3 and shown["fail_out"].strip() == "before" and "to stderr" in shown["fail_err"], shown
    assert shown["script"].splitlines()[-2:] == ["arg:one", "arg:two words"], shown
    # put and fetch through the plugin's own transfer, checked on the guest by sha256sum
    data = os.urandom(100000)
    with open_socket(lab.console_socket("h1")) as sock:
        session = ConsoleSession(sock, timeout=60, command_timeout=60)
        session.open()
        try:
            session.put(data, "/tmp/qemulab-console-test")
            rc, out, _err = session.run("sha256sum /tmp/qemulab-console-test")
            back = session.fetch("/tmp/qemulab-console-test")
            session.run("rm -f /tmp/qemulab-console-test")
        finally:
            session.close()
    assert rc == 0 and out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert back == data
