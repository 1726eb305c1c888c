"""A user without root builds the default guest image with the guest_image role (docs/rootless.md), through a real
ansible-playbook run as that user, and boots it with QEMU as that user.

A throwaway system user is made (home, Ansible's own files and the guest key in a temporary directory) and removed
afterwards with its processes and its /etc/subuid and /etc/subgid lines. First, without a subordinate id range, the
run must fail before anything is built and name the administrator's step. Then, with a range: the image lands in
the user's cache root (~/.cache/qemulab/images/<key>, the key naming the rootless builder), its files belong to the
user, and inside the ext4 disk the files have the guest's owners (/etc/shadow 0:42 0640, /usr/bin/passwd 0:0
04755), so mke2fs read the tree through mmdebstrap's id map; a second run is changed=0; a build of another key
(one more MiB of disk) downloads no .deb (the .deb cache); the image boots to sshd as the user, which proves the
owners the guest sees; a tree of the user's subordinate ids left by a killed build, which the user cannot remove
from outside, goes with the next run's pruning. Nothing new is left in the user's home but ~/.cache/qemulab.

It builds twice (38-90 s each here, 2026-11-28; 113 s in all) and boots once, keeping both cores busy with dpkg and
mke2fs: it runs in `make test-alone`, by itself, not beside the lanes' guest boots.
"""
import json
import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import time

import pytest
from rootless_user import SUBIDS, free_subid_start, subid_lines
from test_rootless_userns import rootless_user as throwaway_user, user_pids  # noqa: F401 (a fixture)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.join(REPO_ROOT, ".venv", "bin")
COLLECTIONS = os.path.join(REPO_ROOT, ".build", "collections")
# alone: minutes of dpkg and mke2fs work on both cores; nothing host-wide is compared, but beside the two lanes it
# would slow every guest boot of the suite.
pytestmark = [pytest.mark.integration, pytest.mark.alone]

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: qemulab.network.guest_image
  post_tasks:
    - ansible.builtin.copy:
        content: "{{ __guest_image | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
      changed_when: false
"""


# Run as the user: a directory with a tree owned by the guest's ids (root's etc/ of mode 0700 owned by uid 5) made
# in the build namespace, as mmdebstrap and the later steps leave it.
LEFTOVER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.qemulab.network.plugins.module_utils import _guest_image_userns as userns
top = sys.argv[2]
os.mkdir(top)

def make():
    os.makedirs(os.path.join(top, "rootfs", "etc"))
    open(os.path.join(top, "rootfs", "etc", "shadow"), "w").close()
    os.chown(os.path.join(top, "rootfs", "etc", "shadow"), 0, 42)
    os.chown(os.path.join(top, "rootfs", "etc"), 5, 5)
    os.chmod(os.path.join(top, "rootfs", "etc"), 0o700)
    os.chown(os.path.join(top, "rootfs"), 0, 0)

userns.run_mapped(make, *userns.current_ranges())
"""


@pytest.fixture
def rootless_user(throwaway_user):  # noqa: F811 (the fixture imported above)
    """test_rootless_userns's throwaway user (removed with its processes afterwards), plus a directory of its own
    outside its home and a subordinate id range only once the test gives it one (taken back here)."""
    name, home, _runtime, base = throwaway_user
    entry = pwd.getpwnam(name)
    own = os.path.join(base, "own")  # the user's files that are not the image cache: Ansible's, the guest key
    os.mkdir(own, 0o700)
    os.chown(own, entry.pw_uid, entry.pw_gid)
    with open(os.path.join(base, "image.yml"), "w") as f:
        f.write(PLAYBOOK)
    try:
        yield name, home, own, base
    finally:
        for line in subid_lines(name):
            first, count = line.strip().split(":")[1:]
            subprocess.run(["usermod", "--del-subuids", "%s-%d" % (first, int(first) + int(count) - 1),
                            "--del-subgids", "%s-%d" % (first, int(first) + int(count) - 1), name],
                           capture_output=True, check=False)
        assert not subid_lines(name), "%s's subordinate ids are still in /etc/subuid or /etc/subgid" % name


def as_user(user, home, own, argv, timeout=900):
    env = ["env", "-i", "HOME=" + home, "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
           "ANSIBLE_COLLECTIONS_PATH=" + COLLECTIONS, "ANSIBLE_HOME=" + os.path.join(own, "ansible"),
           "ANSIBLE_LOCAL_TEMP=" + os.path.join(own, "ansible", "tmp"),
           "ANSIBLE_REMOTE_TMP=" + os.path.join(own, "ansible", "tmp"),
           "ANSIBLE_PYTHON_INTERPRETER=" + os.path.join(VENV, "python")]
    return subprocess.run(["runuser", "-u", user, "--"] + env + argv, capture_output=True, text=True, cwd=own,
                          timeout=timeout, check=False)


def play(user, home, own, base, **extra):
    """(rc, the recap's changed count, the module's result, output) of the role run as the user."""
    out = os.path.join(own, "result-%s.json" % secrets.token_hex(3))
    extra = dict(extra, out=out, guest_image_ssh_key=os.path.join(own, "ssh", "id_ed25519"))
    proc = as_user(user, home, own, [os.path.join(VENV, "ansible-playbook"), "-i", "localhost,", "-c", "local",
                                     os.path.join(base, "image.yml"), "-e", json.dumps(extra)])
    text = proc.stdout + proc.stderr
    recap = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)", proc.stdout)
    result = None
    if os.path.exists(out):
        with open(out) as f:
            result = json.load(f)
    return proc.returncode, int(recap.group(1)) if recap else None, result, text


def debugfs_stat(disk, path):
    """(uid, gid, mode) of `path` inside the ext4 image, as the guest's kernel will see them."""
    out = subprocess.run(["debugfs", "-R", "stat " + path, disk], capture_output=True, text=True, check=True).stdout
    m = re.search(r"Mode:\s+(\d+).*?\n.*?User:\s+(\d+)\s+Group:\s+(\d+)", out, re.S)
    assert m, out
    return int(m.group(2)), int(m.group(3)), int(m.group(1), 8)


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banner(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                data = s.recv(64)
                if data.startswith(b"SSH-"):
                    return data
        except OSError:
            pass
        time.sleep(1)
    return None


def boot_and_read_owners(user, home, own, image, append):
    """Boot the image with QEMU as the user (user-mode network only, the forward on 127.0.0.1) and read, over SSH,
    the owners the guest sees; the overlay, keys and console log are in the user's own directory."""
    mac = "52:54:00:b2:00:0f"
    port = free_port()
    overlay, key, console = (os.path.join(own, n) for n in ("vm.qcow2", "client", "console.log"))
    for argv in (["qemu-img", "create", "-q", "-f", "qcow2", "-b", image["disk"], "-F", "raw", overlay],
                 ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key],
                 ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key + "-host"]):
        proc = as_user(user, home, own, argv, timeout=60)
        assert proc.returncode == 0, proc.stderr
    with open(key + "-host.pub") as f:
        host_public = " ".join(f.read().split()[:2])
    known_hosts = os.path.join(own, "known_hosts")
    with open(known_hosts, "w") as f:
        f.write("[127.0.0.1]:%d %s\n" % (port, host_public))
    qemu = ["runuser", "-u", user, "--", "qemu-system-x86_64", "-accel", "tcg,tb-size=64", "-m", "384",
            "-nodefaults", "-display", "none", "-serial", "file:" + console,
            "-kernel", image["kernel"], "-initrd", image["initrd"],
            "-append", "%s qemulab.mgmt=%s qemulab.hostname=rootless" % (append, mac),
            "-drive", "file=%s,format=qcow2,if=virtio" % overlay,
            "-netdev", "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22" % port,
            "-device", "virtio-net-pci,netdev=mgmt,mac=" + mac,
            "-fw_cfg", "name=opt/qemulab/authorized_keys,file=%s.pub" % key,
            "-fw_cfg", "name=opt/qemulab/ssh_host_ed25519_key,file=%s-host" % key]
    vm = subprocess.Popen(qemu, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert banner(port, 120), "no SSH banner in 120 s; console: %s" % open(console, errors="replace").read()[-2000:]
        out = as_user(user, home, own, [
            "ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=" + known_hosts, "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", "stat -c '%u:%g %a %n' /etc/shadow /usr/bin/passwd /root; id -u"],
            timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout
    finally:
        os.killpg(vm.pid, signal.SIGKILL)  # the session this test started for QEMU
        vm.wait(timeout=10)


def test_a_user_without_root_builds_the_image_reuses_it_and_boots_it(rootless_user):
    user, home, own, base = rootless_user
    entry = pwd.getpwnam(user)
    home_before = files_under(home)
    cache = os.path.join(home, ".cache", "qemulab")

    # No subordinate ids yet: refused before anything is built, naming the administrator's step.
    rc, _changed, _result, text = play(user, home, own, base)
    assert rc != 0
    assert "cannot build image" in text and "usermod --add-subuids" in text and "The one admin step" in text, text
    assert not os.path.exists(os.path.join(cache, "images")) or not [
        n for n in os.listdir(os.path.join(cache, "images")) if not n.startswith(".apt-candidates")], text

    start = free_subid_start()
    subprocess.run(["usermod", "--add-subuids", "%d-%d" % (start, start + SUBIDS - 1),
                    "--add-subgids", "%d-%d" % (start, start + SUBIDS - 1), user], check=True)

    t0 = time.monotonic()
    rc, changed, first, text = play(user, home, own, base)
    first_s = time.monotonic() - t0
    assert rc == 0 and changed and changed > 0, text
    manifest = first["manifest"]
    assert first["dir"] == os.path.join(cache, "images", first["key"])
    assert manifest["inputs"]["builder"] == "mmdebstrap-unshare"
    assert manifest["debs_downloaded"] > 0, "a first build with an empty .deb cache downloaded nothing?"
    for name in ("vmlinuz", "vmlinux", "initrd.img", "disk.ext4", "manifest.json"):
        st = os.stat(os.path.join(first["dir"], name))
        assert (st.st_uid, st.st_gid) == (entry.pw_uid, entry.pw_gid) and st.st_size > 0, name
    assert first["kernel"].endswith("/vmlinux") and first["initrd"].endswith("/initrd.img")
    assert debugfs_stat(first["disk"], "/etc/shadow") == (0, 42, 0o640)
    assert debugfs_stat(first["disk"], "/usr/bin/passwd") == (0, 0, 0o4755)

    rc, changed, again, text = play(user, home, own, base)
    assert rc == 0 and changed == 0, text
    assert again["key"] == first["key"] and again["manifest"] == manifest

    # another key (one more MiB of disk): a full build again, every .deb from the cache
    t0 = time.monotonic()
    rc, changed, second, text = play(user, home, own, base, guest_image_disk_size_mb=2049)
    second_s = time.monotonic() - t0
    assert rc == 0 and changed > 0 and second["key"] != first["key"], text
    assert second["manifest"]["debs_downloaded"] == 0, second["manifest"]
    print("rootless build: first %.1f s (%s), second %.1f s (%s)" % (first_s, manifest["timings"], second_s,
                                                                    second["manifest"]["timings"]))

    seen = boot_and_read_owners(user, home, own, first, first["append"])
    lines = seen.split("\n")
    assert "0:42 640 /etc/shadow" in lines and "0:0 4755 /usr/bin/passwd" in lines and "0:0 700 /root" in lines, seen
    assert lines[-2] == "0", seen

    # What a killed rootless build leaves: a tree of the guest's ids, i.e. the user's subordinate ids, that the user
    # cannot remove from outside; the next run's pruning removes it from inside the namespace.
    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover = os.path.join(cache, "images", ".build-%s-%d" % (first["key"], gone.pid))
    made = as_user(user, home, own, [os.path.join(VENV, "python"), "-c", LEFTOVER, COLLECTIONS, leftover], timeout=60)
    assert made.returncode == 0, made.stderr
    assert os.stat(os.path.join(leftover, "rootfs", "etc")).st_uid == start + 5
    stuck = as_user(user, home, own, ["rm", "-rf", leftover], timeout=60)
    assert stuck.returncode != 0 and os.path.exists(os.path.join(leftover, "rootfs", "etc", "shadow")), stuck
    rc, changed, _result, text = play(user, home, own, base)
    assert rc == 0 and changed == 1 and not os.path.exists(leftover), text

    new = [path for path in files_under(home) if path not in home_before]
    assert new and all(path.startswith(".cache/qemulab/") for path in new), new
    assert not [p for p in new if "/.build-" in p or "/rootfs/" in p], new
    assert user_pids(user) == []
