"""The seed's whole host side (bridges br1..br6, taps vport11..vport62 and vport13, host port veth0/veth1) built by
the netns, bridge, tap and veth modules in throwaway namespaces, read back over netlink.

Lab addresses live only in namespaces these tests create: the lab namespace (fixture `netns`) and a second one
for the host end veth1.
"""
import json
import os
import secrets
import subprocess
import time

import pytest
from pyroute2 import NetNS
from pyroute2 import netns as pr_netns


pytestmark = pytest.mark.integration

MARKER_DIR = "/run/qemulab/_netns"


def unique_name(prefix):
    return prefix + secrets.token_hex(3)


SEED_TAPS = [(bridge, "vport%d%d" % (bridge, port)) for bridge in range(1, 7) for port in (1, 2)] + [(1, "vport13")]

HOST_SIDE = """
- name: Seed host side
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Lab namespace
      qemulab.network.netns:
        name: "{{ ns }}"
        lab: "{{ lab }}"
        force: "{{ adopt_ns | default(false) }}"
    - name: Bridges
      qemulab.network.bridge:
        name: "br{{ item }}"
        netns: "{{ ns }}"
        lab: "{{ lab }}"
        mtu: "{{ bridge_mtu | default(omit) }}"
      loop: [1, 2, 3, 4, 5, 6]
    - name: Taps
      qemulab.network.tap:
        name: "{{ item.1 }}"
        bridge: "br{{ item.0 }}"
        netns: "{{ ns }}"
        lab: "{{ lab }}"
      loop: "{{ taps }}"
    - name: Host port
      qemulab.network.veth:
        name: veth0
        netns: "{{ ns }}"
        bridge: br1
        peer: veth1
        peer_netns: "{{ host_ns }}"
        peer_addresses: ["{{ host_address | default('10.20.10.4/24') }}"]
        lab: "{{ lab }}"
"""

TEARDOWN = """
- name: Seed host side, removed
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Host port gone
      qemulab.network.veth:
        name: veth0
        netns: "{{ ns }}"
        lab: "{{ lab }}"
        state: absent
    - name: Taps gone
      qemulab.network.tap:
        name: "{{ item.1 }}"
        netns: "{{ ns }}"
        lab: "{{ lab }}"
        state: absent
      loop: "{{ taps }}"
    - name: Bridges gone
      qemulab.network.bridge:
        name: "br{{ item }}"
        netns: "{{ ns }}"
        lab: "{{ lab }}"
        state: absent
      loop: [1, 2, 3, 4, 5, 6]
"""

ONE_OBJECT = """
- name: One object
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The object
      qemulab.network.{{ module }}:
        name: "{{ name }}"
        netns: "{{ ns }}"
        lab: "{{ lab }}"
        state: "{{ state }}"
        force: "{{ force | default(false) }}"
"""


def links(ns):
    """Every interface of namespace `ns` with what the modules manage, read over netlink."""
    out = {}
    with NetNS(ns) as ipr:
        names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in ipr.get_links()}
        for msg in ipr.get_links():
            info = msg.get_attr("IFLA_LINKINFO")
            addresses = sorted("%s/%d" % (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                               for a in ipr.get_addr(index=msg["index"])
                               if not a.get_attr("IFA_ADDRESS").startswith("fe80:"))
            out[msg.get_attr("IFLA_IFNAME")] = {
                "kind": info.get_attr("IFLA_INFO_KIND") if info is not None else None,
                "alias": msg.get_attr("IFLA_IFALIAS"),
                "master": names.get(msg.get_attr("IFLA_MASTER")),
                "mtu": msg.get_attr("IFLA_MTU"),
                "up": bool(msg["flags"] & 1),
                "addresses": addresses,
            }
    return out


@pytest.fixture
def host_ns():
    """A second throwaway namespace standing in for the host side of the host port (veth1)."""
    name = unique_name("qltho")
    pr_netns.create(name)
    try:
        yield name
    finally:
        if name in pr_netns.listnetns():
            pr_netns.remove(name)


@pytest.fixture
def lab():
    return unique_name("t")


@pytest.fixture
def foreign(netns):
    """A bridge and a tap with seed-like names made without the lab's mark, as someone else's would be."""
    with NetNS(netns) as ipr:
        ipr.link("add", ifname="br7", kind="bridge")
        ipr.link("add", ifname="vport71", kind="tuntap", mode="tap", ifr={"no_pi": True})
        ipr.link("set", index=ipr.link_lookup(ifname="vport71")[0], master=ipr.link_lookup(ifname="br7")[0])
    return ("br7", "vport71")


def seed_vars(netns, host_ns, lab, **extra):
    variables = {"ns": netns, "host_ns": host_ns, "lab": lab, "taps": [list(t) for t in SEED_TAPS],
                 "adopt_ns": True}
    variables.update(extra)
    return variables


def assert_seed_host_side(netns, host_ns, lab):
    alias = "qemulab:" + lab
    lab_links = links(netns)
    for number in range(1, 7):
        bridge = lab_links["br%d" % number]
        assert (bridge["kind"], bridge["alias"], bridge["up"]) == ("bridge", alias, True), bridge
    for number, tap in SEED_TAPS:
        found = lab_links[tap]
        assert (found["kind"], found["master"], found["alias"], found["up"]) == ("tun", "br%d" % number, alias,
                                                                                 True), (tap, found)
    assert (lab_links["veth0"]["kind"], lab_links["veth0"]["master"], lab_links["veth0"]["up"]) == ("veth", "br1",
                                                                                                    True)
    assert "veth1" not in lab_links
    host_links = links(host_ns)
    assert host_links["veth1"]["addresses"] == ["10.20.10.4/24"]
    assert (host_links["veth1"]["alias"], host_links["veth1"]["up"]) == (alias, True)


@pytest.fixture
def drop_marker(netns):
    """The lab namespace's marker goes even when a test fails before the lab deletes the namespace."""
    yield
    marker = os.path.join(MARKER_DIR, netns + ".owner")
    if os.path.exists(marker):
        os.unlink(marker)


def test_seed_host_side_build_rerun_check_teardown(playbook, netns, host_ns, lab, foreign, drop_marker):
    variables = seed_vars(netns, host_ns, lab)

    built = playbook(HOST_SIDE, variables, diff=True)
    assert built.rc == 0 and built.failed() == 0, built
    assert built.result("Bridges")["changed"] and built.result("Taps")["changed"], built
    assert_seed_host_side(netns, host_ns, lab)
    assert os.path.exists(os.path.join(MARKER_DIR, netns + ".owner"))

    again = playbook(HOST_SIDE, variables)
    assert again.rc == 0 and again.changed() == 0, again

    # Desired state changes (bridge MTU, the host address), checked only: reported, not done.
    state_before = (links(netns), links(host_ns))
    checked = playbook(HOST_SIDE, seed_vars(netns, host_ns, lab, bridge_mtu=1400, host_address="10.20.10.5/24"),
                       check=True, diff=True)
    assert checked.rc == 0, checked
    assert checked.result("Bridges")["changed"] and checked.result("Host port")["changed"], checked
    assert checked.result("Host port")["after"]["peer"]["addresses"] == ["10.20.10.5/24"]
    assert not checked.result("Taps")["changed"]
    assert (links(netns), links(host_ns)) == state_before

    gone = playbook(TEARDOWN, variables)
    assert gone.rc == 0 and gone.failed() == 0, gone
    left = links(netns)
    assert sorted(left) == ["br7", "lo", "vport71"], left
    assert left["vport71"]["master"] == "br7"
    assert "veth1" not in links(host_ns)

    again_gone = playbook(TEARDOWN, variables)
    assert again_gone.rc == 0 and again_gone.changed() == 0, again_gone

    # The namespace was adopted by the lab, so the lab may delete it (and what is still in it).
    dropped = playbook(NETNS_ONLY, {"ns": netns, "lab": lab, "state": "absent"})
    assert dropped.rc == 0 and dropped.changed() == 1, dropped
    assert netns not in pr_netns.listnetns()
    assert not os.path.exists(os.path.join(MARKER_DIR, netns + ".owner"))


@pytest.mark.parametrize("module,name", [("bridge", "br7"), ("tap", "vport71")])
def test_foreign_objects_are_refused_unless_forced(playbook, netns, lab, foreign, module, name):
    one_object = ONE_OBJECT.replace("{{ module }}", module)
    base = {"name": name, "ns": netns, "lab": lab}
    for state in ("absent", "present"):
        refused = playbook(one_object, dict(base, state=state), expect_failure=True)
        assert refused.failed() == 1, refused
        message = refused.failure_messages()[0]
        assert "%s %s in namespace %s" % (module, name, netns) in message and "force: true" in message, message
        assert links(netns)[name]["alias"] is None

    adopted = playbook(one_object, dict(base, state="present", force=True))
    assert adopted.rc == 0 and adopted.changed() == 1, adopted
    assert links(netns)[name]["alias"] == "qemulab:" + lab
    removed = playbook(one_object, dict(base, state="absent"))
    assert removed.rc == 0 and removed.changed() == 1, removed
    assert name not in links(netns)


NETNS_ONLY = """
- name: Namespace
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The namespace
      qemulab.network.netns:
        name: "{{ ns }}"
        lab: "{{ lab }}"
        state: "{{ state }}"
"""


def test_netns_lifecycle_leaves_nothing(playbook, lab):
    name = unique_name("qltnm")
    other_lab = lab + "x"
    try:
        made = playbook(NETNS_ONLY, {"ns": name, "lab": lab, "state": "present"})
        assert made.rc == 0 and made.changed() == 1, made
        assert name in pr_netns.listnetns()
        kept = playbook(NETNS_ONLY, {"ns": name, "lab": lab, "state": "present"})
        assert kept.changed() == 0, kept

        for state in ("present", "absent"):
            refused = playbook(NETNS_ONLY, {"ns": name, "lab": other_lab, "state": state}, expect_failure=True)
            assert refused.failed() == 1 and "belongs to lab %s" % lab in refused.failure_messages()[0], refused

        checked = playbook(NETNS_ONLY, {"ns": name, "lab": lab, "state": "absent"}, check=True)
        assert checked.changed() == 1 and name in pr_netns.listnetns(), checked

        removed = playbook(NETNS_ONLY, {"ns": name, "lab": lab, "state": "absent"})
        assert removed.rc == 0 and removed.changed() == 1, removed
        assert name not in pr_netns.listnetns()
        assert not os.path.exists(os.path.join(MARKER_DIR, name + ".owner"))
        still_gone = playbook(NETNS_ONLY, {"ns": name, "lab": lab, "state": "absent"})
        assert still_gone.changed() == 0, still_gone
    finally:
        if name in pr_netns.listnetns():
            pr_netns.remove(name)


def test_marker_of_a_replaced_namespace_does_not_count(playbook, lab):
    """Someone deletes our namespace and makes another of the same name: it is not ours."""
    name = unique_name("qltnr")
    try:
        assert playbook(NETNS_ONLY, {"ns": name, "lab": lab, "state": "present"}).changed() == 1
        pr_netns.remove(name)
        pr_netns.create(name)
        refused = playbook(NETNS_ONLY, {"ns": name, "lab": lab, "state": "absent"}, expect_failure=True)
        assert refused.failed() == 1 and "no qemulab lab" in refused.failure_messages()[0], refused
        assert name in pr_netns.listnetns()
    finally:
        if name in pr_netns.listnetns():
            pr_netns.remove(name)
        marker = os.path.join(MARKER_DIR, name + ".owner")
        if os.path.exists(marker):
            os.unlink(marker)
        try:
            os.rmdir(MARKER_DIR)   # as the product does once no lab has a marker there; another lab's stays
        except OSError:
            pass


def test_check_mode_on_nothing_reports_everything_and_makes_nothing(playbook, lab):
    """Check mode of the whole host side before any namespace exists: every task changed, nothing made."""
    ns, host = unique_name("qltnc"), unique_name("qltnc")
    checked = playbook(HOST_SIDE, seed_vars(ns, host, lab, adopt_ns=False), check=True)
    assert checked.rc == 0 and checked.failed() == 0, checked
    for task in ("Lab namespace", "Bridges", "Taps", "Host port"):
        assert checked.result(task)["changed"], task
    assert checked.result("Host port")["after"]["peer"]["addresses"] == ["10.20.10.4/24"]
    assert ns not in pr_netns.listnetns() and host not in pr_netns.listnetns()
    assert not os.path.exists(os.path.join(MARKER_DIR, ns + ".owner"))


BAD_INPUT = """
- name: Bad input
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Name too long
      qemulab.network.tap: {name: vport1234567890123, netns: "{{ ns }}", lab: "{{ lab }}"}
      ignore_errors: true
    - name: Bridge missing
      qemulab.network.tap: {name: vport11, bridge: br9, netns: "{{ ns }}", lab: "{{ lab }}"}
      ignore_errors: true
    - name: Namespace missing
      qemulab.network.bridge: {name: br1, netns: "{{ ns }}x", lab: "{{ lab }}"}
      ignore_errors: true
    - name: Bad address
      qemulab.network.veth: {name: veth0, peer: veth1, peer_addresses: [10.20.10.4], netns: "{{ ns }}", lab: "{{ lab }}"}
      ignore_errors: true
"""


def test_bad_input_fails_naming_object_field_and_fix(playbook, netns, lab):
    ran = playbook(BAD_INPUT, {"ns": netns, "lab": lab})
    assert ran.rc == 0, ran
    assert "tap vport1234567890123: name:" in ran.result("Name too long")["msg"]
    assert "at most 15" in ran.result("Name too long")["msg"]
    assert ("tap vport11: bridge br9 does not exist in namespace %s; create it first with qemulab.network.bridge"
            % netns) in ran.result("Bridge missing")["msg"]
    assert ("bridge br1: namespace %sx does not exist; create it first with qemulab.network.netns" % netns
            in ran.result("Namespace missing")["msg"])
    assert "peer_addresses[0]" in ran.result("Bad address")["msg"] and "prefix length" in ran.result("Bad address")["msg"]
    assert sorted(links(netns)) == ["lo"]


VETH_ONLY = """
- name: A veth pair
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The pair
      qemulab.network.veth:
        name: vm0
        peer: vm1
        netns: "{{ ns }}"
        peer_netns: "{{ peer_ns | default(omit) }}"
        peer_addresses: "{{ peer_addresses | default(omit) }}"
        lab: "{{ lab }}"
"""


def test_veth_end_moves_into_its_declared_namespace(playbook, netns, host_ns, lab):
    together = playbook(VETH_ONLY, {"ns": netns, "lab": lab})
    assert together.rc == 0 and together.changed() == 1, together
    assert {"vm0", "vm1"} <= set(links(netns))

    declared = {"ns": netns, "peer_ns": host_ns, "peer_addresses": ["10.20.30.4/24"], "lab": lab}
    moved = playbook(VETH_ONLY, declared)
    assert moved.rc == 0, moved
    assert {"peer_netns", "peer_addresses", "peer_up"} <= set(moved.result("The pair")["changes"])
    assert "vm1" not in links(netns)
    assert links(host_ns)["vm1"]["addresses"] == ["10.20.30.4/24"]
    assert links(host_ns)["vm1"]["alias"] == "qemulab:" + lab
    again = playbook(VETH_ONLY, declared)
    assert again.changed() == 0, again


def _in(ns, *argv, **kwargs):
    return subprocess.run(["ip", "netns", "exec", ns] + list(argv), capture_output=True, text=True, **kwargs)


def _arp_replies_seen_by_a_guest(lab_ns, guest_ns, target):
    """The ARP replies to one request for `target` from `guest_ns` on the guest's port: the MACs they announce."""
    for ns in (guest_ns, lab_ns):  # a lab-side probe would teach the guest the answer without a request
        _in(ns, "ip", "neigh", "flush", "all")
    capture = subprocess.Popen(["ip", "netns", "exec", lab_ns, "timeout", "5", "tcpdump", "-p", "-enli", "g0",
                                "arp and arp[6:2] == 2"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1.5)
    _in(guest_ns, "ping", "-c", "1", "-W", "1", target)
    out = capture.communicate()[0]
    answer = "Reply %s is-at " % target
    return sorted(line.split(answer)[1].split(",")[0] for line in out.splitlines() if answer in line)


def test_bridge_device_answers_arp_only_for_its_own_addresses(playbook, netns, host_ns, lab):
    """A segment's bridge with the kernel's default arp_ignore 0 answers a guest's ARP for a host port's address
    too (two replies; a guest that keeps the bridge's MAC loses its replies to a socket bound to the port, as a
    restarted router did in the fault suite). arp_ignore: 1, as host_prep sets it, leaves only the port's answer."""
    task = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Bridge
      qemulab.network.bridge:
        name: brx
        netns: {ns}
        lab: {lab}
        arp_ignore: {value}
""".format(ns=netns, lab=lab, value="\"{{ value }}\"")
    first = playbook(task, extra_vars={"value": 1}, check=True, diff=True)
    assert first.rc == 0 and first.result("Bridge")["changed"], first
    made = playbook(task, extra_vars={"value": 1})
    assert made.rc == 0 and made.result("Bridge")["after"]["arp_ignore"] == 1, made
    assert _in(netns, "cat", "/proc/sys/net/ipv4/conf/brx/arp_ignore").stdout.strip() == "1"
    again = playbook(task, extra_vars={"value": 1})
    assert again.rc == 0 and not again.result("Bridge")["changed"], again

    # A host port (hp0 in the bridge, hp1 holding the address) and a guest (g1 in its own namespace, g0 its port).
    for argv in (["ip", "link", "add", "hp0", "type", "veth", "peer", "name", "hp1"],
                 ["ip", "link", "set", "hp0", "master", "brx", "up"],
                 ["ip", "address", "add", "10.88.2.9/24", "dev", "hp1"], ["ip", "link", "set", "hp1", "up"],
                 ["ip", "link", "set", "brx", "up"],
                 ["ip", "link", "add", "g0", "type", "veth", "peer", "name", "g1", "netns", host_ns],
                 ["ip", "link", "set", "g0", "master", "brx", "up"]):
        _in(netns, *argv, check=True)
    _in(host_ns, "ip", "address", "add", "10.88.2.1/24", "dev", "g1", check=True)
    _in(host_ns, "ip", "link", "set", "g1", "up", check=True)
    port_mac = _in(netns, "cat", "/sys/class/net/hp1/address").stdout.strip()

    assert _arp_replies_seen_by_a_guest(netns, host_ns, "10.88.2.9") == [port_mac]
    assert playbook(task, extra_vars={"value": 0}).rc == 0
    bridge_mac = _in(netns, "cat", "/sys/class/net/brx/address").stdout.strip()
    assert bridge_mac != port_mac
    assert _arp_replies_seen_by_a_guest(netns, host_ns, "10.88.2.9") == sorted([port_mac, bridge_mac])


def test_links_makes_many_objects_as_their_modules_do(playbook, netns, lab, foreign):
    """links: the seed's bridges and taps in one task; the same marks and results as bridge/tap; a foreign bridge
    fails by name, its tap with it, and nothing is made (all planned first); check mode and a rerun change nothing."""
    nobody = 65534
    bridges = [{"name": "br%d" % n, "arp_ignore": 1} for n in (1, 2)] + [{"name": "br7"}]
    taps = [{"name": "vport11", "bridge": "br1"}, {"name": "vport21", "bridge": "br2", "owner": "nobody"},
            {"name": "vport72", "bridge": "br7"}]
    task = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Links
      qemulab.network.links:
        netns: %s
        lab: %s
        bridges: %s
        taps: %s
""" % (netns, lab, json.dumps(bridges), json.dumps(taps))
    planned = playbook(task, check=True, diff=True, expect_failure=True)  # br7 is someone else's, even in check mode
    assert sorted(planned.result("Links")["diff"]["after"]) == ["br1", "br2", "vport11", "vport21"], planned
    assert set(links(netns)) - {"lo"} == {"br7", "vport71"}

    refused = playbook(task, expect_failure=True)
    res = refused.result("Links")
    assert "bridge br7" in res["msg"] and "tap vport72: its bridge br7 failed" in res["msg"], res
    # every object is planned before any is made: the foreign br7 fails the task with the namespace as it was
    assert set(links(netns)) - {"lo"} == {"br7", "vport71"}

    good = task.replace(json.dumps(bridges), json.dumps(bridges[:2])).replace(json.dumps(taps), json.dumps(taps[:2]))
    made = playbook(good)
    res = made.result("Links")
    assert made.rc == 0 and res["changed"], made
    got = links(netns)
    assert {"br1", "br2", "vport11", "vport21"} <= set(got) and "vport72" not in got
    for name, master in (("vport11", "br1"), ("vport21", "br2")):
        assert (got[name]["alias"], got[name]["master"], got[name]["up"]) == ("qemulab:" + lab, master, True)
    owners = [r["after"]["owner"] for r in res["taps"]]
    assert owners == [None, nobody]
    assert _in(netns, "cat", "/proc/sys/net/ipv4/conf/br2/arp_ignore").stdout.strip() == "1"

    again = playbook(good)
    assert again.rc == 0 and not again.result("Links")["changed"], again


def test_nothing_of_the_tests_remains():
    """Runs last in this file: no test namespace, marker or root-namespace interface of ours is left behind."""
    leftovers = [ns for ns in pr_netns.listnetns() if ns.startswith(("qltho", "qltnm", "qltnr", "qltnc"))]
    assert leftovers == []
    markers = [m for m in (os.listdir(MARKER_DIR) if os.path.isdir(MARKER_DIR) else [])
               if m.startswith(("qltns", "qltho", "qltnm", "qltnr"))]
    assert markers == []
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ours = [msg.get_attr("IFLA_IFNAME") for msg in ipr.get_links()
                if (msg.get_attr("IFLA_IFALIAS") or "").startswith("qemulab:t")]
    assert ours == []
