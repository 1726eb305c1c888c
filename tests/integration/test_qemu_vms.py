"""qemu_vms: a lab's VMs removed in one module run, real QEMU processes, and nothing else ever signalled.

Two real QEMU processes (no guest: `-S`, stopped before the first instruction, user-mode NIC only, no lab address)
started the way qemu_vm records them, plus a run directory whose pidfile names an unrelated live `sleep`.
"""
import os
import secrets
import subprocess
import time

import pytest

from conftest import run_playbook

pytestmark = pytest.mark.integration

PLAY = """
- name: Remove the lab's VMs
  hosts: localhost
  gather_facts: false
  tasks:
    - name: All of them
      qemulab.network.qemu_vms:
        lab: "{{ lab }}"
        stop_timeout: 0
"""


def _start_qemu(run_dir):
    os.makedirs(run_dir, mode=0o700)
    argv = ["qemu-system-x86_64", "-S", "-accel", "tcg", "-m", "64", "-display", "none", "-nodefaults",
            "-pidfile", os.path.join(run_dir, "qemu.pid"),
            "-qmp", "unix:%s,server=on,wait=off" % os.path.join(run_dir, "qmp.sock")]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    for _ in range(100):
        if os.path.exists(os.path.join(run_dir, "qmp.sock")) and os.path.exists(os.path.join(run_dir, "qemu.pid")):
            break
        time.sleep(0.05)
    return proc


def test_every_vm_of_the_lab_goes_and_a_stranger_pid_is_never_signalled():
    lab = "qlv" + secrets.token_hex(3)
    lab_dir = os.path.join("/run/qemulab", lab)
    other_dir = os.path.join("/run/qemulab", lab + "x")
    sleeper = subprocess.Popen(["sleep", "300"])
    procs = []
    try:
        procs = [_start_qemu(os.path.join(lab_dir, name)) for name in ("vm1", "vm2")]
        procs.append(_start_qemu(os.path.join(other_dir, "vm1")))  # another lab's: must survive
        stale = os.path.join(lab_dir, "stale")
        os.makedirs(stale, mode=0o700)
        with open(os.path.join(stale, "qemu.pid"), "w") as f:
            f.write("%d\n" % sleeper.pid)

        check = run_playbook(PLAY, extra_vars={"lab": lab}, check=True)
        assert check.rc == 0, check
        assert check.changed() == 1
        assert all(p.poll() is None for p in procs) and os.path.isdir(os.path.join(lab_dir, "vm1"))

        run = run_playbook(PLAY, extra_vars={"lab": lab})
        assert run.rc == 0, run
        ended = dict((vm["name"], vm["stopped_by"]) for vm in run.result("All of them")["vms"])
        assert ended == {"stale": "not running", "vm1": "quit", "vm2": "quit"}
        for proc in procs[:2]:
            assert proc.wait(timeout=10) is not None
        assert procs[2].poll() is None, "another lab's QEMU was stopped"
        assert sleeper.poll() is None, "an unrelated process named by a stale pidfile was signalled"
        assert sorted(os.listdir(lab_dir)) == []

        again = run_playbook(PLAY, extra_vars={"lab": lab})
        assert again.rc == 0 and again.changed() == 0, again
    finally:
        for proc in procs + [sleeper]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for d in (lab_dir, other_dir):
            subprocess.run(["rm", "-rf", d])
