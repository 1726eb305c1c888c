"""Two users without root, one lab name, side by side (issue 21's "done when"; docs/rootless.md), each lab with a
way out through slirp4netns (lab_uplink on a rootless lab host):

    h1 (10.72.1.10) -- upbrin -- r1 (10.72.1.1 | 10.72.2.1) -- upbrout -- 10.72.2.254 in the lab's namespace
                                                                             |  slirp4netns (its tap, 10.0.4.100)
    the host's 127.0.0.1 <- 10.0.4.2 (lab_uplink_host_loopback: true) <------+

Users A and B have the same inventory: the same lab_name, lab_netns, NIC names and even the same SSH forward ports
(each on 127.0.0.1 of its own holder's namespace). A brings its lab up (building its image as itself), then B (its
image cache is a copy of A's: the build as a user is test_rootless_image's and test_rootless_lab's). Each h1 fetches,
through its router's NAT and the way out, a page only a listener on the host's 127.0.0.1 serves - the only address
outside the labs any packet goes to. A rerun of A's lab changes nothing; B's cleanup leaves A's lab (same QEMU and
holder pids, h1 still out through the way out); A's cleanup leaves no process of either user and nothing in the
host's own links and namespaces, the system roots or the users' runtime directories.
"""
import contextlib
import http.server
import json
import os
import pwd
import secrets
import shutil
import subprocess
import threading
import time

import pytest
from conftest import REPO_ROOT
from rootless_user import VENV, as_user, lab_run_env, files_under, user_pids, user_with_subids
from test_rootless_lab import qemu_pids, recap, root_links
from test_rootless_userns import netns_names, owned_by

# alone: compares the host's own links and namespaces before and after, and builds an image on both cores
pytestmark = [pytest.mark.integration, pytest.mark.alone]

LAB_YML = os.path.join(REPO_ROOT, "playbooks", "lab.yml")
LAB = "twin"
PORTS = {"r1": 2301, "h1": 2302}


def inventory(path):
    files = {
        "hosts.yml": {"all": {"children": {
            "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                    "ansible_python_interpreter": os.path.join(VENV, "python")}}},
            "lab": {"children": {"routers": {"hosts": {"r1": None}}, "hosts": {"hosts": {"h1": None}}}}}}},
        "group_vars/all.yml": {"lab_name": LAB, "lab_netns": "qemulab-" + LAB,
                               "lab_uplink": {"bridge": "upbrout", "address": "10.72.2.254/24", "router": "r1"},
                               "lab_uplink_host_loopback": True},
        # no key or known_hosts: a rootless lab's vm_launch gives the guests the user's own
        "group_vars/lab.yml": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                               "ansible_python_interpreter": "/usr/bin/python3", "vm_memory": "256M"},
        "host_vars/r1.yml": {"ansible_port": PORTS["r1"],
                             "vm_nics": [{"bridge": "upbrin", "tap": "upin1", "address": "10.72.1.1/24"},
                                         {"bridge": "upbrout", "tap": "upout1", "address": "10.72.2.1/24"}]},
        "host_vars/h1.yml": {"ansible_port": PORTS["h1"],
                             "vm_nics": [{"bridge": "upbrin", "tap": "upin2", "address": "10.72.1.10/24"}]},
    }
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
        with open(os.path.join(path, rel), "w") as f:
            json.dump(data, f)  # JSON is YAML


class User:
    """A throwaway user with a subordinate id range and its own copy of the inventory."""

    def __init__(self, name, home, runtime, base):
        self.name, self.home, self.runtime = name, home, runtime
        self.uid = pwd.getpwnam(name).pw_uid
        self.own = os.path.join(base, "own")
        self.inventory = os.path.join(base, "inventory")
        inventory(self.inventory)
        os.mkdir(self.own, 0o700)
        os.chown(self.own, self.uid, pwd.getpwnam(name).pw_gid)
        self.state = os.path.join(home, ".local", "share", "qemulab")

    def lab(self, *args):
        """ansible-playbook lab.yml as the user: (rc, output)."""
        env = lab_run_env(self.own)
        proc = as_user(self.name, self.home, self.runtime,
                       [os.path.join(VENV, "ansible-playbook"), "-i", self.inventory, LAB_YML] + list(args),
                       timeout=1800, env=env)
        return proc.returncode, proc.stdout + proc.stderr

    def holder(self):
        with open(os.path.join(self.runtime, "qemulab", "_userns", LAB + ".json")) as f:
            return json.load(f)["pid"]

    def on_h1(self, command):
        ssh = ["ssh", "-i", os.path.join(self.state, "ssh", "id_ed25519"), "-p", str(PORTS["h1"]),
               "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=" + os.path.join(self.state, "labs", LAB,
                                                                                "known_hosts"),
               "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
               "-o", "ProxyCommand=nsenter --preserve-credentials -U -n -t %d socat - TCP:127.0.0.1:%%p"
               % self.holder(), "root@127.0.0.1", command]
        return as_user(self.name, self.home, self.runtime, ssh, timeout=120)


@contextlib.contextmanager
def lab_user():
    """A User whose lab is cleaned up before the user goes (rootless_user.user_with_subids)."""
    users = []
    with user_with_subids(lambda *args: users[0].lab("--tags", "cleanup")) as entry:
        users.append(User(*entry))
        yield users[0]


@pytest.fixture
def listener():
    """(port, token) of an HTTP server on the host's 127.0.0.1 only, answering /token with the token."""
    token = secrets.token_hex(8)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (token + "\n").encode() if self.path == "/token" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], token
    finally:
        server.shutdown()
        server.server_close()


def fetch(user, port, token):
    # the guest's Python (its busybox-static wget crashes on this image); 10.0.4.2 is slirp4netns's host loopback
    proc = user.on_h1("python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], "
                      "timeout=20).read().decode().strip())' http://10.0.4.2:%d/token" % port)
    if proc.returncode == 0 and proc.stdout.strip() == token:
        return True
    slirp = subprocess.run(["pgrep", "-a", "-u", user.name, "slirp4netns"], capture_output=True, text=True).stdout
    raise AssertionError("%s's h1 did not fetch the token: %s %s (the user's slirp4netns: %s)"
                         % (user.name, proc.stdout, proc.stderr[-600:], slirp))


def test_two_users_run_labs_of_one_name_side_by_side_each_with_its_way_out(listener):
    port, token = listener
    links, namespaces = root_links(), netns_names()
    with lab_user() as a, lab_user() as b:
        rc, output = a.lab()
        assert rc == 0, output[-8000:]
        # B's image cache is a copy of A's (the same key: a rootless build is the same for every user)
        images = os.path.join(b.home, ".cache", "qemulab")
        shutil.copytree(os.path.join(a.home, ".cache", "qemulab", "images"), os.path.join(images, "images"),
                        symlinks=True)
        gid = pwd.getpwnam(b.name).pw_gid
        for path in [images] + [os.path.join(d, n) for d, dirs, files in os.walk(images) for n in dirs + files]:
            os.lchown(path, b.uid, gid)
        rc, output = b.lab()
        assert rc == 0, output[-8000:]

        # two holders, two pairs of namespaces, each user's QEMUs in their own
        assert a.holder() != b.holder()
        for kind in ("user", "net"):
            assert os.stat("/proc/%d/ns/%s" % (a.holder(), kind)).st_ino != \
                os.stat("/proc/%d/ns/%s" % (b.holder(), kind)).st_ino
        qemus_a = qemu_pids(a.uid)
        assert len(qemus_a) == 2 and len(qemu_pids(b.uid)) == 2
        # each h1 goes out through its own router and way out to the listener on the host's 127.0.0.1
        assert fetch(a, port, token)
        assert fetch(b, port, token)
        assert root_links() == links and netns_names() == namespaces
        assert owned_by(a.uid) == [] and owned_by(b.uid) == []

        rc, again = a.lab()
        assert rc == 0, again[-8000:]
        changed = recap(again)
        assert len(changed) == 3 and set(changed.values()) == {0}, again[-8000:]

        rc, cleaned = b.lab("--tags", "cleanup")
        assert rc == 0, cleaned[-6000:]
        deadline = time.monotonic() + 10
        while user_pids(b.name) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert user_pids(b.name) == []
        assert files_under(b.runtime) == []
        # A's lab is untouched by B's cleanup of a lab of the same name
        assert sorted(qemu_pids(a.uid)) == sorted(qemus_a)
        assert fetch(a, port, token)

        rc, cleaned = a.lab("--tags", "cleanup")
        assert rc == 0, cleaned[-6000:]
        deadline = time.monotonic() + 10
        while user_pids(a.name) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert user_pids(a.name) == []
        assert files_under(a.runtime) == []
        assert root_links() == links and netns_names() == namespaces
        assert owned_by(a.uid) == [] and owned_by(b.uid) == []
