"""Unit test (no guest): each seed VM's /etc/network/interfaces (the guest_interfaces_file filter, which vm_launch
hands the guest at boot and guest_network writes) reads as the seed writes it.

Renders it through a real ansible-playbook run on the seed inventory's plan, writing into a temp directory instead
of a guest, then compares the stanzas with the seed's own (the course session's network notes, transcribed below).
"""
import os
import subprocess

import pytest

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PLAY = """
- hosts: hypervisors
  gather_facts: false
  tasks:
    - ansible.builtin.set_fact:
        lab_plan: "{{ hostvars | qemulab.network.lab_plan(groups) }}"
- hosts: lab
  gather_facts: false
  connection: local
  tasks:
    - ansible.builtin.copy:
        content: "{{ __vm.nics | qemulab.network.guest_interfaces_file(__vm.routes, __vm.gateway) }}"
        dest: "%(out)s/{{ inventory_hostname }}"
        mode: "0644"
      delegate_to: localhost
      vars:
        __vm: "{{ hostvars['localhost'].lab_plan.vms | selectattr('name', 'equalto', inventory_hostname) | first }}"
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("interfaces")
    play = out / "render.yml"
    play.write_text(PLAY % {"repo": REPO, "out": out})
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"))
    run = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "-i",
                          os.path.join(REPO, "inventories", "seed"), str(play)],
                         cwd=REPO, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return {name: (out / name).read_text() for name in ("rt1", "rt2", "rt3", "rt4", "h1", "h2")}


def lines(text):
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_rt1_matches_the_seed(rendered):
    got = lines(rendered["rt1"])
    assert got[0] == "auto lo eth0 eth1 eth2"
    for stanza in (["iface eth0 inet static", "address 10.20.10.1", "netmask 255.255.255.0",
                    "broadcast 10.20.10.255", "network 10.20.10.0"],
                   ["iface eth2 inet static", "address 10.20.30.1", "netmask 255.255.255.0",
                    "broadcast 10.20.30.255", "network 10.20.30.0"]):
        start = got.index(stanza[0])
        assert got[start:start + 5] == stanza
    for route in ("up route add -net 10.20.60.0/24 gw 10.20.20.2 dev eth1",
                  "up route add -net 10.20.40.0/24 gw 10.20.20.2 dev eth1",
                  "up route add -net 10.20.50.0/24 gw 10.20.30.2 dev eth2"):
        assert route in got


def test_hosts_get_the_seed_default_route(rendered):
    assert "up route add default gw 10.20.10.1 dev eth0" in lines(rendered["h1"])
    assert "up route add default gw 10.20.60.1 dev eth0" in lines(rendered["h2"])
    assert not any("default" in line for line in lines(rendered["rt4"]))
