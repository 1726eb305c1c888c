"""A rootless lab's way out (docs/rootless.md, docs/uplink.md): the lab_uplink role run by a user without root
attaches slirp4netns to the lab_userns holder's namespace, and a machine on the way out's segment reaches a listener
on this machine's 127.0.0.1 through it - the only destination the test ever uses (slirp4netns connects from the host
on the lab's behalf: nothing may go to an address outside this machine).

The user is a throwaway system user (rootless_user.py); every run is a real ansible-playbook as that user. The
"guest" is a network namespace the user makes inside the holder's user namespace, joined to the segment's bridge by a
veth (scaffolding of the test; the guests' own routes are the plan's, tested in test_lab_uplink.py and test_uplink.py):
10.77.20.1/24, default route via the way out's address 10.77.20.254. It reaches the listener as 10.0.4.2 (slirp's
address for the host's loopback) while lab_uplink_host_loopback is on; a rerun changes nothing; switched off
(the default, --disable-host-loopback) the same connection fails; the cleanup leaves no process, no record.
"""
import json
import os
import secrets
import socket
import threading
import time

import pytest
from rootless_user import VENV, alive, as_user, files_under, throwaway_user, user_pids, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

LAB = "ru"
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Holder
      qemulab.network.lab_userns:
        lab: "{{ lab }}"
      register: userns
      when: state == "present"
    - name: The way out's segment, and one it moves to
      qemulab.network.bridge:
        name: "{{ item }}"
        lab: "{{ lab }}"
        userns_pid: "{{ userns.holder.pid }}"
      loop: [br-up, br-up2]
      when: state == "present"
    - name: What the prep play checks first
      ansible.builtin.include_role:
        name: qemulab.network.lab_uplink
        tasks_from: check
      vars:
        lab_uplink_plan: "{{ plan }}"
      when: state == "present"
    - name: The way out
      ansible.builtin.include_role:
        name: qemulab.network.lab_uplink
      vars:
        lab_uplink_lab_name: "{{ lab }}"
        lab_uplink_plan: "{{ plan if state == 'present' else omit }}"
        lab_uplink_state: "{{ state }}"
        lab_uplink_run_root: "{{ runtime }}/qemulab"
        lab_uplink_host_loopback: "{{ host_loopback }}"
    - name: Holder gone
      qemulab.network.lab_userns:
        lab: "{{ lab }}"
        state: absent
      when: state == "absent"
    - name: Write what the run found
      ansible.builtin.copy:
        content: "{{ {'holder': userns.holder | default(none)} | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
      changed_when: false  # the test's own record, a new file every run
"""
# the plan's rendering of lab_uplink for a rootless lab host (test_lab_uplink.py pins it)
PLAN = {"bridge": "br-up", "address": "10.77.20.254/24", "subnet": "10.77.20.0/24", "router": None,
        "owner": "qemulab-" + LAB, "lab": LAB, "netns": "qemulab-" + LAB,
        "slirp4netns": {"tap": "qlu-test0000-s", "mtu": 65520, "network": "10.0.4.0/24", "gateway": "10.0.4.2"}}


class Listener:
    """A TCP listener on this machine's 127.0.0.1 answering each connection with a line naming it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.token = secrets.token_hex(8)
        self.peers = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            conn.sendall(("listener %s\n" % self.token).encode())
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def lab():
    listener = Listener()
    with throwaway_user(PLAYBOOK) as (user, home, runtime, base):
        info = {"user": user, "home": home, "runtime": runtime, "base": base, "listener": listener, "guest": None}
        try:
            yield info
        finally:
            if info["guest"] is not None and alive(info["guest"]):
                os.kill(info["guest"], 9)
            play(info, "absent", check=False)
            listener.close()


def play(lab, state, host_loopback=False, check=True, check_mode=False, plan=None):
    """(what the run found, ansible-playbook's stdout)."""
    out = os.path.join(lab["home"], "out-%d.json" % time.monotonic_ns())
    vars_file = os.path.join(lab["base"], "vars-%d.json" % time.monotonic_ns())
    with open(vars_file, "w") as f:
        json.dump({"lab": LAB, "state": state, "plan": plan or PLAN, "runtime": lab["runtime"], "out": out,
                   "host_loopback": host_loopback}, f)
    os.chmod(vars_file, 0o644)
    proc = as_user(lab["user"], lab["home"], lab["runtime"],
                   [os.path.join(VENV, "ansible-playbook"), "-i", "localhost,", "-c", "local", "--diff"]
                   + (["--check"] if check_mode else [])
                   + [os.path.join(lab["base"], "play.yml"), "-e", "@" + vars_file], timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    found = None
    if os.path.exists(out):
        with open(out) as f:
            found = json.load(f)
    return found, proc.stdout


def recap_changed(stdout):
    line = [line for line in stdout.splitlines() if line.startswith("localhost")][-1]
    return int(line.split("changed=")[1].split()[0])


def enter(pid):
    return ["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(pid)]


def make_guest(lab, holder):
    """A namespace on the segment, inside the holder's user namespace: 10.77.20.1/24, default via the way out."""
    started = as_user(lab["user"], lab["home"], lab["runtime"],
                      ["sh", "-c", 'setsid "$@" </dev/null >/dev/null 2>&1 & echo $!', "sh"] + enter(holder)
                      + ["unshare", "-n", "sleep", "600"])
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 5
    guest = None
    while time.monotonic() < deadline and guest is None:
        for pid in user_pids(lab["user"]):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    if f.read().split(b"\0")[:2] == [b"sleep", b"600"]:
                        guest = pid
            except OSError:
                pass
        time.sleep(0.05)
    assert guest is not None
    lab["guest"] = guest
    steps = [enter(holder) + ["ip", "link", "add", "g-l", "type", "veth", "peer", "name", "g-r", "netns", str(guest)],
             enter(holder) + ["ip", "link", "set", "g-l", "master", "br-up", "up"],
             enter(guest) + ["ip", "link", "set", "g-r", "up"],
             enter(guest) + ["ip", "addr", "add", "10.77.20.1/24", "dev", "g-r"],
             enter(guest) + ["ip", "route", "add", "default", "via", "10.77.20.254"]]
    for argv in steps:
        done = as_user(lab["user"], lab["home"], lab["runtime"], argv)
        assert done.returncode == 0, (argv, done.stderr)
    return guest


def reach(lab, guest, port):
    """What the guest reads from 10.0.4.2:port (the host's 127.0.0.1 through slirp4netns), and the exit status."""
    done = as_user(lab["user"], lab["home"], lab["runtime"], enter(guest) + [
        "timeout", "10", "socat", "-u", "TCP:10.0.4.2:%d,connect-timeout=5" % port, "-"], timeout=30)
    return done.stdout.strip(), done.returncode


def test_the_segment_reaches_the_host_through_slirp4netns_rerun_is_no_change_cleanup_leaves_nothing(lab):
    started = time.monotonic()
    found, stdout = play(lab, "present", host_loopback=True)
    holder = found["holder"]["pid"]
    record_path = os.path.join(lab["runtime"], "qemulab", LAB, "slirp4netns.json")
    with open(record_path) as f:
        record = json.load(f)
    slirp = record["pid"]
    # slirp4netns is the user's own process, outside the holder's namespaces, entering them by the checked fds
    assert os.stat("/proc/%d" % slirp).st_uid == os.stat(lab["runtime"]).st_uid
    assert os.stat("/proc/%d/ns/net" % slirp).st_ino != os.stat("/proc/%d/ns/net" % holder).st_ino
    with open("/proc/%d/cmdline" % slirp, "rb") as f:
        argv = [part.decode() for part in f.read().split(b"\0")[:-1]]
    assert argv == record["argv"] and "--disable-host-loopback" not in argv and argv[-1] == "qlu-test0000-s"
    inside = as_user(lab["user"], lab["home"], lab["runtime"], enter(holder) + ["ip", "-4", "-o", "addr", "show"])
    addresses = set((line.split()[1], line.split()[3]) for line in inside.stdout.splitlines())
    assert {("qlu-test0000-s", "10.0.4.100/24"), ("br-up", "10.77.20.254/24")} <= addresses, inside.stdout
    route = as_user(lab["user"], lab["home"], lab["runtime"], enter(holder) + ["ip", "route", "show", "default"])
    assert route.stdout.split()[:5] == ["default", "via", "10.0.4.2", "dev", "qlu-test0000-s"], route.stdout

    guest = make_guest(lab, holder)
    text, rc = reach(lab, guest, lab["listener"].port)
    assert rc == 0 and text == "listener %s" % lab["listener"].token, (rc, text)
    # slirp4netns connected from this machine's loopback on the guest's behalf
    assert lab["listener"].peers and lab["listener"].peers[-1][0] == "127.0.0.1"
    print("guest reached the host's 127.0.0.1 through slirp4netns %.1f s after the start of the first run"
          % (time.monotonic() - started))

    again, stdout = play(lab, "present", host_loopback=True)
    assert recap_changed(stdout) == 0, stdout[-4000:]
    with open(record_path) as f:
        assert json.load(f)["pid"] == slirp and again["holder"]["pid"] == holder

    # the default: no way to the host's loopback (slirp4netns restarted with --disable-host-loopback); a check run
    # first reports the restart and its diff, and leaves the running one alone
    _found, stdout = play(lab, "present", check_mode=True)
    assert recap_changed(stdout) == 1 and "--disable-host-loopback" not in stdout, stdout[-4000:]
    assert '-        "host_loopback": true,' in stdout and '+        "host_loopback": false,' in stdout, stdout[-4000:]
    assert alive(slirp) and reach(lab, guest, lab["listener"].port)[1] == 0
    _found, stdout = play(lab, "present")
    assert recap_changed(stdout) >= 1 and wait_gone(slirp)
    before = len(lab["listener"].peers)
    text, rc = reach(lab, guest, lab["listener"].port)
    assert rc != 0 and text == "" and len(lab["listener"].peers) == before
    with open(record_path) as f:
        assert "--disable-host-loopback" in json.load(f)["argv"]

    # the way out moved to another segment: the address leaves the old bridge, the same process serves the new one
    with open(record_path) as f:
        slirp = json.load(f)["pid"]
    _found, stdout = play(lab, "present", plan=dict(PLAN, bridge="br-up2"))
    assert recap_changed(stdout) >= 1, stdout[-4000:]
    inside = as_user(lab["user"], lab["home"], lab["runtime"], enter(holder) + ["ip", "-4", "-o", "addr", "show"])
    addresses = set((line.split()[1], line.split()[3]) for line in inside.stdout.splitlines())
    assert ("br-up2", "10.77.20.254/24") in addresses and not any(dev == "br-up" for dev, _a in addresses)
    with open(record_path) as f:
        assert json.load(f)["pid"] == slirp and alive(slirp)
    with open(os.path.join(lab["runtime"], "qemulab", LAB, "uplink.json")) as f:
        assert json.load(f)["bridge"] == "br-up2"

    os.kill(guest, 9)
    assert wait_gone(guest)
    play(lab, "absent")
    assert wait_gone(holder)
    assert user_pids(lab["user"]) == []
    assert files_under(lab["runtime"]) == []
    print("whole test %.1f s" % (time.monotonic() - started))
