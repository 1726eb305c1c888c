"""Pruning the guest image cache (issue 14): old images, stale locks and abandoned builds go; the image of the run's
inputs, images a lab's overlay or a running QEMU uses, images whose lock a process holds and the newest other one
stay, and so does every foreign file. Check mode and --diff tell it first, and a second run changes nothing.

Nothing here touches the shared cache in /var/cache/qemulab/images: every run points the module (or lab.yml's
guest_image role) at a cache and a state directory in tmp_path, filled with small real images (raw disks and qcow2
overlays made by qemu-img, manifests as _guest_image.build_image writes them). The running QEMU and the process
holding a lock are started here and ended by their pid.
"""
import json
import os
import subprocess
import sys
import time

import pytest
from pyroute2 import netns as pr_netns

from conftest import REPO_ROOT
from faultlab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

ROLE_FILES = os.path.join(REPO_ROOT, "roles", "guest_image", "files")
IMAGE_VARS = {"kernel_version": "6.1.0-prune-test", "mirror": "http://deb.example.invalid/debian",
              "packages": ["linux-image-amd64", "busybox-static"]}
DEAD_PID = 99999999  # above any pid_max: a build of a process that is gone
HOLD_LOCK = ("import fcntl, os, sys, time; fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX); "
             "print('held', flush=True); time.sleep(600)")
PRUNE_TASK = "qemulab.network.guest_image : Build or reuse the guest image"


def module_play(cache, state, check=False, **options):
    args = dict(IMAGE_VARS, cache_dir=str(cache), state_dir=str(state), build=False,
                files_dir=os.path.join(ROLE_FILES, "rootfs"), initramfs_init=os.path.join(ROLE_FILES, "initramfs-init"),
                **options)
    return ("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
            "    - name: guest image\n      qemulab.network.guest_image: %s\n      register: image\n"
            % json.dumps(args))


def make_image(cache, key, built):
    """An image as build_image leaves it: a raw disk (qemu-img), kernels, initrd and a manifest with their sizes."""
    d = cache / key
    d.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(d / "disk.ext4"), "4M"], check=True)
    for name in ("vmlinuz", "vmlinux", "initrd.img"):
        (d / name).write_bytes(os.urandom(4096))
    sizes = {name: (d / name).stat().st_size for name in ("vmlinuz", "vmlinux", "initrd.img", "disk.ext4")}
    (d / "manifest.json").write_text(json.dumps({"key": key, "built": built, "inputs": {}, "sizes": sizes}))


def overlay(path, backing):
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "raw", str(path)],
                   check=True)


def listing(top):
    """Every path under `top` (relative), with its type and size: what a run may not change in check mode."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, top)] = (st.st_mode, st.st_size)
    return found


def opens_disk(pid):
    """True when process `pid` has a file named disk.ext4 open (QEMU opened its overlay's backing file)."""
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
        return any(os.readlink("/proc/%d/fd/%s" % (pid, fd)).endswith("/disk.ext4") for fd in fds)
    except OSError:
        return False


def hold_lock(path, started):
    """A process of its own (no child to inherit the lock) holding an exclusive flock on `path`, once it says so."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    started.append(holder)
    assert holder.stdout.readline() == "held\n"
    return holder


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def cache_scene(tmp_path, playbook):
    """A cache with one image per reason to keep or remove, foreign look-alikes, and the processes that use some."""
    cache, state = tmp_path / "images", tmp_path / "state"
    cache.mkdir()
    res = playbook(module_play(cache, state))
    assert res.rc == 0, res
    current = res.result("guest image")["key"]
    keys = {
        "current": current,              # oldest of all, kept as the image of the run's inputs
        "overlay": "b000000000000001",   # a lab's overlay under the state directory is backed by it
        "qemu": "b000000000000002",      # only a running QEMU uses it (its overlay is outside the state directory)
        "held": "b000000000000003",      # a process holds its build lock
        "newest": "b000000000000004",    # the newest of the rest: kept by prune_keep=1
        "old": "b000000000000005",       # removed, with its stale lock
        "mixed": "b000000000000006",     # removed, but a foreign file inside keeps its directory
    }
    built = {"current": "2026-01-01", "overlay": "2026-01-02", "qemu": "2026-01-03", "held": "2026-01-04",
             "old": "2026-01-05", "mixed": "2026-01-06", "newest": "2026-01-07"}
    for role, key in keys.items():
        make_image(cache, key, built[role] + "T10:00:00Z")
    overlay(state / "labs" / "lab1" / "vm1.qcow2", cache / keys["overlay"] / "disk.ext4")
    overlay(tmp_path / "elsewhere" / "vm2.qcow2", cache / keys["qemu"] / "disk.ext4")
    (cache / keys["mixed"] / "notes.txt").write_text("not the collection's")
    for role in ("current", "old", "held"):
        (cache / (".lock-" + keys[role])).write_text("")
    (cache / (".build-%s-%d" % (keys["old"], DEAD_PID))).mkdir()
    (cache / (".build-%s-%d" % (keys["old"], DEAD_PID)) / "vmlinuz").write_text("half a build")
    foreign = [keys["old"] + ".bak", ".lock-" + keys["old"] + ".orig", ".lock-notakey", "c00000000000000f",
               "B000000000000005", ".build-notakey-1"]
    (cache / foreign[0]).write_text("x")
    (cache / foreign[1]).write_text("x")
    (cache / foreign[2]).write_text("x")
    (cache / foreign[3]).mkdir()             # key-shaped, but no manifest names it
    (cache / foreign[3] / "disk.ext4").write_text("x")
    (cache / foreign[4]).mkdir()             # upper case: not a key of ours
    (cache / foreign[5]).mkdir()
    started = []
    try:
        holder = hold_lock(cache / (".lock-" + keys["held"]), started)
        drive = "file=%s,if=none,format=qcow2,id=d0" % (tmp_path / "elsewhere" / "vm2.qcow2")
        qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S",
                                 "-drive", drive],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(qemu)
        deadline = time.monotonic() + 30
        while not opens_disk(qemu.pid) and qemu.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert opens_disk(qemu.pid), qemu.stderr.read() if qemu.poll() is not None else "QEMU opened no disk in 30 s"
        yield {"cache": cache, "state": state, "keys": keys, "foreign": foreign, "holder": holder, "qemu": qemu}
    finally:
        for proc in started:
            stop(proc)


def test_prune_keeps_what_is_used_removes_the_rest_check_mode_first(cache_scene, playbook):
    cache, state, keys = cache_scene["cache"], cache_scene["state"], cache_scene["keys"]
    play = module_play(cache, state, prune=True, prune_keep=1)
    build = ".build-%s-%d" % (keys["old"], DEAD_PID)
    gone = sorted([keys["old"], ".lock-" + keys["old"], ".lock-" + keys["current"], build, keys["mixed"]])
    before = listing(cache)

    checked = playbook(play, check=True, diff=True)
    assert checked.rc == 0, checked
    result = checked.result("guest image")
    assert checked.changed() == 1
    assert sorted(e["name"] for e in result["prune"]["removed"]) == gone
    assert listing(cache) == before, "check mode changed the cache"
    kept = {e["name"]: e["reason"] for e in result["prune"]["kept"]}
    assert "this run's inputs" in kept[keys["current"]]
    assert "overlay %s" % (state / "labs" / "lab1" / "vm1.qcow2") in kept[keys["overlay"]]
    assert str(cache_scene["qemu"].pid) in kept[keys["qemu"]]
    assert "lock is held" in kept[keys["held"]] and ".lock-" + keys["held"] in kept
    assert "newest" in kept[keys["newest"]]
    diff = result["diff"]
    assert sorted(set(diff["before"]["cache"]) - set(diff["after"]["cache"])) == gone

    applied = playbook(play, diff=True)
    assert applied.rc == 0, applied
    result = applied.result("guest image")
    assert applied.changed() == 1
    assert sorted(e["name"] for e in result["prune"]["removed"]) == gone
    assert result["prune"]["freed_bytes"] > 0
    assert "notes.txt" in {e["name"]: e["reason"] for e in result["prune"]["removed"]}[keys["mixed"]]
    survivors = sorted(os.listdir(cache))
    assert survivors == sorted([keys[r] for r in ("current", "overlay", "qemu", "held", "newest", "mixed")]
                               + [".lock-" + keys["held"]] + cache_scene["foreign"])
    assert os.listdir(cache / keys["mixed"]) == ["notes.txt"]
    for foreign in cache_scene["foreign"]:
        assert (cache / foreign).exists(), foreign
    assert (cache / "c00000000000000f" / "disk.ext4").exists()
    assert (state / "labs" / "lab1" / "vm1.qcow2").exists()

    again = playbook(play, diff=True)
    assert again.rc == 0 and again.changed() == 0, again
    assert again.result("guest image")["prune"]["removed"] == []
    assert sorted(os.listdir(cache)) == survivors

    # Once the QEMU and the lock holder are gone, their images are no longer in use: they go too.
    stop(cache_scene["qemu"])
    stop(cache_scene["holder"])
    last = playbook(play)
    assert last.rc == 0, last
    assert sorted(e["name"] for e in last.result("guest image")["prune"]["removed"]) == \
        sorted([keys["qemu"], keys["held"], ".lock-" + keys["held"]])


def test_lab_playbook_tags_prune_runs_only_pruning(tmp_path):
    """`lab.yml --tags prune` with an inventory whose image cache is a temp dir: after the planning play, only the
    prune task runs; no namespace, bridge, VM or image is made, and the cache is pruned."""
    cache, state, run_root = tmp_path / "images", tmp_path / "state", tmp_path / "run"
    lab = Lab(prefix="qp", extra_vars={
        "guest_image_cache_dir": str(cache), "guest_image_state_dir": str(state), "lab_run_root": str(run_root),
        "guest_image_kernel_version": IMAGE_VARS["kernel_version"], "guest_image_mirror": IMAGE_VARS["mirror"]})
    try:
        for i, key in enumerate(["d000000000000001", "d000000000000002", "d000000000000003"]):
            make_image(cache, key, "2026-02-0%dT10:00:00Z" % (i + 1))
        (cache / ".lock-d000000000000001").write_text("")
        (cache / "d000000000000001.keep-me").write_text("foreign")

        res = lab.run(tags="prune")
        assert res.rc == 0, res
        ran = [name for name, _host, r in res.tasks() if not r.get("skipped")]
        planning = {"Wait for other runs of this lab to end, then hold its lock until this run ends",
                    "Read what the lab host offers the lab", "Turn the inventory into a plan",
                    "Stop on an invalid inventory before anything on the host changes",
                    "Stop a cleanup whose lab name or namespace is invalid before anything is removed",
                    "Stop when the lab host could not be read",
                    "Stop unless this run holds the lock of the planned lab",
                    "Find the holder of a rootless lab's namespaces",
                    "Note the holder's pid (0 for a root lab, or a rootless one without a holder yet)"}
        rest = [n for n in ran if n not in planning]
        assert len(rest) == 2 and rest[1] == PRUNE_TASK, ran
        assert rest[0].startswith("qemulab.network.guest_image : Validating arguments against arg spec 'prune'"), ran
        result = res.result(PRUNE_TASK)
        assert result["changed"] and not (cache / result["key"]).exists(), "an image was built"
        # the image of these inputs is not there (and not built): only the newest other one stays, and the foreign file
        assert sorted(e["name"] for e in result["prune"]["removed"]) == \
            [".lock-d000000000000001", "d000000000000001", "d000000000000002"]
        assert sorted(os.listdir(cache)) == ["d000000000000001.keep-me", "d000000000000003"]
        assert lab.netns not in pr_netns.listnetns()
        assert lab.leftovers()["processes"] == []
        assert not os.path.exists(os.path.join("/var/lib/qemulab/labs", lab.name))

        again = lab.run(tags="prune")
        assert again.rc == 0 and again.changed() == 0, again
    finally:
        lab.force_remove()
