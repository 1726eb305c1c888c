"""Fixtures for real integration tests: throwaway namespaces and playbook runs with parsed results.

Every lab address a test uses lives only inside a namespace the test created; the fixtures delete it afterwards.
"""
import json
import os
import secrets
import socket
import subprocess
import tempfile
import time

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
    runs are unmounted, and the then empty directories removed. `make test` runs a second lane of modules beside
    the first (QEMULAB_TEST_LANE=second), none of which leaves such a mount; only the first lane sweeps, so that no
    session's end takes the mount of a VM the other lane is starting (mounted, its QEMU not yet running)."""
    if os.environ.get("QEMULAB_TEST_LANE") == "second":
        yield
        return
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


def read_forward(port, timeout, size=200):
    """The first bytes a TCP forward on 127.0.0.1:port delivers, or None within `timeout` seconds. SLIRP accepts a
    connection before anything in the guest listens and then closes it empty, so connect again until data comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.settimeout(2)
                data = sock.recv(size)
                if data:
                    return data
        except OSError:
            pass
        time.sleep(0.2)
    return None


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


class PlaybookRunError(AssertionError):
    """A playbook result read in a way its run does not allow: no recap, no stats for the host, or an unexpected rc."""


def parse_recap(stdout):
    """(document, problem): the results_json document ({"plays": [...], "stats": {...}}) in stdout, or None and why."""
    start = stdout.find("{")
    if start < 0:
        return None, "no JSON recap in its stdout (the run ended before its stats, or another stdout callback ran)"
    try:
        data = json.loads(stdout[start:])
    except ValueError as exc:
        return None, "its JSON recap does not parse (%s)" % exc
    if not isinstance(data, dict) or not isinstance(data.get("stats"), dict) or not isinstance(
            data.get("plays"), list):
        return None, "its JSON document has no plays and stats (not the results_json recap)"
    return data, None


class PlaybookResult:
    """What one ansible-playbook run did, read from the json stdout callback.

    Reading the run checks it: tasks(), failure_messages() and stats need the recap parsed; changed(host),
    failed(host) and result() also need stats for that host and an rc that matches what the test said it expects
    (rc 0 unless expect_failure, non-zero with it). So a failed or unparsable run never passes `changed() == 0`.
    """

    def __init__(self, proc, expect_failure=False):
        self.rc = proc.returncode
        self.stderr = proc.stderr or ""
        self.raw = proc.stdout or ""
        self.expect_failure = expect_failure
        self.data, self.parse_problem = parse_recap(self.raw)

    def _problem(self, why):
        return PlaybookRunError("playbook run (rc %s) %s\nstdout tail: %s\nstderr tail: %s"
                                % (self.rc, why, self.raw[-1500:], self.stderr[-2000:]))

    def _recap(self):
        if self.data is None:
            raise self._problem(self.parse_problem)
        return self.data

    def _outcome(self, host=None):
        """The recap, once the rc is what the test expects and (if asked) the host has stats."""
        data = self._recap()
        if self.expect_failure and self.rc == 0:
            raise self._problem("succeeded, but the test expects it to fail (expect_failure=True)")
        if not self.expect_failure and self.rc != 0:
            raise self._problem("failed (%s), but the test did not say expect_failure=True"
                                % ("; ".join(map(str, self._failure_messages(data))) or "no failed task"))
        if host is not None and host not in data["stats"]:
            raise self._problem("has no stats for host %s (hosts: %s)" % (host, sorted(data["stats"])))
        return data

    def tasks(self, host=None):
        """Yield (task name, host, result) for every task result in play order."""
        for play in self._recap()["plays"]:
            for task in play.get("tasks", []):
                for hname, res in task.get("hosts", {}).items():
                    if host is None or hname == host:
                        yield task["task"]["name"], hname, res

    def result(self, task_name, host="localhost"):
        self._outcome()
        for name, hname, res in self.tasks(host):
            if name == task_name:
                return res
        raise KeyError(f"no result for task {task_name!r} on {host}: ran {[n for n, _, _ in self.tasks()]}")

    @property
    def stats(self):
        return self._recap()["stats"]

    def changed(self, host="localhost"):
        return self._outcome(host)["stats"][host]["changed"]

    def failed(self, host="localhost"):
        st = self._outcome(host)["stats"][host]
        return st.get("failures", 0) + st.get("unreachable", 0)

    @staticmethod
    def _failure_messages(data):
        return [res.get("msg", "") for play in data["plays"] for task in play.get("tasks", [])
                for res in task.get("hosts", {}).values() if res.get("failed")]

    def failure_messages(self):
        return self._failure_messages(self._recap())

    def __repr__(self):  # never raises: it is what an assertion prints
        if self.data is None:
            return "PlaybookResult(rc=%s, no recap: %s, stdout=%r, stderr=%r)" % (
                self.rc, self.parse_problem, self.raw[-1500:], self.stderr[-2000:])
        return "PlaybookResult(rc=%s, stats=%s, failures=%s, stderr=%r)" % (
            self.rc, self.data["stats"], self._failure_messages(self.data), self.stderr[-2000:])


def playbook_env(env=None):
    """The environment of a test's ansible-playbook: the repo's config and the results_json callback."""
    run_env = dict(os.environ)
    run_env.update({
        "ANSIBLE_CONFIG": os.path.join(REPO_ROOT, "ansible.cfg"),
        # the ssh plugin's control sockets: its default, ~/.ansible/cp, ignores ansible.cfg's `home`
        "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(REPO_ROOT, ".build", "ansible", "cp"),
        "ANSIBLE_STDOUT_CALLBACK": "results_json",
        "ANSIBLE_CALLBACK_PLUGINS": os.path.join(REPO_ROOT, "tests", "integration", "callback_plugins"),
        "ANSIBLE_NOCOLOR": "1",
    })
    run_env.update(env or {})
    return run_env


def run_playbook(playbook, extra_vars=None, check=False, diff=False, inventory=None, tags=None, timeout=1800,
                 env=None, expect_failure=False):
    """Run a playbook (a path, or YAML text written to a temp file) from the repo root and parse its results.

    expect_failure=True: the test expects the run to fail; a run that succeeds fails the test here."""
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
    result = PlaybookResult(proc, expect_failure=expect_failure)
    if expect_failure and result.rc == 0:
        raise PlaybookRunError("the playbook was expected to fail but succeeded: %r" % result)
    return result


@pytest.fixture
def playbook():
    """The run_playbook function, as a fixture."""
    return run_playbook
