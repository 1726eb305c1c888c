"""The default guest image through the guest_image role, booted for real under TCG with qemu_vm.

All tests share one image in the standard cache (/var/cache/qemulab/images): the first run on a host builds it
(a minute or two), every later run reuses it. The VMs use only user-mode networking (no taps, no lab addresses);
the management forward is on 127.0.0.1.
"""
import json
import os
import re
import secrets
import socket
import subprocess
import time

import pytest

from conftest import REPO_ROOT, VENV_PYTHON, read_forward, run_playbook

pytestmark = pytest.mark.integration

ROLE_TASK = "qemulab.network.guest_image : "

ROLE_PLAY = """
- name: Guest image
  hosts: localhost
  gather_facts: false
  roles:
    - role: qemulab.network.guest_image
"""


FW_CFG_INTERFACES = """auto lo eth0 eth1

iface lo inet loopback

iface eth0 inet manual

iface eth1 inet static
    address 192.168.77.1
    netmask 255.255.255.0
"""


def _qemu_pids_with(marker):
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"qemu-system" in os.path.basename(argv[0]) and any(marker.encode() in a for a in argv):
            pids.append(int(entry))
    return pids


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_banner(port, timeout):
    """Seconds until the guest's sshd (not SLIRP, which accepts first) sent its banner through the forward, or None."""
    t0 = time.monotonic()
    banner = read_forward(port, timeout, size=16)
    return time.monotonic() - t0 if banner and banner.startswith(b"SSH-2.0-") else None


@pytest.fixture(scope="module")
def image():
    """The role's published facts (built on the first run on this host, cached after)."""
    res = run_playbook(ROLE_PLAY, timeout=3600)
    assert res.rc == 0, res
    facts = res.result(ROLE_TASK + "Publish the image for the lab roles")["ansible_facts"]
    facts["build"] = res.result(ROLE_TASK + "Build or reuse the guest image")
    return facts


def test_role_outputs_point_at_a_complete_cached_image(image):
    for name in ("guest_image_kernel", "guest_image_initrd", "guest_image_disk"):
        assert os.path.getsize(image[name]) > 1 << 20, name
        assert image[name].startswith("/var/cache/qemulab/images/" + image["build"]["key"] + "/")
    assert image["guest_image_ssh_key"] == "/var/lib/qemulab/ssh/id_ed25519"
    assert os.stat(image["guest_image_ssh_key"]).st_mode & 0o077 == 0
    append = image["guest_image_append"]
    assert "init=/sbin/qemulab-init" in append and "root=/dev/vda" in append
    assert "qemulab.nics" not in append and "qemulab.mgmt" not in append
    # The mirror is the host's own Debian source, not a built-in address.
    sources = " ".join(open(p).read() for p in
                       [os.path.join("/etc/apt/sources.list.d", n) for n in os.listdir("/etc/apt/sources.list.d")]
                       + ["/etc/apt/sources.list"] if os.path.exists(p))
    assert image["build"]["mirror"] in sources
    disk = subprocess.run(["dumpe2fs", "-h", image["guest_image_disk"]], capture_output=True, text=True)
    assert "Filesystem volume name:   qemulab-root" in disk.stdout


def test_a_new_ssh_key_reuses_the_image(image, tmp_path):
    """The image holds no key: a lab host with another guest key (a fresh one here) gets the same image."""
    res = run_playbook(ROLE_PLAY, extra_vars={"guest_image_ssh_key": str(tmp_path / "other_key")}, check=True)
    assert res.rc == 0, res
    build = res.result(ROLE_TASK + "Build or reuse the guest image")
    assert build["changed"] is False and build["key"] == image["build"]["key"]
    assert "authorized_key" not in build["manifest"]["inputs"]
    res = run_playbook(ROLE_PLAY, extra_vars={"guest_image_ssh_key": str(tmp_path / "other_key")})
    assert res.rc == 0, res
    assert res.result(ROLE_TASK + "Build or reuse the guest image")["key"] == image["build"]["key"]
    published = res.result(ROLE_TASK + "Publish the image for the lab roles")["ansible_facts"]
    assert published["guest_image_authorized_key"] == (tmp_path / "other_key.pub").read_text().strip()


def test_second_run_reuses_the_image_in_under_a_second(image):
    res = run_playbook(ROLE_PLAY)
    assert res.rc == 0, res
    build = res.result(ROLE_TASK + "Build or reuse the guest image")
    assert build["changed"] is False
    assert build["key"] == image["build"]["key"]
    # The module alone, as Ansible runs it: a cache hit must cost well under a second.
    args = dict(build["invocation"]["module_args"])
    args_file = os.path.join("/tmp", f"qemulab-guest-image-args-{secrets.token_hex(4)}.json")
    with open(args_file, "w") as f:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, f)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([VENV_PYTHON, "-m", "ansible_collections.qemulab.network.plugins.modules.guest_image",
                               args_file], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=os.path.join(REPO_ROOT, ".build", "collections")))
        seconds = time.monotonic() - t0
    finally:
        os.unlink(args_file)
    assert json.loads(proc.stdout)["changed"] is False, proc.stdout + proc.stderr
    assert seconds < 1.0


def test_changed_input_means_rebuild_and_check_mode_builds_nothing(image):
    res = run_playbook(ROLE_PLAY, extra_vars={"guest_image_disk_size_mb": 2049}, check=True, diff=True)
    assert res.rc == 0, res
    build = res.result(ROLE_TASK + "Build or reuse the guest image")
    assert build["changed"] is True
    assert build["key"] != image["build"]["key"]
    # (the diff also lists the cache's other images when there are any: what pruning would do, tested with it)
    assert dict((side, dict((k, build["diff"][side][k]) for k in ("key", "built"))) for side in build["diff"]) == {
        "before": {"key": build["key"], "built": False}, "after": {"key": build["key"], "built": True}}
    assert not os.path.exists(build["dir"])
    assert not [n for n in os.listdir("/var/cache/qemulab/images") if n.startswith(f".build-{build['key']}")]


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.read_text(), (path.parent / (path.name + ".pub")).read_text()


@pytest.fixture
def vm(image, tmp_path):
    """One VM from an overlay through disk_overlay + qemu_vm: e1000 lab NIC first, virtio second, virtio mgmt.

    Its keys are this test's own, handed over through fw_cfg as vm_launch does: a client key the lab host never
    made, and a host key its known_hosts lists, so the image serves any key and the guest shows the one it got."""
    lab = "qlg" + secrets.token_hex(3)
    name = "vm1"
    overlay = f"/var/lib/qemulab/labs/{lab}/{name}.qcow2"
    port = _free_port()
    _client_private, client_public = _keygen(tmp_path / "client")
    host_private, host_public = _keygen(tmp_path / "host")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(host_public.split()[:2])}\n")
    macs = {"eth0": "52:54:00:a1:00:01", "eth1": "52:54:00:a1:00:02", "mgmt0": "52:54:00:a1:00:0f"}
    vars_ = {"lab": lab, "name": name, "overlay": overlay, "port": port, "macs": macs,
             "append": f"{image['guest_image_append']} qemulab.nics={macs['eth0']},{macs['eth1']} "
                       f"qemulab.mgmt={macs['mgmt0']} qemulab.hostname={lab}-{name}",
             "image": {k: image[k] for k in ("guest_image_kernel", "guest_image_initrd", "guest_image_disk")},
             # What vm_launch hands a lab guest at boot. The address sits on a restricted user-mode NIC inside the
             # guest: no host interface carries it and no packet can leave.
             "fw_cfg": [{"name": "opt/qemulab/interfaces", "content": FW_CFG_INTERFACES},
                        {"name": "opt/qemulab/sysctl", "content": "net.ipv4.ip_forward = 1\n"},
                        {"name": "opt/qemulab/authorized_keys", "content": client_public},
                        {"name": "opt/qemulab/ssh_host_ed25519_key", "content": host_private}]}
    up = """
- name: Start
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Overlay
      qemulab.network.disk_overlay:
        path: "{{ overlay }}"
        backing: "{{ image.guest_image_disk }}"
    - name: VM
      qemulab.network.qemu_vm:
        name: "{{ name }}"
        lab: "{{ lab }}"
        kernel: "{{ image.guest_image_kernel }}"
        initrd: "{{ image.guest_image_initrd }}"
        append: "{{ append }}"
        disks: [{file: "{{ overlay }}", format: qcow2}]
        memory: 1024
        accelerator: tcg
        fw_cfg: "{{ fw_cfg }}"
        nics:
          - {model: e1000, mac: "{{ macs.eth0 }}", backend: user}
          - {model: virtio-net-pci, mac: "{{ macs.eth1 }}", backend: user}
          - {model: virtio-net-pci, mac: "{{ macs.mgmt0 }}", backend: user,
             hostfwd: [{host_port: "{{ port }}", guest_port: 22}]}
"""
    down = """
- name: Stop
  hosts: localhost
  gather_facts: false
  tasks:
    - name: VM gone
      qemulab.network.qemu_vm:
        name: "{{ name }}"
        lab: "{{ lab }}"
        state: absent
        stop_timeout: 15
    - name: Overlay gone
      qemulab.network.disk_overlay:
        path: "{{ overlay }}"
        state: absent
"""
    info = dict(vars_, up=run_playbook(up, extra_vars=vars_), down=lambda: run_playbook(down, extra_vars=vars_),
                key=str(tmp_path / "client"), known_hosts=str(known_hosts))
    try:
        yield info
    finally:
        info["down"]()
        for pid in _qemu_pids_with(f"/run/qemulab/{lab}/"):
            os.kill(pid, 9)
        if os.path.exists(overlay):
            os.unlink(overlay)
        if os.path.isdir(os.path.dirname(overlay)):
            os.rmdir(os.path.dirname(overlay))
        # qemu_vm absent removes the VM's run directory; the lab's own directory is the teardown role's, and this
        # test has no teardown run, so it removes the (then empty) directory itself.
        if os.path.isdir(f"/run/qemulab/{lab}"):
            os.rmdir(f"/run/qemulab/{lab}")


def _ssh(vm, command):
    argv = ["ssh", "-i", vm["key"], "-p", str(vm["port"]), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=" + vm["known_hosts"], "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10", "root@127.0.0.1", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_guest_boots_to_ssh_with_renamed_nics_and_powers_off_on_acpi(vm, image):
    assert vm["up"].rc == 0, vm["up"]
    assert _wait_banner(vm["port"], 60) is not None, f"no SSH banner; console: /run/qemulab/{vm['lab']}/vm1/"

    # Key login works, passwords do not.
    out = _ssh(vm, "hostname; cat /proc/1/comm; python3 -c 'import pyroute2; print(pyroute2.__version__)'; "
                   "command -v ifup ifdown ping route traceroute tcpdump iperf3 iptables conntrack; "
                   "modinfo -F filename virtio_net e1000 8139cp 8139too")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == f"{vm['lab']}-vm1"
    assert lines[1] != "systemd"
    for tool in ("ifup", "ifdown", "ping", "route", "traceroute", "tcpdump", "iperf3", "iptables", "conntrack"):
        assert any(line.endswith("/" + tool) for line in lines), tool
    for driver in ("virtio_net.ko", "e1000.ko", "8139cp.ko", "8139too.ko"):
        assert any(line.split("/")[-1].startswith(driver) for line in lines), driver
    # qemu_vm's default virtio RNG is the guest's hardware RNG and seeds the kernel's crng as soon as its driver
    # binds (qemulab-init's load_drivers, before it renames the NICs), so nothing later in the boot (ifup, sshd) waits
    # for timer-jitter entropy. Without it (rng: false) "crng init done" came after the renames, once sshd asked.
    rng = _ssh(vm, "cat /sys/devices/virtual/misc/hw_random/rng_current; dmesg")
    current, kernel_log = rng.stdout.split("\n", 1)
    assert current.startswith("virtio_rng"), rng.stdout[:200]
    logged = [(float(m.group(1)), m.group(2)) for m in re.finditer(r"^\[\s*([0-9.]+)\] (.*)$", kernel_log, re.M)]
    crng_done = [at for at, line in logged if line == "random: crng init done"]
    renamed = [at for at, line in logged if "renamed from" in line]
    assert len(crng_done) == 1 and renamed and crng_done[0] < min(renamed), (crng_done, renamed)
    pw = subprocess.run(["ssh", "-p", str(vm["port"]), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                         "-o", "UserKnownHostsFile=" + vm["known_hosts"], "-o", "PreferredAuthentications=password",
                         "-o", "PubkeyAuthentication=no", "root@127.0.0.1", "true"],
                        capture_output=True, text=True, timeout=30)
    assert pw.returncode != 0 and "Host key verification failed" not in pw.stderr, pw.stderr
    # Only the key handed over at boot: the lab host's own guest key is not baked into the image.
    other = subprocess.run(["ssh", "-i", image["guest_image_ssh_key"], "-p", str(vm["port"]), "-o", "BatchMode=yes",
                            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                            "-o", "UserKnownHostsFile=" + vm["known_hosts"], "root@127.0.0.1", "true"],
                           capture_output=True, text=True, timeout=30)
    assert other.returncode != 0 and "Permission denied" in other.stderr, other.stderr

    # eth0 is the e1000 (probed first or not), eth1 the virtio lab NIC, mgmt0 the management NIC with 10.0.2.15/24.
    out = _ssh(vm, "for n in eth0 eth1 mgmt0; do echo $n $(cat /sys/class/net/$n/address) "
                   "$(basename $(readlink /sys/class/net/$n/device/driver)); done; ip -4 -o addr show mgmt0; "
                   "ip route show default | wc -l; grep -c ' / ext4 rw' /proc/mounts")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert rows[0].split() == ["eth0", vm["macs"]["eth0"], "e1000"]
    assert rows[1].split()[:2] == ["eth1", vm["macs"]["eth1"]]
    assert rows[2].split()[:2] == ["mgmt0", vm["macs"]["mgmt0"]]
    assert "10.0.2.15/24" in rows[3]
    assert rows[4] == "0"
    assert rows[5] == "1"

    # The configuration handed over through fw_cfg was written and applied before sshd answered.
    out = _ssh(vm, "cat /etc/network/interfaces; echo @@; ip -4 -o addr show eth1; cat /proc/sys/net/ipv4/ip_forward")
    assert out.returncode == 0, out.stderr
    written, applied = out.stdout.split("@@\n")
    assert written == FW_CFG_INTERFACES
    assert "inet 192.168.77.1/24" in applied and applied.split()[-1] == "1"
    # The image's uncompressed kernel is what booted (the bzImage's decompressor is seconds of TCG time).
    assert image["guest_image_kernel"].endswith("/vmlinux")

    # ACPI power button (qemu_vm's first stop step) ends the guest by itself; then everything is gone.
    down = vm["down"]()
    assert down.rc == 0, down
    assert not os.path.exists(vm["overlay"])
    assert os.path.exists(image["guest_image_disk"])
    assert not _qemu_pids_with(f"/run/qemulab/{vm['lab']}/")
    # Not QMP quit, SIGTERM or SIGKILL: the guest's acpid powered it off cleanly.
    assert down.result("VM gone")["stopped_by"] == "powerdown"


def test_disk_overlay_is_idempotent_follows_its_backing_file_and_goes_away(tmp_path):
    base_a, base_b = tmp_path / "a.raw", tmp_path / "b.raw"
    for base in (base_a, base_b):
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "16M"], check=True)
    overlay = tmp_path / "lab" / "vm.qcow2"
    play = """
- name: Overlay
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Overlay
      qemulab.network.disk_overlay:
        path: "{{ overlay }}"
        backing: "{{ backing | default(omit) }}"
        state: "{{ state | default('present') }}"
"""

    def overlay_run(check=False, **extra):
        res = run_playbook(play, extra_vars=dict({"overlay": str(overlay)}, **extra), check=check, diff=True)
        assert res.rc == 0, res
        return res.result("Overlay")

    def backing_of():
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)], check=True,
                                         capture_output=True, text=True).stdout)
        return info["backing-filename"], info["backing-filename-format"]

    assert overlay_run(check=True, backing=str(base_a))["changed"] is True
    assert not overlay.exists()
    assert overlay_run(backing=str(base_a))["changed"] is True
    assert backing_of() == (str(base_a), "raw")
    assert overlay_run(backing=str(base_a))["changed"] is False
    # A new base (a rebuilt image) means a new overlay; check mode only reports it.
    res = overlay_run(check=True, backing=str(base_b))
    assert res["changed"] is True and res["diff"]["after"]["backing"] == str(base_b)
    assert backing_of()[0] == str(base_a)
    assert overlay_run(backing=str(base_b))["changed"] is True
    assert backing_of()[0] == str(base_b)
    assert overlay_run(state="absent")["changed"] is True
    assert not overlay.exists()
    assert base_b.exists()
    assert overlay_run(state="absent")["changed"] is False


def test_disk_overlay_makes_many_overlays_in_one_run_and_keeps_accepted_backings(tmp_path):
    """overlays (vm_launch's one run for a lab's VMs): each path made over its backing file, a re-run changes
    nothing, an overlay over an accepted backing file stays over it, and a rebuilt base recreates only its own."""
    base_a, base_b = tmp_path / "a.raw", tmp_path / "b.raw"
    for base in (base_a, base_b):
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "16M"], check=True)
    first, second = tmp_path / "lab" / "vm1.qcow2", tmp_path / "lab" / "vm2.qcow2"
    play = """
- name: Overlays
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Overlays
      qemulab.network.disk_overlay:
        overlays: "{{ overlays }}"
"""

    def overlays_run(items, check=False):
        res = run_playbook(play, extra_vars={"overlays": items}, check=check, diff=True)
        assert res.rc == 0, res
        return res.result("Overlays")

    def backing_of(path):
        return json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                                         capture_output=True, text=True).stdout)["backing-filename"]

    both_a = [{"path": str(first), "backing": str(base_a)}, {"path": str(second), "backing": str(base_a)}]
    assert overlays_run(both_a, check=True)["changed"] is True and not first.exists()
    made = overlays_run(both_a)
    assert made["changed"] is True and [o["changed"] for o in made["overlays"]] == [True, True], made
    assert backing_of(first) == backing_of(second) == str(base_a)
    assert overlays_run(both_a)["changed"] is False
    # vm1 may keep base_a (accepted), vm2 must move to base_b
    moved = overlays_run([{"path": str(first), "backing": str(base_b), "accept_backing": [str(base_a)]},
                          {"path": str(second), "backing": str(base_b)}])
    assert [o["changed"] for o in moved["overlays"]] == [False, True], moved
    assert (backing_of(first), backing_of(second)) == (str(base_a), str(base_b))
