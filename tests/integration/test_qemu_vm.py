"""qemu_vm and qemu_vm_info against real QEMU guests on taps in a bridge inside a throwaway namespace.

The guests are the minimal busybox guest (tests/integration/minimal_guest.py): each configures eth0 from its kernel
command line, pings its peer over the bridge and prints the result on its serial console, whose log we read.
"""
import concurrent.futures
import gzip
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time

import pytest

from ansible_collections.qemulab.network.plugins.module_utils._qemu_console import console_mounts, release
from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient
from conftest import read_forward
from minimal_guest import INIT_SCRIPT, PING_FAIL, PING_OK, READY, build

pytestmark = pytest.mark.integration

RUN_ROOT = "/run/qemulab"
# vhost-net serves virtio queues only; an emulated e1000 or rtl8139 never gets it (docs: the nic field vhost).
VHOST_MODELS = ("virtio-net-pci",)


def host_offers_vhost():
    """This test's own probe, not the collection's: can this process open /dev/vhost-net read-write?"""
    try:
        fd = os.open("/dev/vhost-net", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def expected_vhost(model, wanted="auto"):
    """vhost for a tap NIC of `model`: only virtio-net, only when not turned off, only when the host offers it."""
    return model in VHOST_MODELS and wanted != "off" and host_offers_vhost()


@pytest.fixture(scope="module")
def guest():
    return build()


def _qemu_pids_under(path):
    """PIDs of processes whose command line mentions `path` (our run dirs are unique per test)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if path.encode() in cmdline and b"qemu" in cmdline.split(b"\0")[0]:
            pids.append(int(entry))
    return pids


@pytest.fixture
def lab(netns):
    """A bridge and two taps in the test namespace, a unique lab name; every QEMU and run file removed after."""
    name = "qvm" + secrets.token_hex(3)
    bridge, taps = name + "br", [name + "t0", name + "t1"]
    subprocess.run(["ip", "-n", netns, "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", bridge, "up"], check=True)
    for tap in taps:
        subprocess.run(["ip", "-n", netns, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", tap, "master", bridge, "up"], check=True)
    lab_dir = os.path.join(RUN_ROOT, name)
    try:
        yield {"name": name, "netns": netns, "taps": taps, "dir": lab_dir}
    finally:
        for pid in _qemu_pids_under(lab_dir):
            os.kill(pid, signal.SIGKILL)
        release(lab_dir)  # the VMs' console log tmpfs: a directory holding a mount point cannot be removed
        shutil.rmtree(lab_dir, ignore_errors=True)


def _vm_task(lab, guest, vm, tap, mac, ip, peer, state="running"):
    return """
    - name: {vm}
      qemulab.network.qemu_vm:
        name: {vm}
        lab: {lab}
        state: {state}
        netns: {netns}
        accelerator: tcg
        kernel: {kernel}
        initrd: {initrd}
        append: "console=ttyS0 qemulab.ip={ip}/24 qemulab.ping={peer}"
        memory: 256M
        stop_timeout: 0
        nics:
          - {{mac: "{mac}", ifname: {tap}}}
""".format(vm=vm, lab=lab["name"], state=state, netns=lab["netns"], kernel=guest["kernel"],
           initrd=guest["initrd"], ip=ip, peer=peer, mac=mac, tap=tap)


def _play(*tasks):
    return "- hosts: localhost\n  gather_facts: false\n  tasks:\n" + "".join(tasks)


def _wait_console(path, timeout=120):
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                text = f.read()
            if PING_OK in text or PING_FAIL in text:
                return text
        time.sleep(0.5)
    return text


def _info(playbook, lab, name):
    res = playbook(_play("""
    - name: info
      qemulab.network.qemu_vm_info:
        lab: {lab}
        name: {name}
""".format(lab=lab["name"], name=name)))
    assert res.rc == 0, res
    return res.result("info")["vms"]


def test_two_guests_ping_over_bridge_and_life_cycle(guest, lab, playbook):
    macs = {"a": "52:54:00:5a:00:01", "b": "52:54:00:5a:00:02"}
    task_a = _vm_task(lab, guest, "vma", lab["taps"][0], macs["a"], "10.77.0.1", "10.77.0.2")
    task_b = _vm_task(lab, guest, "vmb", lab["taps"][1], macs["b"], "10.77.0.2", "10.77.0.1")

    planned = playbook(_play(task_a, task_b), check=True, diff=True)
    assert planned.rc == 0, planned
    assert planned.result("vma")["changed"] and planned.result("vma")["diff"]["after"]["state"] == "running"
    assert _qemu_pids_under(lab["dir"]) == [] and not os.path.exists(lab["dir"])

    first = playbook(_play(task_a, task_b), diff=True)
    assert first.rc == 0, first
    res_a, res_b = first.result("vma"), first.result("vmb")
    assert res_a["changed"] and res_b["changed"]
    assert res_a["state"] == "running" and res_a["accelerator"] == "tcg"
    # QEMU stays in the root namespace and gets the tap as an fd opened inside the lab namespace.
    netdev = [a for a in res_a["argv"] if a.startswith("tap,")]
    assert len(netdev) == 1 and ",fd=" in netdev[0] and "ifname" not in netdev[0], res_a["argv"]
    # vhost follows what this host offers (probed here, independently) for the default virtio-net NIC
    vhost = expected_vhost("virtio-net-pci")
    assert res_a["nics"][0]["vhost"] is vhost and "/dev/vhost-net" in res_a["nics"][0]["vhost_reason"], res_a["nics"]
    assert (",vhost=on" in netdev[0]) is vhost, netdev
    with open("/proc/%d/ns/net" % res_a["pid"], "rb"):
        assert os.readlink("/proc/%d/ns/net" % res_a["pid"]) == os.readlink("/proc/self/ns/net")
    run_a = res_a["run_dir"]
    assert oct(os.stat(run_a).st_mode & 0o777) == "0o700"
    # the console log lies on a tmpfs of its own (console_log_limit's default, 4 MiB)
    assert res_a["console_log"] == os.path.join(run_a, "console", "console.log")
    assert [m["mount_point"] for m in console_mounts(run_a)] == [os.path.join(run_a, "console")]
    assert oct(os.stat(res_a["qmp_socket"]).st_mode & 0o777) == "0o600"

    console_a = _wait_console(res_a["console_log"])
    console_b = _wait_console(res_b["console_log"])
    assert PING_OK + " 10.77.0.2" in console_a, console_a[-2000:]
    assert PING_OK + " 10.77.0.1" in console_b, console_b[-2000:]

    # Identical task against running VMs: nothing to do, same processes; check mode agrees.
    checked = playbook(_play(task_a, task_b), check=True)
    assert checked.changed() == 0, checked
    second = playbook(_play(task_a, task_b))
    assert second.rc == 0, second
    assert second.changed() == 0, second
    assert second.result("vma")["pid"] == res_a["pid"]

    # A changed MAC restarts that VM only, and the diff names the NICs.
    task_a2 = _vm_task(lab, guest, "vma", lab["taps"][0], "52:54:00:5a:00:11", "10.77.0.1", "10.77.0.2")
    third = playbook(_play(task_a2, task_b), diff=True)
    assert third.rc == 0, third
    res_a3 = third.result("vma")
    assert res_a3["changed"] and res_a3["changes"] == ["nics"], res_a3
    assert res_a3["pid"] != res_a["pid"] and not third.result("vmb")["changed"]
    assert res_a3["diff"]["after"]["nics"][0]["mac"] == "52:54:00:5a:00:11"
    assert _qemu_pids_under(run_a) == [res_a3["pid"]]

    # A SIGKILLed VM is reported not running and started again.
    os.kill(res_b["pid"], signal.SIGKILL)
    deadline = time.time() + 10
    while res_b["pid"] in _qemu_pids_under(res_b["run_dir"]) and time.time() < deadline:
        time.sleep(0.1)
    assert _info(playbook, lab, "vmb")[0]["state"] == "not running"
    fourth = playbook(_play(task_b))
    assert fourth.rc == 0, fourth
    assert fourth.result("vmb")["changed"] and fourth.result("vmb")["state"] == "running"
    info_b = _info(playbook, lab, "vmb")[0]
    assert info_b["state"] == "running" and info_b["pid"] == fourth.result("vmb")["pid"] and info_b["uptime"] >= 0
    with QMPClient(info_b["qmp_socket"]) as qmp:
        qmp.command("stop")
    assert _info(playbook, lab, "vmb")[0]["state"] == "paused"
    with QMPClient(info_b["qmp_socket"]) as qmp:
        qmp.command("cont")

    # restarted always restarts, even with nothing changed.
    restart_b = _vm_task(lab, guest, "vmb", lab["taps"][1], macs["b"], "10.77.0.2", "10.77.0.1", state="restarted")
    fifth_b = playbook(_play(restart_b))
    assert fifth_b.rc == 0 and fifth_b.result("vmb")["changed"], fifth_b
    assert fifth_b.result("vmb")["pid"] != info_b["pid"] and _qemu_pids_under(res_b["run_dir"]) == [
        fifth_b.result("vmb")["pid"]]

    # stopped: no process left; a stale pidfile naming an unrelated process is never signalled.
    stop_a = _vm_task(lab, guest, "vma", lab["taps"][0], "52:54:00:5a:00:11", "10.77.0.1", "10.77.0.2",
                      state="stopped")
    fifth = playbook(_play(stop_a))
    assert fifth.rc == 0, fifth
    assert fifth.result("vma")["changed"] and fifth.result("vma")["state"] == "not running"
    assert _qemu_pids_under(run_a) == []
    assert not {"qemu.pid", "qmp.sock", "console.sock"} & set(os.listdir(run_a))
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        with open(os.path.join(run_a, "qemu.pid"), "w") as f:
            f.write("%d\n" % sleeper.pid)
        assert _info(playbook, lab, "vma")[0]["state"] == "not running"
        again = playbook(_play(stop_a))
        assert again.rc == 0 and not again.result("vma")["changed"], again
        absent_a = _vm_task(lab, guest, "vma", lab["taps"][0], "52:54:00:5a:00:11", "10.77.0.1", "10.77.0.2",
                            state="absent")
        absent_b = _vm_task(lab, guest, "vmb", lab["taps"][1], macs["b"], "10.77.0.2", "10.77.0.1",
                            state="absent")
        gone = playbook(_play(absent_a, absent_b))
        assert gone.rc == 0, gone
        assert sleeper.poll() is None, "the unrelated sleep was signalled"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _qemu_pids_under(lab["dir"]) == []
    assert not os.path.exists(run_a) and not os.path.exists(res_b["run_dir"])
    assert console_mounts(lab["dir"]) == []
    still_gone = playbook(_play(absent_a, absent_b))
    assert still_gone.changed() == 0, still_gone


def test_vhost_follows_the_host_and_the_nic_model(guest, lab, playbook):
    """Per tap NIC, vhost is on exactly when the model is virtio-net, vhost is not off, and this host offers
    /dev/vhost-net (probed by the test itself): e1000 and rtl8139 never get it. Check mode: no QEMU starts."""
    taps = lab["taps"] + [lab["name"] + "t2", lab["name"] + "t3"]
    for tap in taps[2:]:
        subprocess.run(["ip", "-n", lab["netns"], "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"], check=True)
    nics = [("virtio-net-pci", "auto"), ("e1000", "auto"), ("rtl8139", "auto"), ("virtio-net-pci", "off")]
    task = _vm_task(lab, guest, "vmv", taps[0], "52:54:00:5a:00:71", "10.77.0.1", "10.77.0.2")
    task = task.split("        nics:\n")[0] + "        nics:\n" + "".join(
        '          - {mac: "52:54:00:5a:00:7%d", ifname: %s, model: %s, vhost: "%s"}\n' % (i, tap, model, wanted)
        for i, (tap, (model, wanted)) in enumerate(zip(taps, nics)))
    planned = playbook(_play(task), check=True)
    got = [(nic["model"], nic["vhost"]) for nic in planned.result("vmv")["nics"]]
    assert got == [(model, expected_vhost(model, wanted)) for model, wanted in nics], planned.result("vmv")["nics"]
    assert _qemu_pids_under(lab["dir"]) == []


def test_missing_tap_and_taken_port_are_named(guest, lab, playbook):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        res = playbook(_play("""
    - name: vm
      qemulab.network.qemu_vm:
        name: vmx
        lab: {lab}
        netns: {netns}
        accelerator: tcg
        kernel: {kernel}
        nics:
          - {{mac: "52:54:00:5a:00:21", ifname: {lab}nope}}
          - {{backend: user, mac: "52:54:00:5a:00:22", hostfwd: [{{host_port: {port}, guest_port: 22}}]}}
""".format(lab=lab["name"], netns=lab["netns"], kernel=guest["kernel"], port=port)), expect_failure=True)
    finally:
        holder.close()
    msg = res.result("vm")["msg"]
    assert "VM vmx: nics[0] needs tap %snope" % lab["name"] in msg and "qemulab.network.tap" in msg, msg
    assert "nics[1].hostfwd host_port %d" % port in msg, msg
    assert _qemu_pids_under(lab["dir"]) == []


def _kvm_guest_runs(guest, work, timeout=20):
    """This test's own KVM probe, not the collection's: None when /dev/kvm cannot be opened read-write; else whether
    a KVM guest (the minimal guest, no NIC) reaches its init's READY line on serial within `timeout` seconds."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return None
    serial = os.path.join(work, "kvm-serial.log")
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-m", "128", "-display", "none", "-nodefaults",
                             "-no-user-config", "-kernel", guest["kernel"], "-initrd", guest["initrd"],
                             "-append", "console=ttyS0 panic=-1", "-serial", "file:" + serial, "-no-reboot"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(serial):
                with open(serial, errors="replace") as f:
                    if READY in f.read():
                        return True
            time.sleep(0.2)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_accelerator_probe_is_a_real_boot(guest, tmp_path):
    """accelerator auto picks what this host really runs, and the expectation is probed here, independently: no
    usable /dev/kvm means tcg; with one, our own KVM guest (the minimal guest, 20 s bound) must reach its init's
    READY line on serial for kvm to be right, otherwise tcg (a /dev/kvm that opens while KVM guests hang, as on
    the machine the measured QEMU facts come from). The collection's probe must agree, give the matching reason
    and cache that outcome; a second resolve reads the cache instead of probing again."""
    from ansible_collections.qemulab.network.plugins.module_utils._qemu_host import boot_reaches_kernel, resolve_accelerator
    # The probe's yardstick must be reachable at all: the same boot under TCG gets to start_kernel.
    reached, seconds = boot_reaches_kernel("qemu-system-x86_64", guest["kernel"], "tcg", 60)
    assert reached, seconds
    cache = tmp_path / "accel.json"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # both probes at once: a hanging KVM guest costs once
        ours = pool.submit(_kvm_guest_runs, guest, str(tmp_path))
        accel, reason = resolve_accelerator("auto", "qemu-system-x86_64", guest["kernel"], str(cache))
        kvm_runs = ours.result()
    assert accel == ("kvm" if kvm_runs else "tcg"), (kvm_runs, reason)
    if kvm_runs is None:
        assert reason.startswith("/dev/kvm cannot be opened"), reason
    elif kvm_runs:
        assert reason.startswith("a KVM guest reached start_kernel"), reason
    else:  # a real boot attempt was made and its outcome recorded
        assert reason.startswith("KVM probe: ") and reason.endswith("; using TCG"), reason
    cached = json.loads(cache.read_text())
    assert len(cached) == 1 and os.uname().release in list(cached)[0], cached
    entry = list(cached.values())[0]
    assert (entry["accelerator"], entry["reason"]) == (accel, reason) and entry["probed_at"], entry
    again, again_reason = resolve_accelerator("auto", "qemu-system-x86_64", guest["kernel"], str(cache))
    assert again == accel and again_reason == "%s (cached probe %s)" % (reason, entry["probed_at"]), again_reason


def _answering_initrd(guest, work):
    """The minimal guest's initrd plus a second cpio archive whose /init (replacing the first one's) ends in a TCP
    listener on port 7 that answers every connection with QEMULAB-ANSWER and the nonce from its kernel command line."""
    idle = "while true; do sleep 3600; done\n"
    assert INIT_SCRIPT.endswith(idle), "minimal_guest's init no longer ends in its idle loop"
    init = INIT_SCRIPT[:-len(idle)] + (
        "nonce=$(sed -n 's/.*qemulab\\.nonce=\\([0-9a-f]*\\).*/\\1/p' /proc/cmdline)\n"
        'while true; do echo "QEMULAB-ANSWER $nonce" | nc -l -p 7; done\n')
    root = os.path.join(work, "answer-root")
    os.makedirs(root)
    with open(os.path.join(root, "init"), "w") as f:
        f.write(init)
    os.chmod(os.path.join(root, "init"), 0o755)
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=b"init\n", check=True,
                             capture_output=True).stdout
    path = os.path.join(work, "initrd-answer.gz")
    with open(guest["initrd"], "rb") as f_in, open(path, "wb") as f_out:
        f_out.write(f_in.read())  # the kernel unpacks concatenated archives in order; a later file replaces an earlier
        f_out.write(gzip.compress(archive))
    return path


def test_user_mode_forward_reaches_the_guest_on_loopback(guest, lab, playbook, tmp_path):
    """Taps in the namespace, a forward on the host's 127.0.0.1: QEMU must stay in the root namespace, and what
    answers through the forward is the guest itself (a listener in its init sends back this test's nonce)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    nonce = secrets.token_hex(8)
    # The user-mode NIC comes first (eth0, 10.0.2.15) and is virtio: the minimal guest has no e1000 driver.
    res = playbook(_play("""
    - name: vm
      qemulab.network.qemu_vm:
        name: vmu
        lab: {lab}
        netns: {netns}
        accelerator: tcg
        kernel: {kernel}
        initrd: {initrd}
        append: "console=ttyS0 qemulab.ip=10.0.2.15/24 qemulab.nonce={nonce}"
        memory: 256M
        stop_timeout: 0
        nics:
          - {{backend: user, mac: "52:54:00:5a:00:32", hostfwd: [{{host_port: {port}, guest_port: 7}}]}}
          - {{mac: "52:54:00:5a:00:31", ifname: {tap}}}
""".format(lab=lab["name"], netns=lab["netns"], kernel=guest["kernel"], initrd=_answering_initrd(guest, str(tmp_path)),
           tap=lab["taps"][0], port=port, nonce=nonce)))
    assert res.rc == 0, res
    vm = res.result("vm")
    assert "hostfwd=tcp:127.0.0.1:%d-:7" % port in " ".join(vm["argv"])
    # Reached from the root namespace's loopback (so QEMU runs there), answered by the guest's own listener.
    answer = read_forward(port, 90)
    with open(vm["console_log"], errors="replace") as f:
        console = f.read()
    assert answer == b"QEMULAB-ANSWER %s\n" % nonce.encode(), (answer, console[-2000:])
    assert "%s 52:54:00:5a:00:32" % READY in console, console[-2000:]  # eth0 was the forwarded NIC
    taken = playbook(_play("""
    - name: vm
      qemulab.network.qemu_vm:
        name: vmu2
        lab: {lab}
        accelerator: tcg
        kernel: {kernel}
        nics:
          - {{backend: user, mac: "52:54:00:5a:00:33", hostfwd: [{{host_port: {port}, guest_port: 22}}]}}
""".format(lab=lab["name"], kernel=guest["kernel"], port=port)), expect_failure=True)
    assert "host_port %d (tcp) on 127.0.0.1 is already taken" % port in taken.result("vm")["msg"], taken


def test_open_tap_inside_namespace_never_creates_one(netns):
    from ansible_collections.qemulab.network.plugins.module_utils._qemu_tap import open_tap
    own_ns = os.readlink("/proc/self/ns/net")
    subprocess.run(["ip", "-n", netns, "tuntap", "add", "dev", "qvmtap0", "mode", "tap"], check=True)
    fd = open_tap("qvmtap0", netns)
    try:
        assert os.readlink("/proc/self/ns/net") == own_ns
        with open("/proc/self/fdinfo/%d" % fd) as f:
            assert "iff:\tqvmtap0" in f.read()
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="tap qvmtap9 does not exist"):
        open_tap("qvmtap9", netns)
    assert os.readlink("/proc/self/ns/net") == own_ns
    links = subprocess.run(["ip", "-n", netns, "-br", "link"], check=True, capture_output=True, text=True).stdout
    assert "qvmtap9" not in links and "qvmtap0" in links


def _status_field(pid, field):
    with open("/proc/%d/status" % pid) as f:
        return [line.split()[1:] for line in f if line.startswith(field + ":")][0]


def test_unprivileged_qemu_on_taps_it_owns(guest, lab, playbook, tmp_path):
    """run_as: two guests started as nobody ping each other; QEMU gets its taps and a root-only disk as fds."""
    nobody = pwd.getpwnam("nobody")
    for tap in lab["taps"]:  # the fixture's taps belong to root: make them nobody's, as the tap module would
        subprocess.run(["ip", "-n", lab["netns"], "link", "del", tap], check=True)
        subprocess.run(["ip", "-n", lab["netns"], "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr", "user",
                        str(nobody.pw_uid)], check=True)
        subprocess.run(["ip", "-n", lab["netns"], "link", "set", tap, "master", lab["name"] + "br", "up"], check=True)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    disks = {"vma": private / "a.img", "vmb": private / "b.img"}
    for disk in disks.values():
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"], check=True)
    task_a = _vm_task(lab, guest, "vma", lab["taps"][0], "52:54:00:5a:00:41", "10.77.0.1", "10.77.0.2") + \
        "        run_as: nobody\n        disks: [{file: %s}]\n" % disks["vma"]
    task_b = _vm_task(lab, guest, "vmb", lab["taps"][1], "52:54:00:5a:00:42", "10.77.0.2", "10.77.0.1") + \
        "        run_as: nobody\n        disks: [{file: %s, readonly: true}]\n" % disks["vmb"]
    first = playbook(_play(task_a, task_b))
    assert first.rc == 0, first
    for vm in ("vma", "vmb"):
        res = first.result(vm)
        assert res["user"] == "nobody"
        assert _status_field(res["pid"], "Uid") == [str(nobody.pw_uid)] * 4
        assert _status_field(res["pid"], "Gid")[0] == str(nobody.pw_gid)
        assert _status_field(res["pid"], "Seccomp") == ["2"]
        assert os.stat(res["run_dir"]).st_uid == nobody.pw_uid
        assert oct(os.stat(res["run_dir"]).st_mode & 0o777) == "0o700"
        for sock in (res["qmp_socket"], res["console_socket"]):
            assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        netdev = [a for a in res["argv"] if a.startswith("tap,")]
        assert ",fd=" in netdev[0] and "ifname" not in netdev[0]
        assert "file=/dev/fdset/1," in " ".join(res["argv"]) and str(disks[vm]) not in " ".join(res["argv"])
        with QMPClient(res["qmp_socket"]) as qmp:
            block = [b for b in qmp.command("query-block") if b.get("inserted")][0]["inserted"]
        assert block["ro"] is (vm == "vmb"), block
    for vm in ("vma", "vmb"):
        console = _wait_console(os.path.join(lab["dir"], vm, "console", "console.log"))
        assert PING_OK in console, console[-2000:]
    info = _info(playbook, lab, "vma")
    assert info[0]["user"] == "nobody" and info[0]["state"] == "running"
    again = playbook(_play(task_a, task_b))
    assert again.rc == 0 and again.changed() == 0, again


def test_unprivileged_qemu_refuses_what_it_could_not_use(guest, lab, playbook, tmp_path):
    """A root-owned tap, an unknown user and a kernel the user cannot read fail before QEMU starts, by name."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    kernel = private / "vmlinuz"
    shutil.copy(guest["kernel"], str(kernel))

    def attempt(run_as, kernel_path):
        task = _vm_task(lab, guest, "vmu", lab["taps"][0], "52:54:00:5a:00:51", "10.77.0.1", "10.77.0.2")
        task = task.replace(guest["kernel"], kernel_path) + "        run_as: %s\n" % run_as
        res = playbook(_play(task), expect_failure=True)
        return res.result("vmu")["msg"]

    msg = attempt("nobody", guest["kernel"])
    assert "VM vmu: nics[0]: tap %s" % lab["taps"][0] in msg and "owned by no user (root only)" in msg, msg
    assert "create the tap with owner: nobody" in msg, msg
    msg = attempt("qemulab-nosuchuser", guest["kernel"])
    assert "VM vmu: run_as: there is no user 'qemulab-nosuchuser'" in msg and "useradd" in msg, msg
    msg = attempt("nobody", str(kernel))
    assert "user nobody cannot read %s" % kernel in msg, msg
    assert _qemu_pids_under(lab["dir"]) == []


def _vms_task(lab, guest, vms, check=False):
    """qemulab.network.qemu_vms state=running for [(vm, tap, mac, ip, peer)]."""
    items = []
    for vm, tap, mac, ip, peer in vms:
        items.append({"name": vm, "netns": lab["netns"], "accelerator": "tcg", "kernel": guest["kernel"],
                      "initrd": guest["initrd"], "append": "console=ttyS0 qemulab.ip=%s/24 qemulab.ping=%s" % (ip, peer),
                      "memory": "256M", "stop_timeout": 0, "nics": [{"mac": mac, "ifname": tap}]})
    return """
    - name: together
      qemulab.network.qemu_vms:
        lab: {lab}
        state: running
        vms: {items}
""".format(lab=lab["name"], items=json.dumps(items))


def test_qemu_vms_starts_guests_together_like_qemu_vm(guest, lab, playbook):
    """state=running: the same per-VM task as qemu_vm, run for all VMs at once. A broken item fails the task by name
    while the good one starts; after the fix only the fixed VM changes; a third run changes nothing."""
    good = ("vma", lab["taps"][0], "52:54:00:5a:00:61", "10.77.0.1", "10.77.0.2")
    broken = ("vmb", lab["name"] + "nope", "52:54:00:5a:00:62", "10.77.0.2", "10.77.0.1")
    fixed = ("vmb", lab["taps"][1], "52:54:00:5a:00:62", "10.77.0.2", "10.77.0.1")

    planned = playbook(_play(_vms_task(lab, guest, [good, fixed])), check=True, diff=True)
    assert planned.rc == 0 and planned.result("together")["changed"], planned
    assert sorted(planned.result("together")["diff"]["after"]) == ["vma", "vmb"]
    assert _qemu_pids_under(lab["dir"]) == []

    first = playbook(_play(_vms_task(lab, guest, [good, broken])), expect_failure=True)
    res = first.result("together")
    assert "VM vmb: nics[0] needs tap %snope" % lab["name"] in res["msg"] and "vma" not in res["msg"], res["msg"]
    by_name = {vm["name"]: vm for vm in res["vms"]}
    assert by_name["vma"]["changed"] and by_name["vma"]["state"] == "running" and by_name["vmb"]["failed"]

    second = playbook(_play(_vms_task(lab, guest, [good, fixed])))
    assert second.rc == 0, second
    changed = {vm["name"]: vm["changed"] for vm in second.result("together")["vms"]}
    assert changed == {"vma": False, "vmb": True}
    for vm in ("vma", "vmb"):
        console = _wait_console(os.path.join(lab["dir"], vm, "console", "console.log"))
        assert PING_OK in console, console[-2000:]

    third = playbook(_play(_vms_task(lab, guest, [good, fixed])))
    assert third.rc == 0 and third.changed() == 0, third
    bad_item = playbook(_play(_vms_task(lab, guest, [good]).replace('"memory": "256M"', '"memory": "256M", "colour": 1')),
                        expect_failure=True)
    assert "vms[0] (vma)" in bad_item.result("together")["msg"], bad_item
