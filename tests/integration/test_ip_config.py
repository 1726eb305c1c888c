"""ip_config on real interfaces inside a throwaway namespace: apply, idempotence, check mode, purge scope."""
import socket

import pytest
from pyroute2 import NetNS

pytestmark = pytest.mark.integration

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: ip_config
      qemulab.network.ip_config:
        netns: "{{ ns }}"
        interfaces: "{{ interfaces }}"
        routes: "{{ routes }}"
"""


@pytest.fixture
def links(netns):
    """Two veth pairs in the namespace: lan0/lan0p (managed) and keep0/keep0p (not listed, must be left alone)."""
    with NetNS(netns) as ns:
        ns.link("add", ifname="lan0", kind="veth", peer="lan0p")
        ns.link("add", ifname="keep0", kind="veth", peer="keep0p")
        keep = ns.link_lookup(ifname="keep0")[0]
        ns.link("set", index=keep, state="up")
        ns.addr("add", index=keep, address="10.77.0.1", prefixlen=24)
        ns.route("add", dst="10.78.0.0/24", gateway="10.77.0.254")
    return netns


def state(netns):
    with NetNS(netns) as ns:
        addrs = sorted("%s %s/%d" % (ns.get_links(m["index"])[0].get_attr("IFLA_IFNAME"), m.get_attr("IFA_ADDRESS"),
                                     m["prefixlen"]) for m in ns.get_addr(family=socket.AF_INET))
        routes = sorted("%s/%d via %s" % (r.get_attr("RTA_DST") or "0.0.0.0", r["dst_len"], r.get_attr("RTA_GATEWAY"))
                        for r in ns.get_routes(family=socket.AF_INET, table=254) if r.get_attr("RTA_GATEWAY"))
    return addrs, routes


def test_ip_config_applies_only_the_difference_and_leaves_unlisted_interfaces_alone(links, playbook):
    want = {"ns": links, "interfaces": [{"name": "lan0", "addresses": ["10.20.20.2/24"]}],
            "routes": [{"to": "10.20.60.0/24", "via": "10.20.20.1"}, {"to": "default", "via": "10.20.20.1"}]}
    before = state(links)

    check = playbook(PLAY, want, check=True, diff=True)
    assert check.rc == 0, check
    assert check.result("ip_config")["changed"] is True
    assert state(links) == before, "check mode changed the namespace"

    first = playbook(PLAY, want, diff=True)
    assert first.rc == 0, first
    assert first.result("ip_config")["changed"] is True
    addrs, routes = state(links)
    assert "lan0 10.20.20.2/24" in addrs and "keep0 10.77.0.1/24" in addrs
    assert routes == ["0.0.0.0/0 via 10.20.20.1", "10.20.60.0/24 via 10.20.20.1", "10.78.0.0/24 via 10.77.0.254"]

    second = playbook(PLAY, want)
    assert second.rc == 0 and second.result("ip_config")["changed"] is False, second

    # A route dropped from the declaration disappears; the unlisted interface's route stays.
    want["routes"] = want["routes"][:1]
    third = playbook(PLAY, want)
    assert third.result("ip_config")["changed"] is True, third
    assert state(links)[1] == ["10.20.60.0/24 via 10.20.20.1", "10.78.0.0/24 via 10.77.0.254"]


def test_ip_config_names_a_missing_interface(links, playbook):
    res = playbook(PLAY, {"ns": links, "interfaces": [{"name": "eth9"}], "routes": []})
    assert res.rc != 0
    assert "eth9" in res.failure_messages()[0] and links in res.failure_messages()[0]


def test_ip_config_rejects_a_route_that_is_not_a_network(links, playbook):
    res = playbook(PLAY, {"ns": links, "interfaces": [{"name": "lan0"}],
                          "routes": [{"to": "10.20.60.1/24", "via": "10.20.20.1"}]})
    assert res.rc != 0 and "routes[0]" in res.failure_messages()[0]
