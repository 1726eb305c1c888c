"""The seed's other networks, end to end in one three-VM lab built by lab.yml:

    hpin1 (host port, 10.66.1.4) --+
    h1 (e1000, 10.66.1.10) --------+-- brin --(rtl8139) rt1 (virtio)-- brout -- h2 (virtio, 10.66.2.20)
                                                      rt1 eth2: QEMU user-mode, 10.0.3.15, 127.0.0.1:P -> 8000

brout carries an MTU of 4000 (the NIC option `mtu` on both of its NICs). rt1 masquerades brin out of eth1 and publishes h1 as 10.66.2.10 (static 1:1 NAT). A small TCP service on each
guest answers every connection with its hostname and the peer address it sees, so the far side's view of the
source address is read, not assumed. Every lab address lives in the test's own namespace (lab_netns) or inside
the guests; the user-mode NIC is restricted and talked to only through its gateway and 127.0.0.1.
"""
import json
import os
import pty
import secrets
import select
import shutil
import socket
import subprocess
import sys
import time

import pytest
from pyroute2 import netns as pr_netns

from conftest import VENV_PYTHON, run_playbook

pytestmark = pytest.mark.integration

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_PLAYBOOK = os.path.join(REPO_ROOT, "playbooks", "lab.yml")
KEY = "/var/lib/qemulab/ssh/id_ed25519"
# the documented console command (docs/troubleshooting.md, the status table), the socket path appended
CONSOLE_COMMAND = ["socat", "-,raw,echo=0,escape=0x1d"]

# answers each connection with "<hostname> <peer address>", so a client learns what source address arrived
PEER_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
while True:
    c, a = s.accept()
    c.sendall(("%s %s\n" % (socket.gethostname(), a[0])).encode())
    c.close()
"""
PEER_CLIENT = ("import socket, sys; c = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); "
               "print(c.recv(200).decode().strip())")


def _free_ports(count):
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _write_inventory(root, lab, netns, ports):
    ssh_rt1, ssh_h1, ssh_h2, fwd = ports
    files = {
        "hosts.yml": {"all": {"children": {
            "hypervisors": {"hosts": {"localhost": {"ansible_connection": "local",
                                                    "ansible_python_interpreter": VENV_PYTHON}}},
            "lab": {"children": {"routers": {"hosts": {"rt1": None}}, "hosts": {"hosts": {"h1": None, "h2": None}}}},
        }}},
        "group_vars/all.yml": {
            "lab_name": lab, "lab_netns": netns,
            "lab_host_ports": [{"name": "hpin0", "peer": "hpin1", "bridge": "brin", "address": "10.66.1.4/24",
                                "routes": [{"to": "10.66.2.0/24", "via": "10.66.1.1"}]}],
        },
        "group_vars/lab.yml": {"ansible_host": "127.0.0.1", "ansible_user": "root",
                               "ansible_ssh_private_key_file": KEY,
                               "ansible_python_interpreter": "/usr/bin/python3",
                               "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                               "vm_memory": "256M"},
        "host_vars/rt1.yml": {
            "ansible_port": ssh_rt1,
            "vm_nics": [
                {"bridge": "brin", "tap": "tin1", "address": "10.66.1.1/24", "model": "rtl8139"},
                {"bridge": "brout", "tap": "tout1", "address": "10.66.2.1/24", "mtu": 4000},
                {"backend": "user", "net": "10.0.3.0/24", "hostfwd": [{"host_port": fwd, "guest_port": 8000}]},
            ],
            "vm_nat": [
                {"type": "masquerade", "inside": "eth0", "outside": "eth1"},
                {"type": "static", "inside": "eth0", "outside": "eth1", "inside_address": "10.66.1.10",
                 "outside_address": "10.66.2.10"},
            ],
        },
        "host_vars/h1.yml": {"ansible_port": ssh_h1, "vm_gateway": "10.66.1.1",
                             "vm_nics": [{"bridge": "brin", "tap": "tin2", "address": "10.66.1.10/24",
                                          "model": "e1000"}]},
        # h2 routes back through rt1 only so lab.yml's own reachability check passes; NAT is proven by the source
        # address h2 sees (and by its absence once the rules are flushed)
        "host_vars/h2.yml": {"ansible_port": ssh_h2, "vm_gateway": "10.66.2.1",
                             "vm_nics": [{"bridge": "brout", "tap": "tout2", "address": "10.66.2.20/24",
                                          "mtu": 4000}]},
    }
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f)  # JSON is YAML
    return root


def _ssh(port, command, input=None, timeout=60):
    argv = ["ssh", "-i", KEY, "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20",
            "root@127.0.0.1", command]
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    return proc


def _ok(port, command, **kwargs):
    proc = _ssh(port, command, **kwargs)
    assert proc.returncode == 0, (command, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def _start_peer_server(port, listen_port):
    _ok(port, "cat > /tmp/peer.py", input=PEER_SERVER)
    _ok(port, "setsid python3 /tmp/peer.py %d </dev/null >/dev/null 2>&1 &" % listen_port)
    # under TCG python takes a while to start: wait until the port listens
    _ok(port, "for i in $(seq 60); do ss -Htln | grep -q ':%d ' && exit 0; sleep 0.5; done; exit 1" % listen_port)


def _task(result, name, host="localhost"):
    """A task's result by its name, with or without the role prefix Ansible puts before it."""
    for task, hname, res in result.tasks(host):
        if task == name or task.endswith(" : " + name):
            return res
    raise KeyError("no result for task %r on %s: %r" % (name, host, result))


def _peer_from_guest(port, address, service_port):
    return _ok(port, "python3 -c '%s' %s %d" % (PEER_CLIENT, address, service_port))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not os.path.isfile(KEY) or not shutil.which("socat"):
        pytest.skip("needs the guest key %s (built by the guest_image role) and socat" % KEY)
    suffix = secrets.token_hex(3)
    name, netns = "qltnw" + suffix, "qltnwns" + suffix
    ports = _free_ports(4)
    inventory = _write_inventory(str(tmp_path_factory.mktemp("inv")), name, netns, ports)
    started = time.time()
    try:
        up = run_playbook(LAB_PLAYBOOK, inventory=inventory, timeout=1500)
        yield {"name": name, "netns": netns, "inventory": inventory, "up": up, "up_seconds": time.time() - started,
               "rt1": ports[0], "h1": ports[1], "h2": ports[2], "fwd": ports[3], "run": run_playbook}
    finally:
        run_playbook(LAB_PLAYBOOK, inventory=inventory, tags="cleanup", timeout=600)
        if netns in pr_netns.listnetns():
            pr_netns.remove(netns)
        shutil.rmtree(os.path.join("/run/qemulab", name), ignore_errors=True)
        shutil.rmtree(os.path.join("/var/lib/qemulab/labs", name), ignore_errors=True)


def test_lab_comes_up_and_launching_and_configuring_again_changes_nothing(lab):
    up = lab["up"]
    assert up.rc == 0, up
    print("lab up in %.0f s" % lab["up_seconds"])
    # launch (qemu_vm with the user-mode NIC) and config (addresses, NAT) are what this lab adds; the host side's
    # idempotence is host_prep's own test, and verify/status change nothing
    again = lab["run"](LAB_PLAYBOOK, inventory=lab["inventory"], tags="launch,config", timeout=900)
    assert again.rc == 0, again
    assert {host: again.changed(host) for host in ("localhost", "rt1", "h1", "h2")} == {
        "localhost": 0, "rt1": 0, "h1": 0, "h2": 0}, again


def test_nic_mtu_is_the_taps_the_bridges_and_the_guests_and_a_full_frame_crosses_unfragmented(lab):
    """vm_nics[].mtu end to end: tap and bridge on the lab host, the guest's interface (virtio's host_mtu and the
    interfaces file), and a don't-fragment ping of exactly that size between the two guests on the segment."""
    for link in ("tout1", "tout2", "brout"):
        shown = subprocess.run(["ip", "-netns", lab["netns"], "-o", "link", "show", link], capture_output=True,
                               text=True, check=True).stdout
        assert " mtu 4000 " in shown, shown
    assert _ok(lab["rt1"], "cat /sys/class/net/eth1/mtu") == "4000"
    assert _ok(lab["h2"], "cat /sys/class/net/eth0/mtu") == "4000"
    # the other segment keeps the kernel's default
    assert _ok(lab["h1"], "cat /sys/class/net/eth0/mtu") == "1500"
    # 3972 bytes of payload + 8 ICMP + 20 IP = 4000: passes only if every hop carries 4000 unfragmented
    _ok(lab["h2"], "ping -c 1 -W 5 -M do -s 3972 10.66.2.1")
    assert _ssh(lab["h2"], "ping -c 1 -W 5 -M do -s 3973 10.66.2.1").returncode != 0


def test_nic_models_route_end_to_end_and_each_nic_has_its_driver(lab):
    drivers = {}
    for vm, nics in (("h1", ["eth0"]), ("rt1", ["eth0", "eth1", "eth2"]), ("h2", ["eth0"])):
        out = _ok(lab[vm], "for n in %s; do echo $n $(basename $(readlink /sys/class/net/$n/device/driver)); done"
                  % " ".join(nics))
        drivers.update({"%s.%s" % (vm, line.split()[0]): line.split()[1] for line in out.splitlines()})
    print("drivers:", drivers)
    assert drivers["h1.eth0"] == "e1000"
    assert drivers["rt1.eth0"] in ("8139cp", "8139too")
    assert drivers["rt1.eth1"] == drivers["h2.eth0"] == drivers["rt1.eth2"] == "virtio_net"
    # h1 (e1000) -> rt1 (rtl8139 in, virtio out) -> h2 (virtio)
    out = _ok(lab["h1"], "ping -c 3 -W 3 10.66.2.20")
    assert " 0% packet loss" in out, out


def test_masquerade_and_static_nat_as_seen_from_the_far_side(lab):
    _start_peer_server(lab["h2"], 7000)
    _start_peer_server(lab["h1"], 7000)
    # static 1:1, outbound: h1 leaves as its published address, and the reply comes back to it
    assert _peer_from_guest(lab["h1"], "10.66.2.20", 7000) == "h2 10.66.2.10"
    # masquerade (PAT): the host port behind rt1 arrives as rt1's outside address
    proc = subprocess.run(["ip", "netns", "exec", lab["netns"], sys.executable, "-c", PEER_CLIENT, "10.66.2.20",
                           "7000"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "h2 10.66.2.1"
    # static 1:1, inbound: a connection to the published address reaches h1, which sees h2's own address
    assert _peer_from_guest(lab["h2"], "10.66.2.10", 7000) == "h1 10.66.2.20"
    table = _ok(lab["rt1"], "iptables -t nat -S")
    print(table)
    assert "-j MASQUERADE" in table and "--to-destination 10.66.1.10" in table and "--to-source 10.66.2.10" in table

    # without the rules h2 sees h1's own address: the translation above was rt1's doing
    _ok(lab["rt1"], "iptables -t nat -F")
    assert _peer_from_guest(lab["h1"], "10.66.2.20", 7000) == "h2 10.66.1.10"
    check = lab["run"](LAB_PLAYBOOK, inventory=lab["inventory"], tags="nat", check=True, timeout=600)
    assert check.rc == 0 and check.changed("rt1") > 0, check
    assert "MASQUERADE" not in _ok(lab["rt1"], "iptables -t nat -S"), "check mode changed the router"
    fix = lab["run"](LAB_PLAYBOOK, inventory=lab["inventory"], tags="nat", timeout=600)
    assert fix.rc == 0 and fix.changed("rt1") == check.changed("rt1"), fix
    assert _peer_from_guest(lab["h1"], "10.66.2.20", 7000) == "h2 10.66.2.10"


def test_user_mode_nic_reaches_its_gateway_and_its_forward_reaches_the_guest(lab):
    out = _ok(lab["rt1"], "ip -4 -o addr show dev eth2; ping -c 2 -W 3 -I eth2 10.0.3.2")
    assert "10.0.3.15/24" in out and " 0% packet loss" in out, out
    _start_peer_server(lab["rt1"], 8000)
    with socket.create_connection(("127.0.0.1", lab["fwd"]), timeout=10) as conn:
        answer = conn.recv(200).decode().strip()
    # SLIRP delivers forwarded connections from its gateway address
    assert answer == "rt1 10.0.3.2"
    listeners = subprocess.run(["ss", "-Htln", "sport = :%d" % lab["fwd"]], capture_output=True, text=True).stdout
    assert listeners.split() and all(line.split()[3] == "127.0.0.1:%d" % lab["fwd"]
                                     for line in listeners.strip().splitlines()), listeners
    with open(os.path.join("/run/qemulab", lab["name"], "rt1", "fingerprint.json")) as f:
        argv = json.load(f)["argv"]
    netdevs = [arg for arg in argv if arg.startswith("user,")]
    assert any("net=10.0.3.0/24" in n and "restrict=on" in n and "hostfwd=tcp:127.0.0.1:%d-:8000" % lab["fwd"] in n
               for n in netdevs), netdevs


def test_vhost_is_reported_per_nic_with_its_reason(lab):
    usable = os.access("/dev/vhost-net", os.R_OK | os.W_OK)
    launched = _task(lab["up"], "Launch the VMs")["vms"]
    for item in launched:
        taps = [n for n in item["nics"] if n["backend"] == "tap"]
        assert taps
        for nic in taps:
            assert nic["vhost"] is usable, (item["name"], nic)
            if not usable:
                assert "/dev/vhost-net does not exist" in nic["vhost_reason"] or "cannot be opened" in nic[
                    "vhost_reason"], nic
        assert all("vhost" not in n for n in item["nics"] if n["backend"] == "user")
    table = "\n".join(_task(lab["up"], "Show each VM, its state, addresses, SSH and console")["msg"])
    print(table)
    assert "eth1:virtio vhost=%s" % ("on" if usable else "off") in table
    assert "eth0:rtl8139 vhost=off" in table or usable
    assert "eth2:user 127.0.0.1:%d" % lab["fwd"] in table
    if not usable:
        assert "vhost off: /dev/vhost-net" in table


def test_documented_console_command_attaches_and_the_log_keeps_growing(lab):
    run_dir = os.path.join("/run/qemulab", lab["name"], "rt1")
    log = os.path.join(run_dir, "console", "console.log")
    before = os.path.getsize(log)
    # qemulab-init keeps a root shell on ttyS0 (reachable only through the 0600 socket): no SSH needed.
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(CONSOLE_COMMAND[0], CONSOLE_COMMAND + ["UNIX-CONNECT:" + os.path.join(run_dir, "console.sock")])
    seen = b""
    status = None
    try:
        time.sleep(1)
        os.write(fd, b"\recho qlt-$((6*7))-$(hostname)\r")
        deadline = time.time() + 60
        while b"qlt-42-rt1" not in seen and time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        os.write(fd, b"\x1d")  # Ctrl-], the documented way out
        deadline = time.time() + 10
        while status is None and time.time() < deadline:
            done, status_code = os.waitpid(pid, os.WNOHANG)
            status = status_code if done else None
            time.sleep(0.1)
    finally:
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    assert b"qlt-42-rt1" in seen, seen[-500:]
    assert status is not None and os.WEXITSTATUS(status) == 0, "socat did not leave on Ctrl-]"
    after = os.path.getsize(log)
    with open(log, "rb") as f:
        assert b"qlt-42-rt1" in f.read()
    assert after > before
