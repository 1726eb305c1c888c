"""The collection as a new user gets it: a tarball built from this checkout, installed into a project of its own.

One two-VM lab (r1 routes between h1's segment and the lab host's port) is brought up from a temporary project
outside the checkout: its own inventory, `import_playbook: qemulab.network.lab`, no ansible.cfg of ours
(ANSIBLE_CONFIG unset), the collection installed from the tarball into the project, HOME a temporary directory.
The guests are reached with strict host key checking against the lab's known_hosts, as docs/inventory.md tells a
user to write it. Every lab address lives in the test's own namespace (lab_netns).
"""
import glob
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile

import pytest
import yaml
from pyroute2 import netns as pr_netns

from conftest import REPO_ROOT, VENV_PYTHON

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

BIN = os.path.join(REPO_ROOT, ".venv", "bin")
KEY = "/var/lib/qemulab/ssh/id_ed25519"
STATE_DIR = "/var/lib/qemulab/labs"
# What a checkout accumulates and a tarball must not carry (galaxy.yml build_ignore).
NOT_SHIPPED = (".ansible", ".hypothesis", ".pytest_cache", ".venv", ".build", "tests/output", "bench/results")


def _clean_env(home, **extra):
    """The environment of a user's shell: no ANSIBLE_* of ours (the Makefile exports ANSIBLE_CONFIG), HOME apart."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_")))
    env.update({"HOME": home, "PATH": BIN + os.pathsep + env.get("PATH", ""), "ANSIBLE_NOCOLOR": "1"})
    env.update(extra)
    return env


def _inventory(project, lab, netns, ports):
    """r1 joins seg-a (h1) and seg-b (the lab host's port, routed to seg-a through r1)."""
    files = {
        "inventory/hosts.yml": {"all": {"children": {
            "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                    "ansible_python_interpreter": VENV_PYTHON}}},
            "lab": {"children": {"routers": {"hosts": {"r1": None}}, "hosts": {"hosts": {"h1": None}}}},
        }}},
        "inventory/group_vars/all.yml": {
            "lab_name": lab, "lab_netns": netns,
            "lab_host_ports": [{"name": "hp0", "peer": "hp1", "bridge": "brb", "address": "10.67.2.9/24",
                                "routes": [{"to": "10.67.1.0/24", "via": "10.67.2.1"}]}],
        },
        # what docs/inventory.md tells a user to write
        "inventory/group_vars/lab.yml": {
            "ansible_host": "127.0.0.1", "ansible_user": "root", "ansible_ssh_private_key_file": KEY,
            "ansible_ssh_common_args": "-o UserKnownHostsFile=%s/%s/known_hosts -o StrictHostKeyChecking=yes"
                                       % (STATE_DIR, lab),
            "ansible_python_interpreter": "/usr/bin/python3", "vm_memory": "256M",
        },
        "inventory/host_vars/r1.yml": {"ansible_port": ports[0], "vm_nics": [
            {"bridge": "bra", "tap": "ta1", "address": "10.67.1.1/24"},
            {"bridge": "brb", "tap": "tb1", "address": "10.67.2.1/24"}]},
        "inventory/host_vars/h1.yml": {"ansible_port": ports[1], "vm_gateway": "10.67.1.1",
                                       "vm_nics": [{"bridge": "bra", "tap": "ta2", "address": "10.67.1.2/24"}]},
    }
    for rel, data in files.items():
        path = os.path.join(project, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            yaml.safe_dump(data, f)
    with open(os.path.join(project, "site.yml"), "w") as f:
        f.write("---\n- name: The lab\n  ansible.builtin.import_playbook: qemulab.network.lab\n")


def _recap(stdout):
    """{host: {ok, changed, unreachable, failed, ...}} from the default callback's PLAY RECAP."""
    hosts = {}
    for line in stdout[stdout.rindex("PLAY RECAP"):].splitlines()[1:]:
        if " : " in line:
            name, counts = line.split(" : ", 1)
            hosts[name.strip()] = dict((k, int(v)) for k, v in (c.split("=") for c in counts.split()))
    return hosts


def _task_output(stdout, task):
    start = stdout.index("TASK [%s]" % task)
    end = stdout.find("TASK [", start + 1)
    return stdout[start:end if end > 0 else None]


def _free_ports(count):
    import socket
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _plant_checkout_clutter():
    """A file in each place a checkout accumulates, so the build is tested also on a fresh clone; returns what to
    remove afterwards (only what this made)."""
    made = []
    for rel in NOT_SHIPPED:
        directory = os.path.join(REPO_ROOT, rel)
        if not os.path.isdir(directory):
            os.makedirs(directory)
            made.append(directory)
        probe = os.path.join(directory, "qemulab-build-probe-%s" % secrets.token_hex(3))
        open(probe, "w").close()
        made.append(probe)
    return made


@pytest.fixture(scope="module")
def project():
    """The tarball built from the repo, installed into a temporary project; its lab is torn down afterwards."""
    root = tempfile.mkdtemp(prefix="qemulab-user-")
    home = os.path.join(root, "home")
    os.makedirs(home)
    suffix = secrets.token_hex(3)
    info = {"root": root, "home": home, "dir": os.path.join(root, "project"), "lab": "qo" + suffix,
            "netns": "qons" + suffix, "ports": _free_ports(2)}
    info["env"] = _clean_env(home, ANSIBLE_COLLECTIONS_PATH=os.path.join(info["dir"], "collections"))
    clutter = _plant_checkout_clutter()
    try:
        build = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path",
                                os.path.join(root, "dist"), REPO_ROOT], cwd=root, env=info["env"],
                               capture_output=True, text=True, timeout=300)
    finally:
        for path in reversed(clutter):
            try:
                os.rmdir(path) if os.path.isdir(path) else os.unlink(path)
            except OSError:
                pass  # a directory this made that a concurrent tool has since written into: left as it is
    assert build.returncode == 0, build.stdout + build.stderr
    info["tarball"] = glob.glob(os.path.join(root, "dist", "qemulab-network-*.tar.gz"))[0]
    _inventory(info["dir"], info["lab"], info["netns"], info["ports"])
    install = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", info["tarball"],
                              "-p", os.path.join(info["dir"], "collections")], cwd=info["dir"], env=info["env"],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    def playbook(*args, env=None):
        return subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", "inventory", "site.yml"] + list(args),
                              cwd=info["dir"], env=env or info["env"], capture_output=True, text=True, timeout=1800)

    info["playbook"] = playbook
    try:
        yield info
    finally:
        down = playbook("--tags", "cleanup")
        # Last resort only when the cleanup itself failed (the test below asserts it did not).
        if info["netns"] in pr_netns.listnetns() and down.returncode != 0:
            pr_netns.remove(info["netns"])
        shutil.rmtree(root, ignore_errors=True)


def test_the_tarball_carries_no_checkout_clutter(project):
    with tarfile.open(project["tarball"]) as tar:
        names = tar.getnames()
    assert "plugins/modules/qemu_vm.py" in names and "playbooks/lab.yml" in names
    shipped = [n for n in names if any(n == rel or n.startswith(rel + "/") for rel in NOT_SHIPPED)]
    assert shipped == []
    assert not [n for n in names if "__pycache__" in n or "qemulab-build-probe" in n]


def test_a_project_outside_the_checkout_brings_up_verifies_and_cleans_up_a_lab(project):
    installed = os.path.join(project["dir"], "collections", "ansible_collections", "qemulab", "network")
    assert os.path.isfile(os.path.join(installed, "MANIFEST.json")) and not os.path.islink(installed)

    # -vvv shows every task's result with its invocation (module arguments) and diff
    up = project["playbook"]("-vvv", "--diff")
    assert up.returncode == 0, up.stdout[-6000:] + up.stderr[-3000:]
    # The guests' private host keys reached them (strict checking passes below) but no line of the run shows one.
    assert "PRIVATE KEY" not in up.stdout + up.stderr
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in up.stdout
    recap = _recap(up.stdout)
    assert sorted(recap) == ["h1", "localhost", "r1"], recap
    assert not [h for h, c in recap.items() if c["unreachable"] or c["failed"]], recap
    # lab.yml's verify stage pinged h1 from the lab host's port, through r1; and so does this test
    assert "ok: [localhost]" in _task_output(up.stdout, "Ping every host from each host port")
    ping = subprocess.run(["ip", "netns", "exec", project["netns"], "ping", "-c", "2", "-W", "2", "-I", "hp1",
                           "10.67.1.2"], capture_output=True, text=True, timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    # Each guest has a host key of its own, listed in the lab's known_hosts, and answers under strict checking.
    known_hosts = os.path.join(STATE_DIR, project["lab"], "known_hosts")
    with open(known_hosts) as f:
        entries = [line.split() for line in f if line.strip()]
    assert sorted(e[0] for e in entries) == sorted("[127.0.0.1]:%d" % p for p in project["ports"])
    assert len(set(e[2] for e in entries)) == 2
    for port in project["ports"]:
        ssh = subprocess.run(["ssh", "-i", KEY, "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                              "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + known_hosts,
                              "root@127.0.0.1", "hostname"],
                             capture_output=True, text=True, timeout=60, env=project["env"])
        assert ssh.returncode == 0, ssh.stderr
    assert not os.path.exists(os.path.join(project["home"], ".ssh", "known_hosts"))

    # A second run changes nothing (the keys and known_hosts are kept, no VM restarts), also from an inventory that
    # leaves the guests' SSH settings out: the run then points them at the lab's known_hosts itself, strictly.
    lab_vars_file = os.path.join(project["dir"], "inventory", "group_vars", "lab.yml")
    with open(lab_vars_file) as f:
        lab_vars = yaml.safe_load(f)
    del lab_vars["ansible_ssh_common_args"]
    with open(lab_vars_file, "w") as f:
        yaml.safe_dump(lab_vars, f)
    # A home of its own: no SSH connection of the first run (ControlPersist) is reused, each one checks the key.
    home2 = os.path.join(project["root"], "home2")
    os.makedirs(home2)
    again = project["playbook"](env=dict(project["env"], HOME=home2))
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    recap = _recap(again.stdout)
    assert [c["changed"] for c in recap.values()] == [0, 0, 0], recap
    assert not os.path.exists(os.path.join(home2, ".ssh", "known_hosts"))

    down = project["playbook"]("--tags", "cleanup")
    assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-2000:]
    assert project["netns"] not in pr_netns.listnetns()
    assert not os.path.exists(os.path.join(STATE_DIR, project["lab"]))
    assert not os.path.exists(os.path.join("/run/qemulab", project["lab"]))
    # nothing of the run went to the user's real home: ansible's files are under the temporary HOME
    assert os.path.isdir(os.path.join(project["home"], ".ansible"))


def test_make_molecule_leaves_nothing_in_the_home_directory(tmp_path):
    """molecule (ansible-compat) installed a copy of the collection into ~/.ansible/collections, which then
    shadowed the checkout for playbooks run elsewhere; `make molecule` keeps everything in the checkout."""
    home = tmp_path / "home"
    home.mkdir()
    env = _clean_env(str(home))
    run = subprocess.run(["make", "-s", "molecule", "MOLECULE_COMMAND=syntax"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in home.iterdir()) == []
