"""_qemu_clone and the clone layout of _qemu_argv (unit: no QEMU runs; qcow2 files are made by the real qemu-img):
the template is the VM's machine without its own parts, the key moves with everything the saved state depends on
and with nothing else, a clone is refused whenever it would not come out exactly as a boot, and a clone's command
line has the template's devices."""
import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _qemu_clone
from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import build_argv
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import normalise_config

pytestmark = pytest.mark.unit

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed")


def vm(tmp_path, **changes):
    params = {
        "name": "rt1", "lab": "seed", "run_dir": str(tmp_path / "run" / "rt1"), "kernel": "/img/vmlinuz",
        "initrd": "/img/initrd.img", "append": "qemulab.hostname=rt1 qemulab.nics=52:54:00:00:01:01",
        "disks": [{"file": str(tmp_path / "rt1.qcow2"), "format": "qcow2"}], "memory": 256, "vcpus": 1,
        "nics": [{"model": "virtio-net-pci", "mac": "52:54:00:00:01:01", "backend": "tap", "ifname": "vport11"},
                 {"model": "e1000", "mac": "52:54:00:00:01:02", "backend": "tap", "ifname": "vport21", "mtu": 1400},
                 {"model": "virtio-net-pci", "mac": "52:54:00:aa:00:01", "backend": "user",
                  "hostfwd": [{"host_port": 2201, "guest_port": 22}]}],
        "fw_cfg": [{"name": "opt/qemulab/interfaces", "content": "auto lo\n"}],
    }
    params.update(changes)
    return normalise_config(params)


def test_a_clone_has_a_boots_devices_with_its_own_macs_and_the_templates_extra_devices(tmp_path):
    config = vm(tmp_path)
    argv = build_argv(config, "tcg", tap_fds={0: 10, 1: 11}, layout="clone", incoming_fd=12)
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert [d.split(",")[0] for d in devices] == ["virtio-net-pci", "e1000", "virtio-net-pci", "virtio-rng-pci",
                                                   "virtio-serial-pci", "virtserialport", "vmgenid"]
    assert [d.split("mac=")[1].split(",")[0] for d in devices[:3]] == [
        "52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:aa:00:01"]
    # every NIC's backend is its own (taps as fds)
    assert [n.split(",")[1] for n in netdevs] == ["id=net0", "id=net1", "id=net2"]
    assert "fd=10" in netdevs[0] and "fd=11" in netdevs[1]
    assert argv[argv.index("-incoming") + 1] == "fd:12"
    assert "name=org.qemulab.go" in devices[5]
    boot = build_argv(config, "tcg", tap_fds={0: 10, 1: 11})
    assert [a for a in argv if a not in boot] == [a for a in argv[argv.index("virtio-serial-pci") - 1:]
                                                  if a not in boot]  # a boot's argv plus the clone's devices


def test_the_template_is_the_vms_machine_without_its_own_parts(tmp_path):
    config = vm(tmp_path)
    template = _qemu_clone.template_config(config, "/img/disk.ext4", str(tmp_path / "build"))
    # the same NIC devices, with placeholder MACs and backends nothing uses: no tap, no forward
    assert [n["model"] for n in template["nics"]] == ["virtio-net-pci", "e1000", "virtio-net-pci"]
    assert [n["mac"] for n in template["nics"]] == ["52:54:00:00:01:00", "52:54:00:00:01:01",
                                                    _qemu_clone.TEMPLATE_MGMT_MAC]
    assert all(n["backend"] == "user" and n["restrict"] and n["hostfwd"] == [] for n in template["nics"])
    assert template["nics"][1]["mtu"] == 1400
    assert template["fw_cfg"] == [] and "qemulab.template=1" in template["append"]
    # the guest finds the placeholders on the template's command line, to move each NIC to the clone's MAC
    assert "qemulab.nics=52:54:00:00:01:00,52:54:00:00:01:01" in template["append"]
    assert "rt1" not in json.dumps(template)  # neither its name, hostname, run directory nor disk
    clone = build_argv(config, "tcg", tap_fds={0: 10, 1: 11}, layout="clone")
    made = build_argv(template, "tcg", layout="clone")

    def machine(argv):  # the device list and the machine options, the parts a migration stream must match (a
        out = []        # NIC's MAC is not in it: the guest sets the clone's)
        for i, arg in enumerate(argv):
            if arg in ("-device", "-m", "-smp", "-accel"):
                out.append((arg, ",".join(p for p in argv[i + 1].split(",") if not p.startswith("mac="))))
        return out
    assert machine(clone) == machine(made)


def test_the_key_moves_with_what_the_state_depends_on_and_nothing_else(tmp_path):
    base = vm(tmp_path)
    key = _qemu_clone.template_key(base, "/img/disk.ext4", "tcg", "7.2.22")[0]
    same = [vm(tmp_path, name="rt2", run_dir=str(tmp_path / "run" / "rt2"), append="qemulab.hostname=rt2",
               fw_cfg=[]),
            # other MACs, taps and forwards on the same NIC devices (an e1000 has no MTU property: its guest sets it)
            vm(tmp_path, nics=[{"model": "virtio-net-pci", "mac": "52:54:00:00:02:01", "backend": "tap", "ifname": "x1"},
                               {"model": "e1000", "mac": "52:54:00:00:02:02", "backend": "user", "mtu": 1300},
                               {"model": "virtio-net-pci", "mac": "52:54:00:aa:00:09", "backend": "user"}])]
    for other in same:
        assert _qemu_clone.template_key(other, "/img/disk.ext4", "tcg", "7.2.22")[0] == key
    different = [(vm(tmp_path, memory=512), "tcg", "7.2.22", "/img/disk.ext4"),
                 (vm(tmp_path, vcpus=2), "tcg", "7.2.22", "/img/disk.ext4"),
                 (vm(tmp_path, tb_size=32), "tcg", "7.2.22", "/img/disk.ext4"),
                 (vm(tmp_path, rng=False), "tcg", "7.2.22", "/img/disk.ext4"),
                 (vm(tmp_path, kernel="/other/vmlinuz"), "tcg", "7.2.22", "/img/disk.ext4"),
                 # another NIC layout: one NIC less, another model, another device option
                 (vm(tmp_path, nics=vm(tmp_path)["nics"][1:]), "tcg", "7.2.22", "/img/disk.ext4"),
                 (vm(tmp_path, nics=[dict(n, model="rtl8139") if n["model"] == "e1000" else n
                                     for n in vm(tmp_path)["nics"]]), "tcg", "7.2.22", "/img/disk.ext4"),
                 (vm(tmp_path, nics=[dict(n, mtu=1300) if n.get("ifname") == "vport11" else n
                                     for n in vm(tmp_path)["nics"]]), "tcg", "7.2.22", "/img/disk.ext4"),
                 # a QEMU run as another user cannot map the template's RAM file: its template keeps RAM in state
                 (vm(tmp_path, run_as="nobody"), "tcg", "7.2.22", "/img/disk.ext4"),
                 (base, "kvm", "7.2.22", "/img/disk.ext4"),
                 (base, "tcg", "8.0.0", "/img/disk.ext4"),
                 (base, "tcg", "7.2.22", "/img2/disk.ext4")]
    keys = set(_qemu_clone.template_key(c, disk, accel, version)[0] for c, accel, version, disk in different)
    assert key not in keys and len(keys) == len(different)


@pytest.mark.parametrize("changes, reason", [
    (dict(extra_args=["-device", "e1000"]), "extra_args"),
    (dict(nics=[{"model": "virtio-net-pci", "backend": "tap", "ifname": "t0"}]), "management NIC"),
    (dict(disks=[{"file": "/img/own.ext4", "format": "raw"}]), "qcow2 overlay"),
    (dict(kernel=None, initrd=None), "-kernel"),
])
def test_what_a_template_cannot_carry_boots(tmp_path, changes, reason):
    assert reason in _qemu_clone.clone_problem(vm(tmp_path, **changes))


@needs_qemu_img
def test_only_a_fresh_overlay_over_the_templates_disk_is_cloned(tmp_path):
    base = tmp_path / "disk.raw"
    base.write_bytes(b"\0" * 1024 * 1024)
    template_disk, other = str(tmp_path / "template.qcow2"), str(tmp_path / "other.qcow2")
    for path, backing, fmt in ((template_disk, str(base), "raw"), (other, str(base), "raw")):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", fmt, path], check=True)
    overlay = str(tmp_path / "vm.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", template_disk, "-F", "qcow2", overlay],
                   check=True)
    assert _qemu_clone.fresh_overlay_over(overlay, template_disk) == (True, "")
    fresh, why = _qemu_clone.fresh_overlay_over(overlay, other)
    assert not fresh and "not by the template's" in why
    # a VM that ran wrote to it: qemu-io writes one cluster the way QEMU would
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4k", overlay], check=True,
                   capture_output=True)
    fresh, why = _qemu_clone.fresh_overlay_over(overlay, template_disk)
    assert not fresh and "wrote since it first started" in why
    assert not _qemu_clone.fresh_overlay_over(str(base), template_disk)[0]  # no qcow2 at all


@needs_qemu_img
def test_clone_plan_needs_a_finished_template_made_for_this_machine(tmp_path):
    config = vm(tmp_path)
    directory = tmp_path / "templates"
    key, inputs = _qemu_clone.template_key(config, "/img/disk.ext4", "tcg", "7.2.22")
    path = directory / key
    assert _qemu_clone.clone_plan(config, str(path), "tcg", lambda: "7.2.22")[0] is None  # nothing there yet
    os.makedirs(str(path))
    (path / "state").write_bytes(b"QEVM")
    (tmp_path / "disk.raw").write_bytes(b"\0" * 65536)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(tmp_path / "disk.raw"), "-F", "raw",
                    str(path / "disk.qcow2")], check=True)
    (path / "manifest.json").write_text(json.dumps({"key": key, "inputs": inputs}))
    # its RAM is a file of the guest's size (sparse): none, or one of another size, is no template
    assert _qemu_clone.read_template(str(directory), key) is None
    with open(str(path / "ram"), "wb") as f:
        f.truncate(128 * 1024 * 1024)
    assert _qemu_clone.read_template(str(directory), key) is None
    with open(str(path / "ram"), "wb") as f:
        f.truncate(256 * 1024 * 1024)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(path / "disk.qcow2"), "-F", "qcow2",
                    config["disks"][0]["file"]], check=True)
    template, reason = _qemu_clone.clone_plan(config, str(path), "tcg", lambda: "7.2.22")
    assert template is not None and reason == "" and template["state"] == str(path / "state")
    assert template["ram"] == str(path / "ram")
    template, reason = _qemu_clone.clone_plan(vm(tmp_path, memory=512), str(path), "tcg", lambda: "7.2.22")
    assert template is None and "memory" in reason
    template, reason = _qemu_clone.clone_plan(config, str(path), "tcg", lambda: "8.0.0")
    assert template is None and "qemu_version" in reason
    assert _qemu_clone.clone_plan(config, None, "tcg", lambda: pytest.fail("asked for QEMU's version")) == (None, "")
    # no template offered to a VM no template could serve (vm_template left it out): the reason is still said
    odd = dict(config, extra_args=["-device", "virtio-rng-pci"])
    assert _qemu_clone.clone_plan(odd, None, "tcg", lambda: pytest.fail("asked")) == (
        None, "extra_args may add devices a template does not have")


def test_the_settings_line_is_the_command_line_plus_the_time(tmp_path):
    line = _qemu_clone._settings_line(vm(tmp_path), clock=lambda: 1795800000.7)
    assert line == ("qemulab.go=1 qemulab.hostname=rt1 qemulab.nics=52:54:00:00:01:01 qemulab.time=1795800000 "
                    "qemulab.end=1\n")


def test_a_clone_maps_the_templates_ram_file_privately_and_loads_its_state_deferred(tmp_path):
    config = vm(tmp_path)
    assert _qemu_clone.ram_mode(config) == "file"
    assert _qemu_clone.ram_mode(vm(tmp_path, run_as="nobody")) == "anon"
    assert _qemu_clone.template_key(config, "/img/disk.ext4", "tcg", "7.2.22")[1]["ram"] == "file"

    def after(argv, option):
        return [argv[i + 1] for i, a in enumerate(argv) if a == option]
    clone = build_argv(config, "tcg", tap_fds={0: 10, 1: 11}, layout="clone", incoming_fd=12,
                       ram_file={"path": "/img/templates/k/ram", "share": False})
    # RAM of exactly -m's size, named "ram" by -machine in the template and in the clone (the RAM block id the
    # stream names); x-ignore-shared is set over QMP before the state is read: -incoming defer, not fd:
    assert after(clone, "-m") == ["256"]
    assert after(clone, "-object") == ["memory-backend-file,id=ram,size=256M,mem-path=/img/templates/k/ram,share=off"]
    assert after(clone, "-machine") == ["memory-backend=ram"]
    assert after(clone, "-incoming") == ["defer"]
    template = build_argv(_qemu_clone.template_config(config, "/img/disk.ext4", str(tmp_path / "build")), "tcg",
                          layout="clone", ram_file={"path": str(tmp_path / "build" / "ram"), "share": True})
    assert after(template, "-object") == ["memory-backend-file,id=ram,size=256M,mem-path=%s,share=on"
                                          % (tmp_path / "build" / "ram")]
    assert after(template, "-machine") == ["memory-backend=ram"] and "-incoming" not in template
    # without a RAM file (a run_as VM's template, a boot) nothing changes: anonymous RAM, the state from the fd
    plain = build_argv(config, "tcg", tap_fds={0: 10, 1: 11}, layout="clone", incoming_fd=12)
    assert "-object" not in plain and "-machine" not in plain and after(plain, "-incoming") == ["fd:12"]
