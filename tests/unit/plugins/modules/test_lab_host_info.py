"""Unit tests (temporary directories, this process's own /proc): lab_host_info reads the lab host's memory and CPUs
and a lab's claim, never through a link and never for a name that breaks the rule."""
import json
import os

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.qemulab.network.plugins.modules import lab_host_info

pytestmark = pytest.mark.unit


class Exited(Exception):
    def __init__(self, result):
        super().__init__(result)
        self.result = result


def run(monkeypatch, **args):
    def exit_json(module, **result):
        raise Exited(result)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    with patch_module_args(dict(args, _ansible_check_mode=True)), pytest.raises(Exited) as exited:
        lab_host_info.main()
    return exited.value.result


def test_memory_and_cpus_are_the_hosts(monkeypatch, tmp_path):
    result = run(monkeypatch, lab="lab1", run_root=str(tmp_path))
    with open("/proc/meminfo") as handle:
        available = [int(line.split()[1]) for line in handle if line.startswith("MemAvailable:")][0] // 1024
    assert abs(result["mem_available_mib"] - available) < 256 and result["cpus"] == len(os.sched_getaffinity(0))
    assert result["claim"] is None and result["changed"] is False


def test_a_claim_is_read_but_never_through_a_link_nor_for_a_bad_name(monkeypatch, tmp_path):
    (tmp_path / "lab1").mkdir()
    (tmp_path / "lab1" / "lab.json").write_text(json.dumps({"lab": "lab1", "inventory": "/srv/inv", "netns": ""}))
    assert run(monkeypatch, lab="lab1", run_root=str(tmp_path))["claim"]["inventory"] == "/srv/inv"
    (tmp_path / "lab2").mkdir()
    (tmp_path / "lab2" / "lab.json").symlink_to(tmp_path / "lab1" / "lab.json")
    assert run(monkeypatch, lab="lab2", run_root=str(tmp_path))["claim"] is None
    (tmp_path / "lab3").mkdir()
    (tmp_path / "lab3" / "lab.json").write_text("not json")
    assert run(monkeypatch, lab="lab3", run_root=str(tmp_path))["claim"] is None
    # '..' names run_root's parent: nothing is read for a name the plan will refuse
    (tmp_path / "lab.json").write_text(json.dumps({"lab": "x"}))
    assert run(monkeypatch, lab="..", run_root=str(tmp_path / "lab1"))["claim"] is None


def test_the_user_and_roots_are_reported_and_run_root_defaults_to_them(monkeypatch, tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    (runtime / "qemulab" / "lab1").mkdir(parents=True)
    (runtime / "qemulab" / "lab1" / "lab.json").write_text(json.dumps({"lab": "lab1", "inventory": "/srv/u"}))
    if os.geteuid() == 1000:
        pytest.skip("the test plays uid 1000 and needs its runtime directory to be another user's")
    # this process as a user without root: the roots _run_paths gives that user, read without run_root
    monkeypatch.setattr(lab_host_info.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(lab_host_info._run_paths.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    result = run(monkeypatch, lab="lab1")
    paths = lab_host_info._run_paths.current(euid=1000)
    assert (result["euid"], result["rootless"]) == (1000, True)
    assert result["roots"] == {"run": str(runtime / "qemulab"), "cache": paths.cache, "state": paths.state}
    assert result["claim"]["inventory"] == "/srv/u"
    # the runtime directory is the suite's user's, not uid 1000's: named with its fix
    assert result["runtime_dir_problem"] == (
        "the runtime directory %s must be a directory owned by uid 1000 with mode 0700 (it holds the lab's sockets "
        "and locks)" % runtime)


@pytest.mark.skipif(os.geteuid() != 0, reason="root's roots are reported for root; the suite runs as root")
def test_root_reports_the_system_roots_and_no_problem(monkeypatch):
    result = run(monkeypatch, lab="nosuchlab1")
    assert (result["euid"], result["rootless"], result["runtime_dir_problem"]) == (0, False, None)
    assert result["roots"] == {"run": "/run/qemulab", "cache": "/var/cache/qemulab", "state": "/var/lib/qemulab"}
