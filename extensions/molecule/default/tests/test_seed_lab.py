"""Verify the seed lab on the real guests, through the seed inventory (pytest-testinfra, ansible backend).

The addresses, routes and paths below are the seed's own (../shared/seed-lab.md), read from the inventory where the
inventory states them, so a wrong inventory or a wrong configuration both fail here.
"""
import os
import subprocess

import pytest
import testinfra.utils.ansible_runner

REPO = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
INVENTORY = os.path.join(REPO, "inventories", "seed")
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
LAB_VMS = RUNNER.get_hosts("lab")
ROUTERS = RUNNER.get_hosts("routers")
HOSTVARS = {name: RUNNER.get_variables(name) for name in LAB_VMS}
LOCAL = RUNNER.get_variables("localhost")


def guest(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def first_address(name):
    return HOSTVARS[name]["vm_nics"][0]["address"].split("/")[0]


def ping(host, address):
    return host.run(f"ping -c 2 -W 2 {address}")


def test_the_seed_lab_has_its_seven_vms():
    assert sorted(LAB_VMS) == ["h1", "h2", "htest", "rt1", "rt2", "rt3", "rt4"]


@pytest.mark.parametrize("name", sorted(HOSTVARS))
def test_every_nic_carries_the_inventory_address_and_mac(name):
    host = guest(name)
    for index, nic in enumerate(HOSTVARS[name]["vm_nics"]):
        iface = host.interface(f"eth{index}")
        assert iface.exists, f"{name}: eth{index} missing"
        mac = host.file(f"/sys/class/net/eth{index}/address").content_string.strip()
        assert mac.lower() == nic["mac"].lower(), f"{name}: eth{index} has the wrong MAC"
        if nic.get("address"):
            assert nic["address"].split("/")[0] in iface.addresses, f"{name}: eth{index} lacks {nic['address']}"


@pytest.mark.parametrize("name", sorted(HOSTVARS))
def test_routers_forward_and_hosts_do_not(name):
    forwarding = guest(name).sysctl("net.ipv4.ip_forward")
    assert forwarding == (1 if name in ROUTERS else 0)


@pytest.mark.parametrize("src,dst", [("h1", "h2"), ("h1", "htest"), ("h2", "h1"), ("htest", "h2")])
def test_hosts_reach_each_other_through_the_routers(src, dst):
    result = ping(guest(src), first_address(dst))
    assert result.rc == 0, result.stdout + result.stderr


def test_the_lab_host_port_reaches_h2():
    port = LOCAL["lab_host_ports"][0]
    cmd = ["ip", "netns", "exec", LOCAL["lab_netns"], "ping", "-c", "2", "-W", "2", "-I", port["peer"],
           first_address("h2")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_traceroute_from_h1_to_h2_follows_the_seed_routes():
    result = guest("h1").run(f"traceroute -n -q 1 -w 2 {first_address('h2')}")
    assert result.rc == 0, result.stderr
    hops = [line.split()[1] for line in result.stdout.splitlines()[1:] if len(line.split()) > 1]
    # rt1 (eth0 on br1), rt2 (eth0 on br2), rt4 (eth0 on br4), then h2.
    assert hops == ["10.20.10.1", "10.20.20.2", "10.20.40.1", "10.20.60.2"], result.stdout


def test_removing_a_route_on_rt2_breaks_h1_to_h2_and_the_next_run_restores_it():
    rt2, h1 = guest("rt2"), guest("h1")
    h2_address = first_address("h2")
    rt2.run_expect([0], "ip route del 10.20.60.0/24")
    try:
        assert ping(h1, h2_address).rc != 0, "h1 still reaches h2 without rt2's route"
    finally:
        run = subprocess.run(
            [os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "-i", INVENTORY,
             os.path.join(REPO, "lab.yml"), "--tags", "config"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
            env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg")))
    assert run.returncode == 0, run.stdout[-3000:]
    assert ping(h1, h2_address).rc == 0, "the lab run did not restore rt2's route"
