"""_qemu_process: only a QEMU whose pidfile lies in the run directory is ever taken for the VM."""
import subprocess

import pytest

from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import is_our_qemu, lab_run_dirs

pytestmark = pytest.mark.unit


def test_pid_of_unrelated_process_is_not_our_qemu(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert not is_our_qemu(sleeper.pid, str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not is_our_qemu(None, str(tmp_path))


def test_a_labs_vms_are_the_directories_under_its_run_directory(tmp_path):
    (tmp_path / "seed" / "rt1").mkdir(parents=True)
    (tmp_path / "seed" / "h1").mkdir()
    (tmp_path / "seed" / "lab.json").write_text("{}")
    assert lab_run_dirs(str(tmp_path), "seed") == [("h1", str(tmp_path / "seed" / "h1")),
                                                   ("rt1", str(tmp_path / "seed" / "rt1"))]
    assert lab_run_dirs(str(tmp_path), "other") == []
