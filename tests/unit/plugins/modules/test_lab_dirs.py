"""Unit tests (temporary directories, no kernel objects): lab_dirs creates a lab's two directories with their claims
in one run (never through a link, never over another lab's claim), removes a lab's directory only when it is a real
directory whose lab.json claims that lab, keeps anything else with a warning, and refuses a bad lab name before
reading anything."""
import grp
import json
import os
import stat
import subprocess

import pytest
import yaml

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.qemulab.network.plugins.module_utils._validate import check_lab_name
from ansible_collections.qemulab.network.plugins.modules import lab_dirs

pytestmark = pytest.mark.unit


class Exited(Exception):
    def __init__(self, result):
        super().__init__(result)
        self.result = result


def run(monkeypatch, check=False, diff=False, **args):
    """main() with these options; the result dict (failed: True when it called fail_json)."""
    def exit_json(module, **result):
        raise Exited(result)

    def fail_json(module, **result):
        raise Exited(dict(result, failed=True))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    warnings = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda module, text: warnings.append(text))
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    with patch_module_args(args), pytest.raises(Exited) as exited:
        lab_dirs.main()
    return dict(exited.value.result, warnings=warnings)


@pytest.fixture
def roots(tmp_path):
    run_root, state_dir = tmp_path / "run", tmp_path / "state"
    (state_dir / "labs").mkdir(parents=True)
    run_root.mkdir()
    return {"run_root": str(run_root), "state_dir": str(state_dir)}


def lab_dir(root, lab, claim=None, files=("keep",)):
    """A directory root/lab holding `files` and, when `claim` is a name, a lab.json claiming it."""
    path = os.path.join(root, lab)
    os.makedirs(path)
    for name in files:
        with open(os.path.join(path, name), "w") as f:
            f.write("x")
    if claim is not None:
        with open(os.path.join(path, "lab.json"), "w") as f:
            json.dump({"lab": claim, "inventory": "/inv", "netns": ""}, f)
    return path


def both(roots, lab, claim):
    return (lab_dir(roots["run_root"], lab, claim), lab_dir(os.path.join(roots["state_dir"], "labs"), lab, claim))


def test_claimed_directories_are_removed_and_a_second_run_changes_nothing(monkeypatch, roots):
    run_dir, disk_dir = both(roots, "seed", "seed")
    os.mkdir(os.path.join(run_dir, "rt1"))  # a VM directory whose QEMU is not running
    result = run(monkeypatch, lab="seed", diff=True, **roots)
    assert result["changed"] and not result.get("failed")
    assert result["removed"] == [disk_dir, run_dir] and result["kept"] == [] and result["warnings"] == []
    assert result["diff"] == {"before": {"paths": [disk_dir, run_dir]}, "after": {"paths": []}}
    assert not os.path.lexists(run_dir) and not os.path.lexists(disk_dir)
    again = run(monkeypatch, lab="seed", diff=True, **roots)
    assert not again["changed"] and again["removed"] == [] and again["diff"]["before"] == {"paths": []}


def test_check_mode_reports_the_same_and_removes_nothing(monkeypatch, roots):
    run_dir, disk_dir = both(roots, "seed", "seed")
    checked = run(monkeypatch, lab="seed", check=True, diff=True, **roots)
    assert os.path.isdir(run_dir) and os.path.isdir(disk_dir)
    applied = run(monkeypatch, lab="seed", diff=True, **roots)
    assert {k: checked[k] for k in ("changed", "removed", "kept", "diff")} == \
        {k: applied[k] for k in ("changed", "removed", "kept", "diff")}


def test_missing_lab_is_no_change(monkeypatch, roots):
    both(roots, "other", "other")
    result = run(monkeypatch, lab="seed", **roots)
    assert not result["changed"] and result["removed"] == [] and result["kept"] == [] and result["warnings"] == []
    assert os.path.isfile(os.path.join(roots["run_root"], "other", "keep"))


def test_missing_roots_are_no_change(monkeypatch, tmp_path):
    result = run(monkeypatch, lab="seed", run_root=str(tmp_path / "no"), state_dir=str(tmp_path / "none"))
    assert not result["changed"] and result["removed"] == []


def test_unclaimed_directory_is_kept_with_a_warning_naming_it_and_the_fix(monkeypatch, roots):
    run_dir = lab_dir(roots["run_root"], "seed", claim=None)
    disk_dir = lab_dir(os.path.join(roots["state_dir"], "labs"), "seed", claim="seed")
    result = run(monkeypatch, lab="seed", diff=True, **roots)
    assert result["changed"] and result["removed"] == [disk_dir]
    assert os.path.isfile(os.path.join(run_dir, "keep")) and not os.path.lexists(disk_dir)
    assert [item["path"] for item in result["kept"]] == [run_dir]
    [warning] = result["warnings"]
    assert run_dir in warning and "no lab.json claim" in warning and "remove it by hand" in warning
    assert result["diff"]["after"] == {"paths": [run_dir]}


def test_claim_of_another_lab_is_kept(monkeypatch, roots):
    run_dir, disk_dir = both(roots, "seed", "other")
    result = run(monkeypatch, lab="seed", **roots)
    assert not result["changed"] and result["removed"] == []
    assert os.path.isfile(os.path.join(run_dir, "keep")) and os.path.isfile(os.path.join(disk_dir, "keep"))
    assert len(result["warnings"]) == 2 and all("claims lab 'other'" in w and "lab_name=other" in w
                                                for w in result["warnings"])


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"lab": 5}', b"x" * (70 * 1024)],
                         ids=["empty", "broken", "list", "lab-not-string", "huge"])
def test_unusable_claim_keeps_the_directory(monkeypatch, roots, content):
    run_dir = lab_dir(roots["run_root"], "seed")
    with open(os.path.join(run_dir, "lab.json"), "wb") as f:
        f.write(content)
    result = run(monkeypatch, lab="seed", **roots)
    assert not result["changed"] and os.path.isfile(os.path.join(run_dir, "keep"))
    assert len(result["warnings"]) == 1 and run_dir in result["warnings"][0]


def test_claim_that_is_a_link_is_not_followed(monkeypatch, roots, tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"lab": "seed"}))
    run_dir = lab_dir(roots["run_root"], "seed")
    os.symlink(str(elsewhere), os.path.join(run_dir, "lab.json"))
    result = run(monkeypatch, lab="seed", **roots)
    assert not result["changed"] and os.path.isdir(run_dir) and elsewhere.exists()


def test_symlinked_directory_is_kept_and_its_target_untouched(monkeypatch, roots, tmp_path):
    target = lab_dir(str(tmp_path), "precious", claim="seed", files=("data",))  # even a target that claims seed
    link = os.path.join(roots["run_root"], "seed")
    os.symlink(target, link)
    disk_link = os.path.join(roots["state_dir"], "labs", "seed")
    os.symlink(target, disk_link)
    result = run(monkeypatch, lab="seed", diff=True, **roots)
    assert not result["changed"] and result["removed"] == []
    assert os.path.islink(link) and os.path.islink(disk_link)
    assert sorted(os.listdir(target)) == ["data", "lab.json"]
    assert all("symbolic link (to %s)" % target in w for w in result["warnings"]) and len(result["warnings"]) == 2
    assert result["diff"]["before"] == result["diff"]["after"] == {"paths": [disk_link, link]}


def test_file_under_the_lab_name_is_kept(monkeypatch, roots):
    path = os.path.join(roots["run_root"], "seed")
    with open(path, "w") as f:
        f.write("x")
    result = run(monkeypatch, lab="seed", **roots)
    assert not result["changed"] and os.path.isfile(path) and "not a directory" in result["warnings"][0]


@pytest.mark.parametrize("lab", ["", ".", "..", "../../etc", "/x", "a/b", "x$(touch /tmp/qlpwn)", "Seed", "-x",
                                 "a" * 16, "seed "])
def test_bad_lab_name_is_refused_before_anything_is_read(monkeypatch, roots, lab):
    both(roots, "other", "other")
    # The roots themselves claim nothing, but a name like '' or '.' would point at them.
    reads = []
    monkeypatch.setattr(lab_dirs, "read_lab_dir", lambda *a: reads.append(a))
    result = run(monkeypatch, lab=lab, **roots)
    assert result["failed"] and reads == []
    assert result["msg"] == "lab_dirs: lab: %s; nothing was removed" % check_lab_name(lab)
    assert result["msg"].startswith("lab_dirs: lab: %r " % lab)
    assert os.path.isfile(os.path.join(roots["run_root"], "other", "keep"))


def test_relative_root_is_refused(monkeypatch, roots):
    result = run(monkeypatch, lab="seed", run_root="relative/run", state_dir=roots["state_dir"])
    assert result["failed"] and "run_root" in result["msg"] and "absolute" in result["msg"]


def test_running_vm_keeps_everything(monkeypatch, roots):
    run_dir, disk_dir = both(roots, "seed", "seed")
    os.mkdir(os.path.join(run_dir, "rt1"))
    monkeypatch.setattr(lab_dirs, "find_qemus", lambda run_dir: [4242] if run_dir.endswith("/rt1") else [])
    result = run(monkeypatch, lab="seed", **roots)
    assert result["failed"] and "rt1 (pid 4242)" in result["msg"] and "qemu_vms" in result["msg"]
    assert os.path.isdir(run_dir) and os.path.isdir(disk_dir)
    checked = run(monkeypatch, lab="seed", check=True, **roots)  # the role's earlier task would have stopped it
    assert checked["changed"] and not checked.get("failed")


def test_directory_swapped_for_a_link_after_the_check_is_not_removed(monkeypatch, roots, tmp_path):
    run_dir = lab_dir(roots["run_root"], "seed", claim="seed")
    found = lab_dirs.read_lab_dir(roots["run_root"], "seed")
    target = lab_dir(str(tmp_path), "precious", claim="seed")
    os.rename(run_dir, str(tmp_path / "moved"))
    os.symlink(target, run_dir)
    with pytest.raises(lab_dirs.DirectoryChanged):
        lab_dirs.remove_lab_dir(found, "seed")
    assert os.path.isfile(os.path.join(target, "keep"))


def test_plan_names_only_claimed_directories():
    findings = [
        {"path": "/s/labs/seed", "kind": "directory", "claim": "seed", "problem": None},
        {"path": "/r/seed", "kind": "absent", "claim": None, "problem": None},
    ]
    remove, kept, diff = lab_dirs.plan_lab_dirs("seed", findings)
    assert remove == ["/s/labs/seed"] and kept == []
    assert diff == {"before": {"paths": ["/s/labs/seed"]}, "after": {"paths": []}}


def test_docs_match_argument_spec():
    doc = yaml.safe_load(lab_dirs.DOCUMENTATION)
    spec = lab_dirs.argument_spec()
    assert sorted(doc["options"]) == sorted(spec)
    for name, option in spec.items():
        documented = doc["options"][name]
        for key in ("type", "default", "choices", "required", "elements"):
            assert documented.get(key) == option.get(key), (name, key)
    assert sorted(yaml.safe_load(lab_dirs.RETURN)) == ["claimed", "created", "fixed", "kept", "lab", "removed"]
    for task in yaml.safe_load(lab_dirs.EXAMPLES):
        assert set(task["qemulab.network.lab_dirs"]) <= set(spec)


def test_unreadable_root_fails_naming_it(monkeypatch, roots):
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(lab_dirs, "_open_dir", denied)
    result = run(monkeypatch, lab="seed", **roots)
    assert result["failed"] and roots["run_root"] in result["msg"] and "nothing was removed" in result["msg"]


# state=present

CLAIM_TEXT = '{\n    "inventory": "/inv/seed",\n    "lab": "seed",\n    "netns": "qemulab-seed"\n}\n'
PRESENT = dict(lab="seed", inventory="/inv/seed", netns="qemulab-seed", state="present")


def paths_of(roots, lab="seed"):
    return os.path.join(roots["run_root"], lab), os.path.join(roots["state_dir"], "labs", lab)


def attrs(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid, "%04o" % stat.S_IMODE(st.st_mode)


@pytest.fixture
def other_group():
    """A group of the test's own (gid, name), removed afterwards: lab_dirs resolves it by number and by name."""
    if os.geteuid() != 0:
        pytest.fail("lab_dirs's tests run as root (the module gives its directories to root); run them as root",
                    pytrace=False)
    name = "qlt-dirs-%d" % os.getpid()
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True, text=True)
    try:
        yield grp.getgrnam(name).gr_gid, name
    finally:
        subprocess.run(["groupdel", name], check=True, capture_output=True, text=True)


@pytest.fixture
def fresh_roots(tmp_path):
    """Roots that do not exist yet (the module makes them)."""
    return {"run_root": str(tmp_path / "run" / "qemulab"), "state_dir": str(tmp_path / "state")}


def test_present_creates_both_directories_their_roots_and_claims(monkeypatch, fresh_roots):
    run_dir, disk_dir = paths_of(fresh_roots)
    result = run(monkeypatch, diff=True, **PRESENT, **fresh_roots)
    assert result["changed"] and not result.get("failed")
    run_parent, labs = os.path.dirname(fresh_roots["run_root"]), os.path.join(fresh_roots["state_dir"], "labs")
    assert result["created"] == [run_parent, fresh_roots["run_root"], run_dir, fresh_roots["state_dir"], labs, disk_dir]
    assert result["claimed"] == [os.path.join(run_dir, "lab.json"), os.path.join(disk_dir, "lab.json")]
    assert result["fixed"] == []
    assert attrs(run_dir) == (0, 0, "0700") and attrs(disk_dir) == (0, 0, "0700")
    assert attrs(fresh_roots["run_root"]) == (0, 0, "0755") and attrs(run_parent) == (0, 0, "0755")
    assert attrs(labs) == (0, 0, "0700") and attrs(fresh_roots["state_dir"]) == (0, 0, "0700")
    for directory in (run_dir, disk_dir):
        claim = os.path.join(directory, "lab.json")
        assert attrs(claim) == (0, 0, "0600") and open(claim).read() == CLAIM_TEXT
        assert os.listdir(directory) == ["lab.json"]  # no temporary file left behind
    diff = result["diff"]
    assert diff["before"] == {"paths": {}}
    assert diff["after"]["paths"][run_dir] == {"owner": 0, "group": 0, "mode": "0700"}
    assert diff["after"]["paths"][fresh_roots["run_root"]] == {"owner": 0, "group": 0, "mode": "0755"}
    assert diff["after"]["paths"][os.path.join(disk_dir, "lab.json")] == {
        "owner": 0, "group": 0, "mode": "0600", "content": CLAIM_TEXT}


def test_present_twice_is_no_change(monkeypatch, fresh_roots):
    run(monkeypatch, **PRESENT, **fresh_roots)
    again = run(monkeypatch, diff=True, **PRESENT, **fresh_roots)
    assert not again["changed"] and not again.get("failed")
    assert again["created"] == again["fixed"] == again["claimed"] == []
    assert again["diff"]["before"] == again["diff"]["after"]


def test_present_keeps_a_claim_written_by_the_former_copy_task(monkeypatch, roots):
    """The role's copy task wrote to_nice_json plus a newline: the same bytes, so upgrading changes nothing."""
    for directory in paths_of(roots):
        os.mkdir(directory, 0o700)
        with open(os.path.join(directory, "lab.json"), "w") as f:
            f.write(json.dumps({"lab": "seed", "inventory": "/inv/seed", "netns": "qemulab-seed"}, indent=4,
                               sort_keys=True, separators=(",", ": ")) + "\n")
        os.chmod(os.path.join(directory, "lab.json"), 0o600)
    assert not run(monkeypatch, **PRESENT, **roots)["changed"]


def test_present_in_check_mode_reports_the_same_and_creates_nothing(monkeypatch, fresh_roots, tmp_path):
    checked = run(monkeypatch, check=True, diff=True, **PRESENT, **fresh_roots)
    assert os.listdir(str(tmp_path)) == []
    applied = run(monkeypatch, diff=True, **PRESENT, **fresh_roots)
    keys = ("changed", "created", "fixed", "claimed", "diff")
    assert {k: checked[k] for k in keys} == {k: applied[k] for k in keys}
    # and once in place, check mode agrees that nothing would change
    assert not run(monkeypatch, check=True, **PRESENT, **fresh_roots)["changed"]


def test_present_with_a_group_gives_the_run_directory_0710_and_that_gid(monkeypatch, fresh_roots, other_group):
    gid, name = other_group
    run_dir, disk_dir = paths_of(fresh_roots)
    result = run(monkeypatch, group=str(gid), **PRESENT, **fresh_roots)
    assert result["changed"] and attrs(run_dir) == (0, gid, "0710") and attrs(disk_dir) == (0, 0, "0700")
    assert not run(monkeypatch, group=name, **PRESENT, **fresh_roots)["changed"]  # by name: the same group
    back = run(monkeypatch, **PRESENT, **fresh_roots)  # QEMU runs as root again
    assert back["changed"] and back["fixed"] == [run_dir] and back["claimed"] == []
    assert attrs(run_dir) == (0, 0, "0700")


def test_present_fixes_mode_and_claim_of_an_existing_directory(monkeypatch, roots):
    run_dir, disk_dir = paths_of(roots)
    os.mkdir(run_dir, 0o755)
    os.chmod(run_dir, 0o755)
    lab_dir(os.path.join(roots["state_dir"], "labs"), "seed", claim="seed")  # claim of seed, other inventory
    os.chmod(disk_dir, 0o700)
    result = run(monkeypatch, diff=True, **PRESENT, **roots)
    assert result["created"] == [] and result["fixed"] == [run_dir]
    assert result["claimed"] == [os.path.join(run_dir, "lab.json"), os.path.join(disk_dir, "lab.json")]
    assert attrs(run_dir) == (0, 0, "0700") and open(os.path.join(disk_dir, "lab.json")).read() == CLAIM_TEXT
    assert os.path.isfile(os.path.join(disk_dir, "keep"))
    assert result["diff"]["before"]["paths"][run_dir]["mode"] == "0755"


def test_present_refuses_a_link_in_place_of_the_lab_directory_and_leaves_its_target(monkeypatch, roots, tmp_path):
    target = lab_dir(str(tmp_path), "precious", files=("data",))
    os.chmod(target, 0o755)
    link = os.path.join(roots["run_root"], "seed")
    os.symlink(target, link)
    result = run(monkeypatch, **PRESENT, **roots)
    assert result["failed"] and link in result["msg"] and "symbolic link" in result["msg"]
    assert "nothing was changed" in result["msg"]
    assert os.path.islink(link) and os.listdir(target) == ["data"] and attrs(target)[2] == "0755"
    assert not os.path.lexists(paths_of(roots)[1])  # refused before the disk directory was made


def test_present_refuses_a_file_in_place_of_the_lab_directory(monkeypatch, roots):
    path = os.path.join(roots["state_dir"], "labs", "seed")
    with open(path, "w") as f:
        f.write("x")
    result = run(monkeypatch, **PRESENT, **roots)
    assert result["failed"] and path in result["msg"] and "not a directory" in result["msg"]


def test_present_refuses_another_labs_claim(monkeypatch, roots):
    run_dir = lab_dir(roots["run_root"], "seed", claim="other")
    before = open(os.path.join(run_dir, "lab.json")).read()
    result = run(monkeypatch, **PRESENT, **roots)
    assert result["failed"] and run_dir in result["msg"] and "claims lab 'other'" in result["msg"]
    assert open(os.path.join(run_dir, "lab.json")).read() == before
    assert not os.path.lexists(paths_of(roots)[1])


@pytest.mark.parametrize("kind", ["link", "broken", "directory"])
def test_present_refuses_a_claim_that_is_not_a_claim(monkeypatch, roots, tmp_path, kind):
    run_dir = lab_dir(roots["run_root"], "seed")
    claim = os.path.join(run_dir, "lab.json")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("precious")
    if kind == "link":
        os.symlink(str(elsewhere), claim)
    elif kind == "broken":
        with open(claim, "w") as f:
            f.write("{not json")
    else:
        os.mkdir(claim)
    result = run(monkeypatch, **PRESENT, **roots)
    assert result["failed"] and claim in result["msg"]
    assert elsewhere.read_text() == "precious"


def test_present_claims_an_unclaimed_directory(monkeypatch, roots):
    run_dir = lab_dir(roots["run_root"], "seed")
    os.chmod(run_dir, 0o700)
    result = run(monkeypatch, **PRESENT, **roots)
    assert result["changed"] and os.path.join(run_dir, "lab.json") in result["claimed"]
    assert os.path.isfile(os.path.join(run_dir, "keep"))


def test_present_refuses_an_unknown_group_and_a_bad_name(monkeypatch, fresh_roots, tmp_path):
    result = run(monkeypatch, group="no-such-group-qemulab", **PRESENT, **fresh_roots)
    assert result["failed"] and "no-such-group-qemulab" in result["msg"] and os.listdir(str(tmp_path)) == []
    bad = run(monkeypatch, **dict(PRESENT, lab="../x"), **fresh_roots)
    assert bad["failed"] and bad["msg"].endswith("nothing was changed") and os.listdir(str(tmp_path)) == []


def test_absent_after_present_removes_both(monkeypatch, fresh_roots):
    run_dir, disk_dir = paths_of(fresh_roots)
    run(monkeypatch, **PRESENT, **fresh_roots)
    result = run(monkeypatch, lab="seed", state="absent", **fresh_roots)
    assert result["changed"] and result["removed"] == [disk_dir, run_dir] and result["warnings"] == []
    assert not os.path.lexists(run_dir) and not os.path.lexists(disk_dir)
    assert os.path.isdir(fresh_roots["run_root"])  # the roots stay


def test_claim_is_replaced_atomically_through_the_directory_fd(tmp_path):
    directory = tmp_path / "lab"
    directory.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(str(victim), str(directory / "lab.json"))
    fd = os.open(str(directory), os.O_RDONLY | os.O_DIRECTORY)
    try:
        lab_dirs.write_claim(fd, b"new\n")
    finally:
        os.close(fd)
    assert victim.read_text() == "keep"  # the link itself is replaced, its target is not written
    assert not os.path.islink(str(directory / "lab.json")) and (directory / "lab.json").read_text() == "new\n"
    assert os.listdir(str(directory)) == ["lab.json"]
