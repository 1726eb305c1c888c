"""Concurrent runs (issue 14): runs started together never both pass a claim check, an inventory cleans up only the
lab it claims, and state every lab shares (the guests' SSH key pair) is made once. No guest boots: the lab runs stop
after host_prep (--tags prep).

The claim tests run in a private mount namespace (this file again, as the child, under `unshare -m`): tmpfs over
/run and /var/lib/qemulab with a foreign lab's canary files, so the lab's run directory, claim, lock and namespace
exist only there, and the namespace goes with the child whatever happens.
"""
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import ANSIBLE_PLAYBOOK, REPO_ROOT, VENV_PYTHON, PlaybookResult, playbook_env  # noqa: E402

pytestmark = pytest.mark.integration

LOCK_TASK = "Wait for other runs of this lab to end, then hold its lock until this run ends"
PLAN_STOP = "Stop on an invalid inventory before anything on the host changes"
CLEANUP_STOP = "Stop a cleanup whose lab name or namespace is invalid before anything is removed"
CANARIES = {
    "/run/qemulab/other/lab.json": json.dumps({"lab": "other", "inventory": "/srv/other-lab"}) + "\n",
    "/run/qemulab/other/keep.txt": "a run file of lab other\n",
    "/var/lib/qemulab/labs/other/lab.json": json.dumps({"lab": "other"}) + "\n",
    "/var/lib/qemulab/labs/other/other.qcow2": "QFI\n a disk of lab other\n",
}


# -- the child, inside the private mount namespace ---------------------------------------------------------------

def _failures(res):
    return [(name, str(r.get("msg", ""))) for name, _host, r in res.tasks() if r.get("failed") and not r.get("ignored")]


def _summary(res):
    return {"rc": res.rc, "failed": _failures(res), "prep": any("host_prep" in name for name, _h, _r in res.tasks()),
            "stderr": res.stderr[-1500:]}


def _claim(lab):
    try:
        with open("/run/qemulab/%s/lab.json" % lab) as f:
            return json.load(f)
    except OSError:
        return None


def _netns_exists(name):
    return os.path.ismount("/run/netns/" + name)


def claims_scenario(spec):
    """Two inventories (two directories) of one lab name, started together while the test holds the lab's lock so
    both are queued at it; then cleanups from the inventory that lost, without and with lab_cleanup_force."""
    from faultlab import start_playbook, read_events, wait_run

    for target in ("/run", "/var/lib/qemulab"):
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "qemulab-concurrent", target], check=True)
    for path, text in CANARIES.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    lab, inventories = spec["lab"], spec["inventories"]
    report = {}
    lock_path = "/run/qemulab/%s.lock" % lab
    os.makedirs("/run/qemulab", exist_ok=True)
    held = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    runs = []
    for inventory in inventories:
        events = os.path.join(os.path.dirname(inventory), "events.jsonl")
        proc = start_playbook(os.path.join(REPO_ROOT, "lab.yml"), inventory, tags="prep", events=events)
        proc.events = events
        runs.append(proc)
    # Both runs are queued at the lock before either may go on (on the old order they had read the claim by then).
    deadline = time.monotonic() + 120
    waiting = set()
    while len(waiting) < len(runs) and time.monotonic() < deadline:
        for index, proc in enumerate(runs):
            if any(e["event"] == "task_start" and e["task"] == LOCK_TASK for e in read_events(proc.events)):
                waiting.add(index)
        time.sleep(0.1)
    report["both_queued_at_lock"] = len(waiting) == len(runs)
    time.sleep(0.5)  # the lab_lock action is running by now
    os.close(held)
    report["runs"] = [_summary(wait_run(proc, timeout=600)) for proc in runs]
    report["claim"] = _claim(lab)
    report["netns_after_runs"] = _netns_exists(spec["netns"])

    winners = [i for i, r in enumerate(report["runs"]) if r["rc"] == 0]
    loser = inventories[1 - winners[0]] if len(winners) == 1 else inventories[1]

    def cleanup(extra_vars=None):
        cmd = [ANSIBLE_PLAYBOOK, os.path.join(REPO_ROOT, "lab.yml"), "-i", loser, "--tags", "cleanup"]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=playbook_env())
        return _summary(PlaybookResult(proc))

    report["cleanup"] = cleanup()
    report["claim_after_cleanup"] = _claim(lab)
    report["netns_after_cleanup"] = _netns_exists(spec["netns"])
    report["forced_cleanup"] = cleanup({"lab_cleanup_force": True})
    report["claim_after_forced"] = _claim(lab)
    report["netns_after_forced"] = _netns_exists(spec["netns"])
    report["lab_dirs_after_forced"] = [path for path in ("/run/qemulab/" + lab, "/var/lib/qemulab/labs/" + lab)
                                       if os.path.lexists(path)]
    damaged = []
    for path, text in CANARIES.items():
        try:
            with open(path) as f:
                if f.read() != text:
                    damaged.append(path)
        except OSError:
            damaged.append(path)
    report["canaries_damaged"] = damaged
    return report


# -- the parent ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def claim_race():
    """One child run of claims_scenario: two inventories of one lab, its report."""
    from faultlab import Lab

    first = Lab(prefix="qc", net=35)
    second_dir = tempfile.mkdtemp(prefix="qemulab-concurrent-")
    try:
        second = os.path.join(second_dir, "hosts.yml")
        shutil.copy(first.inventory, second)
        spec = {"lab": first.name, "netns": first.netns, "inventories": [first.inventory, second]}
        started = time.monotonic()
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", VENV_PYTHON, os.path.abspath(__file__),
                               "--child", json.dumps(spec)], capture_output=True, text=True, timeout=1500,
                              env=playbook_env())
        assert proc.returncode == 0 and proc.stdout.startswith("{"), (proc.stdout[-3000:], proc.stderr[-3000:])
        report = json.loads(proc.stdout)
        report["seconds"] = round(time.monotonic() - started, 1)
        report["inventory_dirs"] = [os.path.dirname(p) for p in spec["inventories"]]
        print("\nclaim race and cleanups in %.0f s" % report["seconds"])
        yield report
    finally:
        shutil.rmtree(first.dir, ignore_errors=True)
        shutil.rmtree(second_dir, ignore_errors=True)
    assert not os.path.exists("/run/netns/" + first.netns), "the child's namespace reached the host"


def test_two_inventories_of_one_lab_started_together_never_both_pass(claim_race):
    """Both runs wait at the lab lock (the test holds it); the first to get it brings the lab up and claims it; the
    second, holding the lock only after that, reads the claim and stops in the plan, naming the other inventory,
    before host_prep. (Reading the claim before the lock, both passed and the second took over the first's lab.)"""
    assert claim_race["both_queued_at_lock"], claim_race
    runs = claim_race["runs"]
    assert sorted(r["rc"] == 0 for r in runs) == [False, True], runs
    winner = [i for i, r in enumerate(runs) if r["rc"] == 0][0]
    loser = runs[1 - winner]
    assert [name for name, _msg in loser["failed"]] == [PLAN_STOP], loser
    assert "already claimed by the running lab of inventory %s" % claim_race["inventory_dirs"][winner] \
        in loser["failed"][0][1], loser
    assert not loser["prep"], "the second run went on into host_prep"
    assert claim_race["claim"]["inventory"] == claim_race["inventory_dirs"][winner]
    assert claim_race["netns_after_runs"]


def test_cleanup_removes_only_a_lab_its_inventory_claims_unless_forced(claim_race):
    """The losing inventory's cleanup is refused before anything is removed (the lab's namespace and claim stay);
    with lab_cleanup_force it removes the lab; the foreign lab's canaries are untouched throughout."""
    refused = claim_race["cleanup"]
    assert refused["rc"] != 0 and [name for name, _msg in refused["failed"]] == [CLEANUP_STOP], refused
    assert "already claimed" in refused["failed"][0][1] and "lab_cleanup_force" in refused["failed"][0][1]
    assert claim_race["netns_after_cleanup"] and claim_race["claim_after_cleanup"] == claim_race["claim"]
    forced = claim_race["forced_cleanup"]
    assert forced["rc"] == 0, forced
    assert not claim_race["netns_after_forced"] and claim_race["claim_after_forced"] is None
    assert claim_race["lab_dirs_after_forced"] == []
    assert claim_race["canaries_damaged"] == []


def _key_tasks():
    """The guest_image role's own tasks that make the SSH key pair, as written in the role."""
    with open(os.path.join(REPO_ROOT, "roles", "guest_image", "tasks", "main.yml")) as f:
        tasks = yaml.safe_load(f)
    picked = [task for task in tasks if task["name"].startswith("SSH key")]
    assert len(picked) == 2, [task["name"] for task in tasks]
    return picked


def test_labs_started_together_make_one_ssh_key_pair(tmp_path):
    """Four runs of the role's key tasks at once on a host without a key (ssh-keygen slowed to 3 s by a stand-in
    first on PATH, so every run has looked before the first key exists): all succeed, one makes the pair, the
    others wait for it and use it; the private and public halves belong together and no temporary file is left.
    (Unlocked, the later ssh-keygens found the key half-made and failed at its overwrite prompt.)"""
    key = tmp_path / "ssh" / "id_ed25519"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ssh-keygen").write_text("#!/bin/sh\nsleep 3\nexec /usr/bin/ssh-keygen \"$@\"\n")
    (shim / "ssh-keygen").chmod(0o755)
    playbook = tmp_path / "keys.yml"
    playbook.write_text(yaml.safe_dump([{"name": "Key pair", "hosts": "localhost", "gather_facts": False,
                                         "vars": {"guest_image_ssh_key": str(key)}, "tasks": _key_tasks()}]))
    env = playbook_env({"PATH": "%s:%s" % (shim, os.environ["PATH"])})
    started = time.monotonic()
    procs = [subprocess.Popen([ANSIBLE_PLAYBOOK, str(playbook), "-i", "localhost,", "-c", "local", "-e",
                               "ansible_python_interpreter=" + VENV_PYTHON], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(4)]
    results = [PlaybookResult(subprocess.CompletedProcess(p.args, p.wait(timeout=300), p.stdout.read(),
                                                          p.stderr.read())) for p in procs]
    print("\nfour key runs in %.1f s" % (time.monotonic() - started))
    assert [r.rc for r in results] == [0, 0, 0, 0], [_failures(r) for r in results]
    made = [r.result("SSH key pair for the guests (once per lab host)")["changed"] for r in results]
    assert sorted(made) == [False, False, False, True], made
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == (key.parent / "id_ed25519.pub").read_text().split()[:2]
    assert sorted(os.listdir(str(key.parent))) == ["id_ed25519", "id_ed25519.pub"]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.stdout.write(json.dumps(claims_scenario(json.loads(sys.argv[2]))))
