"""Unit tests: the topology inventory plugin through a real `ansible-inventory` (no lab is started): concrete
values in `--list`, the plugin loaded by `auto` from the file's `plugin:` key, only `*.qemulab.yml`/`.yaml` files,
and a bad file failing with the compiler's messages."""
import json
import os
import subprocess

import pytest

from ansible_collections.qemulab.network.plugins.inventory.topology import InventoryModule

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
TOPOLOGY = """\
plugin: qemulab.network.topology
lab: invtest
pool: 172.30.0.0/16
ssh_port_base: 2400
nodes:
  ra: {role: router}
  rb: {role: router, memory: 512M}
  hb: {role: host}
segments:
  - [ra, rb]
  - [rb, hb]
  - [ra, lab_host]
"""


def inventory(path, *args, enable=None):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    if enable:
        env["ANSIBLE_INVENTORY_ENABLED"] = enable
    return subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible-inventory"), "-i", str(path)] + list(args),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    path = tmp_path_factory.mktemp("topo") / "lab.qemulab.yml"
    path.write_text(TOPOLOGY)
    result = inventory(path, "--list")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_list_shows_the_groups_and_concrete_connection_values(listed):
    assert listed["hypervisors"]["hosts"] == ["localhost"]
    assert sorted(listed["lab"]["children"]) == ["hosts", "routers"]
    assert listed["routers"]["hosts"] == ["ra", "rb"] and listed["hosts"]["hosts"] == ["hb"]
    rb = listed["_meta"]["hostvars"]["rb"]
    assert (rb["ansible_host"], rb["ansible_port"], rb["ansible_user"], rb["ansible_ssh_private_key_file"]) == (
        "127.0.0.1", 2401, "root", "/var/lib/qemulab/ssh/id_ed25519")
    assert rb["ansible_ssh_common_args"] == ("-o UserKnownHostsFile=/var/lib/qemulab/labs/invtest/known_hosts "
                                             "-o StrictHostKeyChecking=yes")
    assert rb["vm_memory"] == "512M" and rb["lab_name"] == "invtest" and rb["lab_netns"] == "qemulab-invtest"
    # s0 172.30.0 ra .1 rb .2 | s1 172.30.1 rb .1 hb .2 | s2 172.30.2 ra .1 lab_host .2
    assert [(n["bridge"], n["tap"], n["address"]) for n in rb["vm_nics"]] == [
        ("br1", "t1-2", "172.30.0.2/24"), ("br2", "t2-1", "172.30.1.1/24")]
    assert rb["vm_routes"] == [{"to": "172.30.2.0/24", "via": "172.30.0.1"}]
    assert listed["_meta"]["hostvars"]["hb"]["vm_gateway"] == "172.30.1.1"
    assert listed["_meta"]["hostvars"]["ra"]["vm_routes"] == [{"to": "172.30.1.0/24", "via": "172.30.0.2"}]
    port, = rb["lab_host_ports"]
    assert port == {"name": "hp3", "peer": "hp3-host", "bridge": "br3", "address": "172.30.2.2/24",
                    "routes": [{"to": "172.30.0.0/23", "via": "172.30.2.1"}]}


def test_the_lab_host_runs_modules_with_the_controllers_own_python(listed):
    localhost = listed["_meta"]["hostvars"]["localhost"]
    assert localhost["ansible_connection"] == "local"
    assert os.path.isabs(localhost["ansible_python_interpreter"]) and "{{" not in localhost["ansible_python_interpreter"]


def test_listing_the_plugin_by_name_in_enable_plugins_works_without_auto(tmp_path):
    path = tmp_path / "lab.qemulab.yaml"
    path.write_text(TOPOLOGY)
    result = inventory(path, "--host", "ra", enable="qemulab.network.topology")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ansible_port"] == 2400


def test_a_bad_file_fails_with_the_compilers_messages(tmp_path):
    path = tmp_path / "bad.qemulab.yml"
    path.write_text(TOPOLOGY.replace("  - [rb, hb]\n", "  - [hb]\n"))
    result = inventory(path, "--list", enable="qemulab.network.topology")
    assert "%s: nodes.hb has no router on its segments, so it cannot reach" % path in result.stderr
    # the repository's ansible.cfg sets unparsed_is_failed: the run stops there, no inventory is listed
    assert result.returncode != 0 and result.stdout.strip() == ""


def test_only_qemulab_files_are_taken():
    plugin = InventoryModule()
    assert [plugin.verify_file(os.path.join(REPO, "topologies", name)) for name in (
        "seed.qemulab.yml", "nothing.qemulab.yml")] == [os.path.isfile(os.path.join(REPO, "topologies",
                                                                                     "seed.qemulab.yml")), False]
    assert not plugin.verify_file(os.path.join(REPO, "inventories", "seed", "hosts.yml"))
