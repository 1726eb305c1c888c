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


# -- the run directory belongs to an unprivileged QEMU user, who may swap any name in it for a link --------------

import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from ansible_collections.qemulab.network.plugins.module_utils import _qemu_process  # noqa: E402
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError  # noqa: E402
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import (  # noqa: E402
    file_sha256,
    find_qemus,
    fw_cfg_drift,
    launch,
    read_json,
    read_pid,
    read_state,
    stop_vm,
    write_fw_cfg,
)
from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient, QMPError, query_status  # noqa: E402

SECRET = "4242\n"


@pytest.fixture
def vm(tmp_path):
    """A VM's run directory with one fw_cfg item, and 'outside': a directory of root's with a secret in it."""
    run_dir = tmp_path / "lab" / "vm"
    run_dir.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text(SECRET)
    config = {"name": "vm", "run_dir": str(run_dir),
              "fw_cfg": [{"name": "opt/qemulab/interfaces", "file": str(run_dir / "fw_cfg" / "qemulab_interfaces")}]}
    return {"dir": run_dir, "outside": outside, "secret": outside / "secret", "config": config}


def _outside_unchanged(vm):
    assert sorted(os.listdir(str(vm["outside"]))) == ["secret"]
    assert vm["secret"].read_text() == SECRET


def test_fw_cfg_written_into_a_directory_swapped_for_a_link_right_after_its_check_stays_inside(vm, monkeypatch):
    """The race of the issue, forced: the QEMU user swaps fw_cfg for a link to root's directory the moment root has
    checked (chowned) it. The file still lands in the VM's own directory and nothing appears outside."""
    real_fchown = os.fchown
    swapped = []

    def fchown_then_swap(fd, uid, gid):
        real_fchown(fd, uid, gid)
        if not swapped and os.path.samestat(os.fstat(fd), os.stat(str(vm["dir"] / "fw_cfg"))):
            os.rename(str(vm["dir"] / "fw_cfg"), str(vm["dir"] / "fw_cfg.moved"))
            os.symlink(str(vm["outside"]), str(vm["dir"] / "fw_cfg"))
            swapped.append(True)

    monkeypatch.setattr(_qemu_process.os, "fchown", fchown_then_swap)
    write_fw_cfg(vm["config"], {"opt/qemulab/interfaces": "auto eth0\n"}, ["opt/qemulab/interfaces"])
    assert swapped
    _outside_unchanged(vm)
    assert (vm["dir"] / "fw_cfg.moved" / "qemulab_interfaces").read_text() == "auto eth0\n"


def test_fw_cfg_directory_planted_as_a_link_is_replaced_not_followed(vm):
    os.symlink(str(vm["outside"]), str(vm["dir"] / "fw_cfg"))
    write_fw_cfg(vm["config"], {"opt/qemulab/interfaces": "auto eth0\n"}, ["opt/qemulab/interfaces"])
    _outside_unchanged(vm)
    assert not os.path.islink(str(vm["dir"] / "fw_cfg"))
    assert (vm["dir"] / "fw_cfg" / "qemulab_interfaces").read_text() == "auto eth0\n"
    # a link planted in place of the file is replaced by the rename, never written through
    os.unlink(str(vm["dir"] / "fw_cfg" / "qemulab_interfaces"))
    os.symlink(str(vm["secret"]), str(vm["dir"] / "fw_cfg" / "qemulab_interfaces"))
    write_fw_cfg(vm["config"], {"opt/qemulab/interfaces": "auto eth1\n"}, ["opt/qemulab/interfaces"])
    _outside_unchanged(vm)
    assert (vm["dir"] / "fw_cfg" / "qemulab_interfaces").read_text() == "auto eth1\n"


def test_a_fw_cfg_file_outside_the_vms_fw_cfg_directory_is_refused(vm):
    vm["config"]["fw_cfg"][0]["file"] = str(vm["outside"] / "x")
    with pytest.raises(QemuConfigError, match="is not in"):
        write_fw_cfg(vm["config"], {"opt/qemulab/interfaces": "x"}, ["opt/qemulab/interfaces"])
    _outside_unchanged(vm)


def _returns_within(seconds, func, *args):
    """func(*args), failing the test (instead of hanging it) when it blocks, as a read of a FIFO would."""
    box = []
    thread = threading.Thread(target=lambda: box.append(func(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, "%s blocked for %ss" % (func.__name__, seconds)
    return box[0]


def test_reads_in_the_run_directory_follow_no_link_and_are_bounded(vm):
    """qemu.pid, fingerprint.json and fw_cfg files pointing at root's secret, at /dev/zero, or being FIFOs or huge:
    nothing is read through them and every read returns at once."""
    pidfile, fingerprint, fw_cfg = vm["dir"] / "qemu.pid", vm["dir"] / "fingerprint.json", vm["dir"] / "fw_cfg"
    fw_cfg.mkdir()
    item = fw_cfg / "qemulab_interfaces"
    contents = {"opt/qemulab/interfaces": "auto eth0\n"}
    for target in (str(vm["secret"]), "/dev/zero"):
        for path in (pidfile, fingerprint, item):
            os.symlink(target, str(path))
        assert _returns_within(5, read_pid, str(pidfile)) is None
        assert _returns_within(5, read_json, str(fingerprint)) == {}
        assert _returns_within(5, file_sha256, str(item)) is None
        assert _returns_within(5, fw_cfg_drift, vm["config"], contents) == {
            "opt/qemulab/interfaces": (None, "auto eth0\n")}
        for path in (pidfile, fingerprint, item):
            path.unlink()
    for path in (pidfile, fingerprint, item):
        os.mkfifo(str(path))
    assert _returns_within(5, read_pid, str(pidfile)) is None
    assert _returns_within(5, read_json, str(fingerprint)) == {}
    assert _returns_within(5, file_sha256, str(item)) is None
    for path in (pidfile, fingerprint, item):
        path.unlink()
    pidfile.write_text("1" * (1 << 20))
    assert read_pid(str(pidfile)) is None
    pidfile.write_text("123\n")
    assert read_pid(str(pidfile)) == 123


def test_a_fingerprint_root_did_not_write_is_not_believed(vm):
    path = vm["dir"] / "fingerprint.json"
    path.write_text('{"fingerprint": "forged"}')
    assert read_json(str(path), owner=os.geteuid()) == {"fingerprint": "forged"}
    os.chown(str(path), 65534, 65534)
    assert read_json(str(path), owner=os.geteuid()) == {}
    assert read_state(str(vm["dir"]))["stored"] is None


def test_qemus_stderr_is_read_through_its_fd_not_a_link_swapped_in_by_path(vm):
    """A 'QEMU' that fails after swapping qemu.stderr for a link to root's secret: the error quotes what it wrote,
    never the secret."""
    script = ("echo qemu-says-boom >&2; mv qemu.stderr stderr.moved; ln -s %s qemu.stderr; exit 3"
              % vm["secret"])
    with pytest.raises(QemuConfigError) as err:
        launch(vm["config"], ["/bin/sh", "-c", script], [])
    assert "qemu-says-boom" in str(err.value) and "4242" not in str(err.value)
    _outside_unchanged(vm)


def test_a_planted_stderr_link_is_replaced_not_truncated_through(vm):
    os.symlink(str(vm["secret"]), str(vm["dir"] / "qemu.stderr"))
    with pytest.raises(QemuConfigError, match="exited with 3"):
        launch(vm["config"], ["/bin/sh", "-c", "exit 3"], [])
    _outside_unchanged(vm)


def _serve(path, received):
    """Someone else's unix socket (say another VM's QMP): greets, then records every byte it is sent."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
                    while True:
                        data = conn.recv(4096)
                        if not data:
                            break
                        received.append(data)
                        conn.sendall(b'{"return": {"status": "running"}}\r\n')
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_qmp_talks_only_to_a_socket_served_by_the_expected_process(vm):
    """qmp.sock swapped for a link to another process's socket is never connected to; a socket served by another
    process (the link swapped in after the check) is refused by the peer check (SO_PEERCRED) before a byte is sent."""
    received = []
    other = str(vm["outside"] / "other.sock")
    server = _serve(other, received)
    try:
        os.symlink(other, str(vm["dir"] / "qmp.sock"))
        with pytest.raises(QMPError, match="is not a socket"):
            QMPClient(str(vm["dir"] / "qmp.sock"), timeout=2).connect()
        with pytest.raises(QMPError, match="not by this VM's QEMU"):
            with QMPClient(other, timeout=2, peer_check=lambda pid, uid, gid: pid == 1):
                pass
        assert query_status(other, peer_check=lambda pid, uid, gid: False) is None
        assert received == []
        with QMPClient(other, timeout=2, peer_check=lambda pid, uid, gid: pid == os.getpid()) as qmp:
            assert qmp.peer[0] == os.getpid()
        assert received
    finally:
        server.close()


def _fake_qemu(tmp_path, run_dir, argv_tail, named_qemu=True):
    """A process that looks like a QEMU of run_dir: argv[0] qemu-system-x86_64 (and/or a qemu executable), cwd
    run_dir, as launch starts it."""
    if named_qemu:
        proc = subprocess.Popen(["qemu-system-x86_64", "-c", "import time; time.sleep(60)"] + argv_tail,
                                executable=sys.executable, cwd=str(run_dir))
    else:
        exe = tmp_path / "qemu-lookalike"
        shutil.copy("/bin/sleep", str(exe))
        proc = subprocess.Popen([str(exe), "60"], cwd=str(run_dir))
    deadline = time.time() + 10
    while (_qemu_process.proc_cmdline(proc.pid) or [""])[-1] != (argv_tail[-1] if named_qemu else "60"):
        assert time.time() < deadline, "the fake QEMU did not start"
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize("forged", ["1\n", None, "/dev/zero"])
def test_a_forged_pidfile_neither_hides_the_qemu_nor_saves_it_from_stop(vm, tmp_path, forged):
    pidfile = vm["dir"] / "qemu.pid"
    proc = _fake_qemu(tmp_path, vm["dir"], ["-pidfile", str(pidfile), "-name", "vm"])
    try:
        pidfile.write_text("%d\n" % proc.pid)
        assert find_qemus(str(vm["dir"])) == [proc.pid]
        pidfile.unlink()
        if forged == "/dev/zero":
            os.symlink(forged, str(pidfile))
        elif forged is not None:
            pidfile.write_text(forged)
        assert find_qemus(str(vm["dir"])) == [proc.pid]
        state = read_state(str(vm["dir"]))
        assert state["pid"] == proc.pid and state["status"] == "unresponsive"
        assert stop_vm(str(vm["dir"]), 0) == "SIGTERM"
        assert proc.wait(5) == -15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_qemu_is_found_by_its_executable_and_working_directory_too(vm, tmp_path):
    """A QEMU whose command line no longer names its pidfile is still found: its executable and cwd say it."""
    proc = _fake_qemu(tmp_path, vm["dir"], [], named_qemu=False)
    try:
        assert find_qemus(str(vm["dir"])) == [proc.pid]
        other = tmp_path / "lab" / "other"
        other.mkdir()
        assert find_qemus(str(other)) == []
        assert stop_vm(str(vm["dir"]), 0) == "SIGTERM"
        assert proc.wait(5) == -15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
