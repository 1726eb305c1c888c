"""A rootless lab's guests (docs/rootless.md, issue 21): a user without root makes the lab's bridge and taps in the
namespace of its lab_userns holder and starts two guests of the default image inside it with qemu_vm, all through
real ansible-playbook runs as that user.

The user is a throwaway system user (rootless_user.py). The guests' overlays lie in the user's home, backed by the
world-readable cached image; QEMU runs as the user inside the holder's user and network namespace, so its SSH forwards
are on that namespace's 127.0.0.1, reached through `nsenter ... socat` as a ProxyCommand, and its taps are the
holder's. Every lab address is inside the guests or the holder's namespace. A second run changes nothing; qemu_vm
absent and lab_userns absent leave no process of the user and no file in its runtime directory.
"""
import json
import os
import time

import pytest
from conftest import run_playbook
from rootless_user import as_user, files_under, playbook_argv, throwaway_user, user_pids, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

LAB = "rq"
IMAGE_PLAY = """
- name: Guest image
  hosts: localhost
  gather_facts: false
  roles:
    - role: qemulab.network.guest_image
"""
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Holder
      qemulab.network.lab_userns:
        lab: "{{ lab }}"
      register: userns
      when: state == "present"
    - name: Bridge
      qemulab.network.bridge:
        name: br0
        lab: "{{ lab }}"
        userns_pid: "{{ userns.holder.pid }}"
      register: bridge
      when: state == "present"
    - name: Taps
      qemulab.network.tap:
        name: "{{ item.tap }}"
        bridge: br0
        lab: "{{ lab }}"
        userns_pid: "{{ userns.holder.pid }}"
      loop: "{{ vms }}"
      register: taps
      when: state == "present"
    - name: Overlays
      qemulab.network.disk_overlay:
        path: "{{ home }}/{{ item.name }}.qcow2"
        backing: "{{ image.guest_image_disk }}"
      loop: "{{ vms }}"
      when: state == "present"
    - name: Guests
      qemulab.network.qemu_vm:
        name: "{{ item.name }}"
        lab: "{{ lab }}"
        run_dir: "{{ runtime }}/qemulab/{{ lab }}/{{ item.name }}"
        userns_pid: "{{ userns.holder.pid }}"
        kernel: "{{ image.guest_image_kernel }}"
        initrd: "{{ image.guest_image_initrd }}"
        append: "{{ image.guest_image_append }} qemulab.nics={{ item.mac }} qemulab.mgmt={{ item.mgmt }}
          qemulab.hostname={{ item.name }}"
        disks: [{file: "{{ home }}/{{ item.name }}.qcow2", format: qcow2}]
        memory: 256M
        accelerator: tcg
        fw_cfg:
          - {name: opt/qemulab/interfaces, content: "{{ item.interfaces }}"}
          - {name: opt/qemulab/sysctl, content: "net.ipv4.ip_forward = 0\\n"}
          - {name: opt/qemulab/authorized_keys, content: "{{ client_public }}"}
          - {name: opt/qemulab/ssh_host_ed25519_key, content: "{{ host_private }}", secret: true}
        nics:
          - {mac: "{{ item.mac }}", ifname: "{{ item.tap }}"}
          - {backend: user, mac: "{{ item.mgmt }}", hostfwd: [{host_port: "{{ item.port }}", guest_port: 22}]}
      loop: "{{ vms }}"
      register: guests
      when: state == "present"
    - name: Write what the tasks returned
      ansible.builtin.copy:
        content: "{{ {'userns': userns, 'bridge': bridge, 'taps': taps, 'guests': guests} | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
      changed_when: false  # the test's own record, a new file every run
      when: state == "present"

- hosts: localhost
  gather_facts: false
  tasks:
    - name: Guests gone
      qemulab.network.qemu_vm:
        name: "{{ item.name }}"
        lab: "{{ lab }}"
        run_dir: "{{ runtime }}/qemulab/{{ lab }}/{{ item.name }}"
        state: absent
        stop_timeout: 0
      loop: "{{ vms }}"
      when: state == "absent"
    - name: The lab's run directory (the teardown role's part)
      ansible.builtin.file:
        path: "{{ runtime }}/qemulab/{{ lab }}"
        state: absent
      when: state == "absent"
    - name: Holder gone
      qemulab.network.lab_userns:
        lab: "{{ lab }}"
        state: absent
      when: state == "absent"
"""
VMS = [{"name": "vm1", "tap": "tap1", "mac": "52:54:00:7a:00:01", "mgmt": "52:54:00:7a:00:f1", "port": 2201,
        "address": "10.77.0.1"},
       {"name": "vm2", "tap": "tap2", "mac": "52:54:00:7a:00:02", "mgmt": "52:54:00:7a:00:f2", "port": 2202,
        "address": "10.77.0.2"}]


@pytest.fixture(scope="module")
def image():
    """The default guest image's facts (cached under /var/cache/qemulab, world-readable; built on a first run)."""
    res = run_playbook(IMAGE_PLAY, timeout=3600)
    assert res.rc == 0, res
    return res.result("qemulab.network.guest_image : Publish the image for the lab roles")["ansible_facts"]


@pytest.fixture
def lab(image):
    with throwaway_user(PLAYBOOK) as (user, home, runtime, base):
        keys = {}
        for kind in ("client", "host"):
            path = os.path.join(home, kind)
            made = as_user(user, home, runtime, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path])
            assert made.returncode == 0, made.stderr
            with open(path) as f:
                keys[kind] = (f.read(), open(path + ".pub").read())
        vms = [dict(vm, interfaces="auto lo eth0\niface lo inet loopback\niface eth0 inet static\n"
                                   "    address %s\n    netmask 255.255.255.0\n" % vm["address"]) for vm in VMS]
        extra = {"lab": LAB, "home": home, "runtime": runtime, "vms": vms, "image": image,
                 "client_public": keys["client"][1], "host_private": keys["host"][0]}
        info = {"user": user, "home": home, "runtime": runtime, "base": base, "extra": extra,
                "host_public": keys["host"][1]}
        try:
            yield info
        finally:
            play(info, "absent", check=False)


def play(lab, state, check=True):
    """One run of the playbook as the user: (result of the present run's tasks or None, ansible-playbook's stdout)."""
    out = os.path.join(lab["home"], "out-%d.json" % time.monotonic_ns())
    extra = dict(lab["extra"], state=state, out=out)
    vars_file = os.path.join(lab["base"], "vars-%s.json" % state)
    with open(vars_file, "w") as f:
        json.dump(extra, f)
    os.chmod(vars_file, 0o644)
    proc = as_user(lab["user"], lab["home"], lab["runtime"], playbook_argv(os.path.join(lab["base"], "play.yml"),
                                                                           vars_file), timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    if state == "present" and os.path.exists(out):
        with open(out) as f:
            return json.load(f), proc.stdout
    return None, proc.stdout


def ssh_argv(lab, pid, vm, command):
    known = os.path.join(lab["home"], "known_hosts")
    with open(known, "w") as f:
        f.write("".join("[127.0.0.1]:%d %s\n" % (v["port"], " ".join(lab["host_public"].split()[:2])) for v in VMS))
    os.chmod(known, 0o644)
    return ["ssh", "-i", os.path.join(lab["home"], "client"), "-p", str(vm["port"]), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + known, "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
            "-o", "ProxyCommand=nsenter --preserve-credentials -U -n -t %d socat - TCP:127.0.0.1:%%p" % pid,
            "root@127.0.0.1", command]


def wait_ssh(lab, pid, vm, timeout):
    """Seconds until `true` ran over SSH through the holder's namespace, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        done = as_user(lab["user"], lab["home"], lab["runtime"], ssh_argv(lab, pid, vm, "true"), timeout=60)
        if done.returncode == 0:
            return time.monotonic() - start
        time.sleep(1)
    return None


def recap_changed(stdout):
    line = [line for line in stdout.splitlines() if line.startswith("localhost")][-1]
    return int(line.split("changed=")[1].split()[0])


def test_two_guests_in_the_holders_namespace_reach_each_other_and_leave_nothing(lab):
    started = time.monotonic()
    first, _stdout = play(lab, "present")
    holder = first["userns"]["holder"]["pid"]
    guests = first["guests"]["results"]
    assert [g["changed"] for g in guests] == [True, True] and all(g["started"] for g in guests)
    assert first["bridge"]["changed"] and first["bridge"]["netns"] == "holder %d of lab %s" % (holder, LAB)
    holder_net = os.stat("/proc/%d/ns/net" % holder).st_ino
    holder_user = os.stat("/proc/%d/ns/user" % holder).st_ino
    uid = os.stat(lab["runtime"]).st_uid
    for guest in guests:
        # QEMU is the user's own process, in the holder's namespaces, with its taps from there
        assert os.stat("/proc/%d" % guest["pid"]).st_uid == uid
        assert os.stat("/proc/%d/ns/net" % guest["pid"]).st_ino == holder_net
        assert os.stat("/proc/%d/ns/user" % guest["pid"]).st_ino == holder_user
        assert guest["user"] == lab["user"] and guest["run_dir"].startswith(lab["runtime"] + "/qemulab/")
    inside = as_user(lab["user"], lab["home"], lab["runtime"],
                     ["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(holder), "ip", "-o", "link", "show"])
    assert inside.returncode == 0, inside.stderr
    for tap in ("tap1", "tap2"):
        assert "%s: " % tap in inside.stdout and "master br0" in inside.stdout.split("%s: " % tap)[1].split("\n")[0]
    # the forwards listen on the holder's 127.0.0.1 (the host's may hold the same ports: the seed lab's are 22xx)
    listening = as_user(lab["user"], lab["home"], lab["runtime"], ["nsenter", "--preserve-credentials", "-U", "-n",
                                                                   "-t", str(holder), "ss", "-Htln"])
    assert {"127.0.0.1:2201", "127.0.0.1:2202"} <= set(line.split()[3] for line in listening.stdout.splitlines())

    waited = wait_ssh(lab, holder, VMS[0], 150)
    assert waited is not None, "no SSH through the holder's namespace to vm1; see %s" % guests[0]["console_log"]
    assert wait_ssh(lab, holder, VMS[1], 60) is not None
    print("SSH through the holder's namespace %.1f s after the start run returned" % waited)
    ping = as_user(lab["user"], lab["home"], lab["runtime"],
                   ssh_argv(lab, holder, VMS[0], "hostname; ping -c 3 -W 2 %s" % VMS[1]["address"]), timeout=60)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.split()[0] == "vm1" and " 0% packet loss" in ping.stdout

    second, stdout = play(lab, "present")
    assert recap_changed(stdout) == 0, stdout[-4000:]
    assert [g["pid"] for g in second["guests"]["results"]] == [g["pid"] for g in guests]

    _none, stdout = play(lab, "absent")
    for guest in guests:
        assert wait_gone(guest["pid"]), "QEMU %d outlived qemu_vm absent" % guest["pid"]
    assert wait_gone(holder)
    assert user_pids(lab["user"]) == []
    assert files_under(lab["runtime"]) == []
    print("whole run %.1f s" % (time.monotonic() - started))
