"""The three kinds of NAT on a real router guest, through lab.yml, and rules leaving the running router with the
inventory:

    h1 (10.67.1.11) --+
                      +-- brin -- r1 (eth0 10.67.1.1 | eth1 10.67.2.1) -- brout -- o1 (10.67.2.20)
    h2 (10.67.1.12) --+

o1 answers every TCP connection with the peer address it sees (test_networks' peer server). First r1 masquerades brin out of eth1: h1 and h2
open connections from the same source ports, and r1's conntrack table shows every one leaving as 10.67.2.1 with the
ports that collided rewritten (PAT). Then the inventory says `pool` instead: each inside host leaves as one address
of 10.67.2.100-10.67.2.109 and the two got different ones (the kernel's pick is a hash of the source address; for
these two addresses it differs - the test reads it, it does not assume it). Last, vm_nat is emptied: the next run
removes r1's rules and pool addresses, and a rule and an address added by hand in the same table and on the same lo
stay. Every lab address lives in the lab's own namespace or inside the guests.
"""
import json
import os
import re
import secrets
import tempfile

import pytest

from conftest import VENV_PYTHON, run_playbook
from faultlab import GUEST_KEY, LAB_STATE_DIR, LAB_YML, NetworkLab, failure_text, free_port
from test_networks import _start_peer_server

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

INSIDE = {"h1": "10.67.1.11", "h2": "10.67.1.12"}
OUTSIDE_ROUTER, FAR = "10.67.2.1", "10.67.2.20"
POOL = ("10.67.2.100", "10.67.2.109")
SERVICE = 7000
NAT_TASK = "Keep the router's NAT rules and the addresses it translates onto as planned"
# one connection per source port given, each bound to that port, to test_networks' peer server (which answers
# "<hostname> <peer address>"); prints "<source port> <hostname> <peer address o1 saw>"
CLIENT = r"""
import socket, sys
for port in sys.argv[3:]:
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("", int(port)))
    c.settimeout(10)
    c.connect((sys.argv[1], int(sys.argv[2])))
    print(port, c.recv(100).decode().strip())
    c.close()
"""


class NatLab(NetworkLab):
    """Router r1 between two inside hosts and one outside host; vm_nat rewritten between runs (`set_nat`)."""

    VMS = ("r1", "h1", "h2", "o1")

    def __init__(self):
        suffix = secrets.token_hex(3)
        self.name, self.netns = "qltnat" + suffix, "qltnatns" + suffix
        self.dir = tempfile.mkdtemp(prefix="qemulab-nat-")
        self.inventory = os.path.join(self.dir, "inventory")
        self.ports = {vm: free_port() for vm in self.VMS}
        self.forwards = []
        self.host_port, self.far_address = None, FAR
        self.known_hosts = os.path.join(LAB_STATE_DIR, self.name, "known_hosts")
        self.key = self.up = self.before = None
        self._write_inventory()

    def _write(self, rel, data):
        path = os.path.join(self.inventory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f)  # JSON is YAML

    def _write_inventory(self):
        self._write("hosts.yml", {"all": {"children": {
            "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                    "ansible_python_interpreter": VENV_PYTHON}}},
            "lab": {"children": {"routers": {"hosts": {"r1": None}},
                                 "hosts": {"hosts": {"h1": None, "h2": None, "o1": None}}}},
        }}})
        self._write("group_vars/all.yml", {"lab_name": self.name, "lab_netns": self.netns})
        self._write("group_vars/lab.yml", {"ansible_host": "127.0.0.1", "ansible_user": "root",
                                           "ansible_ssh_private_key_file": GUEST_KEY,
                                           "ansible_python_interpreter": "/usr/bin/python3",
                                           "ansible_ssh_common_args":
                                               "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                                           "vm_memory": "256M"})
        for index, (vm, address) in enumerate(sorted(INSIDE.items())):
            self._write("host_vars/%s.yml" % vm, {
                "ansible_port": self.ports[vm], "vm_gateway": "10.67.1.1",
                "vm_nics": [{"bridge": "brin", "tap": "tin%d" % (index + 2), "address": address + "/24"}]})
        # o1 routes back through r1 only so lab.yml's own reachability check passes; NAT is proven by the source
        # address o1 sees and by r1's conntrack table
        self._write("host_vars/o1.yml", {"ansible_port": self.ports["o1"], "vm_gateway": OUTSIDE_ROUTER,
                                         "vm_nics": [{"bridge": "brout", "tap": "tout2", "address": FAR + "/24"}]})
        self.set_nat([{"type": "masquerade", "inside": "eth0", "outside": "eth1"}])

    def set_nat(self, rules):
        self._write("host_vars/r1.yml", {
            "ansible_port": self.ports["r1"],
            "vm_nics": [{"bridge": "brin", "tap": "tin1", "address": "10.67.1.1/24"},
                        {"bridge": "brout", "tap": "tout1", "address": OUTSIDE_ROUTER + "/24"}],
            "vm_nat": rules})

    def nat_run(self, check=False):
        return run_playbook(LAB_YML, inventory=self.inventory, tags="nat", check=check, diff=True, timeout=600)


def _ok(lab, vm, command, **kwargs):
    proc = lab.ssh(vm, command, **kwargs)
    assert proc.returncode == 0, (vm, command, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def _nat_result(res):
    found = [r for name, _host, r in res.tasks("r1") if name.endswith(NAT_TASK)]
    assert len(found) == 1, res
    return found[0]


def _connect(lab, vm, ports):
    """{source port asked: the address o1 saw} for one connection per port from `vm` to o1's service."""
    out = _ok(lab, vm, "python3 -c '%s' %s %d %s" % (CLIENT, FAR, SERVICE, " ".join(map(str, ports))))
    return dict((int(line.split()[0]), line.split()[2]) for line in out.splitlines())


CONNTRACK = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+) .*?src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def _tracked(lab):
    """r1's conntrack entries of connections to o1's service: (orig src, orig sport, reply dst, reply dport)."""
    out = _ok(lab, "r1", "conntrack -L -p tcp --orig-dst %s --dport %d 2>/dev/null" % (FAR, SERVICE))
    print(out)
    entries = []
    for line in out.splitlines():
        match = CONNTRACK.search(line)
        if match:
            src, _dst, sport, _dport, _rsrc, rdst, _rsport, rdport = match.groups()
            entries.append((src, int(sport), rdst, int(rdport)))
    return entries


@pytest.fixture(scope="module")
def lab():
    lab = NatLab()
    try:
        lab.bring_up()
        if lab.up.rc != 0:
            # the run directory goes with the cleanup below: keep what the guests said in the test's output
            for vm in lab.VMS:
                log = os.path.join("/run/qemulab", lab.name, vm, "console", "console.log")
                if os.path.exists(log):
                    with open(log, errors="replace") as f:
                        print("--- %s console (last lines)\n%s" % (vm, "".join(f.readlines()[-15:])))
        assert lab.up.rc == 0, failure_text(lab.up) or lab.up
        _start_peer_server(lab, "o1", SERVICE)
        yield lab
    finally:
        lab.remove()


def test_masquerade_rewrites_colliding_source_ports_onto_one_outside_address(lab):
    """PAT made visible: h1 and h2 open three connections each from the same three source ports; o1 sees every one
    from r1's outside address, and r1's conntrack table has all six leaving as 10.67.2.1 on six different ports -
    the ports that collided were rewritten."""
    ports = [41001, 41002, 41003]
    seen = {vm: _connect(lab, vm, ports) for vm in INSIDE}
    assert seen == {vm: dict((p, OUTSIDE_ROUTER) for p in ports) for vm in INSIDE}, seen
    entries = [e for e in _tracked(lab) if e[1] in ports]
    assert sorted((src, sport) for src, sport, _rdst, _rdport in entries) == sorted(
        (address, p) for address in INSIDE.values() for p in ports), entries
    assert {rdst for _src, _sport, rdst, _rdport in entries} == {OUTSIDE_ROUTER}, entries
    outside_ports = [rdport for _src, _sport, _rdst, rdport in entries]
    assert len(set(outside_ports)) == 6, entries
    rewritten = [e for e in entries if e[1] != e[3]]
    # one host's three connections kept their ports, the other's three could not
    assert len(rewritten) == 3 and len({e[0] for e in rewritten}) == 1, entries


def test_a_pool_gives_each_inside_host_its_own_pool_address_and_check_mode_changes_nothing(lab):
    lab.set_nat([{"type": "pool", "inside": "eth0", "outside": "eth1", "pool": "%s-%s" % POOL}])
    check = lab.nat_run(check=True)
    assert check.rc == 0 and check.changed("r1") == 1, check
    diff = _nat_result(check)["diff"]
    assert diff["after"]["lo"] == ["10.67.2.%d" % n for n in range(100, 110)] and diff["before"]["lo"] == []
    assert "MASQUERADE" in "".join(diff["before"]["chains"]["qemulab-post"]), diff
    assert "MASQUERADE" in _ok(lab, "r1", "iptables -t nat -S qemulab-post"), "check mode changed the router"
    applied = lab.nat_run()
    assert applied.rc == 0 and applied.changed("r1") == 1, applied
    again = lab.nat_run()
    assert again.rc == 0 and again.changed("r1") == 0, again

    _ok(lab, "r1", "conntrack -D -p tcp --orig-dst %s >/dev/null 2>&1; true" % FAR)
    ports = [42001, 42002]
    seen = {vm: _connect(lab, vm, ports) for vm in INSIDE}
    print(seen)
    low, high = (int(x.split(".")[-1]) for x in POOL)
    given = {}
    for vm, answers in seen.items():
        # one pool address per inside host, for all its connections
        assert len(set(answers.values())) == 1, seen
        given[vm] = next(iter(answers.values()))
        assert given[vm].startswith("10.67.2.") and low <= int(given[vm].split(".")[-1]) <= high, seen
    assert given["h1"] != given["h2"], seen
    entries = [e for e in _tracked(lab) if e[1] in ports]
    assert sorted((src, rdst) for src, _sport, rdst, _rdport in entries) == sorted(
        (INSIDE[vm], given[vm]) for vm in INSIDE for _p in ports), entries


def test_rules_removed_from_the_inventory_leave_the_router_and_foreign_ones_stay(lab):
    foreign_rule = "-A POSTROUTING -s 192.0.2.0/24 -o eth1 -m comment --comment foreign -j MASQUERADE"
    _ok(lab, "r1", "iptables -t nat %s && ip address add 192.0.2.99/32 dev lo" % foreign_rule)
    lab.set_nat([])
    removed = lab.nat_run()
    assert removed.rc == 0 and removed.changed("r1") == 1, removed
    table = _ok(lab, "r1", "iptables -t nat -S")
    print(table)
    assert "qemulab" not in table, table
    assert foreign_rule in table.splitlines(), table
    held = _ok(lab, "r1", "ip -4 -o address show dev lo")
    # the pool's addresses went with the rule; the address added by hand stayed
    assert "192.0.2.99/32" in held and not re.search(r"10\.67\.2\.\d+/32", held), held
    # without NAT o1 sees the inside host's own address (it routes back through r1)
    assert _connect(lab, "h1", [43001]) == {43001: INSIDE["h1"]}
    again = lab.nat_run()
    assert again.rc == 0 and again.changed("r1") == 0, again
    assert foreign_rule in _ok(lab, "r1", "iptables -t nat -S").splitlines()
