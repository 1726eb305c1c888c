"""Issue 14: a guest flooding its serial console cannot fill the lab host's /run, and no console tmpfs outlives a lab.

qemu_vm puts each VM's console log on a tmpfs of its own (console_log_limit). Each case runs this file as a child
under `unshare -m --propagation private`, with a small tmpfs over /run standing for a lab host's /run (on the old code
the flood fills that one, never the host's), so every mount a case makes ends with it.

- flood: one real guest of the shared default image (the guest_image role's, as test_guest_image boots it), started
  by qemu_vm through ansible-playbook with console_log_limit 256K. Over SSH its root writes `yes` to /dev/ttyS0 in
  the background until the log stops growing (at most FLOOD_SECONDS). The log is then at the limit and no larger,
  its tmpfs holds no more, /run grew by less than the limit, the guest still answers SSH with the flood still
  running, and the console socket still carries the flood. qemu_vm state=absent leaves no console tmpfs and no file.
- killed: a run killed after qemu_vms started two busybox guests (their QEMUs SIGKILLed by pid, no stop ever run)
  leaves their console tmpfs mounted; the cleanup path removes them - the teardown role, or lab_dirs state=absent on
  its own (as if the VMs' own removal had been skipped).
"""
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from hostile_harness import _alive

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
VENV_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")

pytestmark = pytest.mark.integration

KIB = 1024
LIMIT = 256 * KIB
# The stand-in for the lab host's /run: larger than anything the lab writes there, far smaller than the host's.
RUN_TMPFS_SIZE = 64 * 1024 * KIB
FLOOD_SECONDS = 30
# The log counts as full once it has not grown for this long.
QUIET_SECONDS = 5
FLOOD_TEXT = "qemulab-console-flood"
SOURCE = "qemulab-console"
ROLE_PLAY = """
- name: Guest image
  hosts: localhost
  gather_facts: false
  roles:
    - role: qemulab.network.guest_image
"""


def integration_conftest():
    """tests/integration/conftest.py by its path (the name `conftest` alone may find tests/conftest.py)."""
    spec = importlib.util.spec_from_file_location("qemulab_integration_conftest", os.path.join(HERE, "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the child, inside the private mount namespace ---------------------------------------------------------------

# The mounts this namespace was made with: the host's labs' console tmpfs are listed too (under the /run they had,
# hidden by the case's own), and are not the case's.
INHERITED = set()


def _console_mounts():
    """[(mount point, size option)] of the console tmpfs made in this mount namespace since it started."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            rest = fields[fields.index("-", 6) + 1:]
            if rest[1] == SOURCE and fields[0] not in INHERITED:
                found.append((fields[4], [o for o in rest[2].split(",") if o.startswith("size=")][0]))
    return found


def _used(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _files(root):
    return sorted(os.path.join(base, name) for base, dirs, files in os.walk(root) for name in dirs + files)


def _qemus_under(run_dir):
    """QEMUs started from a VM directory below `run_dir` (their working directory), the case's lab's own: other
    labs' QEMUs on the host show their own run directories here too."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink("/proc/%s/cwd" % entry).startswith(run_dir + "/"):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    with open(path) as private, open(path + ".pub") as public:
        return private.read(), public.read()


def _wait_banner(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(3)
                if s.recv(16).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _ssh(vm, command, timeout=90):
    argv = ["ssh", "-i", vm["key"], "-p", str(vm["port"]), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=" + vm["known_hosts"], "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=30", "root@127.0.0.1", command]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, -1, exc.stdout or "", "timed out after %ss" % timeout)


def _console_socket_carries(path, text, seconds=10):
    """True when reading the console socket for a while brings `text`: the guest's output still flows."""
    seen = b""
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(2)
        conn.connect(path)
        while time.monotonic() < deadline and text.encode() not in seen:
            try:
                seen = (seen + conn.recv(65536))[-65536:]
            except socket.timeout:
                pass
    return text.encode() in seen


VM_PLAY = """
- name: VM
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Overlay
      qemulab.network.disk_overlay:
        path: "{{ overlay }}"
        backing: "{{ image.guest_image_disk }}"
      when: state == 'running'
    - name: VM
      qemulab.network.qemu_vm:
        name: vm1
        lab: "{{ lab }}"
        state: "{{ state }}"
        kernel: "{{ image.guest_image_kernel }}"
        initrd: "{{ image.guest_image_initrd }}"
        append: "{{ append }}"
        disks: [{file: "{{ overlay }}", format: qcow2}]
        memory: 512
        accelerator: tcg
        stop_timeout: 5
        console_log_limit: "{{ limit }}"
        fw_cfg: "{{ fw_cfg }}"
        nics:
          - {mac: "{{ macs.eth0 }}", backend: user}
          - {mac: "{{ macs.mgmt0 }}", backend: user, hostfwd: [{host_port: "{{ port }}", guest_port: 22}]}
"""


def flood(spec, lab, scratch, run_playbook):
    """The flood case; returns its report (every figure the parent asserts on)."""
    run_dir = "/run/qemulab/%s/vm1" % lab
    _private, client_public = _keygen(os.path.join(scratch, "client"))
    host_private, host_public = _keygen(os.path.join(scratch, "host"))
    port = _free_port()
    known_hosts = os.path.join(scratch, "known_hosts")
    with open(known_hosts, "w") as f:
        f.write("[127.0.0.1]:%d %s\n" % (port, " ".join(host_public.split()[:2])))
    macs = {"eth0": "52:54:00:c0:00:01", "mgmt0": "52:54:00:c0:00:0f"}
    variables = {
        "lab": lab, "port": port, "macs": macs, "limit": "256K", "image": spec["image"],
        "overlay": os.path.join(scratch, "vm1.qcow2"),
        "append": "%s qemulab.nics=%s qemulab.mgmt=%s qemulab.hostname=%s-vm1" % (
            spec["image"]["guest_image_append"], macs["eth0"], macs["mgmt0"], lab),
        # what vm_launch hands a lab guest at boot; the NICs are restricted user-mode ones: no packet leaves
        "fw_cfg": [{"name": "opt/qemulab/interfaces", "content": "auto lo\n\niface lo inet loopback\n"},
                   {"name": "opt/qemulab/sysctl", "content": "net.ipv4.ip_forward = 0\n"},
                   {"name": "opt/qemulab/authorized_keys", "content": client_public},
                   {"name": "opt/qemulab/ssh_host_ed25519_key", "content": host_private}]}
    vm = {"key": os.path.join(scratch, "client"), "port": port, "known_hosts": known_hosts}
    report = {"lab": lab, "run_used_at_start": _used("/run")}

    planned = run_playbook(VM_PLAY, extra_vars=dict(variables, state="running"), check=True)
    report["check_rc"], report["check_mounts"] = planned.rc, _console_mounts()
    up = run_playbook(VM_PLAY, extra_vars=dict(variables, state="running"))
    report["up_rc"] = up.rc
    if up.rc != 0:
        report["up"] = repr(up)[-3000:]
        return report
    started = up.result("VM")
    log = started["console_log"]
    report["console_log"] = log
    report["mounts_after_start"] = _console_mounts()
    report["banner"] = _wait_banner(port, 180)
    again = run_playbook(VM_PLAY, extra_vars=dict(variables, state="running"))
    report["second_run_changed"] = again.changed() if again.rc == 0 else repr(again)[-2000:]
    with open(log, "rb") as f:
        boot = f.read()
    report["log_after_boot"] = len(boot)
    report["run_used_before_flood"] = _used("/run")

    start = _ssh(vm, "setsid -f sh -c 'yes %s > /dev/ttyS0' < /dev/null > /dev/null 2>&1; echo started" % FLOOD_TEXT)
    report["flood_started"] = start.returncode == 0 and "started" in start.stdout
    t0 = time.monotonic()
    sizes, last_growth = [], t0
    while time.monotonic() - t0 < FLOOD_SECONDS:
        size = os.path.getsize(log)
        if not sizes or size > sizes[-1]:
            last_growth = time.monotonic()
        sizes.append(size)
        if time.monotonic() - last_growth >= QUIET_SECONDS:
            break
        time.sleep(1)
    report["flood_seconds"] = round(time.monotonic() - t0, 1)
    report["log_sizes"] = sizes
    report["log_size"] = os.path.getsize(log)
    report["console_tmpfs_used"] = _used(os.path.dirname(log))
    report["run_used_after_flood"] = _used("/run")
    with open(log, "rb") as f:
        kept = f.read()
    # what came first stays (the boot), the flood follows until the tmpfs is full
    report["log_holds_boot_and_flood"] = [kept.startswith(boot), FLOOD_TEXT.encode() in kept[len(boot):]]

    alive = _ssh(vm, "echo alive; pgrep -x yes > /dev/null && echo flooding")
    report["ssh_after_flood"] = [alive.returncode, alive.stdout.split(), alive.stderr[-300:]]
    report["console_socket_carries_flood"] = _console_socket_carries(started["console_socket"], FLOOD_TEXT)

    down = run_playbook(VM_PLAY, extra_vars=dict(variables, state="absent"))
    report["down_rc"] = down.rc if down.rc == 0 else repr(down)[-2000:]
    report["mounts_after_absent"] = _console_mounts()
    report["run_dir_after_absent"] = os.path.exists(run_dir)
    report["files_left"] = [p for p in _files("/run/qemulab") if ("/%s/" % lab) in p + "/"
                            and p != "/run/qemulab/%s" % lab]
    report["run_used_at_end"] = _used("/run")
    return report


KILLED_PLAY = """
- name: A run killed after its VMs started
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Lab directories
      qemulab.network.lab_dirs:
        lab: "{{ lab }}"
        inventory: /srv/console-test
        state: present
    - name: VMs
      qemulab.network.qemu_vms:
        lab: "{{ lab }}"
        state: running
        vms: "{{ vms }}"
"""
TEARDOWN_PLAY = """
- name: Cleanup
  hosts: localhost
  gather_facts: false
  roles:
    - role: qemulab.network.teardown
      vars:
        teardown_lab_name: "{{ lab }}"
        teardown_netns: "{{ netns }}"
"""
LAB_DIRS_PLAY = """
- name: Cleanup of the directories alone
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Lab directories
      qemulab.network.lab_dirs:
        lab: "{{ lab }}"
        state: absent
"""


def killed(spec, lab, scratch, run_playbook):
    lab_dir = "/run/qemulab/" + lab
    vms = [{"name": name, "kernel": spec["guest"]["kernel"], "initrd": spec["guest"]["initrd"],
            "append": "console=ttyS0", "memory": "128M", "tb_size": 32, "accelerator": "tcg", "stop_timeout": 0,
            "console_log_limit": "64K"} for name in ("vm1", "vm2")]
    report = {"lab": lab}
    up = run_playbook(KILLED_PLAY, extra_vars={"lab": lab, "vms": vms})
    report["up_rc"] = up.rc if up.rc == 0 else repr(up)[-3000:]
    pids = [vm.get("pid") for vm in up.result("VMs")["vms"]] if up.rc == 0 else []
    report["pids"] = pids
    report["mounts_started"] = sorted(mount for mount, _size in _console_mounts())
    _kill([pid for pid in pids if pid])
    report["alive_after_kill"] = [pid for pid in pids if pid and _alive(pid)]
    report["mounts_after_kill"] = sorted(mount for mount, _size in _console_mounts())
    if spec["cleanup"] == "teardown":
        # a namespace name no other lab uses: /run/netns is the case's own, so none of that name exists here
        cleanup = run_playbook(TEARDOWN_PLAY, extra_vars={"lab": lab, "netns": "qlk-none"})
    else:
        cleanup = run_playbook(LAB_DIRS_PLAY, extra_vars={"lab": lab})
    report["cleanup_rc"] = cleanup.rc if cleanup.rc == 0 else repr(cleanup)[-3000:]
    report["mounts_after_cleanup"] = _console_mounts()
    report["lab_dir_after_cleanup"] = os.path.exists(lab_dir)
    again = run_playbook(TEARDOWN_PLAY if spec["cleanup"] == "teardown" else LAB_DIRS_PLAY,
                         extra_vars={"lab": lab, "netns": "qlk-none"})
    report["second_cleanup"] = [again.rc, again.changed()]
    return report


def child(case, spec_json):
    spec = json.loads(spec_json)
    if os.stat("/proc/self/ns/mnt").st_ino == spec["host_mount_ns"]:
        raise SystemExit("refusing to run: not in a private mount namespace (start me with unshare -m)")
    with open("/proc/self/mountinfo") as f:
        INHERITED.update(line.split()[0] for line in f)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=%d" % RUN_TMPFS_SIZE, "qemulab-test", "/run"],
                   check=True)
    if case == "killed":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "qemulab-test", "/var/lib/qemulab"],
                       check=True)
    # the overlay and keys on the host's disk, not on the /run being measured
    scratch = tempfile.mkdtemp(prefix="qemulab-console-")
    conftest = integration_conftest()

    def run_playbook(play, **kwargs):
        return conftest.run_playbook(play, timeout=600, **kwargs)
    lab = ("qlc" if case == "flood" else "qlk") + secrets.token_hex(3)
    try:
        report = (flood if case == "flood" else killed)(spec, lab, scratch, run_playbook)
    finally:
        left = _qemus_under("/run/qemulab/" + lab)
        _kill(left)
        shutil.rmtree(scratch, ignore_errors=True)
    report["qemus_left"] = left
    sys.stdout.write(json.dumps(report))


# -- the parent --------------------------------------------------------------------------------------------------

def run_case(case, spec):
    spec = dict(spec, host_mount_ns=os.stat("/proc/self/ns/mnt").st_ino)
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", VENV_PYTHON, os.path.abspath(__file__),
                           case, json.dumps(spec)], capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 0 and proc.stdout.startswith("{"), (proc.stdout[-3000:], proc.stderr[-3000:])
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def image():
    """The default guest image's files (built on the first run on this host, cached after)."""
    res = integration_conftest().run_playbook(ROLE_PLAY, timeout=3600)
    assert res.rc == 0, res
    facts = res.result("qemulab.network.guest_image : Publish the image for the lab roles")["ansible_facts"]
    return dict((k, facts[k]) for k in ("guest_image_kernel", "guest_image_initrd", "guest_image_disk",
                                        "guest_image_append"))


def test_a_guest_flooding_its_console_fills_its_own_tmpfs_and_no_more(image):
    report = run_case("flood", {"image": image})
    print(json.dumps(report))
    summary = json.dumps(report, indent=1)[:6000]
    # check mode mounts nothing; a start mounts one tmpfs of the limit, on the VM's console directory
    assert report["check_rc"] == 0 and report["check_mounts"] == [], summary
    assert report["up_rc"] == 0 and report["banner"], summary
    run_dir = "/run/qemulab/%s/vm1" % report["lab"]
    assert report["console_log"] == run_dir + "/console/console.log", summary
    assert report["mounts_after_start"] == [[run_dir + "/console", "size=256k"]], summary
    assert report["second_run_changed"] == 0, summary
    # the flood ran and filled the log to its limit (so this test sees a real flood), and not one byte further
    assert report["flood_started"], summary
    assert LIMIT - 4 * KIB <= report["log_size"] <= LIMIT, summary
    assert report["console_tmpfs_used"] <= LIMIT, summary
    assert report["log_holds_boot_and_flood"] == [True, True], summary
    # /run holds the run files, never the flood: less than the limit over the whole life of the VM
    assert report["run_used_after_flood"] - report["run_used_at_start"] < LIMIT, summary
    # the guest runs on with the flood still going, and its console socket still carries everything
    assert report["ssh_after_flood"][:2] == [0, ["alive", "flooding"]], summary
    assert report["console_socket_carries_flood"], summary
    # state=absent leaves no console tmpfs, no file, and /run as it was
    assert report["down_rc"] == 0 and report["mounts_after_absent"] == [], summary
    assert not report["run_dir_after_absent"] and report["files_left"] == [], summary
    assert report["qemus_left"] == [], summary


@pytest.mark.parametrize("cleanup", ["teardown", "lab_dirs"])
def test_a_killed_runs_console_tmpfs_is_removed_by_the_cleanup(cleanup):
    from minimal_guest import build

    report = run_case("killed", {"guest": build(), "cleanup": cleanup})
    summary = json.dumps(report, indent=1)[:6000]
    lab_dir = "/run/qemulab/%s" % report["lab"]
    mounts = [lab_dir + "/vm1/console", lab_dir + "/vm2/console"]
    assert report["up_rc"] == 0 and all(report["pids"]), summary
    assert report["mounts_started"] == mounts, summary
    # killed by pid: no stop ran, the tmpfs stay (a mount point keeps its directory from being removed)
    assert report["alive_after_kill"] == [] and report["mounts_after_kill"] == mounts, summary
    assert report["cleanup_rc"] == 0 and report["mounts_after_cleanup"] == [], summary
    assert not report["lab_dir_after_cleanup"], summary
    assert report["second_cleanup"] == [0, 0] and report["qemus_left"] == [], summary


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(REPO_ROOT, ".build", "collections"))
    sys.path.insert(0, HERE)
    child(sys.argv[1], sys.argv[2])
