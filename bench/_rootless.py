# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seed lab run by a user without root, for bench/run.py's `rootless` section (docs/rootless.md).

One throwaway user (the tests' own scaffolding, tests/integration/rootless_user.py: a system user with a subordinate
id range, a home and a runtime directory in a temporary directory) for the whole bench: its first bring-up builds its
image (not timed), every later one runs `lab.yml -i inventories/seed` as that user, no sudo, with the settings the
checkout's ansible.cfg gives root's runs. The user's lab lives in its holder's namespaces, so its names and ports
never meet root's labs."""

import contextlib
import os
import re
import sys
import time

from _harness import REPO_ROOT, BenchError, log

sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "integration"))
from rootless_user import VENV, as_user, lab_run_env, user_pids, user_with_subids  # noqa: E402

SEED = os.path.join(REPO_ROOT, "inventories", "seed")
LAB_YML = os.path.join(REPO_ROOT, "playbooks", "lab.yml")
H1_SSH_PORT = 2205
H2 = "10.20.60.2"


class RootlessSeed:
    def __init__(self, name, home, runtime, base):
        self.name, self.home, self.runtime, self.own = name, home, runtime, os.path.join(base, "own")

    def playbook(self, *args):
        """Seconds of `lab.yml` as the user; BenchError with the output's end when it fails."""
        env = lab_run_env(self.own)
        started = time.monotonic()
        proc = as_user(self.name, self.home, self.runtime,
                       [os.path.join(VENV, "ansible-playbook"), "-i", SEED, LAB_YML] + list(args), timeout=1800,
                       env=env)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise BenchError("rootless lab.yml %s failed: %s" % (" ".join(args), (proc.stdout + proc.stderr)[-3000:]))
        return seconds, proc.stdout

    def changed(self, output):
        return sum(int(n) for n in re.findall(r"^\S+\s*:\s*ok=\d+\s+changed=(\d+)", output, re.M))

    def h1_reaches_h2(self):
        """One ping from h1's shell, over SSH through the holder's namespaces (the status table's command)."""
        import json
        with open(os.path.join(self.runtime, "qemulab", "_userns", "seed.json")) as f:
            holder = json.load(f)["pid"]
        state = os.path.join(self.home, ".local", "share", "qemulab")
        proc = as_user(self.name, self.home, self.runtime, [
            "ssh", "-i", os.path.join(state, "ssh", "id_ed25519"), "-p", str(H1_SSH_PORT), "-o", "BatchMode=yes",
            "-o", "UserKnownHostsFile=" + os.path.join(state, "labs", "seed", "known_hosts"),
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
            "-o", "ProxyCommand=nsenter --preserve-credentials -U -n -t %d socat - TCP:127.0.0.1:%%p" % holder,
            "root@127.0.0.1", "ping -c 1 -W 2 " + H2], timeout=120)
        if proc.returncode != 0:
            raise BenchError("rootless seed lab: h1 does not reach h2: %s" % (proc.stdout + proc.stderr)[-600:])


@contextlib.contextmanager
def rootless_seed():
    """A RootlessSeed whose user's image is built (its first bring-up and cleanup, not timed); its lab is cleaned
    up and the user removed afterwards."""
    labs = []

    def clean(*_args):
        try:
            labs[0].playbook("--tags", "cleanup")
        except (BenchError, IndexError) as exc:
            log("rootless cleanup: %s" % exc)

    with user_with_subids(clean) as (name, home, runtime, base):
        import pwd
        entry = pwd.getpwnam(name)
        os.mkdir(os.path.join(base, "own"), 0o700)
        os.chown(os.path.join(base, "own"), entry.pw_uid, entry.pw_gid)
        labs.append(RootlessSeed(name, home, runtime, base))
        log("rootless: user %s builds its image (first bring-up, not timed)" % name)
        labs[0].playbook()
        labs[0].playbook("--tags", "cleanup")
        # the run's lock holder and the guests' ssh masters end just after the cleanup (the holder's namespaces go)
        deadline = time.monotonic() + 10
        while user_pids(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        if user_pids(name):
            raise BenchError("rootless: user %s still has processes after its cleanup" % name)
        yield labs[0]
