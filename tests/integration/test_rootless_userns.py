"""A user without root keeps a lab's namespaces alive with lab_userns (docs/rootless.md), through a real
ansible-playbook run as that user.

A throwaway system user is made for the module (home and runtime directory in a temporary directory) and removed
afterwards with everything it ran: the test ends by pid any process the user still has, and fails if there was one.
The holder must outlive the Ansible run that started it, be found again by the next run (changed=0, same pid), hold a
user and a network namespace that are not the host's and that the user can enter with nsenter, and be ended by
state=absent with nothing left in the user's run directory. A record whose pid now belongs to another process of the
user (a recycled pid) must be neither taken for the holder nor signalled.
"""
import json
import os
import pwd
import re
import secrets
import signal
import subprocess
import time

import pytest
from conftest import REPO_ROOT
from rootless_user import VENV, alive, as_user, files_under, throwaway_user, user_pids, wait_gone

LAB = "rl"

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - qemulab.network.lab_userns:
        lab: "{{ lab }}"
        state: "{{ state }}"
      register: result
    - ansible.builtin.copy:
        content: "{{ result | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


@pytest.fixture
def rootless_user():
    """(name, home, runtime dir, base) of a new system user with no privileges; removed with all its processes after."""
    with throwaway_user(PLAYBOOK) as user:
        yield user


def play(user, home, runtime, base, state):
    out = os.path.join(home, "result-%s.json" % secrets.token_hex(3))
    proc = as_user(user, home, runtime, [os.path.join(VENV, "ansible-playbook"), "-i", "localhost,", "-c", "local",
                                         os.path.join(base, "play.yml"), "-e", "lab=%s state=%s out=%s"
                                         % (LAB, state, out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as f:
        return json.load(f)


def test_holder_outlives_the_run_is_found_again_and_ends_with_absent(rootless_user):
    user, home, runtime, base = rootless_user
    uid = pwd.getpwnam(user).pw_uid

    first = play(user, home, runtime, base, "present")
    assert first["changed"] is True and first["stale"] is False
    pid = first["holder"]["pid"]
    assert alive(pid), "the holder ended with the Ansible run that started it"
    assert os.stat("/proc/%d" % pid).st_uid == uid
    record = os.path.join(runtime, "qemulab", "_userns", LAB + ".json")
    assert first["record"] == record and os.path.isfile(record)
    assert os.stat(os.path.join(runtime, "qemulab")).st_mode & 0o777 == 0o700
    for kind in ("user", "net"):
        assert os.stat("/proc/%d/ns/%s" % (pid, kind)).st_ino != os.stat("/proc/self/ns/%s" % kind).st_ino

    second = play(user, home, runtime, base, "present")
    assert second["changed"] is False and second["holder"] == first["holder"]

    # the user enters the namespaces as root inside, sees only the lab namespace's own loopback, and can make a bridge
    inside = as_user(user, home, runtime, first["enter"] + ["sh", "-c", "id -u; ip link add qlbr0 type bridge; "
                                                            "ip -o link show | cut -d: -f2"])
    assert inside.returncode == 0, inside.stderr
    lines = inside.stdout.split()
    assert lines[0] == "0" and sorted(lines[1:]) == ["lo", "qlbr0"]

    gone = play(user, home, runtime, base, "absent")
    assert gone["changed"] is True and gone["holder"] is None
    assert wait_gone(pid)
    assert files_under(runtime) == []
    assert user_pids(user) == []
    again = play(user, home, runtime, base, "absent")
    assert again["changed"] is False


def test_a_recycled_pid_is_neither_taken_for_the_holder_nor_signalled(rootless_user):
    user, home, runtime, base = rootless_user
    first = play(user, home, runtime, base, "present")
    holder = first["holder"]
    # another process of the user: the record is rewritten to name it, as if the holder's pid had been reused
    other = subprocess.Popen(["runuser", "-u", user, "--", "sleep", "300"], start_new_session=True)
    started = []  # what this test ends itself: the sleeper and the holder whose record it overwrote
    try:
        time.sleep(0.3)
        sleeper = [pid for pid in user_pids(user) if pid != holder["pid"]]
        assert len(sleeper) == 1
        started.append(sleeper[0])
        with open(first["record"], "w") as f:
            json.dump(dict(holder, pid=sleeper[0]), f)
        os.kill(holder["pid"], signal.SIGTERM)  # the holder itself is gone
        assert wait_gone(holder["pid"])

        replaced = play(user, home, runtime, base, "present")
        assert replaced["changed"] is True and replaced["stale"] is True
        started.append(replaced["holder"]["pid"])
        assert replaced["holder"]["pid"] not in (holder["pid"], sleeper[0])
        assert alive(sleeper[0]), "a recycled pid was signalled"

        with open(first["record"], "w") as f:
            json.dump(dict(replaced["holder"], pid=sleeper[0]), f)
        dropped = play(user, home, runtime, base, "absent")
        assert dropped["changed"] is True
        assert alive(sleeper[0]), "absent signalled a process that is not the holder"
        assert alive(replaced["holder"]["pid"]), "a holder no record names was ended"
        assert files_under(runtime) == []
    finally:
        for pid in started:
            os.kill(pid, signal.SIGKILL)
        other.wait(timeout=10)
        for pid in started:
            wait_gone(pid)


def owned_by(uid, roots=("/run/qemulab", "/var/lib/qemulab", "/var/cache/qemulab")):
    """Every path under the lab's system roots that belongs to `uid` (a user without root must make none)."""
    found = []
    for root in roots:
        for directory, dirs, files in os.walk(root):
            found += [os.path.join(directory, name) for name in dirs + files
                      if os.lstat(os.path.join(directory, name)).st_uid == uid]
    return found


def netns_names():
    return sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []


@pytest.mark.parametrize("tag", ["status", "cleanup"])
def test_lab_yml_status_and_cleanup_of_a_lab_not_up_change_nothing(rootless_user, tag):
    """The seed lab's status and cleanup run by a user without root, before any bring-up (docs/rootless.md): the run
    succeeds changing nothing, starts no holder, makes no file of the user's under the system roots and no
    namespace, and leaves in the user's runtime directory only the empty run root its lock was in (the bring-up
    itself is tests/integration/test_rootless_lab.py)."""
    user, home, runtime, _base = rootless_user
    uid = pwd.getpwnam(user).pw_uid
    # the seed's namespace only: the first lane, beside this one, makes and removes its own all along
    seed_netns = "qemulab-seed" in netns_names()
    proc = as_user(user, home, runtime, [
        os.path.join(VENV, "ansible-playbook"), "-i", os.path.join(REPO_ROOT, "inventories", "seed"),
        os.path.join(REPO_ROOT, "playbooks", "lab.yml"), "--tags", tag])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    assert re.search(r"localhost\s*:\s*ok=\d+\s+changed=0\s", proc.stdout), output
    assert owned_by(uid) == []
    assert ("qemulab-seed" in netns_names()) == seed_netns
    # the lock's holder unlinks its file and ends once the run has ended (it polls every 0.2 s)
    deadline = time.monotonic() + 5
    while (files_under(runtime) or user_pids(user)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert user_pids(user) == []
    assert files_under(runtime) == []
    assert sorted(os.listdir(runtime)) == ["qemulab"]
    assert os.stat(os.path.join(runtime, "qemulab")).st_mode & 0o777 == 0o700
    # nor anything under the user's own cache and data roots (only Ansible's own ~/.ansible)
    assert not os.path.exists(os.path.join(home, ".cache", "qemulab"))
    assert not os.path.exists(os.path.join(home, ".local", "share", "qemulab"))
