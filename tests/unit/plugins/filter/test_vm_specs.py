"""Unit tests: vm_launch's qemu_vm arguments and the skip test that must agree with qemu_vm itself."""
import hashlib
import os

import pytest

from ansible_collections.qemulab.network.plugins.filter.vm_specs import LAUNCH_KEYS, qemu_vm_specs, qemu_vms_pending
from ansible_collections.qemulab.network.plugins.module_utils import _qemu_config, _qemu_process, _qemu_task
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_render import qemu_vm

pytestmark = pytest.mark.unit

SETTINGS = {"lab": "seed", "run_root": "/run/qemulab", "state_dir": "/var/lib/qemulab",
            "default_kernel": "/img/vmlinux", "default_initrd": "/img/initrd.img", "default_disk": "/img/disk.ext4",
            "default_append": "root=/dev/vda rw init=/sbin/qemulab-init", "custom_append": "root=/dev/vda rw",
            "accelerator": "auto", "tb_size": 64, "extra_args": [], "boot_config": True}
PLAN = {"lab_name": "seed", "netns": "qemulab-seed", "qemu_user": "", "console_log_limit": "4M"}


def nic(dev, tap, mac, address, model="virtio-net-pci"):
    return {"dev": dev, "backend": "tap", "bridge": "br", "tap": tap, "mac": mac, "address": address, "model": model,
            "vhost": "auto", "mtu": None, "net": None, "hostfwd": []}


# VMs as the compiler plans them; rendered() turns one into what vm_launch receives
RT1 = {"name": "rt1", "kind": "router", "memory_mb": 1024, "vcpus": 1, "kernel": None, "initrd": None, "disk": None,
       "mgmt_mac": "52:54:00:00:00:01", "ssh_port": 2201, "forwarding": True, "gateway": None,
       "routes": [{"to": "10.20.60.0/24", "via": "10.20.20.2", "dev": "eth1"}],
       "nics": [nic("eth0", "vport11", "12:34:56:ab:cd:71", "10.20.10.1/24"),
                nic("eth1", "vport21", "12:34:56:ab:cd:72", "10.20.20.1/24", "e1000")]}
OWN = dict(RT1, name="yocto", kernel="/seed/bzImage", disk="/seed/rt.ext4", ssh_port=2209)


def rendered(*vms, **plan):
    return [qemu_vm(vm, dict(PLAN, **plan)) for vm in vms]


class Module(object):
    """What AnsibleModule hands qemu_vm: the spec's arguments validated, defaults filled in."""
    def __init__(self, params):
        from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
        result = ArgumentSpecValidator(_qemu_config.QEMU_VM_ARGUMENT_SPEC).validate(params)
        assert not result.error_messages, result.error_messages
        self.params = result.validated_parameters


def _running(spec):
    """qemu_vm_info's entry for a VM started by qemu_vm with exactly `spec`."""
    params = dict((k, v) for k, v in spec.items() if k not in LAUNCH_KEYS)
    config = _qemu_config.normalise_config(Module(params).params)
    return {"name": spec["name"], "state": "running", "fingerprint": _qemu_config.fingerprint(config),
            "fw_cfg": dict((i["name"], hashlib.sha256(i["content"].encode()).hexdigest()) for i in spec["fw_cfg"])}


def test_specs_for_the_default_image_and_an_own_kernel():
    rt1, own = qemu_vm_specs(rendered(RT1, OWN), SETTINGS)
    assert rt1["overlay"] == "/var/lib/qemulab/labs/seed/rt1.qcow2"
    assert rt1["disks"] == [{"file": rt1["overlay"], "format": "qcow2"}]
    assert rt1["kernel"] == "/img/vmlinux" and rt1["initrd"] == "/img/initrd.img"
    assert rt1["append"].endswith("qemulab.hostname=rt1 qemulab.mgmt=52:54:00:00:00:01 "
                                  "qemulab.nics=12:34:56:ab:cd:71,12:34:56:ab:cd:72")
    assert [i["name"] for i in rt1["fw_cfg"]] == ["opt/qemulab/interfaces", "opt/qemulab/ip", "opt/qemulab/sysctl"]
    assert "up route add -net 10.20.60.0/24 gw 10.20.20.2 dev eth1" in rt1["fw_cfg"][0]["content"]
    assert "route add 10.20.60.0/24 via 10.20.20.2 dev eth1\n" in rt1["fw_cfg"][1]["content"]
    assert rt1["nics"][-1]["hostfwd"] == [{"host_port": 2201, "guest_port": 22, "protocol": "tcp"}]
    # the namespace and the QEMU user come rendered with each VM, not from vm_launch's settings
    assert rt1["netns"] == "qemulab-seed" and rt1["run_as"] is None
    assert [(n["ifname"], n["netns"]) for n in rt1["nics"][:-1]] == [("vport11", "qemulab-seed"),
                                                                     ("vport21", "qemulab-seed")]
    assert "ssh_port" not in rt1
    # The seed's own images: their kernel and raw disk, no overlay, no initrd, nothing handed over at boot.
    assert own["overlay"] is None and own["initrd"] is None and own["fw_cfg"] == []
    assert own["disks"] == [{"file": "/seed/rt.ext4", "format": "raw"}]
    assert own["append"].startswith("root=/dev/vda rw qemulab.hostname=yocto")


def test_a_vm_running_as_specified_is_skipped_and_any_difference_is_not():
    specs = qemu_vm_specs(rendered(RT1, OWN), SETTINGS)
    running = [_running(s) for s in specs]
    assert qemu_vms_pending(specs, running) == []
    assert qemu_vms_pending(specs, running[:1]) == ["yocto"]                        # not started
    assert qemu_vms_pending(specs, [dict(running[0], state="paused"), running[1]]) == ["rt1"]
    moved = qemu_vm_specs(rendered(dict(RT1, memory_mb=512), OWN), SETTINGS)
    assert qemu_vms_pending(moved, running) == ["rt1"]                              # a restart
    readdressed = qemu_vm_specs(rendered(dict(RT1, gateway="10.20.10.9"), OWN), SETTINGS)
    assert qemu_vms_pending(readdressed, running) == ["rt1"]                        # new boot-time file
    broken = qemu_vm_specs(rendered(dict(RT1, memory_mb="lots"), OWN), SETTINGS)
    assert qemu_vms_pending(broken, running) == ["rt1"]                             # the module explains


def test_the_skip_agrees_with_qemu_vm_on_the_same_arguments(tmp_path, monkeypatch):
    """qemu_vm itself, given a VM started from the spec, reports nothing to do exactly when the filter skips it."""
    spec = qemu_vm_specs(rendered(RT1), dict(SETTINGS, run_root=str(tmp_path)))[0]
    params = Module(dict((k, v) for k, v in spec.items() if k not in LAUNCH_KEYS)).params
    config = _qemu_config.normalise_config(params)
    os.makedirs(config["run_dir"])
    _qemu_process.write_fw_cfg(config, dict((i["name"], i["content"]) for i in spec["fw_cfg"]),
                               [i["name"] for i in spec["fw_cfg"]])
    monkeypatch.setattr(_qemu_task, "read_state", lambda run_dir: {"pid": 1, "status": "running",
                                                                   "stored": {"config": config}})

    class Fake(object):
        check_mode = True

        def __init__(self, p):
            self.params = p
            self.no_log_values = set()

        def fail_json(self, msg, **kw):
            raise AssertionError(msg)
    assert _qemu_task.run_qemu_vm(Fake(params))["changed"] is False
    assert qemu_vms_pending([spec], [_running(spec)]) == []


def test_qemu_vm_args_are_valid_qemu_vm_options_and_qemu_vms_validates_them_so():
    """What vm_launch hands qemu_vms: each spec minus the role's `overlay` and unset options; qemu_vms's own
    validation accepts them and names the item of a broken one."""
    from ansible_collections.qemulab.network.plugins.filter.vm_specs import qemu_vm_args
    from ansible_collections.qemulab.network.plugins.modules.qemu_vms import validated
    specs = qemu_vm_specs(rendered(RT1, OWN), SETTINGS)
    args = qemu_vm_args(specs)
    assert [sorted(a) for a in args] == [sorted(k for k, v in s.items() if k not in LAUNCH_KEYS and v is not None)
                                         for s in specs]
    assert "run_as" not in args[0] and "overlay" not in args[0]
    checked = validated(args, "seed", SETTINGS["run_root"])
    assert [(name, error) for name, _params, error in checked] == [("rt1", None), ("yocto", None)]
    assert checked[0][1]["run_as"] is None and checked[0][1]["stop_timeout"] == 10
    assert qemu_vm_args(qemu_vm_specs(rendered(RT1, qemu_user="qemulab"), SETTINGS))[0]["run_as"] == "qemulab"
    # the run directory the specs name is the one qemu_vms finds the lab's VMs in again
    assert [params["run_dir"] for _name, params, _error in checked] == [
        "/run/qemulab/seed/rt1", "/run/qemulab/seed/yocto"]
    elsewhere = validated(args, "seed", "/run/elsewhere")
    assert all(params is None and "run_dir /run/qemulab/seed/" in error for _name, params, error in elsewhere)
    broken = validated([dict(args[0], vcpus="many"), {"nics": []}], "seed", SETTINGS["run_root"])
    assert broken[0][1] is None and broken[0][2].startswith("vms[0] (rt1): ") and "vcpus" in broken[0][2]
    assert broken[1][1] is None and broken[1][2].startswith("vms[1] (?): ") and "name" in broken[1][2]
