"""The seed's other networks end to end, in the shared three-VM lab built by lab.yml (faultlab.NetworkLab):

    hpin1 (host port, 10.66.1.4) --+
    h1 (e1000, 10.66.1.10) --------+-- brin --(rtl8139) rt1 (virtio)-- brout -- h2 (virtio, 10.66.2.20)
                                                      rt1 eth2: QEMU user-mode, 10.0.3.15, 127.0.0.1:P -> 8000

brout carries an MTU of 4000 (the NIC option `mtu` on both of its NICs). rt1 masquerades brin out of eth1 and
publishes h1 as 10.66.2.10 (static 1:1 NAT). A small TCP service on each guest answers every connection with its
hostname and the peer address it sees, so the far side's view of the source address is read, not assumed. Every lab
address lives in the lab's own namespace or inside the guests; the user-mode NIC is restricted and talked to only
through its gateway and 127.0.0.1. The fault suite's running-lab checks use the same lab (one boot per session).
"""
import json
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import time

import pytest

from faultlab import use_shared_lab

pytestmark = pytest.mark.integration

# the documented console command (docs/troubleshooting.md, the status table), the socket path appended
CONSOLE_COMMAND = ["socat", "-,raw,echo=0,escape=0x1d"]
STATUS = "Show each VM, its state, addresses, SSH and console"
# vhost-net serves virtio-net only: an emulated e1000 or rtl8139 never uses it, whatever the host offers
VHOST_MODELS = ("virtio-net-pci",)
VHOST_DEVICE = "/dev/vhost-net"

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


def _ok(lab, vm, command, **kwargs):
    proc = lab.ssh(vm, command, **kwargs)
    assert proc.returncode == 0, (vm, command, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def _start_peer_server(lab, vm, listen_port):
    _ok(lab, vm, "cat > /tmp/peer.py", input=PEER_SERVER)
    _ok(lab, vm, "setsid python3 /tmp/peer.py %d </dev/null >/dev/null 2>&1 &" % listen_port)
    # under TCG python takes a while to start: wait until the port listens
    _ok(lab, vm, "for i in $(seq 60); do ss -Htln | grep -q ':%d ' && exit 0; sleep 0.5; done; exit 1" % listen_port)


def _task(result, name, host="localhost"):
    """A task's result by its name, with or without the role prefix Ansible puts before it."""
    for task, hname, res in result.tasks(host):
        if task == name or task.endswith(" : " + name):
            return res
    raise KeyError("no result for task %r on %s: %r" % (name, host, result))


def _peer_from_guest(lab, vm, address, service_port):
    return _ok(lab, vm, "python3 -c '%s' %s %d" % (PEER_CLIENT, address, service_port))


@pytest.fixture
def lab(request):
    """The shared lab (faultlab.NetworkLab), up from the first test of the session that needs it to the last."""
    yield from use_shared_lab(request)


def test_lab_comes_up_and_a_full_rerun_changes_nothing(lab):
    """Idempotence of the whole playbook, not only of a stage: lab.yml again with every tag a plain run has (prep,
    launch, config, nat, verify, status) reports changed=0 for the lab host and for every guest."""
    print("lab up in %.0f s" % lab.up_seconds)
    again = lab.run(timeout=900)
    assert again.rc == 0, again
    # the recap names every host: a run whose recap was not parsed has no stats and cannot pass for "nothing changed"
    assert sorted(again.stats) == ["h1", "h2", "localhost", "rt1"], again
    assert {host: again.changed(host) for host in again.stats} == {"localhost": 0, "rt1": 0, "h1": 0, "h2": 0}, again


def test_nic_mtu_is_the_taps_the_bridges_and_the_guests_and_a_full_frame_crosses_unfragmented(lab):
    """vm_nics[].mtu end to end: tap and bridge on the lab host, the guest's interface (virtio's host_mtu and the
    interfaces file), and a don't-fragment ping of exactly that size between the two guests on the segment."""
    for link in ("tout1", "tout2", "brout"):
        shown = subprocess.run(["ip", "-netns", lab.netns, "-o", "link", "show", link], capture_output=True,
                               text=True, check=True).stdout
        assert " mtu 4000 " in shown, shown
    assert _ok(lab, "rt1", "cat /sys/class/net/eth1/mtu") == "4000"
    assert _ok(lab, "h2", "cat /sys/class/net/eth0/mtu") == "4000"
    # the other segment keeps the kernel's default
    assert _ok(lab, "h1", "cat /sys/class/net/eth0/mtu") == "1500"
    # 3972 bytes of payload + 8 ICMP + 20 IP = 4000: passes only if every hop carries 4000 unfragmented
    _ok(lab, "h2", "ping -c 1 -W 5 -M do -s 3972 10.66.2.1")
    assert lab.ssh("h2", "ping -c 1 -W 5 -M do -s 3973 10.66.2.1").returncode != 0


def test_nic_models_route_end_to_end_and_each_nic_has_its_driver(lab):
    drivers = {}
    for vm, nics in (("h1", ["eth0"]), ("rt1", ["eth0", "eth1", "eth2"]), ("h2", ["eth0"])):
        out = _ok(lab, vm, "for n in %s; do echo $n $(basename $(readlink /sys/class/net/$n/device/driver)); done"
                  % " ".join(nics))
        drivers.update({"%s.%s" % (vm, line.split()[0]): line.split()[1] for line in out.splitlines()})
    print("drivers:", drivers)
    assert drivers["h1.eth0"] == "e1000"
    assert drivers["rt1.eth0"] in ("8139cp", "8139too")
    assert drivers["rt1.eth1"] == drivers["h2.eth0"] == drivers["rt1.eth2"] == "virtio_net"
    # h1 (e1000) -> rt1 (rtl8139 in, virtio out) -> h2 (virtio)
    out = _ok(lab, "h1", "ping -c 3 -W 3 10.66.2.20")
    assert " 0% packet loss" in out, out


def test_masquerade_and_static_nat_as_seen_from_the_far_side(lab):
    _start_peer_server(lab, "h2", 7000)
    _start_peer_server(lab, "h1", 7000)
    # static 1:1, outbound: h1 leaves as its published address, and the reply comes back to it
    assert _peer_from_guest(lab, "h1", "10.66.2.20", 7000) == "h2 10.66.2.10"
    # masquerade (PAT): the host port behind rt1 arrives as rt1's outside address
    proc = subprocess.run(["ip", "netns", "exec", lab.netns, sys.executable, "-c", PEER_CLIENT, "10.66.2.20",
                           "7000"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "h2 10.66.2.1"
    # static 1:1, inbound: a connection to the published address reaches h1, which sees h2's own address
    assert _peer_from_guest(lab, "h2", "10.66.2.10", 7000) == "h1 10.66.2.20"
    table = _ok(lab, "rt1", "iptables -t nat -S")
    print(table)
    assert "-j MASQUERADE" in table and "--to-destination 10.66.1.10" in table and "--to-source 10.66.2.10" in table

    # without the rules h2 sees h1's own address: the translation above was rt1's doing
    _ok(lab, "rt1", "iptables -t nat -F")
    assert _peer_from_guest(lab, "h1", "10.66.2.20", 7000) == "h2 10.66.1.10"
    check = lab.run(tags="nat", check=True, timeout=600)
    assert check.rc == 0 and check.changed("rt1") > 0, check
    assert "MASQUERADE" not in _ok(lab, "rt1", "iptables -t nat -S"), "check mode changed the router"
    fix = lab.run(tags="nat", timeout=600)
    assert fix.rc == 0 and fix.changed("rt1") == check.changed("rt1"), fix
    assert _peer_from_guest(lab, "h1", "10.66.2.20", 7000) == "h2 10.66.2.10"


def test_user_mode_nic_reaches_its_gateway_and_its_forward_reaches_the_guest(lab):
    out = _ok(lab, "rt1", "ip -4 -o addr show dev eth2; ping -c 2 -W 3 -I eth2 10.0.3.2")
    assert "10.0.3.15/24" in out and " 0% packet loss" in out, out
    _start_peer_server(lab, "rt1", 8000)
    with socket.create_connection(("127.0.0.1", lab.fwd), timeout=10) as conn:
        answer = conn.recv(200).decode().strip()
    # SLIRP delivers forwarded connections from its gateway address
    assert answer == "rt1 10.0.3.2"
    listeners = subprocess.run(["ss", "-Htln", "sport = :%d" % lab.fwd], capture_output=True, text=True).stdout
    assert listeners.split() and all(line.split()[3] == "127.0.0.1:%d" % lab.fwd
                                     for line in listeners.strip().splitlines()), listeners
    with open(os.path.join("/run/qemulab", lab.name, "rt1", "fingerprint.json")) as f:
        argv = json.load(f)["argv"]
    netdevs = [arg for arg in argv if arg.startswith("user,")]
    assert any("net=10.0.3.0/24" in n and "restrict=on" in n and "hostfwd=tcp:127.0.0.1:%d-:8000" % lab.fwd in n
               for n in netdevs), netdevs


def _vhost_device_usable():
    """Whether this host offers vhost-net, probed here rather than taken from qemulab: can /dev/vhost-net be opened
    read-write?"""
    try:
        fd = os.open(VHOST_DEVICE, os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _status_nic_lines(table):
    """{vm: its NIC line} of the status table (each VM's line is followed by one listing its NICs)."""
    lines = table.splitlines()
    return {line.split()[0]: lines[i + 1] for i, line in enumerate(lines[:-1]) if line[:1].strip() and
            not line.startswith("VM ") and not line.startswith("vhost off:")}


def vhost_problems(launched, table, usable):
    """Every NIC that breaks the vhost rule, as text: a tap NIC uses vhost exactly when its model is virtio-net and
    the host offers vhost-net; an off NIC says why, and the reason is true (the model, or the device as it is); the
    status table shows each NIC's decision and every reason; a user-mode NIC has no vhost at all."""
    problems, nic_lines = [], _status_nic_lines(table)
    for vm, nics in launched.items():
        for index, nic in enumerate(nics):
            dev = "eth%d" % index
            if nic["backend"] != "tap":
                if "vhost" in nic:
                    problems.append("%s %s: a %s NIC reports vhost" % (vm, dev, nic["backend"]))
                continue
            want = usable and nic["model"] in VHOST_MODELS
            if nic.get("vhost") is not want:
                problems.append("%s %s (%s): vhost %r, expected %r" % (vm, dev, nic["model"], nic.get("vhost"), want))
            shown = "%s:%s vhost=%s" % (dev, nic["model"].replace("virtio-net-pci", "virtio"), "on" if want else "off")
            if shown not in nic_lines.get(vm, ""):
                problems.append("%s: the status table does not show %r: %r" % (vm, shown, nic_lines.get(vm)))
            if want:
                continue
            reason = nic.get("vhost_reason") or ""
            device = "%s %s" % (VHOST_DEVICE, "cannot be opened" if os.path.exists(VHOST_DEVICE) else "does not exist")
            if nic["model"] in VHOST_MODELS:
                true_reasons = [device]  # a virtio NIC is off only because the device is not usable
            else:
                true_reasons = ["virtio"] + ([] if usable else [device])  # its model (and maybe the device) says why
            if not any(r in reason for r in true_reasons):
                problems.append("%s %s (%s): vhost off for %r, expected a reason naming one of %r"
                                % (vm, dev, nic["model"], reason, true_reasons))
            if "vhost off: " + reason not in table:
                problems.append("%s %s: the status table does not give the reason %r" % (vm, dev, reason))
    return problems


def test_traceroute_from_h1_to_h2_names_rt1_then_h2(lab):
    """This lab's longest path, hop by hop, with the guest's own traceroute (the seed's h1 -> rt1 -> rt2 -> rt4 -> h2
    needs the seven-VM seed lab: test_seed_topology.py and molecule's default scenario trace it): h1's traceroute to
    h2 answers from rt1's inside address, then from h2 itself, and from nothing else. One probe at a time (-N 1), so
    no ICMP rate limit turns a hop into a `*`."""
    out = _ok(lab, "h1", "traceroute -n -q 1 -w 3 -N 1 -m 6 10.66.2.20")
    hops = [line.split()[1] for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert hops == ["10.66.1.1", "10.66.2.20"], out


def test_vhost_follows_the_nic_model_and_the_host_and_each_nic_shows_its_reason(lab):
    """vhost only ever on a virtio-net NIC and only where the host offers vhost-net (probed here); e1000 and rtl8139
    always off, saying why; the status table shows every NIC's decision and reason."""
    usable = _vhost_device_usable()
    launched = {item["name"]: item["nics"] for item in _task(lab.up, "Launch the VMs")["vms"]}
    # the lab has each model the rule distinguishes, and a user-mode NIC
    assert sorted(launched) == ["h1", "h2", "rt1"], launched
    taps = {vm: [n["model"] for n in nics if n["backend"] == "tap"] for vm, nics in launched.items()}
    assert taps == {"rt1": ["rtl8139", "virtio-net-pci"], "h1": ["e1000"], "h2": ["virtio-net-pci"]}, launched
    assert launched["rt1"][2]["backend"] == "user", launched["rt1"]
    table = "\n".join(_task(lab.up, STATUS)["msg"])
    print("vhost-net usable here: %s\n%s" % (usable, table))
    assert vhost_problems(launched, table, usable) == []
    assert "eth2:user 127.0.0.1:%d" % lab.fwd in _status_nic_lines(table)["rt1"]


def test_documented_console_command_attaches_and_the_log_keeps_growing(lab):
    assert shutil.which(CONSOLE_COMMAND[0]), "socat is not installed: `make apt` installs it (the Makefile's APT_PACKAGES)"
    run_dir = os.path.join("/run/qemulab", lab.name, "rt1")
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
