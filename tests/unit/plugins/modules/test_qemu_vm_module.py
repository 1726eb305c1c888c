"""qemu_vm's plan with the kernel and QEMU replaced: check mode, errors naming VM/NIC/tap/fix, spec vs docs."""
import json
import os
import sys
import subprocess

import pytest
import yaml

from ansible_collections.qemulab.network.plugins.module_utils import _qemu_task
from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import build_argv
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import (
    QEMU_VM_ARGUMENT_SPEC, QemuConfigError, fingerprint, normalise_config)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_host import vhost_usable
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import write_fw_cfg
from ansible_collections.qemulab.network.plugins.module_utils._qemu_task import run_qemu_vm
from ansible_collections.qemulab.network.plugins.modules import qemu_vm

pytestmark = pytest.mark.unit


class Failed(Exception):
    pass


class FakeModule(object):
    def __init__(self, check_mode=False, **params):
        self.params = dict((k, v.get("default")) for k, v in QEMU_VM_ARGUMENT_SPEC.items())
        self.params.update(params)
        self.check_mode = check_mode
        self.no_log_values = set()

    def fail_json(self, msg, **kwargs):
        raise Failed(msg)


def _params(tmp_path, **extra):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    params = dict(name="rt1", lab="t", run_dir=str(tmp_path / "run" / "rt1"), kernel=str(kernel),
                  accelerator="tcg", nics=[{"mac": "12:34:56:ab:cd:71", "ifname": "vport11", "backend": "tap"}])
    params.update(extra)
    return params


def test_check_mode_plans_a_start_and_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(_qemu_task, "vhost_usable", lambda: (False, "/dev/vhost-net does not exist"))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("check mode started a process"))
    module = FakeModule(check_mode=True, **_params(tmp_path))
    result = run_qemu_vm(module, get_tap=lambda ifname, netns: {"name": ifname})
    assert result["changed"] is True
    assert result["diff"]["before"] == {"state": "not running"}
    assert result["diff"]["after"]["state"] == "running" and result["diff"]["after"]["memory"] == 512
    assert result["nics"][0]["vhost"] is False and "vhost-net" in result["nics"][0]["vhost_reason"]
    assert not os.path.exists(module.params["run_dir"])


def test_missing_tap_kernel_and_vhost_on_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(_qemu_task, "vhost_usable", lambda: (False, "/dev/vhost-net does not exist"))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started QEMU despite problems"))
    params = _params(tmp_path, netns="labns", kernel=str(tmp_path / "nokernel"))
    with pytest.raises(Failed) as err:
        run_qemu_vm(FakeModule(**params), get_tap=lambda ifname, netns: None)
    msg = str(err.value)
    assert "VM rt1: kernel %s does not exist" % (tmp_path / "nokernel") in msg
    assert ("VM rt1: nics[0] needs tap vport11, which does not exist in namespace labns; create it first with "
            "qemulab.network.tap") in msg
    params = _params(tmp_path, nics=[{"mac": "12:34:56:ab:cd:71", "ifname": "vport11", "vhost": "on"}])
    with pytest.raises(Failed, match=r"VM rt1: nics\[0\]\.vhost is on but /dev/vhost-net does not exist"):
        run_qemu_vm(FakeModule(check_mode=True, **params), get_tap=lambda ifname, netns: {"name": ifname})


def test_check_mode_only_warns_about_missing_tap(tmp_path, monkeypatch):
    monkeypatch.setattr(_qemu_task, "vhost_usable", lambda: (False, "/dev/vhost-net does not exist"))
    result = run_qemu_vm(FakeModule(check_mode=True, **_params(tmp_path)), get_tap=lambda ifname, netns: None)
    assert result["changed"] is True
    assert result["warnings"] == ["would fail unless an earlier task creates it: VM rt1: nics[0] needs tap vport11, "
                                  "which does not exist in the root namespace; create it first with "
                                  "qemulab.network.tap"]


def test_absent_vm_without_run_dir_is_unchanged(tmp_path):
    result = run_qemu_vm(FakeModule(state="absent", **_params(tmp_path)), get_tap=lambda i, n: None)
    assert result["changed"] is False and result["state"] == "not running"


def _doc_options(options):
    out = {}
    for name, spec in options.items():
        entry = {"type": spec.get("type", "str"), "default": spec.get("default"), "choices": spec.get("choices"),
                 "required": spec.get("required", False), "elements": spec.get("elements")}
        if "suboptions" in spec:
            entry["options"] = _doc_options(spec["suboptions"])
        out[name] = entry
    return out


def _spec_options(spec):
    out = {}
    for name, opt in spec.items():
        entry = {"type": opt.get("type", "str"), "default": opt.get("default"), "choices": opt.get("choices"),
                 "required": opt.get("required", False), "elements": opt.get("elements")}
        if "options" in opt:
            entry["options"] = _spec_options(opt["options"])
        out[name] = entry
    return out


def test_documentation_matches_argument_spec():
    doc = yaml.safe_load(qemu_vm.DOCUMENTATION)
    assert _doc_options(doc["options"]) == _spec_options(QEMU_VM_ARGUMENT_SPEC)


FW_CFG = [{"name": "opt/qemulab/interfaces", "content": "auto lo\n"}, {"name": "opt/qemulab/sysctl", "content": "x\n"}]


def test_fw_cfg_items_become_files_in_the_run_dir_and_argv(tmp_path):
    config = normalise_config(_params(tmp_path, fw_cfg=FW_CFG))
    argv = build_argv(config, "tcg")
    run_dir = _params(tmp_path)["run_dir"]
    assert argv[argv.index("-fw_cfg") + 1] == "name=opt/qemulab/interfaces,file=%s/fw_cfg/qemulab_interfaces" % run_dir
    assert argv.count("-fw_cfg") == 2
    # The contents are not part of the fingerprint: new contents alone never restart a VM.
    other = normalise_config(_params(tmp_path, fw_cfg=[dict(i, content="changed") for i in FW_CFG]))
    assert fingerprint(other) == fingerprint(config)


@pytest.mark.parametrize("name", ["qemulab/interfaces", "opt/", "opt/a b", "opt/../etc", "opt/" + "x" * 52])
def test_unusable_fw_cfg_names_are_refused_with_the_form_qemu_wants(tmp_path, name):
    with pytest.raises(QemuConfigError, match=r"VM rt1: fw_cfg\[0\]\.name .* opt/<path>"):
        normalise_config(_params(tmp_path, fw_cfg=[{"name": name, "content": ""}]))


def test_changed_fw_cfg_contents_are_rewritten_for_a_running_vm_without_restart(tmp_path, monkeypatch):
    params = _params(tmp_path, fw_cfg=FW_CFG)
    config = normalise_config(params)
    os.makedirs(config["run_dir"])
    write_fw_cfg(config, dict((i["name"], i["content"]) for i in FW_CFG), [i["name"] for i in FW_CFG])
    running = {"pid": 4242, "status": "running", "stored": {"config": config}}
    monkeypatch.setattr(_qemu_task, "read_state", lambda run_dir: running)
    monkeypatch.setattr(_qemu_task, "stop_vm", lambda *a: pytest.fail("stopped a VM for new fw_cfg contents"))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("restarted a VM for new contents"))

    unchanged = run_qemu_vm(FakeModule(**params))
    assert unchanged["changed"] is False and "fw_cfg_updated" not in unchanged

    params["fw_cfg"] = [FW_CFG[0], dict(FW_CFG[1], content="net.ipv4.ip_forward = 1\n")]
    checked = run_qemu_vm(FakeModule(check_mode=True, **params))
    assert checked["changed"] is True and checked["fw_cfg_updated"] == ["opt/qemulab/sysctl"]
    assert open(config["fw_cfg"][1]["file"]).read() == "x\n"
    result = run_qemu_vm(FakeModule(**params))
    assert result["changed"] is True and result["changes"] == []
    assert result["diff"]["after"]["fw_cfg_contents"] == {"opt/qemulab/sysctl": "net.ipv4.ip_forward = 1\n"}
    assert open(config["fw_cfg"][1]["file"]).read() == "net.ipv4.ip_forward = 1\n"
    assert oct(os.stat(config["fw_cfg"][1]["file"]).st_mode & 0o777) == "0o600"


def test_vhost_available_is_reported_on_per_tap_nic_and_reaches_the_command_line(tmp_path, monkeypatch):
    # a device this process can open read-write stands for a working /dev/vhost-net
    device = tmp_path / "vhost-net"
    device.write_bytes(b"")
    assert vhost_usable(str(device)) == (True, "%s is usable" % device)
    assert vhost_usable(str(tmp_path / "none"))[0] is False
    monkeypatch.setattr(_qemu_task, "vhost_usable", lambda: (True, "/dev/vhost-net is usable"))
    params = _params(tmp_path, nics=[{"mac": "12:34:56:ab:cd:71", "ifname": "vport11"},
                                     {"mac": "12:34:56:ab:cd:72", "ifname": "vport12", "model": "e1000",
                                      "vhost": "off"},
                                     {"backend": "user", "mac": "52:54:00:00:00:01",
                                      "hostfwd": [{"host_port": 2201, "guest_port": 22}]}])
    result = run_qemu_vm(FakeModule(check_mode=True, **params), get_tap=lambda ifname, netns: {"name": ifname})
    nics = result["nics"]
    assert (nics[0]["vhost"], nics[0]["vhost_reason"]) == (True, "/dev/vhost-net is usable")
    assert (nics[1]["vhost"], nics[1]["vhost_reason"]) == (False, "vhost: off requested")
    assert "vhost" not in nics[2] or nics[2]["vhost"] is None
    config = normalise_config(params)
    argv = build_argv(config, "tcg", {0: True, 1: False})
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs[0].endswith(",vhost=on") and "vhost" not in netdevs[1]


def test_a_running_unchanged_vm_reports_the_vhost_decision_of_its_start(tmp_path, monkeypatch):
    params = _params(tmp_path)
    config = normalise_config(params)
    started = [dict(config["nics"][0], vhost=False, vhost_reason="/dev/vhost-net does not exist")]
    monkeypatch.setattr(_qemu_task, "read_state", lambda run_dir: {
        "status": "running", "pid": 4242,
        "stored": {"config": config, "nics": started, "accelerator": "tcg", "accelerator_reason": "tcg requested"}})
    result = run_qemu_vm(FakeModule(check_mode=True, **params), get_tap=lambda ifname, netns: {"name": ifname})
    assert result["changed"] is False
    assert result["nics"] == started


KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-new\n-----END OPENSSH PRIVATE KEY-----\n"
OLD_KEY = KEY.replace("-new", "-old")


def test_a_secret_fw_cfg_item_is_masked_and_its_diff_shows_digests_only(tmp_path, monkeypatch):
    """A guest's private host key (fw_cfg secret: true) joins AnsibleModule's no_log_values, and the diff of a
    changed key names neither the new key nor the old one on disk (which no_log_values cannot know)."""
    items = [FW_CFG[0], {"name": "opt/qemulab/ssh_host_ed25519_key", "content": OLD_KEY, "secret": True}]
    params = _params(tmp_path, fw_cfg=items)
    config = normalise_config(params)
    os.makedirs(config["run_dir"])
    write_fw_cfg(config, dict((i["name"], i["content"]) for i in items), [i["name"] for i in items])
    monkeypatch.setattr(_qemu_task, "read_state",
                        lambda run_dir: {"pid": 4242, "status": "running", "stored": {"config": config}})
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("restarted a VM for a new key"))
    params["fw_cfg"] = [items[0], dict(items[1], content=KEY)]
    module = FakeModule(check_mode=True, **params)
    result = run_qemu_vm(module)
    assert result["fw_cfg_updated"] == ["opt/qemulab/ssh_host_ed25519_key"]
    assert module.no_log_values == {KEY}
    shown = result["diff"]["before"]["fw_cfg_contents"]["opt/qemulab/ssh_host_ed25519_key"], \
        result["diff"]["after"]["fw_cfg_contents"]["opt/qemulab/ssh_host_ed25519_key"]
    assert shown[0].startswith("(secret, sha256 ") and shown[1].startswith("(secret, sha256 ") and shown[0] != shown[1]
    assert "PRIVATE KEY" not in json.dumps(result)


def test_qemu_vms_run_as_ansible_runs_it_never_prints_a_secret(tmp_path):
    """The real module process (AnsibleModule's own masking), in check mode and with a VM whose spec fails: the
    key appears neither in the result nor in the invocation's module_args nor in the failure message."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    secret = {"name": "opt/qemulab/ssh_host_ed25519_key", "content": KEY, "secret": True}
    vms = [{"name": "rt1", "kernel": str(kernel), "accelerator": "tcg", "fw_cfg": [secret]},
           {"name": "rt2", "kernel": str(kernel), "accelerator": "tcg", "memory": "lots", "fw_cfg": [secret]}]
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "lab": "t", "state": "running", "run_root": str(tmp_path / "run"), "vms": vms,
        "_ansible_check_mode": True, "_ansible_diff": True}}))
    collections = os.path.join(os.path.dirname(__file__), *[os.pardir] * 4, ".build", "collections")
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.qemulab.network.plugins.modules.qemu_vms",
                           str(args_file)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.path.abspath(collections)))
    out = json.loads(proc.stdout)
    assert out.get("failed") and "rt2" in out["msg"], proc.stdout + proc.stderr
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    assert out["invocation"]["module_args"]["vms"][0]["fw_cfg"][0]["content"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
