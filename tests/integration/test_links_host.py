"""The host path of impairment: nic_links puts a NIC's netem on its tap in the lab's namespace when the lab host's
kernel takes netem, reads it back, changes nothing on a second run and removes it when no longer wanted.

It needs a kernel with sch_netem. Where `tc qdisc add dev lo root netem delay 1ms` fails in a fresh namespace (as on
a kernel built without it) the test is skipped with that command's own error; the guest path is test_links.py's.
"""
import json
import subprocess

import pytest

from conftest import run_playbook

pytestmark = pytest.mark.integration

PROBE = ["unshare", "--net", "--", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]


def _host_netem():
    proc = subprocess.run(PROBE, capture_output=True, text=True)
    return proc.returncode == 0, (proc.stderr or "").strip()


def _nic_links(netns, tap, netem, cache, check=False):
    play = """
- hosts: localhost
  gather_facts: false
  tasks:
    - qemulab.network.nic_links:
        lab: qltnotalab
        netem_cache: %s
        links: [{vm: vm0, dev: eth0, netdev: net0, tap: %s, netns: %s, netem: %s}]
      register: out
""" % (cache, tap, netns, json.dumps(netem))
    res = run_playbook(play, check=check, diff=True)
    assert res.rc == 0, res
    return res.result("qemulab.network.nic_links")


def test_netem_lives_on_the_tap_where_the_host_kernel_has_it(netns, tmp_path):
    works, error = _host_netem()
    if not works:
        pytest.skip("this lab host's kernel has no sch_netem: `%s` fails with %r" % (" ".join(PROBE[3:]), error))
    tap = "qlttap0"
    subprocess.run(["ip", "-n", netns, "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", tap, "up"], check=True)
    cache = str(tmp_path / "netem.json")
    first = _nic_links(netns, tap, {"delay": 40000, "loss": 2.0}, cache)
    assert first["changed"] and first["links"][0]["netem_where"] == "host", first
    assert first["diff"]["after"]["vm0:eth0"]["netem"] == "delay 40ms loss 2%"
    shown = json.loads(subprocess.run(["tc", "-n", netns, "-j", "qdisc", "show", "dev", tap], capture_output=True,
                                      text=True, check=True).stdout)
    assert shown[0]["kind"] == "netem" and shown[0]["options"]["delay"]["delay"] == pytest.approx(0.04)
    assert _nic_links(netns, tap, {"delay": 40000, "loss": 2.0}, cache)["changed"] is False
    assert _nic_links(netns, tap, {}, cache, check=True)["changed"] is True
    assert _nic_links(netns, tap, {}, cache)["changed"] is True
    shown = json.loads(subprocess.run(["tc", "-n", netns, "-j", "qdisc", "show", "dev", tap], capture_output=True,
                                      text=True, check=True).stdout)
    assert shown[0]["kind"] != "netem"
