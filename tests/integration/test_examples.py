"""The example playbooks in playbooks/examples/ run as documented.

host_side_two_segments.yml builds real bridges, taps and a veth pair in a namespace the playbook creates (given a
unique name here) and tears them down with the teardown role. Every address stays inside that namespace.
"""
import os
import secrets
import shutil

import pytest
from pyroute2 import IPRoute, NetNS
from pyroute2 import netns as pr_netns

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO_ROOT, "playbooks", "examples")
HOST_SIDE = os.path.join(EXAMPLES, "host_side_two_segments.yml")


@pytest.fixture
def example_lab():
    """A unique lab and namespace name for the example; whatever the run leaves is removed afterwards."""
    suffix = secrets.token_hex(3)
    lab, netns = "qltex" + suffix, "qltexns" + suffix
    try:
        yield lab, netns
    finally:
        if netns in pr_netns.listnetns():
            pr_netns.remove(netns)
        shutil.rmtree(os.path.join("/run/qemulab", lab), ignore_errors=True)


def links(netns):
    with NetNS(netns) as ns:
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ns.get_links()}
        result = {}
        for m in ns.get_links():
            info = m.get_attr("IFLA_LINKINFO")
            result[m.get_attr("IFLA_IFNAME")] = {
                "kind": info.get_attr("IFLA_INFO_KIND") if info else None,
                "master": names.get(m.get_attr("IFLA_MASTER")),
                "alias": m.get_attr("IFLA_IFALIAS"),
                "up": bool(m["flags"] & 1),
            }
        addresses = {(names[a["index"]], a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ns.get_addr(family=2)}
        routes = {(r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY")) for r in ns.get_routes(family=2)
                  if r.get_attr("RTA_GATEWAY")}
    return result, addresses, routes


def root_links_marked(lab):
    with IPRoute() as ipr:
        return [m.get_attr("IFLA_IFNAME") for m in ipr.get_links() if m.get_attr("IFLA_IFALIAS") == "qemulab:" + lab]


def test_show_plan_prints_the_seed_plan_and_changes_nothing(playbook):
    result = playbook(os.path.join(EXAMPLES, "show_plan.yml"), inventory=os.path.join(REPO_ROOT, "inventories", "seed"))
    assert result.rc == 0 and result.changed() == 0, result
    shown = result.result("Show the segments, taps and host ports")["msg"]
    assert shown["netns"] == "qemulab-seed"
    assert [b["name"] for b in shown["bridges"]] == ["br1", "br2", "br3", "br4", "br5", "br6"]


def test_show_plan_lists_every_problem_of_a_broken_inventory(playbook):
    broken = os.path.join(REPO_ROOT, "tests", "bad_inventories", "many_problems_at_once")
    result = playbook(os.path.join(EXAMPLES, "show_plan.yml"), inventory=broken)
    assert result.rc != 0
    message = "\n".join(result.failure_messages())
    assert "problem(s):" in message and message.count("\n  - ") >= 2, message


def test_host_side_example_builds_in_its_namespace_and_tears_down(playbook, example_lab):
    lab, netns = example_lab
    names = {"example_lab_name": lab, "example_netns": netns}

    kept = playbook(HOST_SIDE, extra_vars=dict(names, example_keep=True))
    assert kept.rc == 0, kept
    assert netns in pr_netns.listnetns()
    found, addresses, routes = links(netns)
    mark = "qemulab:" + lab
    for bridge in ("exbr1", "exbr2"):
        assert found[bridge]["kind"] == "bridge" and found[bridge]["alias"] == mark and found[bridge]["up"]
    for tap, bridge in (("extap11", "exbr1"), ("extap12", "exbr1"), ("extap21", "exbr2"), ("extap22", "exbr2")):
        assert found[tap]["kind"] == "tun" and found[tap]["master"] == bridge and found[tap]["alias"] == mark
    assert found["exv0"]["master"] == "exbr1" and found["exv0"]["kind"] == "veth"
    assert ("exv1", "10.77.1.9", 24) in addresses
    assert ("10.77.2.0", 24, "10.77.1.1") in routes
    assert root_links_marked(lab) == []

    again = playbook(HOST_SIDE, extra_vars=dict(names, example_keep=True))
    assert again.rc == 0 and again.changed() == 0, again

    removed = playbook(HOST_SIDE, extra_vars=names, tags="teardown")
    assert removed.rc == 0, removed
    assert netns not in pr_netns.listnetns()
    assert not os.path.exists(os.path.join("/run/qemulab", lab))

    # the plain run builds and removes in one go, leaving nothing
    once = playbook(HOST_SIDE, extra_vars=names)
    assert once.rc == 0, once
    assert netns not in pr_netns.listnetns()
    assert not os.path.exists(os.path.join("/run/qemulab", lab))
