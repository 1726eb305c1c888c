"""Simulated lab hosts on one machine: each one a network namespace plus a private mount namespace running its own
sshd, joined by an underlay in 192.0.2.0/24 (TEST-NET-1, never routed), reached by Ansible over real SSH.

A simulated host `qlsim-<tag>-<n>` is
- a network namespace of that name, with `lo` (its sshd listens on 127.0.0.1:22 there) and `ul0`, its underlay NIC,
  carrying 192.0.2.<10+n>/24;
- a private mount namespace (made by `unshare --mount --propagation private` inside the network namespace) with its
  own tmpfs over /run (so its own /run/qemulab, /run/netns, /run/sshd), over /var/lib/qemulab and over
  /root/.ansible; the image cache /var/cache/qemulab and everything else stay the machine's own;
- an sshd holding that mount namespace, with a host key and an authorized key generated here in a temp dir.

Ansible reaches a host through `ansible_ssh_common_args`: a ProxyCommand that enters the network namespace
(`ip netns exec <ns> socat STDIO TCP:127.0.0.1:22`), the host key checked against a temp known_hosts under a
HostKeyAlias (all hosts are 127.0.0.1 to ssh), and a ControlPath of its own (ssh's %C would be the same for all).
The hosts' underlay NICs are veth ends whose peers sit on the bridge `underlay` in the namespace `qlsim-<tag>-ul`.
The root namespace gets no address and no interface.

    with simulated_hosts(2, "demo") as hosts:
        inventory = {"hypervisors": {"hosts": {h.name: h.hostvars() for h in hosts}}}
        hosts[0].run(["ip", "-o", "addr"])

or from a shell (the state, with the pids to end, lives in /run/qlsim/<tag>.json):

    python3 tests/integration/simhosts.py up --count 2 --tag demo    # prints an inventory file to use with -i
    python3 tests/integration/simhosts.py down --tag demo

Teardown ends by pid every process living in a host's mount namespace (its sshd and whatever ran over SSH, such as
QEMU), asks the SSH control masters of its ControlPaths to exit, deletes the namespaces (a lab namespace made inside
a host lives only in that host's private /run/netns and dies with it), the temp dir and the state file.
"""
import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
VENV_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")
STATE_DIR = "/run/qlsim"
TAG_RULE = re.compile(r"^[a-z0-9]{1,8}$")
UNDERLAY_PREFIX = "192.0.2."  # TEST-NET-1 (RFC 5737): documentation addresses, never routed
UNDERLAY_BRIDGE = "underlay"
UNDERLAY_NIC = "ul0"
# Private to each host: /run (its /run/qemulab, /run/netns, /run/sshd), the lab state, Ansible's remote temp dir.
PRIVATE_TMPFS = (("/run", "0755"), ("/var/lib/qemulab", "0755"), ("/root/.ansible", "0700"))
SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 20
STOP_TIMEOUT = 10

SSHD_CONFIG = """\
# sshd of simulated lab host {name} (tests/integration/simhosts.py); reachable only inside its network namespace
Port 22
ListenAddress 127.0.0.1
HostKey {hostkey}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# the key files sit in a temp dir under /tmp (mode 1777), which StrictModes would refuse
StrictModes no
PidFile none
Subsystem sftp internal-sftp
"""


class SimHostError(RuntimeError):
    """Simulated hosts could not be made or removed; the message says which and why."""


def _run(argv, check=True, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise SimHostError("%s failed (rc %s): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc


def _mount_ns(pid):
    try:
        return os.readlink("/proc/%s/ns/mnt" % pid)
    except OSError:
        return None


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _pids_in_mount_ns(mnt):
    return sorted(int(entry) for entry in os.listdir("/proc")
                  if entry.isdigit() and int(entry) != os.getpid() and _mount_ns(entry) == mnt and _alive(int(entry)))


def _netns_list():
    return set(line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip())


class SimHost:
    """One simulated lab host (see the module docstring)."""

    def __init__(self, index, tag, tmpdir, pid=None, mnt=None):
        self.index = index
        self.tag = tag
        self.tmpdir = tmpdir
        self.name = self.netns = "qlsim-%s-%d" % (tag, index)
        self.underlay_address = UNDERLAY_PREFIX + str(10 + index)
        self.dir = os.path.join(tmpdir, "host%d" % index)
        self.pid = pid  # the sshd holding the mount namespace
        self.mnt = mnt  # that mount namespace, as /proc/<pid>/ns/mnt reads

    @property
    def private_key(self):
        return os.path.join(self.tmpdir, "id_ed25519")

    @property
    def control_path(self):
        return os.path.join(self.tmpdir, "cp", "host%d" % self.index)

    @property
    def ssh_common_args(self):
        proxy = "ip netns exec %s socat STDIO TCP:127.0.0.1:22" % self.netns
        return " ".join([
            "-o", shlex.quote("ProxyCommand=" + proxy),
            "-o", "HostKeyAlias=" + self.name,
            "-o", "UserKnownHostsFile=" + os.path.join(self.tmpdir, "known_hosts"),
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ControlPath=" + self.control_path,
        ])

    def hostvars(self):
        return {
            "ansible_host": "127.0.0.1",
            "ansible_user": "root",
            "ansible_ssh_common_args": self.ssh_common_args,
            "ansible_ssh_private_key_file": self.private_key,
            "ansible_python_interpreter": VENV_PYTHON,  # the modules need pyroute2, which lives in the venv
            "lab_underlay_address": self.underlay_address,
        }

    def run(self, argv, check=False, timeout=60):
        """Run argv inside this host (its network and mount namespaces); the CompletedProcess, text output."""
        if not self.pid or _mount_ns(self.pid) != self.mnt:
            raise SimHostError("simulated host %s is not running" % self.name)
        return subprocess.run(["nsenter", "--target", str(self.pid), "--mount", "--net", "--"] + list(argv),
                              capture_output=True, text=True, check=check, timeout=timeout)

    @contextlib.contextmanager
    def unreachable(self):
        """While the block runs, SSH to this host is refused (a lab host that is down or cut off), its processes keep
        running: Ansible's control master is told to exit and a REJECT rule for TCP port 22 sits in the host's own
        network namespace; both are undone afterwards."""
        rule = ["-p", "tcp", "--dport", "22", "-j", "REJECT", "--reject-with", "tcp-reset"]
        _run(["ssh", "-o", "ControlPath=" + self.control_path, "-O", "exit", "qlsim"], check=False, timeout=10)
        _run(["ip", "netns", "exec", self.netns, "iptables", "-I", "INPUT"] + rule)
        try:
            yield self
        finally:
            _run(["ip", "netns", "exec", self.netns, "iptables", "-D", "INPUT"] + rule)

    def to_state(self):
        return {"index": self.index, "pid": self.pid, "mnt": self.mnt}

    def __repr__(self):
        return "SimHost(%s, %s, pid %s)" % (self.name, self.underlay_address, self.pid)


class SimHosts:
    """The simulated hosts of one tag and what tears them down."""

    def __init__(self, tag, tmpdir=None, hosts=None):
        self.tag = tag
        self.tmpdir = tmpdir
        self.hosts = hosts or []
        self.underlay_netns = "qlsim-%s-ul" % tag

    @property
    def state_file(self):
        return os.path.join(STATE_DIR, self.tag + ".json")

    def save(self):
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as handle:
            json.dump({"tag": self.tag, "tmpdir": self.tmpdir, "hosts": [h.to_state() for h in self.hosts]}, handle)
        os.rename(tmp, self.state_file)

    @classmethod
    def load(cls, tag):
        sim = cls(tag)
        try:
            with open(sim.state_file) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return sim  # nothing recorded: down still removes namespaces of this tag
        sim.tmpdir = data["tmpdir"]
        sim.hosts = [SimHost(h["index"], tag, data["tmpdir"], h["pid"], h["mnt"]) for h in data["hosts"]]
        return sim

    def namespaces(self):
        prefix = "qlsim-%s-" % self.tag
        return sorted(ns for ns in _netns_list() if ns.startswith(prefix))

    # -- bring-up ----------------------------------------------------------------------------------------------

    def up(self, count):
        if not TAG_RULE.match(self.tag):
            raise SimHostError("tag %r: use 1-8 lower-case letters or digits" % self.tag)
        if not 1 <= count <= 200:
            raise SimHostError("count %r: between 1 and 200 hosts" % count)
        if not os.access(SSHD, os.X_OK):
            raise SimHostError("%s is missing; install openssh-server (make setup does)" % SSHD)
        if os.path.exists(self.state_file) or self.namespaces():
            raise SimHostError("simulated hosts of tag %s exist already; remove them first: python3 "
                               "tests/integration/simhosts.py down --tag %s" % (self.tag, self.tag))
        self.tmpdir = tempfile.mkdtemp(prefix="qlsim-%s-" % self.tag)
        os.makedirs(os.path.join(self.tmpdir, "cp"), mode=0o700)
        self.save()
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qlsim-%s-controller" % self.tag,
              "-f", os.path.join(self.tmpdir, "id_ed25519")])
        shutil.copy(os.path.join(self.tmpdir, "id_ed25519.pub"), os.path.join(self.tmpdir, "authorized_keys"))
        _run(["ip", "netns", "add", self.underlay_netns])
        _run(["ip", "-n", self.underlay_netns, "link", "add", UNDERLAY_BRIDGE, "type", "bridge"])
        _run(["ip", "-n", self.underlay_netns, "link", "set", UNDERLAY_BRIDGE, "up"])
        for index in range(1, count + 1):
            host = SimHost(index, self.tag, self.tmpdir)
            self.hosts.append(host)
            self.save()
            self._network(host)
            self._start_sshd(host)
            self.save()
        for host in self.hosts:
            self._wait_sshd(host)
        return self.hosts

    def _network(self, host):
        _run(["ip", "netns", "add", host.netns])
        _run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        # made directly in the two namespaces: the root namespace never holds either end
        _run(["ip", "-n", self.underlay_netns, "link", "add", "h%d" % host.index, "type", "veth",
              "peer", "name", UNDERLAY_NIC, "netns", host.netns])
        _run(["ip", "-n", self.underlay_netns, "link", "set", "h%d" % host.index, "master", UNDERLAY_BRIDGE, "up"])
        _run(["ip", "-n", host.netns, "addr", "add", host.underlay_address + "/24", "dev", UNDERLAY_NIC])
        _run(["ip", "-n", host.netns, "link", "set", UNDERLAY_NIC, "up"])

    def _start_sshd(self, host):
        os.makedirs(host.dir, mode=0o700)
        hostkey = os.path.join(host.dir, "ssh_host_ed25519_key")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", hostkey])
        with open(hostkey + ".pub") as handle:
            key_type, key = handle.read().split()[:2]
        with open(os.path.join(self.tmpdir, "known_hosts"), "a") as handle:
            handle.write("%s %s %s\n" % (host.name, key_type, key))
        config = os.path.join(host.dir, "sshd_config")
        with open(config, "w") as handle:
            handle.write(SSHD_CONFIG.format(name=host.name, hostkey=hostkey,
                                            authorized=os.path.join(self.tmpdir, "authorized_keys")))
        mounts = " && ".join("mount -t tmpfs -o mode=%s qlsim %s" % (mode, shlex.quote(path))
                             for path, mode in PRIVATE_TMPFS)
        script = "%s && mkdir -p /run/sshd /run/netns && exec %s -D -e -f %s" % (
            mounts, SSHD, shlex.quote(config))
        for path, _mode in PRIVATE_TMPFS[1:]:
            if not os.path.isdir(path):  # a mount point; the machine's own qemulab/Ansible state dir anyway
                os.makedirs(path, mode=0o700)
        with open(os.path.join(host.dir, "sshd.log"), "w") as log:
            # ip netns exec and unshare exec (no fork), so the pid is the sshd's from the moment sh execs it
            proc = subprocess.Popen(["ip", "netns", "exec", host.netns, "unshare", "--mount", "--propagation",
                                     "private", "--", "sh", "-c", script],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        host.pid = proc.pid
        host.popen = proc
        # the exec chain (ip netns exec, unshare, sh) ends in sshd within milliseconds; its mount namespace is the
        # host's from then on, recorded before anything else can run there
        deadline = time.monotonic() + START_TIMEOUT
        while os.path.realpath("/proc/%d/exe" % proc.pid) != os.path.realpath(SSHD):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                with open(os.path.join(host.dir, "sshd.log")) as handle:
                    raise SimHostError("host %s: sshd did not start: %s" % (host.name, handle.read().strip()[-800:]))
            time.sleep(0.02)
        host.mnt = _mount_ns(proc.pid)

    def _wait_sshd(self, host):
        """Wait until the host's sshd answers on its 127.0.0.1:22 with the key generated for it."""
        with open(os.path.join(host.dir, "ssh_host_ed25519_key.pub")) as handle:
            key = handle.read().split()[1]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            scan = _run(["ip", "netns", "exec", host.netns, "ssh-keyscan", "-T", "2", "-t", "ed25519",
                         "127.0.0.1"], check=False)
            if key in scan.stdout:
                return
            if getattr(host, "popen", None) is not None and host.popen.poll() is not None:
                break
            time.sleep(0.2)
        with open(os.path.join(host.dir, "sshd.log")) as handle:
            log = handle.read()
        raise SimHostError("host %s: sshd did not come up on 127.0.0.1:22 of namespace %s: %s"
                           % (host.name, host.netns, log.strip()[-800:] or "no output"))

    # -- teardown ----------------------------------------------------------------------------------------------

    def down(self):
        """Remove everything of this tag; returns what could not be removed (empty when all went)."""
        problems = []
        self._exit_control_masters()
        for host in self.hosts:
            problems += self._stop(host)
        for netns in self.namespaces():
            proc = _run(["ip", "netns", "delete", netns], check=False)
            if proc.returncode != 0:
                problems.append("namespace %s: %s" % (netns, proc.stderr.strip()))
        if self.tmpdir and os.path.isdir(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        for path in (self.state_file, self.state_file + ".tmp"):
            if os.path.exists(path):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(STATE_DIR)  # other tags' state files keep it
        return problems

    def _exit_control_masters(self):
        """SSH masters Ansible left behind (ControlPersist) keep a ProxyCommand inside a host's namespace."""
        directory = os.path.join(self.tmpdir or "", "cp")
        if not self.tmpdir or not os.path.isdir(directory):
            return
        for name in os.listdir(directory):
            _run(["ssh", "-o", "ControlPath=" + os.path.join(directory, name), "-O", "exit", "qlsim"], check=False,
                 timeout=10)

    def _stop(self, host):
        """End by pid every process of the host's mount namespace (its sshd and what ran over SSH): TERM, then
        KILL. A pid whose mount namespace is no longer the recorded one is someone else's and left alone."""
        mnt = host.mnt
        if mnt is None:
            return []  # never started (a start that failed ended its process itself)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _pids_in_mount_ns(mnt):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _pids_in_mount_ns(mnt) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _pids_in_mount_ns(mnt):
                break
        popen = getattr(host, "popen", None)
        if popen is not None:
            popen.wait(timeout=STOP_TIMEOUT)
        left = _pids_in_mount_ns(mnt)
        return ["host %s: processes %s still run" % (host.name, left)] if left else []


@contextlib.contextmanager
def simulated_hosts(count, tag):
    """Yield `count` simulated lab hosts (SimHost objects) of `tag`; removes all of them afterwards, whatever
    happened. A teardown that leaves something raises SimHostError naming it."""
    sim = SimHosts(tag)
    try:
        yield sim.up(count)
    finally:
        problems = sim.down()
        if problems:
            raise SimHostError("simulated hosts %s: teardown left: %s" % (tag, "; ".join(problems)))


def write_inventory(hosts, path):
    """An inventory (JSON is YAML) with the hosts in group `hypervisors`."""
    with open(path, "w") as handle:
        json.dump({"hypervisors": {"hosts": dict((h.name, h.hostvars()) for h in hosts)}}, handle, indent=2)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Simulated lab hosts on this machine (see the docstring).")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make simulated hosts and print an inventory of them")
    up.add_argument("--count", type=int, default=2)
    up.add_argument("--tag", required=True)
    down = sub.add_parser("down", help="remove the simulated hosts of a tag")
    down.add_argument("--tag", required=True)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (it makes namespaces and starts sshd)")
    sim = SimHosts(args.tag) if args.command == "up" else SimHosts.load(args.tag)
    try:
        if args.command == "up":
            try:
                hosts = sim.up(args.count)
            except BaseException:
                sim.down()
                raise
            inventory = write_inventory(hosts, os.path.join(sim.tmpdir, "inventory.yml"))
            for host in hosts:
                print("%s  underlay %s  sshd pid %d" % (host.name, host.underlay_address, host.pid))
            print("inventory: %s" % inventory)
            print("try:       ansible -i %s hypervisors -m ansible.builtin.command -a 'ip -o addr'" % inventory)
            print("remove:    python3 %s down --tag %s" % (os.path.relpath(__file__), args.tag))
            return 0
        problems = sim.down()
    except SimHostError as exc:
        print("simhosts: %s" % exc, file=sys.stderr)
        return 1
    for problem in problems:
        print("simhosts: %s" % problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
