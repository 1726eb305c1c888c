"""Every module that takes a lab, VM, namespace or interface name refuses one outside the name rule, naming the
field, the value and the fix, before it reads or changes anything (the kernel and QEMU are replaced by tripwires)."""
import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.qemulab.network.plugins.module_utils import _link, _qemu_task
from ansible_collections.qemulab.network.plugins.modules import (
    bridge, interface_info, ip_config, links, netns, qemu_vm, qemu_vm_info, qemu_vms, tap, veth)

pytestmark = pytest.mark.unit


def tripwire(*args, **kwargs):
    pytest.fail("touched the host before the names were checked: %r %r" % (args, kwargs))


@pytest.fixture(autouse=True)
def no_host(monkeypatch):
    for module in (_link, links, interface_info, ip_config):
        monkeypatch.setattr(module, "netlink", tripwire)
    for module in (_link, links, interface_info, netns):
        monkeypatch.setattr(module, "netns_exists", tripwire)
    for name in ("prepare_run_dir", "launch", "stop_vm", "read_state"):
        monkeypatch.setattr(_qemu_task, name, tripwire)
    for name in ("lab_run_dirs", "stop_vm", "qemu_vm_task", "tap_reader"):
        monkeypatch.setattr(qemu_vms, name, tripwire)
    monkeypatch.setattr(qemu_vm_info, "lab_run_dirs", tripwire)


def run(module, args, capsys):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("module,args,fragment", [
    (qemu_vm, {"name": "../x"}, "VM: name: '../x' is not a VM name (it contains '.', '/')"),
    (qemu_vm, {"name": "rt1", "lab": "Seed"}, "VM rt1: lab: 'Seed' is not a lab name (it contains 'S')"),
    (qemu_vm, {"name": "rt1", "nics": [{"ifname": "vport,1"}]}, "VM rt1: nics[0].ifname: 'vport,1' is not a tap"),
    (qemu_vm, {"name": "rt1", "netns": "$(x)"}, "VM rt1: netns: '$(x)' is not a namespace name"),
    (qemu_vms, {"lab": "..", "state": "absent"}, "qemu_vms: lab: '..' is not a lab name"),
    (qemu_vms, {"lab": "a,b", "state": "running", "vms": [{"name": "rt1"}]}, "qemu_vms: lab: 'a,b'"),
    (qemu_vm_info, {"lab": "../etc"}, "qemu_vm_info: lab: '../etc' is not a lab name"),
    (qemu_vm_info, {"lab": "seed", "name": "rt1.x"}, "qemu_vm_info: name: 'rt1.x' is not a VM name"),
    (interface_info, {"netns": "../x"}, "interface_info: netns: '../x' is not a namespace name"),
    (interface_info, {"netns": "ns1", "lab": "T1"}, "interface_info: lab: 'T1' is not a lab name"),
    (ip_config, {"interfaces": [{"name": "eth0.10"}]}, "interfaces[0]: name: 'eth0.10' is not an interface name"),
    (ip_config, {"interfaces": [{"name": "eth0"}], "netns": "a/b"}, "ip_config: netns: 'a/b' is not a namespace"),
    (links, {"netns": "-x"}, "links: netns: '-x' is not a namespace name (it starts with '-')"),
    (links, {"lab": "a_b"}, "links: lab: 'a_b' is not a lab name (it contains '_')"),
    (netns, {"name": "qemulab.seed", "lab": "seed"}, "namespace qemulab.seed: name: 'qemulab.seed' is not a"),
    (bridge, {"name": "br.10", "lab": "seed"}, "bridge br.10: name: 'br.10' is not a bridge name (it contains '.')"),
    (tap, {"name": "vport1", "bridge": "BR1", "lab": "seed"}, "tap vport1: bridge: 'BR1' is not a bridge name"),
    (tap, {"name": "vport1234567890a", "lab": "seed"}, "'vport1234567890a' is 16 characters long; a tap name has"),
    (veth, {"name": "veth0", "peer": "veth 1", "lab": "seed"}, "veth veth 1: peer_name: 'veth 1' is not a veth"),
])
def test_a_name_outside_the_rule_is_refused_before_anything_is_read(module, args, fragment, capsys):
    result = run(module, args, capsys)
    assert result.get("failed") and fragment in result["msg"], result


def test_links_fails_the_item_with_a_bad_name_and_opens_no_namespace_for_it(capsys):
    result = run(links, {"lab": "seed", "netns": "ns1", "bridges": [{"name": "br_1"}],
                         "taps": [{"name": "vport1", "netns": "../x"}]}, capsys)
    assert result["failed"]
    assert "bridge br_1: name: 'br_1' is not a bridge name (it contains '_')" in result["bridges"][0]["msg"]
    assert "tap vport1: netns: '../x' is not a namespace name" in result["taps"][0]["msg"]


def test_qemu_vms_keeps_every_vm_in_its_lab_under_the_run_root():
    items = qemu_vms.validated([{"name": "rt1"}, {"name": "rt2", "run_dir": "/tmp/elsewhere"},
                                {"name": "rt3", "lab": "other"}, {"name": "rt_4"},
                                {"name": "rt5", "run_dir": "/run/qemulab/seed/rt5/"}], "seed", "/run/qemulab")
    (_n1, rt1, e1), (_n2, rt2, e2), (_n3, rt3, e3), (_n4, rt4, e4), (_n5, rt5, e5) = items
    assert e1 is None and rt1["run_dir"] == "/run/qemulab/seed/rt1"
    assert rt2 is None and e2 == ("vms[1] (rt2): run_dir /tmp/elsewhere is not /run/qemulab/seed/rt2, where this "
                                  "module finds the lab's VMs again; leave run_dir out")
    assert rt3 is None and "vms[2] (rt3): lab other is not this task's lab seed" in e3
    assert rt4 is None and e4.startswith("vms[3] (rt_4): VM: name: 'rt_4' is not a VM name")
    assert e5 is None and rt5["run_dir"] == "/run/qemulab/seed/rt5"
