"""Run one case of tests/hostile_inputs through the real lab.yml inside a private mount namespace, and report.

The parent side (`run_case`) notes the root namespace's interfaces, namespaces, QEMU processes and /tmp markers, then
starts this file again as the child under `unshare -m --propagation private`. The child mounts fresh tmpfs over
/run, /var/lib/qemulab, /tmp and /dev/shm, writes the canary files of a foreign lab "other", makes its view of / read
only (so whatever escapes the tmpfs'd directories hits a read-only root, never the host's files), runs ansible-playbook
once, ends by pid every process still living in its mount namespace, and prints a JSON report: the run's output,
paths that appeared or vanished under /run and /var/lib/qemulab, namespaces under its /run/netns, injection markers,
damaged canaries and the processes it had to end. The parent adds what appeared in the root namespace.

    .venv/bin/python tests/integration/hostile_harness.py vm_name_traversal [case ...]
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(REPO_ROOT, "tests", "hostile_inputs")
LAB_PLAYBOOK = os.path.join(REPO_ROOT, "lab.yml")
ANSIBLE_PLAYBOOK = os.path.join(REPO_ROOT, ".venv", "bin", "ansible-playbook")
VENV_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")

STOP_TASK = "Stop on an invalid inventory before anything on the host changes"
CLEANUP_STOP_TASK = "Stop a cleanup whose lab name or namespace is invalid before anything is removed"
# What an injected command creates: every payload in the corpus touches /tmp/qlpwn-<something>.
MARKER = "qlpwn"
# Private to the case: the lab's run and state roots, plus scratch space for Ansible under a read-only root.
TMPFS = {"/run": "0755", "/var/lib/qemulab": "0755", "/tmp": "1777", "/dev/shm": "1777"}


def _under(path, root):
    return (os.path.realpath(path) + "/").startswith(root + "/")


def tmpfs_targets():
    """TMPFS less /tmp or /dev/shm when the checkout itself lies there (a CI clone may): the case must still see the
    repository. /run and /var/lib/qemulab are always covered."""
    return dict((target, mode) for target, mode in TMPFS.items()
                if not (target in ("/tmp", "/dev/shm") and _under(REPO_ROOT, target)))
WATCHED = ("/run", "/var/lib/qemulab")
CANARIES = {
    "/run/canary": "the host's /run as the case sees it\n",
    "/run/qemulab/other/lab.json": json.dumps({"lab": "other", "inventory": "/srv/other-lab"}) + "\n",
    "/run/qemulab/other/keep.txt": "a run file of lab other\n",
    "/run/qemulab/other.lock": "",
    "/var/lib/qemulab/labs/other/lab.json": json.dumps({"lab": "other"}) + "\n",
    "/var/lib/qemulab/labs/other/other.qcow2": "QFI\n a disk of lab other\n",
}
# A refused run takes 3-5 s; a run that wrongly goes on into bring-up is cut off here.
PLAYBOOK_TIMEOUT = 180


def load_case(case):
    """(directory, case.yml as a dict) of a case name or directory."""
    import yaml

    directory = case if os.path.isdir(case) else os.path.join(CORPUS, case)
    with open(os.path.join(directory, "case.yml")) as handle:
        spec = yaml.safe_load(handle)
    spec.setdefault("args", [])
    return directory, spec


# -- the child, inside the private mount namespace ---------------------------------------------------------------

def _run(argv):
    subprocess.run(argv, check=True, capture_output=True, text=True)


# Ansible's own home and temp directories inside the case (on the /run tmpfs: / is read-only there, and /tmp is the
# host's own when the checkout lies under it); they are the run's scratch space, not something the lab made.
ANSIBLE_SCRATCH = "/run/qemulab-hostile"


def _paths(root):
    found = set()
    for base, dirs, files in os.walk(root):
        if base == ANSIBLE_SCRATCH or base.startswith(ANSIBLE_SCRATCH + "/"):
            continue
        for name in dirs + files:
            path = os.path.join(base, name)
            if path != ANSIBLE_SCRATCH:
                found.add(path)
    return found


def _mount_namespace(pid):
    try:
        return os.readlink("/proc/%s/ns/mnt" % pid)
    except OSError:
        return None


def _argv(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return []


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _processes_of_this_namespace():
    own = _mount_namespace("self")
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != os.getpid()
            and _mount_namespace(entry) == own and _alive(int(entry))]


def _end_processes_of_this_namespace(grace=3):
    """End, by pid, every process the case left in this mount namespace; [{pid, argv}] of those it had to end.

    A run's lock holder ends by itself shortly after the run (it polls), so processes get `grace` seconds first."""
    deadline = time.monotonic() + grace
    while _processes_of_this_namespace() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(pid, _argv(pid)) for pid in _processes_of_this_namespace()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _argv_ in left:
            if _alive(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid, _a in left):
            time.sleep(0.1)
    return [{"pid": pid, "argv": " ".join(argv)[:200]} for pid, argv in left]


def child(directory, args, env):
    for target, mode in tmpfs_targets().items():
        os.makedirs(target, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", "mode=%s,size=256m" % mode, "qemulab-hostile", target])
    for path, text in CANARIES.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
    os.makedirs(ANSIBLE_SCRATCH + "/tmp", mode=0o700)
    # bind: this mount's flag in this namespace only, never the host's filesystem
    _run(["mount", "-o", "remount,bind,ro", "/"])

    before = set().union(*(_paths(root) for root in WATCHED))
    run_env = dict(env)
    run_env.update({
        "TMPDIR": ANSIBLE_SCRATCH + "/tmp",
        "ANSIBLE_HOME": ANSIBLE_SCRATCH + "/ansible-home",
        "ANSIBLE_LOCAL_TEMP": ANSIBLE_SCRATCH + "/ansible-local",
        "ANSIBLE_REMOTE_TEMP": ANSIBLE_SCRATCH + "/ansible-remote",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    command = [ANSIBLE_PLAYBOOK, LAB_PLAYBOOK, "-i", os.path.join(directory, "hosts.yml")] + list(args)
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=PLAYBOOK_TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    seconds = round(time.monotonic() - started, 2)
    ended = _end_processes_of_this_namespace()

    after = set().union(*(_paths(root) for root in WATCHED))
    canaries = {}
    for path, text in CANARIES.items():
        try:
            with open(path) as handle:
                if handle.read() != text:
                    canaries[path] = "changed"
        except OSError:
            canaries[path] = "missing"
    markers = sorted(p for root in list(tmpfs_targets()) for p in _paths(root) if MARKER in os.path.basename(p))
    report = {
        "command": command,
        "rc": proc.returncode,
        "stdout": stdout,
        "stderr": stderr,
        "seconds": seconds,
        "timed_out": timed_out,
        "appeared": sorted(after - before),
        "vanished": sorted(before - after),
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "markers": markers,
        "canaries": canaries,
        "ended_processes": ended,
    }
    sys.stdout.write(json.dumps(report))


# -- the parent, in the host's namespaces -------------------------------------------------------------------------

def _root_links():
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _root_netns():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _qemu_processes():
    out = subprocess.run(["pgrep", "-x", "qemu-system-x86_64"], capture_output=True, text=True).stdout
    return {int(pid): _argv(int(pid)) for pid in out.split()}


def host_state():
    """The root namespace's interfaces and namespaces, the QEMU processes and the markers in the host's /tmp."""
    return {"links": _root_links(), "netns": _root_netns(), "qemu": _qemu_processes(),
            "markers": set(glob.glob("/tmp/%s*" % MARKER))}


def case_names(directory, args):
    """Every word of the case's inventory and arguments: what an interface or namespace of the case could be called.
    Other people's labs come and go on the same host; only what could be this case's counts."""
    with open(os.path.join(directory, "hosts.yml")) as handle:
        text = handle.read() + "\n" + "\n".join(args)
    return set(re.findall(r"[^\s'\"{}\[\],:=]+", text))


def case_labs(directory, args):
    """The lab names the case's run could use: the inventory's and any given with -e."""
    import yaml

    with open(os.path.join(directory, "hosts.yml")) as handle:
        inventory = yaml.safe_load(handle) or {}
    labs = {str(((inventory.get("all") or {}).get("vars") or {}).get("lab_name", ""))}
    for flag, value in zip(args, args[1:]):
        if flag in ("-e", "--extra-vars") and value.startswith("{"):
            labs.add(str(json.loads(value).get("lab_name", "")))
        elif flag in ("-e", "--extra-vars") and value.startswith("lab_name="):
            labs.add(value.split("=", 1)[1])
    return labs


class HostileRun(object):
    """One case's run: the playbook's parsed result, the child's report and what appeared on the host."""

    def __init__(self, case, spec, report, host):
        from conftest import PlaybookResult

        self.case = case
        self.spec = spec
        self.report = report
        self.host = host
        self.result = PlaybookResult(subprocess.CompletedProcess(report["command"], report["rc"],
                                                                 report["stdout"], report["stderr"]))

    def failed_tasks(self):
        """[(task name, host, result)] of the failures that stopped the run (ignored ones left out)."""
        return [(name, host, res) for name, host, res in self.result.tasks()
                if res.get("failed") and not res.get("ignored")]

    @property
    def stop_task(self):
        """The plan task that must stop this case: the cleanup's own for a cleanup run."""
        return CLEANUP_STOP_TASK if "cleanup" in self.spec["args"] else STOP_TASK

    def stop_errors(self):
        """The errors the stop task listed, one string each ("<host>: <field> <problem>; <fix>")."""
        for name, _host, res in self.failed_tasks():
            if name == self.stop_task:
                return res.get("msg", "").split("\n  - ")[1:]
        return []

    def changes(self, allowed=()):
        """Everything the case left or broke that it must not have: {what: [items]}, empty when clean."""
        report, host = self.report, self.host
        found = {
            "files that appeared": [p for p in report["appeared"] if p not in allowed],
            "files that vanished": report["vanished"],
            "namespaces under the case's /run/netns": report["netns"],
            "canaries damaged": ["%s (%s)" % item for item in sorted(report["canaries"].items())],
            "injection markers in the case's namespace": report["markers"],
            "processes the case left running (ended by the harness)": [
                "%(pid)s %(argv)s" % p for p in report["ended_processes"]],
            "root-namespace interfaces": host["links"],
            "root-namespace namespaces": host["netns"],
            "QEMU processes": host["qemu"],
            "injection markers in the host's /tmp": host["markers"],
        }
        if report["timed_out"]:
            found["timeout"] = ["ansible-playbook ran over %d s and was killed" % PLAYBOOK_TIMEOUT]
        return {what: items for what, items in found.items() if items}

    def summary(self):
        failed = ["%s on %s: %s" % (name, host, str(res.get("msg", ""))[:600]) for name, host, res in
                  self.failed_tasks()]
        return "case %s: rc=%s in %ss; failed tasks: %s\nstderr tail: %s" % (
            self.case, self.report["rc"], self.report["seconds"], failed or "none",
            self.report["stderr"][-800:].strip() or "(empty)")


def run_case(case, timeout=PLAYBOOK_TIMEOUT + 60):
    """Run one case (a name under tests/hostile_inputs or a directory) in its own mount namespace."""
    from conftest import playbook_env

    directory, spec = load_case(case)
    for path in (REPO_ROOT, directory):
        hidden = [target for target in tmpfs_targets() if _under(path, target)]
        if hidden:
            raise RuntimeError("%s lies under %s, which the case's namespace covers with a tmpfs; run the corpus "
                               "from a checkout elsewhere" % (path, hidden[0]))
    names = case_names(directory, spec["args"])
    run_dirs = ["/qemulab/%s/" % lab for lab in case_labs(directory, spec["args"])]
    before = host_state()
    spec_json = json.dumps({"directory": directory, "args": spec["args"]})
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", VENV_PYTHON, os.path.abspath(__file__),
                           "--child", spec_json], capture_output=True, text=True, timeout=timeout,
                          env=playbook_env())
    if proc.returncode != 0 or not proc.stdout.startswith("{"):
        raise RuntimeError("the harness's child failed (rc %s): %s %s" % (proc.returncode, proc.stdout[-2000:],
                                                                          proc.stderr[-2000:]))
    report = json.loads(proc.stdout)
    after = host_state()

    def ours(process_argv):
        return any(run_dir in arg for arg in process_argv for run_dir in run_dirs)

    host = {
        "links": sorted(name for name in after["links"] - before["links"] if name in names),
        "netns": sorted(name for name in after["netns"] - before["netns"] if name in names),
        "qemu": ["%d %s" % (pid, " ".join(argv)[:200]) for pid, argv in sorted(after["qemu"].items())
                 if pid not in before["qemu"] and ours(argv)],
        "markers": sorted(after["markers"] - before["markers"]),
    }
    return HostileRun(os.path.basename(directory.rstrip("/")), spec, report, host)


def main(argv):
    if argv[:1] == ["--child"]:
        spec = json.loads(argv[1])
        child(spec["directory"], spec["args"], dict(os.environ))
        return 0
    worst = 0
    for case in argv:
        run = run_case(case)
        print(run.summary())
        print("  errors listed: %s" % (run.stop_errors() or "none"))
        print("  changes: %s" % (run.changes() or "none"))
        worst = worst or (1 if run.changes() else 0)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
