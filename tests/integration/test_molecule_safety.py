"""Issue 22: the molecule scenario removes only what its own prepare made, and its probes really collide.

Each case runs the scenario's own playbooks (extensions/molecule/default: prepare, cleanup, destroy; no converge, so
no guest boots) in a child of this file under `unshare -m -n --propagation private`: its own mount namespace, with
tmpfs over /run and /var/lib/qemulab (no real lab's run files, lock, namespaces or markers are visible, a seed lab
left up by `./run lab` included), and its own network namespace, which stands in for the host's root namespace.
There the child first makes the host's own objects under the names the scenario uses (br1, which the old scenario
deleted from the root namespace, and the look-alikes br1x, veth0x/veth1x, vport11x), then runs the playbooks and
notes, after each, which objects of those names exist where, by ifindex and alias. Nothing here touches the real
root namespace: the test checks afterwards that the real host's objects of those names are as they were.
"""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
ANSIBLE_PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
SCENARIO = os.path.join(REPO, "extensions", "molecule", "default")
HELPER = os.path.join(SCENARIO, "foreign_objects.py")
INVENTORY = os.path.join(REPO, "inventories", "seed")
NETNS = "qemulab-seed"  # the seed inventory's lab_netns
LOOK_ALIKES = ["br1x", "veth0x", "veth1x", "vport11x"]  # prepare's: the seed's br1, veth0, veth1, vport11 plus "x"
NAMES = ["br1"] + LOOK_ALIKES
HOST_ALIAS = "the host's own"
TMPFS_ROOTS = ("/run", "/var/lib/qemulab")


# ---------------------------------------------------------------- the child, in its own mount and network namespace

def _ip(*args, netns=None):
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def links(netns=None):
    """{name: [ifindex, alias]} of the interfaces with the scenario's names, in `netns` or this namespace."""
    if netns and not os.path.ismount("/run/netns/" + netns):
        return None
    return dict((link["ifname"], [link["ifindex"], link.get("ifalias")])
                for link in json.loads(_ip("-j", "-d", "link", "show", netns=netns))
                if link["ifname"] in NAMES + ["lo"])


def make_hosts_own(netns=None, alias=HOST_ALIAS):
    """The host's own objects under the scenario's names (no qemulab mark)."""
    _ip("link", "add", "br1", "type", "bridge", netns=netns)
    _ip("link", "add", "br1x", "type", "bridge", netns=netns)
    _ip("link", "add", "veth0x", "type", "veth", "peer", "name", "veth1x", netns=netns)
    _ip("link", "add", "vport11x", "type", "bridge", netns=netns)
    for name in NAMES:
        _ip("link", "set", "dev", name, "alias", alias, netns=netns)


def helper(ephemeral, *args):
    proc = subprocess.run([PYTHON, HELPER, os.path.join(ephemeral, "foreign_objects.json")] + list(args),
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def record(ephemeral):
    try:
        with open(os.path.join(ephemeral, "foreign_objects.json")) as handle:
            return json.load(handle)["objects"]
    except FileNotFoundError:
        return []


def playbook(name, ephemeral, fixtures):
    # as molecule runs them: it sets ANSIBLE_FORCE_COLOR=1, which the nested lab.yml runs must not inherit
    env = fixtures.playbook_env({"MOLECULE_EPHEMERAL_DIRECTORY": ephemeral, "ANSIBLE_FORCE_COLOR": "1"})
    proc = subprocess.run([ANSIBLE_PLAYBOOK, "-i", INVENTORY, os.path.join(SCENARIO, name)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    res = fixtures.PlaybookResult(proc)
    return {
        "playbook": name,
        "rc": res.rc,
        "recap": bool(res.stats),
        "ran": [[task, r.get("skipped", False)] for task, _host, r in res.tasks()],
        "failures": [[task, r.get("msg", "")] for task, _host, r in res.tasks() if r.get("failed")],
        "stderr": proc.stderr[-2000:],
        "root": links(),
        "netns": links(NETNS),
        "record": record(ephemeral),
        "lock": os.path.lexists("/run/qemulab/seed.lock"),
        "marker": os.path.lexists("/run/qemulab/_netns/%s.owner" % NETNS),
        "run_dir": os.path.lexists("/run/qemulab/seed"),
    }


def stale_record(ephemeral, how):
    """A record naming objects that are no longer the ones it recorded, as if prepare had made them, then the host
    had changed them. Returns the recorded look-alike that is still prepare's (destroy must remove it), or None."""
    helper(ephemeral, "netns", NETNS)
    helper(ephemeral, "bridge", NETNS, "br1x")
    helper(ephemeral, "veth", NETNS, "veth0x", "veth1x")
    helper(ephemeral, "bridge", NETNS, "vport11x", "--mark", "other-lab")
    recorded = dict((entry["name"], entry) for entry in record(ephemeral))
    if how == "namespace-made-again":
        # Another namespace of the name, with br1x at the recorded ifindex and even the recorded alias: only the
        # namespace's identity tells them apart. The old one is held open until the new one exists, so the kernel
        # cannot hand the new one the old one's inode.
        held = os.open("/run/netns/" + NETNS, os.O_RDONLY)
        _ip("netns", "delete", NETNS)
        _ip("netns", "add", NETNS)
        os.close(held)
        _ip("link", "add", "br1x", "type", "bridge", netns=NETNS)
        _ip("link", "set", "dev", "lo", "alias", recorded[NETNS]["alias"], netns=NETNS)
        _ip("link", "set", "dev", "br1x", "alias", recorded["br1x"]["alias"], netns=NETNS)
        return None
    # The same namespace; br1x and vport11x deleted and made again (new ifindexes) with the recorded aliases even.
    for name in ("br1x", "vport11x"):
        _ip("link", "del", name, netns=NETNS)
        _ip("link", "add", name, "type", "bridge", netns=NETNS)
        _ip("link", "set", "dev", name, "alias", recorded[name]["alias"], netns=NETNS)
    return "veth0x"


def child(case, scratch, host_mnt_ns, host_net_ns):
    if os.stat("/proc/self/ns/mnt").st_ino == host_mnt_ns or os.stat("/proc/self/ns/net").st_ino == host_net_ns:
        raise SystemExit("refusing to run: not in private mount and network namespaces (start me with unshare -m -n)")
    for root in TMPFS_ROOTS:
        os.makedirs(root, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "qemulab-test", root], check=True)
    sys.path.insert(0, HERE)
    import conftest as fixtures  # tests/integration/conftest.py: playbook_env, PlaybookResult
    # ends, by pid after a grace period for the run lock's holder, what this case left in its mount namespace
    from test_teardown_safety import end_what_the_case_started

    ephemeral = os.path.join(scratch, "ephemeral")
    os.makedirs(ephemeral)
    make_hosts_own()
    report = {"case": case, "before": {"root": links(), "netns": links(NETNS)}, "steps": []}
    if case == "scenario":
        for name in ("destroy.yml", "prepare.yml", "cleanup.yml", "destroy.yml"):
            report["steps"].append(playbook(name, ephemeral, fixtures))
            if name == "prepare.yml":
                report["planted"] = helper(ephemeral, "check")
    else:
        report["still_prepares"] = stale_record(ephemeral, case)
        report["before"]["netns"] = links(NETNS)
        report["before"]["record"] = record(ephemeral)
        report["steps"].append(playbook("destroy.yml", ephemeral, fixtures))
        report["steps"].append(playbook("prepare.yml", ephemeral, fixtures))
    report["leftover_processes"] = end_what_the_case_started(os.stat("/proc/self/ns/mnt").st_ino)
    with open(os.path.join(scratch, "report.json"), "w") as handle:
        json.dump(report, handle)


# ---------------------------------------------------------------- the test, in the host's namespaces

def real_host():
    """The real host's objects of the scenario's names: root-namespace interfaces by ifindex and alias, and the
    scenario's namespace (by inode) if a lab made it there."""
    path = "/run/netns/" + NETNS
    return {"root": links(), "netns": os.stat(path).st_ino if os.path.ismount(path) else None}


def run_case(case, tmp_path):
    before = real_host()
    proc = subprocess.run(["unshare", "-m", "-n", "--propagation", "private", "--", PYTHON, os.path.abspath(__file__),
                           "--child", case, str(tmp_path), str(os.stat("/proc/self/ns/mnt").st_ino),
                           str(os.stat("/proc/self/ns/net").st_ino)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, "the case's child failed (rc %d): %s" % (proc.returncode, proc.stderr[-3000:])
    assert real_host() == before, "the real host's objects of the scenario's names changed"
    with open(os.path.join(str(tmp_path), "report.json")) as handle:
        report = json.load(handle)
    assert report["leftover_processes"] == [], report["leftover_processes"]
    return report


def step(report, index, playbook):
    found = report["steps"][index]
    assert found["playbook"] == playbook, found
    return found


def ran(found, task):
    """Whether the playbook ran `task` (not skipped)."""
    return [task, False] in found["ran"]


def test_the_scenario_refuses_collisions_and_removes_only_what_its_prepare_made(tmp_path):
    report = run_case("scenario", tmp_path)
    hosts_own = report["before"]["root"]
    assert sorted(hosts_own) == sorted(NAMES + ["lo"]) and hosts_own["br1"][1] == HOST_ALIAS, hosts_own
    for found in report["steps"]:
        assert found["rc"] == 0 and found["recap"] and found["failures"] == [], (
            found["playbook"], found["rc"], found["failures"], found["stderr"])
        # the host's own br1 and look-alikes: the same objects (ifindex, alias) after every step
        assert found["root"] == hosts_own, (found["playbook"], found["root"], hosts_own)

    prepare = step(report, 1, "prepare.yml")
    for probe in ("The lab refused the namespace, naming it", "The unmarked namespace survived the refused run",
                  "The lab refused the bridge, naming it",
                  "The foreign bridge survived the refused run (same ifindex, same alias)"):
        assert ran(prepare, probe), (probe, prepare["ran"])
    # planted in the lab's namespace, as recorded, with the scenario's mark or another lab's
    assert sorted(entry["name"] for entry in prepare["record"]) == sorted(LOOK_ALIKES), prepare["record"]
    assert sorted(report["planted"]["same"]) == sorted(LOOK_ALIKES), report["planted"]
    planted = dict((entry["name"], [entry["ifindex"], entry["alias"]]) for entry in prepare["record"])
    assert all(prepare["netns"][name] == planted[name] for name in LOOK_ALIKES), (prepare["netns"], planted)
    assert planted["vport11x"][1].startswith("qemulab:mol-") and planted["br1x"][1].startswith("molecule-foreign:")
    assert "br1" not in prepare["netns"], "the colliding bridge of probe 2 was not removed: %s" % prepare["netns"]
    assert prepare["marker"] and prepare["run_dir"], "prepare's refused run did not get as far as the lab's namespace"

    cleanup = step(report, 2, "cleanup.yml")
    for check in ("The cleanup succeeded and removed the lab", "The second cleanup succeeded and changed nothing",
                  "Every planted object survived as itself, kept the namespace, and nothing of the lab's is left there",
                  "Only the planted objects were removed, all of them",
                  "The last cleanup succeeded and removed the namespace", "Nothing of the lab is left"):
        assert ran(cleanup, check), (check, cleanup["ran"])
    # what prepare planted is gone, and with it the namespace; nothing of the lab is left, no lock, no marker
    assert cleanup["netns"] is None and cleanup["record"] == [], cleanup
    assert not (cleanup["lock"] or cleanup["marker"] or cleanup["run_dir"]), cleanup


@pytest.mark.parametrize("how", ["namespace-made-again", "object-made-again"])
def test_destroy_keeps_what_its_record_names_once_it_is_somebody_elses(how, tmp_path):
    report = run_case(how, tmp_path)
    hosts_own, before = report["before"]["root"], report["before"]["netns"]
    destroy, prepare = step(report, 0, "destroy.yml"), step(report, 1, "prepare.yml")
    assert destroy["rc"] == 0 and destroy["failures"] == [], destroy
    assert destroy["root"] == hosts_own and prepare["root"] == hosts_own, (destroy["root"], hosts_own)
    still_prepares = report["still_prepares"]
    kept = dict((name, value) for name, value in before.items() if name not in (still_prepares, "veth1x"))
    if still_prepares:
        # positive control: the recorded object nobody changed is removed (its veth peer with it)
        assert "veth0x" in before and "veth0x" not in destroy["netns"] and "veth1x" not in destroy["netns"], destroy
    else:
        assert before["br1x"][1].startswith("molecule-foreign:"), before  # the recorded alias, copied
    # every object the record names that is no longer prepare's: there, as it was (ifindex, alias)
    assert destroy["netns"] == kept, (destroy["netns"], kept)
    # records of what is somebody else's now are dropped; the namespace prepare made stays recorded while it holds
    # interfaces prepare did not make (destroy removes it once they are gone)
    assert [entry["name"] for entry in destroy["record"]] == ([NETNS] if still_prepares else []), destroy["record"]
    # prepare will not start beside a namespace of the lab's name, and leaves it as it is
    assert prepare["rc"] != 0 and any("namespace %s exists already" % NETNS in msg for _t, msg in prepare["failures"])
    assert prepare["netns"] == kept, (prepare["netns"], kept)


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--child":
    child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
elif __name__ == "__main__":
    raise SystemExit("usage: %s --child CASE SCRATCH_DIR HOST_MOUNT_NS_INODE HOST_NET_NS_INODE (the test runs this "
                     "under unshare -m -n)" % sys.argv[0])
