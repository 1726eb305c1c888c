"""Issue 13: a cleanup with an odd lab name removes nothing that is not that lab's.

Each case runs the real cleanup in a private mount namespace (`unshare -m --propagation private`) with tmpfs over
/run and /var/lib/qemulab and a throwaway overlay over /etc (under /run/qemulab, '../../etc' is /etc), where it first
lays out a foreign lab's claimed directories and a canary in /run. Three ways in: `lab.yml --tags cleanup` with the
seed inventory (its plan step may refuse first), the teardown role on its own (as molecule and the examples use it),
and the lab_dirs module on its own (as if every check before it had let the name through). The whole case (mounts,
canaries, ansible-playbook, checks) runs in one child: this file run as a script.

A bad name must be refused with a message that names the field, the value and the fix; a valid name of a lab that
does not exist must succeed and change nothing; a lab that is there loses its claimed directory and keeps an
unclaimed one, with a warning. Afterwards every canary is intact, /etc is unchanged, no command was injected, and no
process, namespace or interface of the case is left on the host.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.alone]

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
ANSIBLE_PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
PWN = "/tmp/qlpwn"
TMPFS_ROOTS = ("/run", "/var/lib/qemulab")
CLAIM_OF_OTHER = json.dumps({"lab": "other", "inventory": "/elsewhere", "netns": ""})
CANARIES = {
    "/run/canary": "a file beside the run root",
    "/run/qemulab/other/lab.json": CLAIM_OF_OTHER,
    "/run/qemulab/other/keep": "run file of lab other",
    "/var/lib/qemulab/labs/other/lab.json": CLAIM_OF_OTHER,
    "/var/lib/qemulab/labs/other/vm.qcow2": "disk of lab other",
}
BAD_NAMES = {"empty": "", "dot": ".", "dotdot": "..", "up-to-etc": "../../etc", "slash": "a/b",
             "shell": "x$(touch %s)" % PWN}
MISSING_LAB = "qltnolab"
# The case's namespace, in place of the seed's: /run/netns is hidden in the case's mount namespace, so no netlink
# call can reach a real one, and a namespace of this name on the host could only be the case's.
NETNS = "qlsafe-teardown"
ROLE_PLAYBOOK = """---
- name: The teardown role on its own
  hosts: all
  gather_facts: false
  roles:
    - role: qemulab.network.teardown
      vars:
        teardown_lab_name: "{{ lab_name }}"
        teardown_netns: "{{ lab_netns }}"
"""
# The module alone, as if every check before it had let the name through.
MODULE_PLAYBOOK = """---
- name: The lab_dirs module on its own
  hosts: all
  gather_facts: false
  tasks:
    - name: Remove the lab's directories
      qemulab.network.lab_dirs:
        lab: "{{ lab_name }}"
"""
# Names the repo's other integration tests and the benchmark give their namespaces and links while this one runs.
CONCURRENT_PREFIXES = ("qlt", "qlb")
TEARDOWN_DIRS_TASK = "Remove the lab's disks and run directory, each only if its lab.json claims this lab"
# A lab that is there: its run directory claimed (by the seed inventory the cleanup runs with: a cleanup honours
# claims), its disk directory without a claim (as host_prep left them before it claimed both).
OWN_LAB = "qltgone"
OWN_FILES = {
    "/run/qemulab/%s/lab.json" % OWN_LAB: json.dumps({"lab": OWN_LAB, "inventory": os.path.join(REPO, "inventories", "seed"),
                                                        "netns": NETNS}),
    "/run/qemulab/%s/rt1/qemu.log" % OWN_LAB: "a stopped VM's log",
    "/var/lib/qemulab/labs/%s/rt1.qcow2" % OWN_LAB: "a disk nothing claims",
}


def integration_conftest():
    """tests/integration/conftest.py by its path (the name `conftest` alone may find tests/conftest.py)."""
    spec = importlib.util.spec_from_file_location("qemulab_integration_conftest", os.path.join(HERE, "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the child, inside the private mount namespace


def _mount(*args):
    subprocess.run(["mount"] + list(args), check=True, capture_output=True, text=True)


def _fs_type(path):
    """The type of the filesystem mounted last at exactly `path` in this mount namespace, or None."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                found = fields[fields.index("-") + 1]
    return found


def processes_in_mount_ns(ns_ino, but=()):
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in but:
            try:
                if os.stat("/proc/%s/ns/mnt" % entry).st_ino == ns_ino:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _describe(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [pid, f.read().replace(b"\0", b" ").decode(errors="replace")[:200]]
    except OSError:
        return [pid, "?"]


def isolate(scratch, host_mount_ns):
    """Hide the real /run and /var/lib/qemulab behind tmpfs and /etc behind an overlay; the overlay's upper dir."""
    if os.stat("/proc/self/ns/mnt").st_ino == host_mount_ns:
        raise SystemExit("refusing to run: not in a private mount namespace (start me with unshare -m)")
    for root in TMPFS_ROOTS:
        os.makedirs(root, exist_ok=True)
        _mount("-t", "tmpfs", "-o", "mode=0755", "qemulab-test", root)
    overlay = os.path.join(scratch, "etc-overlay")
    os.makedirs(overlay)
    _mount("-t", "tmpfs", "qemulab-test", overlay)
    upper, work = os.path.join(overlay, "upper"), os.path.join(overlay, "work")
    os.makedirs(upper)
    os.makedirs(work)
    _mount("-t", "overlay", "qemulab-test", "-o", "lowerdir=/etc,upperdir=%s,workdir=%s" % (upper, work), "/etc")
    for root, fs in [(r, "tmpfs") for r in TMPFS_ROOTS] + [("/etc", "overlay")]:
        if _fs_type(root) != fs:
            raise SystemExit("refusing to run: %s is not a %s in this mount namespace" % (root, fs))
    return upper


def lay_out(files):
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def damaged_canaries():
    damaged = []
    for path, text in CANARIES.items():
        try:
            with open(path) as f:
                if f.read() != text:
                    damaged.append(path + " (changed)")
        except OSError as exc:
            damaged.append("%s (%s)" % (path, exc.strerror))
    return damaged


def command(entry, lab_name, scratch):
    """The case's ansible-playbook command line. The name goes in as JSON so that it arrives whole (`-e
    lab_name=x$(touch /tmp/qlpwn)` would be cut at its space)."""
    extra = json.dumps({"lab_name": lab_name, "lab_netns": NETNS})
    if entry == "lab.yml":
        return [ANSIBLE_PLAYBOOK, "-i", os.path.join(REPO, "inventories", "seed"), os.path.join(REPO, "lab.yml"),
                "--tags", "cleanup", "-e", extra]
    playbook = os.path.join(scratch, "teardown.yml")
    with open(playbook, "w") as f:
        f.write(ROLE_PLAYBOOK if entry == "role" else MODULE_PLAYBOOK)
    return [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=" + PYTHON,
            playbook, "-e", extra]


def end_what_the_case_started(ns_ino):
    """[pid, argv] of the processes still in the case's mount namespace after a grace period, killed by pid (this
    case started them). The lab lock's holder polls for the playbook's end every 0.2 s, hence the grace."""
    me = os.getpid()
    deadline = time.time() + 10
    while processes_in_mount_ns(ns_ino, but=(me,)) and time.time() < deadline:
        time.sleep(0.2)
    leftovers = [_describe(pid) for pid in processes_in_mount_ns(ns_ino, but=(me,))]
    for pid, _argv in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers


def child(entry, lab_name, layout, scratch, host_mount_ns):
    """One case, start to end, inside the private mount namespace; writes scratch/report.json."""
    fixtures = integration_conftest()
    upper = isolate(scratch, host_mount_ns)
    lay_out(dict(CANARIES, **(OWN_FILES if layout == "own" else {})))
    proc = subprocess.run(command(entry, lab_name, scratch), cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=fixtures.playbook_env())
    res = fixtures.PlaybookResult(proc)
    ns_ino = os.stat("/proc/self/ns/mnt").st_ino
    leftovers = end_what_the_case_started(ns_ino)
    report = {
        "rc": res.rc,
        "failures": [[name, r.get("msg", "")] for name, _host, r in res.tasks() if r.get("failed")],
        "warnings": [w for _name, _host, r in res.tasks() for w in r.get("warnings", [])],
        "ran": [name for name, _host, _r in res.tasks()],
        "stats": res.stats,
        "damaged": damaged_canaries(),
        "own_left": sorted(path for path in OWN_FILES if os.path.lexists(path)),
        "etc_changes": sorted(os.path.relpath(os.path.join(d, n), upper)
                              for d, dirs, files in os.walk(upper) for n in dirs + files),
        "leftover_processes": leftovers,
        "mount_ns": ns_ino,
        "stderr": proc.stderr[-3000:],
        "stdout": "" if res.data.get("plays") else proc.stdout[-3000:],
    }
    with open(os.path.join(scratch, "report.json"), "w") as f:
        json.dump(report, f)


# ---------------------------------------------------------------- the test, in the root mount namespace


def netns_names():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return set(line.split()[0] for line in out.splitlines() if line.strip())


def link_names():
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return set(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip())


def qemu_pids():
    pids = set()
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/comm" % entry) as f:
                if f.read().startswith("qemu"):
                    pids.add(int(entry))
        except (OSError, ValueError):
            pass
    return pids


def _in_mount_ns(pid, ns_ino):
    try:
        return os.stat("/proc/%d/ns/mnt" % pid).st_ino == ns_ino
    except OSError:
        return False


def unexplained(names, markers=()):
    """Names not made by a concurrent test, benchmark or a real lab on the host (whose netns markers are named)."""
    return sorted(name for name in names if not name.startswith(CONCURRENT_PREFIXES) and name not in markers)


def real_netns_markers():
    """Namespaces the host's real labs own (their markers in the real /run/qemulab/_netns)."""
    try:
        return set(name[:-len(".owner")] for name in os.listdir("/run/qemulab/_netns") if name.endswith(".owner"))
    except OSError:
        return set()


def run_case(entry, lab_name, tmp_path, layout="foreign"):
    """Run one case in its own mount namespace; (its report, what changed on the host outside it)."""
    if os.path.lexists(PWN):
        pytest.fail("%s exists before the case; remove it so that an injected command can be told apart" % PWN)
    scratch = str(tmp_path)
    before = {"netns": netns_names(), "links": link_names(), "qemu": qemu_pids()}
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "--", PYTHON, os.path.abspath(__file__),
                           "--child", entry, lab_name, layout, scratch, str(os.stat("/proc/self/ns/mnt").st_ino)],
                          capture_output=True, text=True, timeout=900)
    after = {"netns": netns_names(), "links": link_names(), "qemu": qemu_pids()}
    report_path = os.path.join(scratch, "report.json")
    assert proc.returncode == 0 and os.path.exists(report_path), \
        "the case's child failed (rc %d): %s" % (proc.returncode, proc.stderr[-3000:])
    with open(report_path) as f:
        report = json.load(f)
    host = {
        "new_netns": unexplained(after["netns"] - before["netns"], real_netns_markers() - {NETNS}),
        "new_links": unexplained(after["links"] - before["links"]),
        "gone_links": unexplained(before["links"] - after["links"]),
        "new_qemu_of_case": [pid for pid in after["qemu"] - before["qemu"] if _in_mount_ns(pid, report["mount_ns"])],
        "left_in_case_ns": processes_in_mount_ns(report["mount_ns"]),
        "pwned": os.path.lexists(PWN),
    }
    return report, host


def assert_nothing_touched(report, host):
    assert report["damaged"] == [], "canaries removed or changed: %s\n%s" % (report["damaged"], report)
    assert report["etc_changes"] == [], "the run changed /etc (seen in the overlay): %s" % report["etc_changes"]
    assert not host["pwned"], "the lab name reached a shell: %s was created" % PWN
    assert report["leftover_processes"] == [] and host["left_in_case_ns"] == [], \
        "processes of the case outlived it: %s %s" % (report["leftover_processes"], host["left_in_case_ns"])
    assert host["new_qemu_of_case"] == [], "QEMU started by the case: %s" % host["new_qemu_of_case"]
    assert host["new_netns"] == [] and host["new_links"] == [] and host["gone_links"] == [], host


@pytest.mark.parametrize("entry", ["lab.yml", "role", "lab_dirs"])
@pytest.mark.parametrize("lab_name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_cleanup_refuses_a_bad_lab_name_and_removes_nothing(entry, lab_name, tmp_path):
    try:
        report, host = run_case(entry, lab_name, tmp_path)
        assert_nothing_touched(report, host)
    finally:
        if lab_name == BAD_NAMES["shell"] and os.path.lexists(PWN):
            os.unlink(PWN)  # absent before the case (run_case checks), so the case's injected command made it
    assert report["rc"] != 0 and report["failures"], "cleanup of lab_name=%r did not fail: %s" % (lab_name, report)
    task, message = report["failures"][0]
    # lab.yml's plan step names the playbook variable; a module its own option, which the role fills from lab_name.
    assert "lab_name " in message or "lab: " in message, (task, message)
    assert repr(lab_name) in message, (task, message)
    assert "lower-case letters" in message, "the message gives no fix: %s: %s" % (task, message)


@pytest.mark.parametrize("entry", ["lab.yml", "role", "lab_dirs"])
def test_cleanup_of_a_lab_that_does_not_exist_succeeds_and_changes_nothing(entry, tmp_path):
    report, host = run_case(entry, MISSING_LAB, tmp_path)
    assert_nothing_touched(report, host)
    assert report["rc"] == 0 and report["failures"] == [], report
    assert report["stats"]["localhost"]["changed"] == 0, report
    if entry != "lab_dirs":
        assert any(name.endswith(": " + TEARDOWN_DIRS_TASK) for name in report["ran"]), report["ran"]
    assert report["warnings"] == [], report["warnings"]


@pytest.mark.parametrize("entry", ["lab.yml", "role"])
def test_cleanup_removes_the_claimed_run_directory_and_keeps_the_unclaimed_disks(entry, tmp_path):
    report, host = run_case(entry, OWN_LAB, tmp_path, layout="own")
    assert_nothing_touched(report, host)
    assert report["rc"] == 0 and report["failures"] == [], report
    disks = "/var/lib/qemulab/labs/%s" % OWN_LAB
    assert report["own_left"] == [disks + "/rt1.qcow2"], report["own_left"]
    [warning] = [w for w in report["warnings"] if disks in w]
    assert "no lab.json claim" in warning and "remove it by hand" in warning, warning


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--child":
    child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
elif __name__ == "__main__":
    raise SystemExit("usage: %s --child lab.yml|role|lab_dirs LAB_NAME foreign|own SCRATCH_DIR HOST_MOUNT_NS_INODE "
                     "(the test runs this under unshare -m)" % sys.argv[0])
