"""Unit tests (kernel, QEMU and tc replaced by fakes): nic_links decides a NIC's link change from the tap and from
what it recorded for the running QEMU, acts QEMU first then the tap, changes nothing on a second run, redoes the
QEMU side after a restart, and puts netem on the tap only where the host kernel has it."""
import contextlib
import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.qemulab.network.plugins.modules import nic_links

pytestmark = pytest.mark.unit


class Fake:
    def __init__(self):
        self.taps = {"tb1": True}
        self.calls = []
        self.files = {}
        self.pid = 4242
        self.host_netem = False
        self.qdisc = "[]"


@pytest.fixture
def fake(monkeypatch):
    f = Fake()

    @contextlib.contextmanager
    def netlink(netns=None):
        yield None

    class QMP:
        def __init__(self, path, timeout=5, peer_check=None):
            assert peer_check(f.pid, 0, 0) and not peer_check(1, 0, 0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def command(self, execute, **arguments):
            f.calls.append(("qmp", execute, arguments))

    def set_link(ipr, name, up=None):
        f.calls.append(("tap", name, up))
        f.taps[name] = up

    def run_command(self, argv, **kw):
        f.calls.append(("run", argv))
        return 0, f.qdisc if "show" in argv else "", ""

    monkeypatch.setattr(nic_links, "netlink", netlink)
    monkeypatch.setattr(nic_links, "get_link", lambda ipr, name: {"up": f.taps[name]} if name in f.taps else None)
    monkeypatch.setattr(nic_links, "set_link", set_link)
    monkeypatch.setattr(nic_links, "QMPClient", QMP)
    monkeypatch.setattr(nic_links, "find_qemus", lambda run_dir: [f.pid] if f.pid else [])
    monkeypatch.setattr(nic_links, "read_json", lambda path, owner=None: json.loads(f.files.get(path, "{}")))
    monkeypatch.setattr(nic_links, "write_json_atomic", lambda path, data, mode: f.files.update({path: json.dumps(data)}))
    monkeypatch.setattr(nic_links._netem, "host_has_netem", lambda *a, **kw: (f.host_netem, "probed"))
    monkeypatch.setattr(nic_links.AnsibleModule, "run_command", run_command)
    return f


def run(capsys, link="down", netem=None, check=False):
    args = {"lab": "lk", "links": [{"vm": "r1", "dev": "eth1", "netdev": "net1", "tap": "tb1", "netns": "lkns",
                                    "link": link, "netem": netem or {}}],
            "_ansible_check_mode": check, "_ansible_diff": True}
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            nic_links.main()
    return json.loads(capsys.readouterr().out)


def test_down_is_qemu_first_then_the_tap_and_a_second_run_changes_nothing(fake, capsys):
    result = run(capsys)
    assert result["changed"] and result["diff"] == {"before": {"r1:eth1": {"link": "up"}},
                                                    "after": {"r1:eth1": {"link": "down"}}}
    assert fake.calls == [("qmp", "set_link", {"name": "net1", "up": False}), ("tap", "tb1", False)]
    assert json.loads(fake.files["/run/qemulab/lk/links-r1.json"]) == {"pid": 4242, "down": {"net1": True}}
    fake.calls[:] = []
    again = run(capsys)
    assert again["changed"] is False and fake.calls == []
    assert again["links"] == [{"vm": "r1", "dev": "eth1", "link": "down", "netem_where": "guest", "netem": "none"}]


def test_a_restarted_qemu_is_up_again_and_is_pulled_again(fake, capsys):
    run(capsys)
    fake.calls[:] = []
    fake.pid = 5151  # the tap stayed down, but this QEMU started with its link up
    result = run(capsys)
    assert result["changed"] and result["diff"]["before"] == {"r1:eth1": {"link": "tap down only"}}
    assert fake.calls[0] == ("qmp", "set_link", {"name": "net1", "up": False})


def test_up_is_the_tap_first_then_qemu(fake, capsys):
    run(capsys)
    fake.calls[:] = []
    assert run(capsys, link="up")["changed"]
    assert fake.calls == [("tap", "tb1", True), ("qmp", "set_link", {"name": "net1", "up": True})]
    assert json.loads(fake.files["/run/qemulab/lk/links-r1.json"])["down"] == {}


def test_check_mode_changes_nothing_even_before_the_tap_exists(fake, capsys):
    assert run(capsys, check=True)["changed"] and fake.calls == [] and fake.files == {}
    fake.taps = {}
    assert run(capsys, check=True)["changed"] and fake.calls == []
    assert "does not exist" in run(capsys)["msg"]


def test_netem_goes_on_the_tap_only_where_the_host_kernel_has_it(fake, capsys):
    result = run(capsys, link="up", netem={"delay": 40000})
    assert result["changed"] is False and result["links"][0]["netem_where"] == "guest" and fake.calls == []
    fake.host_netem = True
    result = run(capsys, link="up", netem={"delay": 40000})
    assert result["changed"] and result["links"][0]["netem_where"] == "host"
    assert fake.calls == [("run", ["tc", "-n", "lkns", "-j", "qdisc", "show", "dev", "tb1"]),
                          ("run", ["tc", "-n", "lkns", "qdisc", "replace", "dev", "tb1", "root", "netem", "delay",
                                   "40ms"])]
    assert result["diff"]["after"]["r1:eth1"] == {"link": "up", "netem": "delay 40ms"}
    fake.calls[:] = []
    fake.qdisc = json.dumps([{"kind": "netem", "root": True, "options": {"delay": {"delay": 0.04, "jitter": 0}}}])
    assert run(capsys, link="up", netem={"delay": 40000})["changed"] is False
    assert run(capsys, link="up")["changed"] and fake.calls[-1] == ("run", ["tc", "-n", "lkns", "qdisc", "del", "dev",
                                                                           "tb1", "root"])


def test_bad_netem_is_refused_naming_it(fake, capsys):
    result = run(capsys, link="up", netem={"loss": 250.0})
    assert result["failed"] and "netem: loss: '250%' is more than 100%" in result["msg"]
