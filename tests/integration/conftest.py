"""Fixtures for real integration tests: throwaway namespaces and playbook runs with parsed results.

Every lab address a test uses lives only inside a namespace the test created; the fixtures delete it afterwards.
"""
import json
import os
import secrets
import subprocess
import tempfile

import pytest
from pyroute2 import netns as pr_netns

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_PLAYBOOK = os.path.join(REPO_ROOT, ".venv", "bin", "ansible-playbook")
VENV_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")

pytestmark = pytest.mark.integration


def unique_name(prefix="qlt"):
    """A short unique name (fits IFNAMSIZ with room for suffixes)."""
    return f"{prefix}{secrets.token_hex(3)}"


@pytest.fixture(scope="session", autouse=True)
def no_console_tmpfs_left():
    """qemu_vm mounts a tmpfs for each VM's console log; a test that SIGKILLs its QEMUs and removes their run
    directories by hand cannot remove it. At the session's end, those that appeared during it and whose VM no longer
    runs are unmounted, and the then empty directories removed."""
    from ansible_collections.qemulab.network.plugins.module_utils._qemu_console import console_mounts, release
    from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import find_qemus

    def mounts():
        return set((m["id"], m["mount_point"]) for m in console_mounts("/run/qemulab"))
    before = mounts()
    yield
    for _id, mount_point in sorted(mounts() - before):
        run_dir = os.path.dirname(mount_point)
        if not find_qemus(run_dir):
            release(run_dir)
            for path in (mount_point, run_dir, os.path.dirname(run_dir)):
                try:
                    os.rmdir(path)
                except OSError:
                    break


@pytest.fixture
def netns():
    """A fresh network namespace, deleted after the test whatever happened."""
    name = unique_name("qltns")
    pr_netns.create(name)
    try:
        yield name
    finally:
        if name in pr_netns.listnetns():
            pr_netns.remove(name)


class PlaybookResult:
    """What one ansible-playbook run did, read from the json stdout callback."""

    def __init__(self, proc):
        self.rc = proc.returncode
        self.stderr = proc.stderr
        self.raw = proc.stdout
        try:
            self.data = json.loads(proc.stdout[proc.stdout.index("{"):])
        except ValueError:
            self.data = {"plays": [], "stats": {}}

    def tasks(self, host=None):
        """Yield (task name, host, result) for every task result in play order."""
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                for hname, res in task.get("hosts", {}).items():
                    if host is None or hname == host:
                        yield task["task"]["name"], hname, res

    def result(self, task_name, host="localhost"):
        for name, hname, res in self.tasks(host):
            if name == task_name:
                return res
        raise KeyError(f"no result for task {task_name!r} on {host}: ran {[n for n, _, _ in self.tasks()]}")

    @property
    def stats(self):
        return self.data.get("stats", {})

    def changed(self, host="localhost"):
        return self.stats.get(host, {}).get("changed", 0)

    def failed(self, host="localhost"):
        st = self.stats.get(host, {})
        return st.get("failures", 0) + st.get("unreachable", 0)

    def failure_messages(self):
        return [res.get("msg", "") for _, _, res in self.tasks() if res.get("failed")]

    def __repr__(self):
        return f"PlaybookResult(rc={self.rc}, stats={self.stats}, failures={self.failure_messages()}, stderr={self.stderr[-2000:]!r})"


def playbook_env(env=None):
    """The environment of a test's ansible-playbook: the repo's config and the results_json callback."""
    run_env = dict(os.environ)
    run_env.update({
        "ANSIBLE_CONFIG": os.path.join(REPO_ROOT, "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "results_json",
        "ANSIBLE_CALLBACK_PLUGINS": os.path.join(REPO_ROOT, "tests", "integration", "callback_plugins"),
        "ANSIBLE_NOCOLOR": "1",
    })
    run_env.update(env or {})
    return run_env


def run_playbook(playbook, extra_vars=None, check=False, diff=False, inventory=None, tags=None, timeout=1800,
                 env=None):
    """Run a playbook (a path, or YAML text written to a temp file) from the repo root and parse its results."""
    cleanup = None
    if "\n" in playbook:
        fd, cleanup = tempfile.mkstemp(suffix=".yml", prefix="qemulab-test-")
        with os.fdopen(fd, "w") as f:
            f.write(playbook)
        playbook = cleanup
    cmd = [ANSIBLE_PLAYBOOK, playbook]
    if inventory:
        cmd += ["-i", inventory]
    else:
        # Modules need pyroute2, which lives in the venv, not in the system Python.
        cmd += ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={VENV_PYTHON}"]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if tags:
        cmd += ["--tags", tags]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              env=playbook_env(env))
    finally:
        if cleanup:
            os.unlink(cleanup)
    return PlaybookResult(proc)


@pytest.fixture
def playbook():
    """The run_playbook function, as a fixture."""
    return run_playbook
