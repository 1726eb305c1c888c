"""The seed lab run by a user without root (issue 21's "done when", one user; docs/rootless.md): `lab.yml` with the
seed inventory, as a throwaway user with no sudo and no capabilities, brings the seven guests up in the namespaces
of the user's lab_userns holder, h1 reaches h2 through rt1 -> rt2 -> rt4 (traceroute over SSH through the holder), a
second run changes nothing (and a `--check --diff` run neither), `--tags status` shows the lab, and `--tags cleanup` leaves no process of the user, no
link or namespace in the host's own, nothing under /run/qemulab, /var/lib/qemulab or /var/cache/qemulab, no file
in the user's runtime directory, and in the user's home only the image cache and the guest key.

The user is a system user with a subordinate id range (for mmdebstrap's image build), a home and a runtime
directory in a temporary directory; Ansible's own files lie beside the home, not in it. The image is built once, as
the user, into its own cache (about a minute of dpkg and mke2fs on both cores), so this runs alone, after the lanes.
"""
import json
import os
import pwd
import re
import subprocess
import time

import pytest
from conftest import REPO_ROOT
from rootless_user import VENV, as_user, lab_run_env, files_under, user_pids, user_with_subids
from test_rootless_userns import netns_names, owned_by

# alone: compares the host's own links and namespaces before and after, and builds an image on both cores
pytestmark = [pytest.mark.integration, pytest.mark.alone]

SEED = os.path.join(REPO_ROOT, "inventories", "seed")
LAB_YML = os.path.join(REPO_ROOT, "playbooks", "lab.yml")
LAB = "seed"
# h1 -> rt1 -> rt2 -> rt4 -> h2, by the first address each hop answers from (inventories/seed/host_vars)
PATH_H1_H2 = ["10.20.10.1", "10.20.20.2", "10.20.40.1", "10.20.60.2"]
H1_SSH_PORT = 2205


@pytest.fixture
def user():
    """(name, home, runtime dir, own dir for Ansible's files) of a throwaway user with a subordinate id range; its
    lab is cleaned up, its processes ended, its ids, the user and its home removed afterwards."""
    def clean(name, home, runtime, base):
        lab(name, home, runtime, os.path.join(base, "own"), "--tags", "cleanup")

    with user_with_subids(clean) as (name, home, runtime, base):
        entry = pwd.getpwnam(name)
        own = os.path.join(base, "own")
        os.mkdir(own, 0o700)
        os.chown(own, entry.pw_uid, entry.pw_gid)
        yield name, home, runtime, own


def lab(name, home, runtime, own, *args):
    """ansible-playbook lab.yml -i inventories/seed as the user: (rc, output, seconds)."""
    env = lab_run_env(own)
    started = time.monotonic()
    proc = as_user(name, home, runtime, [os.path.join(VENV, "ansible-playbook"), "-i", SEED, LAB_YML] + list(args),
                   timeout=1800, env=env)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def recap(output):
    """{host: changed} of the run's recap."""
    return dict((m.group(1), int(m.group(2))) for m in re.finditer(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", output,
                                                                    re.M))


def root_links():
    """The host's own links (name and alias), as the root namespace shows them."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] + (" alias " + line.split(" alias ")[1].strip()
                                                             if " alias " in line else "") for line in out.splitlines())


def holder_pid(runtime):
    with open(os.path.join(runtime, "qemulab", "_userns", LAB + ".json")) as f:
        return json.load(f)["pid"]


def qemu_pids(uid):
    out = subprocess.run(["pgrep", "-u", str(uid), "-f", "^qemu-system"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_the_seed_lab_as_a_user_without_root_comes_up_reruns_clean_and_leaves_nothing(user):
    name, home, runtime, own = user
    uid = pwd.getpwnam(name).pw_uid
    links, namespaces = root_links(), netns_names()
    home_files = sorted(os.path.relpath(path, home) for path in files_under(home))  # /etc/skel's

    rc, output, up = lab(name, home, runtime, own)
    assert rc == 0, output[-8000:]
    holder = holder_pid(runtime)
    assert os.stat("/proc/%d" % holder).st_uid == uid
    qemus = qemu_pids(uid)
    assert len(qemus) == 7, output[-4000:]
    for pid in qemus:
        # each QEMU is the user's own, inside the holder's user and network namespaces
        for kind in ("user", "net"):
            assert os.stat("/proc/%d/ns/%s" % (pid, kind)).st_ino == os.stat("/proc/%d/ns/%s" % (holder, kind)).st_ino
    # the verify stage pinged every host from every host and from the lab host's port (in the holder's namespace)
    assert "Ping every host from each host port" in output and "no answer from" not in output

    # h1 reaches h2 through rt1, rt2 and rt4, over SSH through the holder's namespace, as the status table says
    state = os.path.join(home, ".local", "share", "qemulab")
    ssh = ["ssh", "-i", os.path.join(state, "ssh", "id_ed25519"), "-p", str(H1_SSH_PORT), "-o", "BatchMode=yes",
           "-o", "UserKnownHostsFile=" + os.path.join(state, "labs", LAB, "known_hosts"),
           "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
           "-o", "ProxyCommand=nsenter --preserve-credentials -U -n -t %d socat - TCP:127.0.0.1:%%p" % holder,
           "root@127.0.0.1", "traceroute -n -q 1 -w 2 " + PATH_H1_H2[-1]]
    traced = as_user(name, home, runtime, ssh, timeout=120)
    assert traced.returncode == 0, traced.stdout + traced.stderr
    hops = [line.split()[1] for line in traced.stdout.splitlines()[1:]]
    assert hops == PATH_H1_H2, traced.stdout

    # the host's own namespace and the system roots saw nothing of it
    assert root_links() == links
    assert netns_names() == namespaces
    assert owned_by(uid) == []

    rc, again, rerun = lab(name, home, runtime, own)
    assert rc == 0, again[-8000:]
    changed = recap(again)
    assert len(changed) == 8 and set(changed.values()) == {0}, again[-8000:]
    assert sorted(qemu_pids(uid)) == sorted(qemus) and holder_pid(runtime) == holder

    # check mode with --diff on the running lab: nothing to change, nothing changed
    rc, checked, _seconds = lab(name, home, runtime, own, "--check", "--diff")
    assert rc == 0, checked[-8000:]
    assert set(recap(checked).values()) == {0}, checked[-8000:]
    assert sorted(qemu_pids(uid)) == sorted(qemus)

    rc, status, _seconds = lab(name, home, runtime, own, "--tags", "status")
    assert rc == 0, status[-6000:]
    assert len(re.findall(r"^\s*\"(?:rt[1-4]|h1|h2|htest)\s+running\s", status, re.M)) == 7, status[-6000:]
    assert "booted instead of being cloned: a rootless lab's VMs boot" in status
    assert "-t %d socat - TCP:127.0.0.1:%%p" % holder in status

    rc, cleaned, cleanup = lab(name, home, runtime, own, "--tags", "cleanup")
    assert rc == 0, cleaned[-6000:]
    deadline = time.monotonic() + 10
    while user_pids(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert user_pids(name) == []
    assert root_links() == links
    assert netns_names() == namespaces
    assert owned_by(uid) == []
    assert files_under(runtime) == []
    # in the home: the image cache, and the guest key (the lab host's, like root's /var/lib/qemulab/ssh)
    left = sorted(os.path.relpath(path, home) for path in files_under(home))
    assert [path for path in left if not path.startswith(".cache/qemulab/") and path not in home_files] == [
        ".local/share/qemulab/ssh/id_ed25519", ".local/share/qemulab/ssh/id_ed25519.pub"], left
    assert any(path.startswith(".cache/qemulab/images/") for path in left)
    assert os.listdir(os.path.join(state, "labs")) == []
    print("rootless seed lab: bring-up %.1f s (the image built as the user), rerun %.1f s, cleanup %.1f s"
          % (up, rerun, cleanup))
