"""Unit tests (kernel replaced by a dict): the bridge module end to end through AnsibleModule, check mode and not."""
import contextlib
import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.qemulab.network.plugins.module_utils import _link, _link_kinds
from ansible_collections.qemulab.network.plugins.module_utils._ownership import pending_group
from ansible_collections.qemulab.network.plugins.modules import bridge

pytestmark = pytest.mark.unit


class FakeKernel:
    """Links by name; records every change the module asks for."""

    def __init__(self, links=None):
        self.links = links or {}
        self.calls = []


@pytest.fixture
def kernel(monkeypatch):
    fake = FakeKernel()

    @contextlib.contextmanager
    def netlink(netns=None):
        yield fake

    def read_link(ipr, name):
        found = fake.links.get(name)
        return dict(found) if found else None

    def set_link(ipr, name, **changes):
        fake.calls.append(("set", name, {k: v for k, v in changes.items() if v is not None}))

    monkeypatch.setattr(_link, "netlink", netlink)
    monkeypatch.setattr(_link, "netns_exists", lambda name: True)
    monkeypatch.setattr(_link, "read_link", read_link)
    monkeypatch.setattr(_link, "set_link", set_link)
    monkeypatch.setattr(_link, "delete_link", lambda ipr, name: fake.calls.append(("del", name, {})))
    monkeypatch.setattr(_link_kinds, "add_bridge", lambda ipr, name, **kw: fake.calls.append(("add", name, kw)))
    # the bridge's own sysctls (arp_ignore): 0, as the kernel makes them
    monkeypatch.setattr(_link_kinds, "read_netns_sysctls", lambda netns, keys: dict((key, "0") for key in keys))
    monkeypatch.setattr(_link_kinds, "write_netns_sysctls", lambda netns, values: fake.calls.append(("sysctl", netns, values)))
    return fake


def run(args, capsys):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            bridge.main()
    return json.loads(capsys.readouterr().out)


def existing(alias="qemulab:seed", up=True, mtu=1500, group=0):
    return {"name": "br1", "index": 2, "kind": "bridge", "alias": alias, "master": "", "mtu": mtu, "up": up,
            "addresses": [], "stp": False, "mac": None, "peer_index": None, "tun": None, "group": group}


def test_check_mode_reports_creation_and_calls_nothing(kernel, capsys):
    result = run({"name": "br1", "netns": "ns1", "lab": "seed", "_ansible_check_mode": True,
                  "_ansible_diff": True}, capsys)
    assert result["changed"] and result["changes"] == ["state", "alias", "up"]
    assert result["diff"]["before"] == {"state": "absent"}
    assert result["diff"]["after"]["alias"] == "qemulab:seed" and result["after"]["kind"] == "bridge"
    assert kernel.calls == []


def test_creation_adds_marks_then_brings_up(kernel, capsys):
    result = run({"name": "br1", "netns": "ns1", "lab": "seed"}, capsys)
    assert result["changed"]
    # made with the pending mark in the create request; alias and group 0 in one request after
    assert kernel.calls == [("add", "br1", {"group": pending_group("seed")}),
                            ("set", "br1", {"alias": "qemulab:seed", "group": 0}), ("set", "br1", {"up": True})]


def test_a_bridge_left_with_the_pending_mark_is_marked_not_refused(kernel, capsys):
    """A run killed between the create request and the alias leaves the bridge with the lab's pending group."""
    kernel.links["br1"] = existing(alias=None, group=pending_group("seed"))
    result = run({"name": "br1", "netns": "ns1", "lab": "seed"}, capsys)
    assert result["changed"] and result["changes"] == ["group", "alias"]
    assert kernel.calls == [("set", "br1", {"alias": "qemulab:seed", "group": 0})]
    # another lab's pending mark, or none, is still not ours
    kernel.calls[:] = []
    kernel.links["br1"] = existing(alias=None, group=pending_group("other"))
    result = run({"name": "br1", "netns": "ns1", "lab": "seed"}, capsys)
    assert result["failed"] and "belongs to no qemulab lab" in result["msg"] and kernel.calls == []
    kernel.links["br1"] = existing(alias=None, group=pending_group("seed"))
    result = run({"name": "br1", "netns": "ns1", "lab": "seed", "state": "absent"}, capsys)
    assert result["changed"] and result["changes"] == ["state"]


def test_arp_ignore_is_compared_and_written_after_the_bridge_exists(kernel, capsys):
    result = run({"name": "br1", "netns": "ns1", "lab": "seed", "arp_ignore": 1}, capsys)
    assert result["changed"] and "arp_ignore" in result["changes"]
    assert kernel.calls[0] == ("add", "br1", {"group": pending_group("seed")})
    assert ("sysctl", "ns1", {"net.ipv4.conf.br1.arp_ignore": 1}) in kernel.calls
    kernel.calls[:] = []
    kernel.links["br1"] = existing()
    result = run({"name": "br1", "netns": "ns1", "lab": "seed", "arp_ignore": 1}, capsys)
    assert result["changes"] == ["arp_ignore"] and result["before"]["arp_ignore"] == 0
    assert kernel.calls == [("set", "br1", {}), ("sysctl", "ns1", {"net.ipv4.conf.br1.arp_ignore": 1})]
    result = run({"name": "br1", "netns": "ns1", "lab": "seed"}, capsys)
    assert not result["changed"]


def test_matching_bridge_is_unchanged(kernel, capsys):
    kernel.links["br1"] = existing()
    result = run({"name": "br1", "netns": "ns1", "lab": "seed", "mtu": 1500}, capsys)
    assert not result["changed"] and kernel.calls == []


def test_foreign_bridge_fails_naming_it(kernel, capsys):
    kernel.links["br1"] = existing(alias=None)
    result = run({"name": "br1", "netns": "ns1", "lab": "seed", "state": "absent"}, capsys)
    assert result["failed"] and result["msg"].startswith("bridge br1 in namespace ns1 exists and belongs to no qemulab")
    assert kernel.calls == []


def test_bad_name_fails_before_reading(kernel, capsys):
    result = run({"name": "bridge-name-too-long", "lab": "seed"}, capsys)
    assert result["failed"] and "bridge bridge-name-too-long: name:" in result["msg"] and "at most 15" in result["msg"]
