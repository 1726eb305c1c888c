"""The seed lab split over two simulated lab hosts (issue 17, docs/multi-host.md), through one lab.yml.

Host 1 runs rt1, h1, htest and br1's host port; host 2 runs rt2, rt3, rt4, h2. Segments br2 (rt1-rt2) and br3
(rt1-rt3) span both hosts and are joined by VXLAN between their underlay addresses (192.0.2.0/24, on the simulated
hosts' own underlay; the root namespace has none). The guests on both hosts are reached by Ansible through their lab
host's SSH (the config and verify stages run on all seven), and the test checks:

- h1's own traceroute to h2 is rt1, rt2, rt4, h2: across the VXLAN of br2;
- each host holds its own share: its VMs' QEMUs, its taps, its VXLAN ports (one per spanning segment);
- capture.yml of br4 (rt2-rt4, both on host 2) captures there, holding h1's pings to h2, and not on host 1;
- a second run changes nothing on any host or guest;
- a cleanup while host 2 cannot be reached names host 2, fails, and leaves host 1 clean; a cleanup then removes host 2's
  share; nothing of the lab is left on either host (namespaces, interfaces, QEMU processes, files) or on the
  controller (its copies of the hosts' guest keys).

What runs is inventories/seed with only what lets it run beside anything else changed: lab name, namespace, a free
block of SSH ports, 256M per guest and the placement.

The three-host ring is three routers, one per host (every pair of hosts shares one segment), checked the same way
with verify_paths.yml (each router traced through its own lab host) and a capture of a segment two of the hosts
have. The guest image built once and copied to a lab host without it is checked on two simulated hosts with the
guest_image role alone (no lab).
"""
import glob
import os
import secrets
import shutil
import sys
import time

import pytest
import yaml

from conftest import REPO_ROOT, run_playbook
from simhosts import _pids_in_mount_ns, simulated_hosts

sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
from _harness import port_block  # noqa: E402  (consecutive free 127.0.0.1 ports)

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

LAB_YML = os.path.join(REPO_ROOT, "lab.yml")
VERIFY_PATHS = os.path.join(REPO_ROOT, "playbooks", "verify_paths.yml")
CAPTURE = os.path.join(REPO_ROOT, "playbooks", "capture.yml")
SEED = os.path.join(REPO_ROOT, "inventories", "seed")
JUMP_ROOT = "/var/lib/qemulab/jump"
ON_HOST2 = ("rt2", "rt3", "rt4", "h2")
# h1 -> h2 by the seed's routes: rt1 (h1's gateway), rt2 (across br2's VXLAN), rt4, h2
H1_TO_H2 = ["10.20.10.1", "10.20.20.2", "10.20.40.1", "10.20.60.2"]


def _inventory(directory, hosts, lab, ports):
    """inventories/seed copied to `directory`, split over `hosts`."""
    shutil.copytree(SEED, directory)
    with open(os.path.join(directory, "hosts.yml")) as f:
        data = yaml.safe_load(f)
    data["all"]["children"]["hypervisors"] = {"hosts": dict((host.name, host.hostvars()) for host in hosts)}
    with open(os.path.join(directory, "hosts.yml"), "w") as f:
        yaml.safe_dump(data, f)
    lab_wide = os.path.join(directory, "group_vars", "all.yml")
    with open(lab_wide) as f:
        values = yaml.safe_load(f)
    values.update({"lab_name": lab, "lab_netns": "ql-" + lab})
    with open(lab_wide, "w") as f:
        yaml.safe_dump(values, f)
    guests = os.path.join(directory, "group_vars", "lab.yml")
    with open(guests) as f:
        values = yaml.safe_load(f)
    values["vm_memory"] = "256M"
    with open(guests, "w") as f:
        yaml.safe_dump(values, f)
    for index, vm in enumerate(("rt1", "rt2", "rt3", "rt4", "h1", "h2", "htest")):
        path = os.path.join(directory, "host_vars", vm + ".yml")
        with open(path) as f:
            values = yaml.safe_load(f)
        values["ansible_port"] = ports + index
        if vm in ON_HOST2:
            values["vm_hypervisor"] = hosts[1].name
        with open(path, "w") as f:
            yaml.safe_dump(values, f)
    return directory


def _guest(host, lab, port, command):
    """`command` in a guest, over SSH from inside its lab host (where its forward is)."""
    return host.run(["ssh", "-i", "/var/lib/qemulab/ssh/id_ed25519", "-p", str(port), "-o", "BatchMode=yes",
                     "-o", "UserKnownHostsFile=/var/lib/qemulab/labs/%s/known_hosts" % lab,
                     "-o", "StrictHostKeyChecking=yes", "root@127.0.0.1", command], timeout=90)


def _qemus(host):
    found = []
    for pid in _pids_in_mount_ns(host.mnt):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith(b"qemu-system"):
            found.append(pid)
    return found


def _share(host, lab):
    """What of the lab is on `host`: its namespaces, the lab namespace's links, QEMUs, run and state files."""
    netns = "ql-" + lab
    spaces = host.run(["ip", "netns", "list"]).stdout.split()
    links = host.run(["ip", "-n", netns, "-o", "link", "show"]).stdout if netns in spaces else ""
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    files = host.run(["sh", "-c", "ls -d /run/qemulab/%s /var/lib/qemulab/labs/%s 2>/dev/null; true" % (lab, lab)])
    return {"netns": [s for s in spaces if s == netns], "links": [n for n in names if n != "lo"],
            "qemus": _qemus(host), "files": files.stdout.split(), "host_links": sorted(
                line.split(":")[1].strip().split("@")[0] for line in host.run(["ip", "-o", "link"]).stdout.splitlines())}


def _captured(host, lab):
    """{capture file: ICMP packets in it} of the lab on `host` (its own /var/lib/qemulab)."""
    found = {}
    listing = host.run(["sh", "-c", "ls /var/lib/qemulab/labs/%s/captures/*.pcapng 2>/dev/null; true" % lab])
    for path in listing.stdout.split():
        read = host.run(["tcpdump", "-n", "-r", path, "icmp"])
        found[path] = len(read.stdout.splitlines())
    return found


def _capture_where(inventory, lab, hosts, segment, pinger):
    """capture.yml of `segment` while `pinger` (a command started on a guest, in the background) sends ICMP: the
    ICMP packets each host's capture holds ({} for a host that captured nothing)."""
    started = pinger()
    assert started.returncode == 0, started
    run = run_playbook(CAPTURE, inventory=inventory, extra_vars={"segment": segment, "seconds": 3, "filter": "icmp"},
                       timeout=300)
    assert run.rc == 0, run
    return [_captured(host, lab) for host in hosts]


def _assert_unchanged(run):
    assert sum(run.changed(host) for host in run.stats) == 0, [
        (name, host) for name, host, res in run.tasks() if res.get("changed")]


def _assert_nothing_left(cleanup, hosts, lab):
    """The cleanup passed and left nothing of the lab on any host, nor the controller's copies of their keys."""
    assert cleanup.rc == 0, cleanup
    for host in hosts:
        share = _share(host, lab)
        assert (share["netns"], share["links"], share["qemus"], share["files"]) == ([], [], [], []), (
            host.name, share)
    assert not os.path.exists(os.path.join(JUMP_ROOT, lab))


def test_the_seed_split_over_two_lab_hosts(tmp_path):
    tag = "m" + secrets.token_hex(3)
    lab = "qlmh" + secrets.token_hex(3)
    ports = port_block(7)
    with simulated_hosts(2, tag) as hosts:
        first, second = hosts
        inventory = _inventory(str(tmp_path / "inv"), hosts, lab, ports)
        try:
            up = run_playbook(LAB_YML, inventory=inventory, timeout=900)
            assert up.rc == 0, up
            one, two = _share(first, lab), _share(second, lab)
            vx_one = [n for n in one["links"] if n.startswith("vx-")]
            vx_two = [n for n in two["links"] if n.startswith("vx-")]
            # one VXLAN port per spanning segment (br2, br3), the same names on both ends
            assert len(vx_one) == 2 and vx_one == vx_two, (one, two)
            assert len(one["qemus"]) == 3 and len(two["qemus"]) == 4, (one, two)
            assert "vport11" in one["links"] and "vport11" not in two["links"]
            assert "vport61" in two["links"] and "veth0" in one["links"] and "veth0" not in two["links"]
            # the underlay carries the tunnels; neither host's own namespace got a lab interface
            assert not [n for n in one["host_links"] + two["host_links"] if n.startswith(("vx-", "vport", "br"))]

            trace = _guest(first, lab, ports + 4, "traceroute -n -q 1 -w 3 -N 1 -m 8 %s" % H1_TO_H2[-1])
            assert trace.returncode == 0, trace
            hops = [line.split()[1] for line in trace.stdout.splitlines()[1:] if line.split()[1:2]]
            assert hops == H1_TO_H2, trace.stdout

            # br4 (rt2-rt4) is only on host 2: the capture runs there, and h1 -> h2 crosses it
            one_cap, two_cap = _capture_where(inventory, lab, hosts, "br4", lambda: _guest(
                first, lab, ports + 4, "ping -c 120 -i 0.5 %s < /dev/null > /dev/null 2>&1 &" % H1_TO_H2[-1]))
            assert one_cap == {} and len(two_cap) == 1 and list(two_cap.values())[0] > 0, (one_cap, two_cap)

            again = run_playbook(LAB_YML, inventory=inventory, timeout=600)
            _assert_unchanged(again)

            # host 2 out of reach (its SSH refused, its processes running) while the lab is cleaned
            with second.unreachable():
                partial = run_playbook(LAB_YML, inventory=inventory, tags="cleanup", expect_failure=True,
                                       timeout=600)
            assert any("lab host(s) %s" % second.name in message for message in partial.failure_messages()), partial
            assert _share(first, lab)["qemus"] == [] and _share(first, lab)["netns"] == []
            assert len(_share(second, lab)["qemus"]) == 4, "the hidden host was left alone"
        finally:
            down = run_playbook(LAB_YML, inventory=inventory, tags="cleanup", timeout=600)
        _assert_nothing_left(down, hosts, lab)


def _ring(lab, hosts, ports):
    """Three routers in a ring, one per lab host, and the lab host's port on r1's own segment: every pair of hosts
    shares one segment (br1 r1-r2, br2 r2-r3, br3 r3-r1), so each host has two tunnels."""
    return {"plugin": "qemulab.network.topology", "lab": lab, "netns": "ql-" + lab, "pool": "10.61.0.0/16",
            "ssh_port_base": ports, "defaults": {"memory": "256M"},
            "hypervisors": dict((host.name, host.hostvars()) for host in hosts),
            "nodes": dict(("r%d" % (index + 1), {"role": "router", "host": host.name})
                          for index, host in enumerate(hosts)),
            "segments": [["r1", "r2"], ["r2", "r3"], ["r3", "r1"], ["r1", "lab_host"]]}


def test_the_ring_over_three_lab_hosts(tmp_path):
    """A ring of three routers over three simulated lab hosts: up with one lab.yml; verify_paths.yml traces every
    planned path hop by hop (from each router, through its own lab host, and from the lab host's port: across the
    tunnels); a capture of br1 runs on the two hosts that have it, each holding r1's pings, and not on the third; a
    second run changes nothing; a cleanup while the third host is out of reach names it and cleans the other two;
    the next cleanup leaves nothing on any host."""
    tag = "r" + secrets.token_hex(3)
    lab = "qlrg" + secrets.token_hex(3)
    ports = port_block(3)
    with simulated_hosts(3, tag) as hosts:
        inventory = str(tmp_path / "ring.qemulab.yml")
        with open(inventory, "w") as f:
            yaml.safe_dump(_ring(lab, hosts, ports), f)
        try:
            up = run_playbook(LAB_YML, inventory=inventory, timeout=900)
            assert up.rc == 0, up
            shares = [_share(host, lab) for host in hosts]
            assert [len(share["qemus"]) for share in shares] == [1, 1, 1], shares
            assert [len([n for n in share["links"] if n.startswith("vx-")]) for share in shares] == [2, 2, 2], shares

            traced = run_playbook(VERIFY_PATHS, inventory=inventory, timeout=600)
            assert traced.rc == 0, traced
            assert sum(1 for _name, host, res in traced.tasks() if host in ("r1", "r2", "r3")
                       and res.get("stdout") and not res.get("skipped")) == 3, "every router traced its paths"

            # limited broadcast out of r1's eth0 (br1): flooded to both hosts of br1 through their tunnel
            caps = _capture_where(inventory, lab, hosts, "br1", lambda: _guest(
                hosts[0], lab, ports, "ping -b -I eth0 -c 120 -i 0.5 255.255.255.255 < /dev/null > /dev/null 2>&1 &"))
            assert [len(cap) for cap in caps] == [1, 1, 0], caps
            assert all(count > 0 for cap in caps[:2] for count in cap.values()), caps

            again = run_playbook(LAB_YML, inventory=inventory, timeout=600)
            _assert_unchanged(again)

            # host 3 out of reach while the lab is cleaned: named, and the two others still cleaned
            with hosts[2].unreachable():
                partial = run_playbook(LAB_YML, inventory=inventory, tags="cleanup", expect_failure=True,
                                       timeout=600)
            assert any("lab host(s) %s" % hosts[2].name in message for message in partial.failure_messages()), partial
            assert [len(_share(host, lab)["qemus"]) for host in hosts] == [0, 0, 1], "only the hidden host kept its VM"
        finally:
            down = run_playbook(LAB_YML, inventory=inventory, tags="cleanup", timeout=600)
        _assert_nothing_left(down, hosts, lab)


GUEST_IMAGE_ONLY = """
- name: The guest image on every lab host
  hosts: hypervisors
  gather_facts: false
  roles:
    - role: qemulab.network.guest_image
      vars:
        guest_image_prune: false
"""


def _same_image(one, other):
    """Whether two image directories (both on this machine's disk) hold the same image files, byte for byte."""
    for name in ("vmlinuz", "vmlinux", "initrd.img", "disk.ext4", "manifest.json"):
        with open(os.path.join(one, name), "rb") as a, open(os.path.join(other, name), "rb") as b:
            while True:
                block_a, block_b = a.read(1 << 20), b.read(1 << 20)
                if block_a != block_b:
                    return False
                if not block_a:
                    break
    return True


def test_the_guest_image_is_built_once_and_copied_to_a_lab_host_without_it(tmp_path):
    """Host 1 has the image (the machine's cache); host 2 has a cache of its own without it. The role packs it on host
    1, carries it through the controller and publishes it on host 2 under the same key, byte for byte; nothing is
    built there, a second run changes nothing, and no copy in transit is left on a host or the controller."""
    tag = "c" + secrets.token_hex(3)
    own_cache = "/var/cache/qemulab/copytest-%s/images" % tag
    with simulated_hosts(2, tag) as hosts:
        inventory = {"hypervisors": {"hosts": dict((host.name, host.hostvars()) for host in hosts)}}
        inventory["hypervisors"]["hosts"][hosts[1].name]["guest_image_cache_dir"] = own_cache
        path = str(tmp_path / "hosts.yml")
        with open(path, "w") as f:
            yaml.safe_dump({"all": {"children": inventory}}, f)
        # the copies in transit (the controller's and the hosts': all this machine's /tmp)
        parcels = set(glob.glob("/tmp/qemulab-image.*"))
        try:
            started = time.monotonic()
            first = run_playbook(GUEST_IMAGE_ONLY, inventory=path, timeout=900)
            seconds = time.monotonic() - started
            assert first.rc == 0, [(name, host, res.get("msg")) for name, host, res in first.tasks() if res.get("failed")]
            key = first.result("qemulab.network.guest_image : Build or reuse the guest image", hosts[0].name)["key"]
            published = [res for name, host, res in first.tasks(hosts[1].name)
                         if name.endswith("Publish the copy in the image cache if it is the image")]
            assert len(published) == 1 and published[0]["changed"], published
            assert not [name for name, host, res in first.tasks() if name.endswith("Build the image on the lab host "
                                                                                     "that gives it") and not res.get("skipped")]
            # host 2's cache is on this machine's disk, like host 1's (simhosts shares /var/cache)
            assert _same_image("%s/%s" % (own_cache, key), "/var/cache/qemulab/images/%s" % key)
            # the disk stays sparse on host 2
            assert os.stat("%s/%s/disk.ext4" % (own_cache, key)).st_blocks * 512 < (1 << 30)
            again = run_playbook(GUEST_IMAGE_ONLY, inventory=path, timeout=600)
            _assert_unchanged(again)
            assert set(glob.glob("/tmp/qemulab-image.*")) == parcels
            assert glob.glob(own_cache + "/.build-*") == []
            print("the run that copied the image took %.1f s" % seconds)
        finally:
            shutil.rmtree(os.path.dirname(own_cache), ignore_errors=True)

