"""The role reuses docs/roles.md shows run as a user runs them: the example playbooks, against real guests.

One lab of two guests serves the three examples in order (each boot costs 30-60 s under TCG): it is
playbooks/examples/reuse_lab as shipped, given a unique lab name, namespace and free SSH ports here.

    exhp1 10.79.1.254 ─ exlan1 ─ myrouter ─ exlan2 ─ edge 10.79.2.2 │ 10.79.3.1 ─ exlan3 ─ far (never launched)

- launch_routers_only.yml (guest_image + vm_launch for the routers only) boots myrouter and edge, not far;
- router_on_any_debian.yml (guest_network + router_nat) makes the unconfigured myrouter a router that masquerades
  exlan1, so the lab host's port reaches edge, which has no route back to it;
- remove_lab_by_name.yml (teardown, the lab's name only, no inventory) removes it all.

Each example asserts its own effect; the test reads each effect again on its own (ping from the lab's namespace,
SSH into the guests with the lab's known_hosts, the host's processes, links and files) and compares the host with
what it was before. Every lab address lives in the lab's namespace or inside the guests.
"""
import glob
import json
import os
import secrets
import shutil
import subprocess
import time

import pytest
import yaml
from pyroute2 import netns as pr_netns

from conftest import run_playbook
from faultlab import free_port
from hostsnapshot import lab_leftovers, lab_qemu_processes, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO_ROOT, "playbooks", "examples")
EXAMPLE_INVENTORY = os.path.join(EXAMPLES, "reuse_lab")
LAUNCH = os.path.join(EXAMPLES, "launch_routers_only.yml")
ROUTER = os.path.join(EXAMPLES, "router_on_any_debian.yml")
TEARDOWN = os.path.join(EXAMPLES, "remove_lab_by_name.yml")
LAB_PLAYBOOK = os.path.join(REPO_ROOT, "playbooks", "lab.yml")
KEY = "/var/lib/qemulab/ssh/id_ed25519"
IMAGE_CACHE = "/var/cache/qemulab/images"
GUESTS = ("myrouter", "edge")


def _free_ports(count):
    # below the ephemeral range (free_port), so no outgoing connection takes one before QEMU binds it
    ports = []
    while len(ports) < count:
        port = free_port()
        ports += [] if port in ports else [port]
    return ports


def _example_inventory(root, lab, netns, ports):
    """The shipped example inventory with only its lab name, namespace, known_hosts path and SSH ports replaced."""
    def load(rel):
        with open(os.path.join(EXAMPLE_INVENTORY, rel)) as f:
            return yaml.safe_load(f)

    files = {rel: load(rel) for rel in ("hosts.yml", "group_vars/all.yml", "group_vars/lab.yml")}
    shipped_lab = files["group_vars/all.yml"]["lab_name"]
    files["group_vars/all.yml"].update(lab_name=lab, lab_netns=netns)
    common = files["group_vars/lab.yml"]["ansible_ssh_common_args"]
    assert "/labs/%s/known_hosts" % shipped_lab in common, common
    files["group_vars/lab.yml"]["ansible_ssh_common_args"] = common.replace(
        "/labs/%s/" % shipped_lab, "/labs/%s/" % lab)
    vms = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(EXAMPLE_INVENTORY, "host_vars", "*.yml")))
    assert vms == ["edge", "far", "myrouter"], vms
    for vm, port in zip(vms, ports):
        files["host_vars/%s.yml" % vm] = dict(load("host_vars/%s.yml" % vm), ansible_port=port)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as f:
            json.dump(data, f)  # JSON is YAML
    return root, dict(zip(vms, ports))


def _ssh(lab, port, command, timeout=60):
    """A command in a guest, its host key checked strictly against the lab's known_hosts (as Ansible does)."""
    argv = ["ssh", "-i", KEY, "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=/var/lib/qemulab/labs/%s/known_hosts" % lab, "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=20", "root@127.0.0.1", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _ok(lab, port, command):
    proc = _ssh(lab, port, command)
    assert proc.returncode == 0, (command, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def _ping(netns, address, tries=5):
    """Whether the lab host's port exhp1 gets an answer from address (a few tries: ARP, a guest busy under TCG)."""
    for _ in range(tries):
        if subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "2", "-I", "exhp1", address],
                          capture_output=True).returncode == 0:
            return True
    return False


def _ran(result):
    """A run that ended well and whose recap was read (a run that died early has no stats)."""
    return result.rc == 0 and "localhost" in result.stats


def _running_vms(lab):
    """The VMs whose run directory (<run root>/<lab>/<vm>/) a running QEMU of the lab names on its command line."""
    marker = "/qemulab/%s/" % lab
    return sorted({arg.split(marker, 1)[1].split("/")[0]
                   for argv in lab_qemu_processes(lab).values() for arg in argv if marker in arg})


def _gone(path, seconds):
    deadline = time.time() + seconds
    while os.path.exists(path) and time.time() < deadline:
        time.sleep(0.1)
    return not os.path.exists(path)


def _images():
    return sorted(os.listdir(IMAGE_CACHE)) if os.path.isdir(IMAGE_CACHE) else []


@pytest.fixture(scope="module")
def reuse_lab(tmp_path_factory):
    suffix = secrets.token_hex(3)
    lab, netns = "qltru" + suffix, "qltruns" + suffix
    inventory, ports = _example_inventory(str(tmp_path_factory.mktemp("reuse")), lab, netns, _free_ports(3))
    state = {"name": lab, "netns": netns, "inventory": inventory, "ports": ports, "seconds": {},
             "suffix": suffix, "host_before": snapshot()}
    assert lab_leftovers(lab) == {"processes": [], "files": []}
    try:
        started = time.time()
        prep = run_playbook(LAB_PLAYBOOK, inventory=inventory, tags="prep", timeout=600)
        assert _ran(prep), prep
        state["seconds"]["prep"] = time.time() - started
        started = time.time()
        state["launch"] = run_playbook(LAUNCH, inventory=inventory, timeout=900)
        state["seconds"]["launch"] = time.time() - started
        # the cached guest images, the guests' among them (built or reused): no example removes any
        state["images"] = _images()
        yield state
    finally:
        run_playbook(LAB_PLAYBOOK, inventory=inventory, tags="cleanup", timeout=600)
        if netns in pr_netns.listnetns():
            pr_netns.remove(netns)
        shutil.rmtree(os.path.join("/run/qemulab", lab), ignore_errors=True)
        shutil.rmtree(os.path.join("/var/lib/qemulab/labs", lab), ignore_errors=True)
        print("role reuse stages (s):", {k: round(v) for k, v in state["seconds"].items()})


def test_launch_example_boots_the_routers_only_and_a_rerun_changes_nothing(reuse_lab):
    lab, netns, ports = reuse_lab["name"], reuse_lab["netns"], reuse_lab["ports"]
    launch = reuse_lab["launch"]
    assert _ran(launch) and launch.failed("myrouter") == 0 and launch.failed("edge") == 0, launch

    # the routers' QEMUs run, each from its own run directory; far, a host, has neither
    assert _running_vms(lab) == sorted(GUESTS), lab_qemu_processes(lab)
    assert len(lab_qemu_processes(lab)) == 2
    assert not os.path.exists(os.path.join("/run/qemulab", lab, "far"))

    # each forward leads to the guest of that name, whose host key is the one the lab recorded
    for vm in GUESTS:
        assert _ok(lab, ports[vm], "cat /proc/sys/kernel/hostname") == vm
    # edge booted configured from the inventory; myrouter, which the inventory leaves bare, has no lab address yet
    assert "10.79.2.2/24" in _ok(lab, ports["edge"], "ip -4 -o address show dev eth0")
    assert _ok(lab, ports["myrouter"], "ip -4 -o address show dev eth0; ip -4 -o address show dev eth1") == ""
    assert not _ping(netns, "10.79.1.1", tries=1)

    started = time.time()
    again = run_playbook(LAUNCH, inventory=reuse_lab["inventory"], timeout=600)
    reuse_lab["seconds"]["launch again"] = time.time() - started
    assert _ran(again) and again.changed() == 0, again
    assert len(lab_qemu_processes(lab)) == 2


def test_router_example_makes_myrouter_a_nat_router_the_lab_host_reaches_edge_through(reuse_lab):
    lab, netns, ports = reuse_lab["name"], reuse_lab["netns"], reuse_lab["ports"]
    started = time.time()
    configured = run_playbook(ROUTER, inventory=reuse_lab["inventory"], timeout=600)
    reuse_lab["seconds"]["router"] = time.time() - started
    assert configured.rc == 0 and "myrouter" in configured.stats, configured
    assert configured.changed("myrouter") > 0 and configured.failed("myrouter") == 0, configured
    assert set(configured.stats) == {"myrouter"}, configured.stats

    me = ports["myrouter"]
    assert _ok(lab, me, "ip -4 -o address show dev eth0").split()[3] == "10.79.1.1/24"
    assert _ok(lab, me, "ip -4 -o address show dev eth1").split()[3] == "10.79.2.1/24"
    assert _ok(lab, me, "ip -4 route show 10.79.3.0/24").startswith("10.79.3.0/24 via 10.79.2.2 dev eth1 ")
    assert _ok(lab, me, "cat /proc/sys/net/ipv4/ip_forward") == "1"
    assert "-A qemulab-post -s 10.79.1.0/24 -o eth1 " in _ok(lab, me, "iptables -t nat -S qemulab-post")
    # the management NIC keeps its address: only the listed NICs are touched
    assert "10.0.2.15/24" in _ok(lab, me, "ip -4 -o address show dev mgmt0")

    # edge has no route to the lab host's port, so its answers can only come back through the masquerade
    assert _ssh(lab, ports["edge"], "ip route get 10.79.1.254").returncode != 0
    assert _ping(netns, "10.79.1.1")
    assert _ping(netns, "10.79.2.2")
    assert _ping(netns, "10.79.3.1")  # behind edge: myrouter's route and the masquerade together
    # and myrouter did translate it: the connection edge answered was addressed to myrouter's eth1
    tracked = _ok(lab, me, "conntrack -L -p icmp -s 10.79.1.254 -d 10.79.3.1 2>/dev/null")
    assert "src=10.79.3.1 dst=10.79.2.1" in tracked, tracked

    again = run_playbook(ROUTER, inventory=reuse_lab["inventory"], timeout=600)
    assert again.rc == 0 and again.changed("myrouter") == 0, again


def test_teardown_example_removes_the_lab_by_name_and_leaves_the_host_as_it_was(reuse_lab):
    lab, netns = reuse_lab["name"], reuse_lab["netns"]
    assert netns in pr_netns.listnetns() and lab_qemu_processes(lab)

    started = time.time()
    removed = run_playbook(TEARDOWN, extra_vars={"remove_lab": lab}, timeout=600)
    reuse_lab["seconds"]["teardown"] = time.time() - started
    assert _ran(removed) and removed.changed() > 0, removed

    assert lab_leftovers(lab) == {"processes": [], "files": []}
    # no namespace named after this lab remains (the host's whole list is not compared: `make test` runs other
    # labs beside this module; that a teardown by name spares every other lab is test_teardown_safety's proof)
    assert [n for n in pr_netns.listnetns() if reuse_lab["suffix"] in n] == []
    # the lock's holder process unlinks its file once it sees the run is over (it looks every 0.2 s)
    assert _gone("/run/qemulab/%s.lock" % lab, seconds=5)
    assert not os.path.exists("/run/qemulab/_netns/%s.owner" % netns)
    assert snapshot() == reuse_lab["host_before"], "the host's links, addresses, routes or sysctls changed"
    # the cached guest image is shared by every lab and stays
    assert reuse_lab["images"] and _images() == reuse_lab["images"]

    # a second run finds nothing and says so
    again = run_playbook(TEARDOWN, extra_vars={"remove_lab": lab}, timeout=600)
    assert _ran(again) and again.changed() == 0, again
