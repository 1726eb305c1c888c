"""Fault injection at the lab level (issue 7): real labs through lab.yml, killed, broken and raced.

Two labs, each in a namespace it creates itself (unique names per run) and removes on cleanup. Lab A is the shared
three-VM lab of test_networks.py (faultlab.NetworkLab: router rt1, hosts h1 and h2, a host port routing to h2
through rt1), up once per session: the tests that only need a running lab read it, the ones that break it repair it
before they end (a VM killed and restarted, a firewall policy set and reset). Lab B (`lab_b`, faultlab.Lab: router
r1, host h1) takes the kills of property 4, converges by rerunning lab.yml, runs beside A under A's very bridge and
tap names (property 12) and is finally torn down while a bring-up of it runs (properties 11 and 13). Lab B runs its
QEMUs as the unprivileged user nobody (property 9), so its kills and its teardown cover that mode too. Every test
compares snapshots: the root namespace's links, addresses, routes and sysctls (read only), the namespace list, and
what the lab could leave (QEMU processes, run directories, overlays). Properties proven elsewhere at the module level
are referenced in each test's docstring; here they are proven again through the roles.
"""
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time

import pytest
import yaml
from pyroute2 import NetNS
from pyroute2 import netns as pr_netns

from conftest import REPO_ROOT as REPO, run_playbook
from faultlab import (NETWORK_LAB_LINKS, Lab, failure_text, fifteen, host_picture, kill_run, read_events,
                      root_picture, root_sysctls, start_playbook, use_shared_lab, wait_event, wait_run)
from test_bad_inventory_run import CORPUS, SAMPLE
from hostsnapshot import lab_leftovers, lab_qemu_processes

pytestmark = pytest.mark.integration

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
LAUNCH = "qemulab.network.vm_launch : Launch the VMs"
FAULTS = {"injected": 0, "bad_inputs": 0}
NOTHING_LEFT = {"processes": [], "files": [], "netns": False}


def lab_qemu_pids(lab):
    """{vm name: (pid, argv)} of a lab's running QEMUs."""
    return {argv[argv.index("-name") + 1]: (pid, argv) for pid, argv in lab_qemu_processes(lab).items()}


def vm_info(lab):
    res = run_playbook("""
- name: Read the lab's VMs
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Read the lab's VMs
      qemulab.network.qemu_vm_info:
        lab: %s
""" % lab)
    assert res.rc == 0, failure_text(res) or res
    return {vm["name"]: vm for vm in res.result("Read the lab's VMs")["vms"]}


def assert_clean(lab, before):
    assert lab.leftovers() == NOTHING_LEFT
    assert host_picture() == before, "the host's links, addresses, routes, sysctls or namespaces changed"


@pytest.fixture
def lab(request):
    """Lab A: the shared lab (faultlab.NetworkLab), up from the first test of the session that needs it to the last;
    the host picture from before it came up is lab.before."""
    yield from use_shared_lab(request)


@pytest.fixture(scope="module")
def lab_b():
    """Lab B, with lab A's link names; lab_b.before is the host picture from before it existed."""
    before = host_picture()
    lab = Lab(net=32, extra_vars={"lab_qemu_user": "nobody"}, names=NETWORK_LAB_LINKS)
    lab.before = before
    try:
        yield lab
    finally:
        if lab.leftovers() != NOTHING_LEFT:
            lab.cleanup()
        lab.force_remove()


def test_lab_routes_and_host_sysctls_are_untouched(lab):
    """Property 11: the lab runs in its own namespace; the host's forwarding sysctls stay as they were."""
    assert lab.wait_routing(), "h2 does not answer the host port through rt1"
    assert root_sysctls() == lab.before["sysctls"]
    assert root_picture() == lab.before["root"], "bring-up changed the root namespace"
    with NetNS(lab.netns) as ns:
        names = {m.get_attr("IFLA_IFNAME") for m in ns.get_links()}
    assert set(NETWORK_LAB_LINKS.values()) | {"tout2"} <= names


def test_forwards_listen_on_loopback_only(lab):
    """Property 7 (module level: test_qemu_vm.py): every listener of the lab's QEMUs is on 127.0.0.1: each guest's
    SSH forward and rt1's user-mode port forward."""
    pids = {pid for pid, _argv in lab_qemu_pids(lab.name).values()}
    assert len(pids) == 3
    out = subprocess.run(["ss", "-Hltnup"], capture_output=True, text=True, check=True).stdout
    listeners = [line.split()[4] for line in out.splitlines() if any("pid=%d," % p in line for p in pids)]
    assert sorted(listeners) == sorted("127.0.0.1:%d" % p for p in list(lab.ports.values()) + lab.forwards), out


def test_run_directory_is_private(lab):
    """Property 8 (module level: test_qemu_vm.py): run dirs 0700, sockets 0600, nothing world-writable."""
    top = os.path.join("/run/qemulab", lab.name)
    seen = 0
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            mode = os.lstat(os.path.join(root, name)).st_mode
            assert not mode & stat.S_IWOTH, os.path.join(root, name)
            seen += 1
            if stat.S_ISDIR(mode):
                assert stat.S_IMODE(mode) == 0o700, os.path.join(root, name)
            if stat.S_ISSOCK(mode):
                assert stat.S_IMODE(mode) == 0o600, os.path.join(root, name)
    assert stat.S_IMODE(os.stat(top).st_mode) == 0o700
    for vm in lab.VMS:
        for sock in ("qmp.sock", "console.sock"):
            path = os.path.join(top, vm, sock)
            assert stat.S_ISSOCK(os.stat(path).st_mode), path
    assert seen > 6


def test_qemu_runs_sandboxed(lab):
    """Property 9, first half (module level: test_qemu_vm.py): -sandbox with the four denials, seccomp active."""
    pids = lab_qemu_pids(lab.name)
    assert sorted(pids) == sorted(lab.VMS)
    for name, (pid, argv) in pids.items():
        assert argv[argv.index("-sandbox") + 1] == SANDBOX, name
        with open("/proc/%d/status" % pid) as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        assert status["Seccomp"].strip() == "2", name


def in_ns(netns, *argv):
    return subprocess.run(["ip", "netns", "exec", netns] + list(argv), capture_output=True, text=True)


def test_bridged_traffic_survives_a_forward_drop_policy(lab):
    """Property 10: with the lab namespace's FORWARD policy at DROP (what Docker leaves), lab traffic still passes,
    because the lab turns bridge netfilter off in its own namespace and adds no rule; with bridge netfilter on (the
    kernel's default, as in the host's namespace) the same policy cuts the lab, and rerunning lab.yml repairs it."""
    assert shutil.which("iptables") and shutil.which("iptables-save"), \
        "iptables is not installed: `make apt` installs it (the Makefile's APT_PACKAGES)"
    key = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    assert in_ns(lab.netns, "cat", key).stdout.strip() == "0"
    assert in_ns(lab.netns, "iptables", "-P", "FORWARD", "DROP").returncode == 0
    FAULTS["injected"] += 1
    try:
        assert lab.ping_from_host_port(count=2), "FORWARD DROP in the lab namespace cut the lab"
        assert in_ns(lab.netns, "sh", "-c", "echo 1 > " + key).returncode == 0
        FAULTS["injected"] += 1
        assert not lab.ping_from_host_port(), "bridge netfilter on and FORWARD DROP, yet h2 answers: test is blind"
        res = lab.run(tags="prep")
        assert res.rc == 0, failure_text(res) or res
        assert res.result("qemulab.network.host_prep : Create the lab's network namespace")["changed"]
        assert in_ns(lab.netns, "cat", key).stdout.strip() == "0"
        assert lab.wait_routing(20)
        rules = in_ns(lab.netns, "iptables-save").stdout
        assert "-A " not in rules and "qemulab" not in rules, rules
    finally:
        in_ns(lab.netns, "iptables", "-P", "FORWARD", "ACCEPT")


def test_dead_vm_is_reported_and_only_it_is_restarted(lab):
    """Properties 5 and 6: SIGKILL rt1's QEMU; qemu_vm_info says it is down (and never trusts a stale pidfile that
    points at an unrelated `sleep`, which survives); the next lab.yml restarts rt1 only; routing through rt1
    recovers."""
    pids = lab_qemu_pids(lab.name)
    hosts = {vm: pids[vm][0] for vm in ("h1", "h2")}
    os.kill(pids["rt1"][0], signal.SIGKILL)
    FAULTS["injected"] += 1
    deadline = time.monotonic() + 10
    while "rt1" in lab_qemu_pids(lab.name) and time.monotonic() < deadline:
        time.sleep(0.1)
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        with open(os.path.join("/run/qemulab", lab.name, "rt1", "qemu.pid"), "w") as f:
            f.write("%d\n" % sleeper.pid)
        FAULTS["injected"] += 1
        info = vm_info(lab.name)
        assert info["rt1"]["state"] == "not running" and info["rt1"]["pid"] is None, info["rt1"]
        assert {vm: (info[vm]["state"], info[vm]["pid"]) for vm in hosts} == \
            {vm: ("running", pid) for vm, pid in hosts.items()}
        assert not lab.ping_from_host_port(), "h2 still answers through a dead router"

        res = lab.run()
        assert res.rc == 0, failure_text(res) or res
        assert sleeper.poll() is None, "the stale pidfile's process was signalled"
    finally:
        sleeper.kill()
        sleeper.wait()
    # vm_launch hands qemu_vms only the VMs not running as specified: the hosts are not even looked at again.
    launched = {vm["name"]: vm["changed"] for vm in res.result(LAUNCH)["vms"]}
    assert launched == {"rt1": True}
    assert (res.changed("h1"), res.changed("h2")) == (0, 0), res.stats
    changed_items = [(name, r["item"]["name"] if isinstance(r.get("item"), dict) else r.get("item"))
                     for name, host, result in res.tasks("localhost")
                     for r in result.get("results", []) if r.get("changed")]
    assert all(item in ("rt1", None) or "rt1" in str(item) for _name, item in changed_items), changed_items
    assert {vm: lab_qemu_pids(lab.name)[vm][0] for vm in hosts} == hosts, "a host was restarted"
    assert lab.wait_routing(), "routing through the restarted rt1 did not recover"


def test_concurrent_runs_of_one_lab_do_not_interleave(lab):
    """Property 13: two lab.yml runs of the same lab started together; the second waits for the first's lock and,
    on the lab the first left, changes nothing. The runs do what touches the lab host (its plumbing and the VMs);
    the lock is taken before the plan and held to the end of a run whatever its tags, and a full rerun's idempotence
    is test_networks.py's."""
    first = lab.start(tags="prep,launch")
    assert wait_event(first, lambda e: e["event"] == "task_start" and "hold its lock" in e["task"], 120)
    second = lab.start(tags="prep,launch")
    results = [wait_run(first), wait_run(second)]
    assert [r.rc for r in results] == [0, 0], results
    first_events, second_events = read_events(first.events), read_events(second.events)
    lock_task = [e for e in second_events if e["event"] == "result" and "hold its lock" in e["task"]]
    first_end = max(e["time"] for e in first_events)
    assert lock_task and lock_task[0]["time"] >= first_end - 0.5, "the second run got the lock while the first ran"
    after_lock = [e for e in second_events if e["time"] > lock_task[0]["time"]]
    assert after_lock and min(e["time"] for e in after_lock) >= first_end - 0.5
    assert {host: results[1].changed(host) for host in results[1].stats} == \
        {host: 0 for host in ("localhost",) + lab.VMS}, results[1]
    lock_file = os.path.join("/run/qemulab", lab.name + ".lock")
    deadline = time.monotonic() + 5  # the holder notices its run has ended within 0.2 s
    while os.path.exists(lock_file) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(lock_file), "the lock file outlived the runs"


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _kill_at(lab_obj, stage, match, then=None):
    proc = lab_obj.start()
    event = wait_event(proc, match, 600)
    assert event is not None, "run ended before %s: %r" % (stage, wait_run(proc))
    if then is not None:
        then()
    kill_run(proc)
    FAULTS["injected"] += 1
    return proc


def _lab_up(lab_obj):
    if lab_obj.leftovers()["netns"] is False:
        res = lab_obj.run()
        assert res.rc == 0, failure_text(res) or res


def _links(netns):
    with NetNS(netns) as ns:
        return {m.get_attr("IFLA_IFNAME") for m in ns.get_links()}


def test_killed_bring_up_cleans_up_exactly_or_converges_when_run_again(lab_b):
    """Property 4 and issue 14: SIGKILL the playbook's process group after the bridges and taps, then inside the VM
    launch once a first QEMU exists: each time cleanup restores the host snapshot exactly (it must not wait for the
    killed run's lock). Then kill a fresh bring-up inside the launch again and simply run lab.yml again, without a
    cleanup: it converges to the full lab (every VM running, every link marked as the lab's, routing through r1)
    without "File exists". There the killed run leaves QEMUs it started but never recorded, holding the guests'
    forwarded ports; the rerun used to refuse those ports as taken. (A kill after the guest config, the old third
    point, leaves nothing to converge: the guests configure themselves at boot from fw_cfg.)"""
    after_bridges = ("after bridges and taps", lambda e: e["event"] == "task_start" and e["task"].endswith(
        "Create the lab host's ports on segments"), None)
    # qemu_vms starts the VMs together: the kill lands inside that module run, once a first QEMU exists.
    after_one_vm = ("after one VM", lambda e: e["event"] == "task_start" and e["task"] == LAUNCH,
                    lambda: _wait_for(lambda: lab_qemu_pids(lab_b.name), 120))
    for stage, match, then in (after_bridges, after_one_vm):
        _kill_at(lab_b, stage, match, then)
        if stage == "after one VM":
            assert len(lab_qemu_pids(lab_b.name)) >= 1, "no VM was running when the run was killed"
        started = time.monotonic()
        res = lab_b.cleanup()
        assert res.rc == 0, (stage, failure_text(res) or res)
        assert time.monotonic() - started < 120, "cleanup waited for the killed run's lock"
        assert_clean(lab_b, lab_b.before)

    _kill_at(lab_b, *after_one_vm)
    killed = sorted(lab_qemu_pids(lab_b.name))
    assert killed, "no VM was running when the run was killed"
    started = time.monotonic()
    res = lab_b.run()
    assert res.rc == 0, failure_text(res) or res
    assert "File exists" not in res.raw
    print("\nrun again straight after the kill in the launch (QEMUs of %s running): converged in %.0f s"
          % (", ".join(killed), time.monotonic() - started))
    assert {name: vm["state"] for name, vm in vm_info(lab_b.name).items()} == {"r1": "running", "h1": "running"}
    mark = ("qemulab:" + lab_b.name, 0)
    marks = _marks(lab_b)
    assert marks == {name: mark for name in ["lo"] + list(lab_b.names.values())}, marks
    assert lab_b.wait_routing()


def _tap_owner(netns, name):
    from ansible_collections.qemulab.network.plugins.module_utils._netlink import get_link, netlink
    with netlink(netns) as ipr:
        return (get_link(ipr, name)["tun"] or {}).get("owner")


def test_unprivileged_lab_runs_qemu_as_its_user_on_taps_it_owns(lab_b):
    """Property 9, second half (module level: test_qemu_vm.py): with lab_qemu_user: nobody every QEMU of lab B runs
    as nobody under the sandbox, every tap of the lab is owned by nobody, each VM's run directory is nobody's (0700)
    inside a lab directory nobody may only traverse, the overlays stay root's in a root-only directory (QEMU gets
    them as fds), and the lab routes."""
    nobody = pwd.getpwnam("nobody")
    _lab_up(lab_b)
    assert lab_b.wait_routing(), "h1 does not answer the host port through r1"
    pids = lab_qemu_pids(lab_b.name)
    assert sorted(pids) == ["h1", "r1"]
    for name, (pid, argv) in pids.items():
        with open("/proc/%d/status" % pid) as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        assert status["Uid"].split() == [str(nobody.pw_uid)] * 4, name
        assert status["Seccomp"].strip() == "2" and argv[argv.index("-sandbox") + 1] == SANDBOX, name
        assert not [a for a in argv if "/var/lib/qemulab" in a], argv
        run_dir = os.path.join("/run/qemulab", lab_b.name, name)
        assert (os.stat(run_dir).st_uid, stat.S_IMODE(os.stat(run_dir).st_mode)) == (nobody.pw_uid, 0o700)
        overlay = os.path.join("/var/lib/qemulab/labs", lab_b.name, name + ".qcow2")
        assert (os.stat(overlay).st_uid, stat.S_IMODE(os.stat(overlay).st_mode)) == (0, 0o600)
    top = os.stat(os.path.join("/run/qemulab", lab_b.name))
    assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (0, nobody.pw_gid, 0o710)
    taps = [lab_b.names[role] for role in ("ta1", "tb1", "ta2")]
    assert {tap: _tap_owner(lab_b.netns, tap) for tap in taps} == {tap: nobody.pw_uid for tap in taps}
    assert {name: vm["user"] for name, vm in vm_info(lab_b.name).items()} == {"r1": "nobody", "h1": "nobody"}


def test_a_qemu_user_that_does_not_exist_stops_the_run_before_the_host_changes():
    """Property 9 / 14: lab_qemu_user naming no user fails in host_prep's first check, naming the host, the field and
    the fix; the host snapshot is unchanged and nothing of the lab is left."""
    before = host_picture()
    lab = Lab(net=34, extra_vars={"lab_qemu_user": "qemulab-nosuchuser"})
    try:
        res = lab.run(tags="prep")
        assert res.rc != 0
        failed = [name for name, _host, r in res.tasks() if r.get("failed")]
        assert failed == ["qemulab.network.host_prep : Stop when that user does not exist"], failed
        message = failure_text(res)
        assert "lab_qemu_user: there is no user qemulab-nosuchuser on lab host localhost" in message, message
        assert "useradd --system" in message, message
        FAULTS["bad_inputs"] += 1
        assert lab.leftovers() == NOTHING_LEFT
        assert host_picture() == before
    finally:
        lab.force_remove()


def test_two_labs_run_side_by_side_under_the_same_link_names(lab, lab_b):
    """Property 12, first half: labs A and B (different names and namespaces, the same bridge, tap and host port
    names) route at once."""
    _lab_up(lab_b)
    assert set(lab_b.names.values()) <= _links(lab.netns) & _links(lab_b.netns)
    assert lab.wait_routing() and lab_b.wait_routing()


def test_cleanup_waits_for_a_running_bring_up_leaves_the_host_as_it_was_and_spares_the_other_lab(lab, lab_b):
    """Properties 13 (cleanup respects the lock), 11 (after cleanup) and 12, second half: a cleanup of lab B started
    while a bring-up of B runs waits for it, then removes everything of B: the root namespace, the host's sysctls and
    the namespace list are as before B existed, and lab A's QEMUs are the same processes and still route."""
    _lab_up(lab_b)
    a_pids = lab_qemu_pids(lab.name)
    up = lab_b.start()
    assert wait_event(up, lambda e: e["event"] == "task_start" and "hold its lock" in e["task"], 120)
    down = lab_b.start(tags="cleanup")
    up_res, down_res = wait_run(up), wait_run(down)
    assert up_res.rc == 0 and down_res.rc == 0, (up_res, down_res)
    up_end = max(e["time"] for e in read_events(up.events))
    removals = [e for e in read_events(down.events) if e["event"] == "task_start" and "teardown" in e["task"]]
    assert removals and min(e["time"] for e in removals) >= up_end - 0.5
    assert_clean(lab_b, lab_b.before)
    assert lab_qemu_pids(lab.name) == a_pids
    assert lab.ping_from_host_port(count=3)
    print("\nlab A came up in %.0f s; faults injected so far: %d" % (lab.up_seconds, FAULTS["injected"]))


def foreign_view(netns, names):
    """The test's own objects in a namespace, as the kernel has them."""
    with NetNS(netns) as ns:
        index = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ns.get_links()}
        view = {}
        for m in ns.get_links():
            name = m.get_attr("IFLA_IFNAME")
            if name in names:
                info = m.get_attr("IFLA_LINKINFO")
                view[name] = (info.get_attr("IFLA_INFO_KIND") if info else None, index.get(m.get_attr("IFLA_MASTER")),
                              m.get_attr("IFLA_IFALIAS"), m.get_attr("IFLA_ADDRESS"), m["flags"] & 1)
    return view


def ip(netns, *args):
    subprocess.run(["ip", "-n", netns] + list(args), check=True, capture_output=True)


def test_foreign_objects_survive_and_name_collisions_are_refused():
    """Properties 1, 2 and 3 through lab.yml (module level: test_host_plumbing.py). The lab's names are 15 bytes
    and are created untruncated. Then the test swaps in a tap, a veth pair and later a bridge of its own under the
    lab's names: bring-up fails naming the taken object (no QEMU starts), and cleanup, twice, leaves them as they
    were; the namespace, which now holds foreign interfaces, is kept rather than deleted with them."""
    before = host_picture()
    names = {k: fifteen(k) for k in ("bra", "brb", "ta1", "tb1", "ta2", "hp0", "hp1")}
    lab = Lab(net=33, names=names)
    try:
        res = lab.run(tags="prep")
        assert res.rc == 0, failure_text(res) or res
        with NetNS(lab.netns) as ns:
            made = {m.get_attr("IFLA_IFNAME") for m in ns.get_links()}
        assert set(names.values()) <= made and all(len(n) == 15 for n in names.values())

        ip(lab.netns, "link", "del", names["ta2"])
        ip(lab.netns, "link", "del", names["hp0"])
        ip(lab.netns, "tuntap", "add", "dev", names["ta2"], "mode", "tap")
        ip(lab.netns, "link", "add", names["hp0"], "type", "veth", "peer", "name", names["hp1"])
        ours = [names["ta2"], names["hp0"], names["hp1"]]
        FAULTS["injected"] += 1
        mine = foreign_view(lab.netns, ours)
        assert len(mine) == 3 and all(v[2] is None for v in mine.values())

        res = lab.run()
        assert res.rc != 0
        message = failure_text(res)
        assert "tap %s in namespace %s exists and belongs to no qemulab lab" % (names["ta2"], lab.netns) in message
        assert lab_qemu_pids(lab.name) == {}
        assert foreign_view(lab.netns, ours) == mine
        for attempt in (1, 2):
            res = lab.cleanup()
            assert res.rc == 0, (attempt, failure_text(res) or res)
            assert foreign_view(lab.netns, ours) == mine, attempt
            assert lab.netns in pr_netns.listnetns()
            with NetNS(lab.netns) as ns:
                left = {m.get_attr("IFLA_IFNAME") for m in ns.get_links()}
            assert left == {"lo"} | set(ours), "cleanup left the lab's own interfaces: %s" % left

        ip(lab.netns, "link", "add", names["bra"], "type", "bridge")
        ours.append(names["bra"])
        FAULTS["injected"] += 1
        mine = foreign_view(lab.netns, ours)
        res = lab.run()
        assert res.rc != 0
        assert "bridge %s in namespace %s exists and belongs to no qemulab lab" % (names["bra"], lab.netns) \
            in failure_text(res)
        res = lab.cleanup()
        assert res.rc == 0, failure_text(res) or res
        assert foreign_view(lab.netns, ours) == mine
    finally:
        # The namespace is the lab's but holds the test's interfaces: the test removes it, marker and all.
        if lab.netns in pr_netns.listnetns():
            pr_netns.remove(lab.netns)
        marker = os.path.join("/run/qemulab/_netns", lab.netns + ".owner")
        if os.path.exists(marker):
            os.unlink(marker)
        lab.force_remove()
    assert_clean(lab, before)


def test_sixteen_byte_names_are_refused_in_validation():
    """Property 3: a 16-byte tap name stops lab.yml in validation, naming host and field; nothing changes."""
    before = host_picture()
    lab = Lab(net=34, names={"ta2": "ta2-sixteen-byte"})
    FAULTS["bad_inputs"] += 1
    try:
        res = lab.run()
        assert res.rc != 0
        failed = [name for name, _host, r in res.tasks() if r.get("failed")]
        assert failed == ["Stop on an invalid inventory before anything on the host changes"], res
        message = res.failure_messages()[0]
        assert "h1: vm_nics[0].tap" in message and "ta2-sixteen-byte" in message and "15" in message, message
        assert_clean(lab, before)
    finally:
        lab.force_remove()


def test_every_bad_inventory_fails_in_validation_through_lab_yml():
    """Property 14 at the lab level for the whole corpus (tests/bad_inventories; test_bad_inventory_run.py runs a
    sample one by one, tests/unit/test_bad_inventories.py checks every message and test_lab_plan_properties.py is
    the hypothesis test). Cases needing a running lab's claim are left to the unit test. Runs three at a time; the
    host picture is compared once around the whole batch, and no run may get past validation."""
    cases = []
    for case in sorted(os.listdir(CORPUS)):
        path = os.path.join(CORPUS, case, "expected.yml")
        if case in SAMPLE or not os.path.exists(path):
            continue
        expected = yaml.safe_load(open(path))
        if not expected.get("claims"):
            cases.append((case, expected["errors"]))
    assert len(cases) >= 30
    before = host_picture()
    problems, pending = [], list(cases)
    while pending:
        batch, pending = pending[:3], pending[3:]
        runs = [(case, errors, start_playbook(os.path.join(REPO, "lab.yml"), os.path.join(CORPUS, case, "hosts.yml")))
                for case, errors in batch]
        for case, errors, proc in runs:
            res = wait_run(proc, timeout=600)
            failed = [name for name, _host, r in res.tasks() if r.get("failed")]
            message = "\n".join(res.failure_messages())
            missing = [e for e in errors if "%s: %s" % (e["host"], e["field"]) not in message
                       or e["fragment"] not in message]
            if res.rc == 0 or failed != ["Stop on an invalid inventory before anything on the host changes"] \
                    or missing:
                problems.append((case, res.rc, failed, missing))
    FAULTS["bad_inputs"] += len(cases)
    print("\nfaults injected in this module: %d; bad inventories run through lab.yml here: %d"
          % (FAULTS["injected"], FAULTS["bad_inputs"]))
    assert problems == []
    assert host_picture() == before
    assert lab_leftovers("bad") == {"processes": [], "files": []}
    # the lab lock is taken before the plan (issue 14); its holder removes the file within 0.2 s of its run's end
    assert _wait_for(lambda: not os.path.exists("/run/qemulab/bad.lock"), 5)


# -- kills inside netns and links (issue 14) -----------------------------------------------------------------------

RTM_NEWLINK, IFLA_IFNAME, RTMGRP_LINK = 16, 3, 1


class _Tree:
    """The playbook's process tree, rescanned every 20 ms, so a kill needs no scan of /proc at the moment it counts."""

    def __init__(self, proc):
        import threading

        self.proc, self.pids, self.done = proc, set(), False
        self.thread = threading.Thread(target=self._scan, daemon=True)
        self.thread.start()

    def _scan(self):
        from faultlab import _children

        while not self.done and self.proc.poll() is None:
            tree, todo, found = _children(), [self.proc.pid], set()
            while todo:
                pid = todo.pop()
                found.add(pid)
                todo += tree.get(pid, [])
            self.pids = found
            time.sleep(0.02)

    def kill_now(self):
        """SIGKILL every process of the run at once (the module's among them), then the rest as faultlab does."""
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.done = True
        kill_run(self.proc)


def _link_events(netns):
    """A netlink socket inside `netns` subscribed to its link events."""
    import socket

    pr_netns.pushns(netns)
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    finally:
        pr_netns.popns()
    sock.bind((0, RTMGRP_LINK))
    sock.settimeout(0.2)
    return sock


def _new_links(data):
    """Names of the links an RTM_NEWLINK in `data` announces."""
    import struct

    names, offset = [], 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("IH", data, offset)
        if length < 16:
            break
        if kind == RTM_NEWLINK:
            attr = offset + 32  # nlmsghdr + ifinfomsg
            while attr + 4 <= offset + length:
                attr_len, attr_type = struct.unpack_from("HH", data, attr)
                if attr_len < 4:
                    break
                if attr_type == IFLA_IFNAME:
                    names.append(data[attr + 4:attr + attr_len].split(b"\0")[0].decode())
                attr += (attr_len + 3) & ~3
        offset += (length + 3) & ~3
    return names


def _kill_when_it_appears(lab_obj, what):
    """Start a prep run of the lab; SIGKILL it the moment `what` appears: the lab's namespace (its /run/netns entry,
    made before the namespace is mounted there) or an interface of that name inside it (its RTM_NEWLINK). Returns
    the seconds the run had been going."""
    proc = lab_obj.start(tags="prep")
    tree = _Tree(proc)
    started = time.monotonic()
    entry = "/run/netns/" + lab_obj.netns
    try:
        if what == "netns":
            while not os.path.lexists(entry):
                assert proc.poll() is None and time.monotonic() - started < 120, "no namespace: %r" % wait_run(proc)
                time.sleep(0.0002)
            tree.kill_now()
        else:
            while not os.path.ismount(entry):
                assert proc.poll() is None and time.monotonic() - started < 120, "no namespace: %r" % wait_run(proc)
                time.sleep(0.001)
            with _link_events(lab_obj.netns) as events:
                while True:
                    assert proc.poll() is None and time.monotonic() - started < 120, \
                        "no %s: %r" % (what, wait_run(proc))
                    try:
                        data = events.recv(65536)
                    except OSError:
                        continue
                    if what in _new_links(data):
                        tree.kill_now()
                        break
    finally:
        if proc.poll() is None:
            tree.kill_now()
    FAULTS["injected"] += 1
    return time.monotonic() - started


def _marks(lab_obj):
    """{name: (alias, group)} of every link in the lab's namespace, and the alias of its lo."""
    with NetNS(lab_obj.netns) as ns:
        return {m.get_attr("IFLA_IFNAME"): (m.get_attr("IFLA_IFALIAS"), m.get_attr("IFLA_GROUP"))
                for m in ns.get_links()}


@pytest.mark.parametrize("point", ["netns", "bra", "ta1", "hp0"])
def test_a_kill_inside_netns_or_links_leaves_nothing_unmarked(point):
    """Issue 14: SIGKILL the whole run the moment the lab's namespace, a bridge (bra), a tap (ta1) or a host port (hp0)
    appears, i.e. between its creation and the writing of its qemulab mark. The next bring-up succeeds (no "belongs to
    no qemulab lab") with every object marked, and cleanup then leaves the host as it was. For a bridge the cleanup
    also runs straight after the kill (teardown must find what the killed run made). Unmarked objects from such a
    kill blocked every later bring-up and survived teardown."""
    before = host_picture()
    lab_obj = Lab(prefix="qk", net=36)
    try:
        if point == "bra":
            seconds = _kill_when_it_appears(lab_obj, point)
            res = lab_obj.cleanup()
            assert res.rc == 0, failure_text(res) or res
            assert_clean(lab_obj, before)
        seconds = _kill_when_it_appears(lab_obj, point)
        res = lab_obj.run(tags="prep")
        assert res.rc == 0, (point, failure_text(res) or res)
        marks = _marks(lab_obj)
        mine = "qemulab:" + lab_obj.name
        assert marks["lo"][0] == mine, marks
        for name in ("bra", "brb", "ta1", "tb1", "ta2", "hp0", "hp1"):
            assert marks[name] == (mine, 0), (name, marks)
        res = lab_obj.cleanup()
        assert res.rc == 0, failure_text(res) or res
        assert_clean(lab_obj, before)
        print("\nkilled at %s after %.1f s; converged" % (point, seconds))
    finally:
        if lab_obj.netns in pr_netns.listnetns():
            subprocess.run(["ip", "netns", "del", lab_obj.netns], capture_output=True)
        marker = os.path.join("/run/qemulab/_netns", lab_obj.netns + ".owner")
        if os.path.exists(marker):
            os.unlink(marker)
        lab_obj.force_remove()
