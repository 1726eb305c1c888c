"""Which cached guest images pruning keeps and removes, on cache and state directories made in tmp_path with real
qcow2 overlays (qemu-img) and a real flock held by a child process."""
import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _image_prune as ip
from ansible_collections.qemulab.network.plugins.module_utils._guest_image import IMAGE_FILES

pytestmark = pytest.mark.unit

KEYS = ["a000000000000001", "a000000000000002", "a000000000000003", "a000000000000004"]


def make_image(cache, key, built, files=IMAGE_FILES + ("vmlinux",)):
    """An image directory as _guest_image.build_image leaves it: its files and a manifest with their sizes."""
    d = cache / key
    d.mkdir(parents=True)
    for name in files:
        (d / name).write_bytes(b"x" * 512)
    (d / "manifest.json").write_text(json.dumps({"key": key, "built": built,
                                                 "sizes": {n: 512 for n in files}}))
    return d


def make_overlay(path, backing):
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "raw", str(path)],
                   check=True)


def hold_lock(path):
    """A process of its own (no child to inherit the lock, unlike flock(1)'s command) holding a flock on `path`,
    returned once it says it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    if holder.stdout.readline() != "held\n":
        holder.kill()
        holder.wait()
        raise AssertionError("the lock holder did not take its lock")
    return holder


@pytest.fixture
def cache(tmp_path):
    c = tmp_path / "images"
    for i, key in enumerate(KEYS):
        make_image(c, key, "2026-11-2%dT10:00:00Z" % (i + 1))
    return c


def plan(cache, state, current=KEYS[3], keep=1, held=()):
    found = ip.read_cache(str(cache))
    in_use = ip.images_in_use(str(cache), str(state))
    return ip.plan_prune(found, current, keep, in_use, set(held))


def test_keeps_current_newest_other_and_removes_the_rest(cache, tmp_path):
    kept, removed = plan(cache, tmp_path / "state")
    assert sorted(kept) == [KEYS[2], KEYS[3]]
    assert sorted(removed) == [KEYS[0], KEYS[1]]
    assert "this run" in kept[KEYS[3]] and "newest" in kept[KEYS[2]]


@pytest.mark.parametrize("keep", [0, 2, 5])
def test_keep_n_counts_only_the_other_images(cache, tmp_path, keep):
    kept, removed = plan(cache, tmp_path / "state", keep=keep)
    others = [KEYS[2], KEYS[1], KEYS[0]]
    assert sorted(kept) == sorted([KEYS[3]] + others[:keep])
    assert sorted(removed) == sorted(others[keep:])


def test_overlay_under_state_dir_keeps_its_image_through_the_chain(cache, tmp_path):
    state = tmp_path / "state"
    # labs/<lab>/<vm>.qcow2 over another qcow2 over the oldest image's disk
    make_overlay(tmp_path / "mid.qcow2", cache / KEYS[0] / "disk.ext4")
    make_overlay(state / "labs" / "l1" / "vm1.qcow2", tmp_path / "mid.qcow2")
    kept, removed = plan(cache, state)
    assert KEYS[0] in kept and "vm1.qcow2" in kept[KEYS[0]], kept
    assert sorted(removed) == [KEYS[1]]


def test_relative_backing_name_and_resolved_cache_path(cache, tmp_path):
    state = tmp_path / "state"
    link = tmp_path / "cache-link"
    link.symlink_to(cache)
    lab = state / "labs" / "l1"
    lab.mkdir(parents=True)
    # a relative backing name, resolved against the overlay's directory, through a link to the cache
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "../../../cache-link/%s/disk.ext4" % KEYS[1],
                    "-F", "raw", str(lab / "vm.qcow2")], check=True)
    kept, removed = plan(cache, state)
    assert KEYS[1] in kept and sorted(removed) == [KEYS[0]]


def test_a_process_with_an_image_file_open_keeps_it(cache, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1]); print(1, flush=True); "
                               "time.sleep(60)", str(cache / KEYS[0] / "vmlinux")], stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()
        kept, removed = plan(cache, tmp_path / "state")
    finally:
        holder.kill()
        holder.wait()
    assert "process %d" % holder.pid in kept[KEYS[0]]
    assert sorted(removed) == [KEYS[1]]


def test_argv_paths_split_option_strings_with_doubled_commas():
    argv = ["qemu-system-x86_64", "-kernel", "/c/k/vmlinux", "-drive", "file=/l/a,,b.qcow2,if=virtio,format=qcow2",
            "-m", "256"]
    assert ip._argv_paths(argv) == ["/c/k/vmlinux", "/l/a,b.qcow2"]


def test_a_clone_mapping_its_templates_ram_file_names_the_image(cache):
    """A clone's QEMU maps its template's RAM file (templates/<key>/ram below the image): its command line names the
    image, so pruning keeps the image and its templates while the clone runs."""
    ram = str(cache / KEYS[2] / "templates" / "0123456789abcdef" / "ram")
    argv = ["qemu-system-x86_64", "-object", "memory-backend-file,id=ram,size=256M,mem-path=%s,share=off" % ram,
            "-machine", "memory-backend=ram", "-incoming", "defer"]
    assert ram in ip._argv_paths(argv)
    assert ip.ImageRefs(str(cache)).keys(ram) == {KEYS[2]}


def test_locks_and_builds(cache, tmp_path):
    for key in KEYS[:2]:
        (cache / (".lock-" + key)).write_text("")
    (cache / (".build-%s-%d" % (KEYS[0], os.getpid()))).mkdir()
    (cache / (".build-%s-999999999" % KEYS[1])).mkdir()
    holder = hold_lock(cache / (".lock-" + KEYS[1]))
    try:
        found = ip.read_cache(str(cache))
        held = {k for k in found["locks"] if ip.lock_held(str(cache), k)}
        kept, removed = ip.plan_prune(found, KEYS[3], 1, {}, held)
    finally:
        holder.kill()
        holder.wait()
    assert held == {KEYS[1]}
    assert KEYS[1] in kept and ".lock-" + KEYS[1] in kept and KEYS[0] in removed
    assert ".lock-" + KEYS[0] in removed
    assert ".build-%s-%d" % (KEYS[0], os.getpid()) in kept
    assert ".build-%s-999999999" % KEYS[1] in removed


def test_foreign_names_are_never_entries(cache, tmp_path):
    (cache / ("%s.old" % KEYS[0])).write_text("")
    (cache / ".lock-notakey").write_text("")
    (cache / (".lock-%s.bak" % KEYS[0])).write_text("")
    (cache / "A000000000000001").mkdir()
    (cache / "b000000000000009").mkdir()  # key-shaped directory without a manifest naming it
    (cache / "b00000000000000a").mkdir()
    (cache / "b00000000000000a" / "manifest.json").write_text(json.dumps({"key": "someone-else"}))
    (cache / "b00000000000000b").symlink_to(cache / KEYS[0])
    (cache / (".lock-" + KEYS[2])).symlink_to(tmp_path / "elsewhere")
    found = ip.read_cache(str(cache))
    assert sorted(found["images"]) == KEYS and found["locks"] == [] and found["builds"] == []


def test_incomplete_image_is_removed_unless_in_use(cache, tmp_path):
    (cache / KEYS[2] / "disk.ext4").write_bytes(b"short")
    kept, removed = plan(cache, tmp_path / "state")
    assert "unfinished" in removed[KEYS[2]]
    # the newest finished other image takes its place
    assert KEYS[1] in kept


def test_prune_removes_own_files_only_and_is_honest_in_check_mode(cache, tmp_path):
    (cache / KEYS[1] / "notes.txt").write_text("mine")
    (cache / (".lock-" + KEYS[0])).write_text("")
    removed = {KEYS[0]: "old", KEYS[1]: "old", ".lock-" + KEYS[0]: "stale"}
    listing = sorted(os.listdir(cache))
    freed, stayed, notes = ip.prune(str(cache), removed, check_mode=True)
    assert sorted(freed) == sorted(removed) and stayed == {} and "notes.txt" in notes[KEYS[1]]
    assert sorted(os.listdir(cache)) == listing
    freed, stayed, notes = ip.prune(str(cache), removed, check_mode=False)
    assert sorted(freed) == sorted(removed) and stayed == {} and "notes.txt" in notes[KEYS[1]]
    assert sorted(os.listdir(cache)) == sorted([KEYS[1], KEYS[2], KEYS[3]])
    assert os.listdir(cache / KEYS[1]) == ["notes.txt"]
    assert freed[KEYS[0]] > 0
    # what is left is no image of ours any more: a second plan finds nothing to do
    found = ip.read_cache(str(cache))
    assert sorted(found["images"]) == [KEYS[2], KEYS[3]] and found["locks"] == []


def test_a_lock_taken_meanwhile_stays(cache):
    lock = cache / (".lock-" + KEYS[0])
    lock.write_text("")
    holder = hold_lock(lock)
    try:
        freed, stayed, _notes = ip.prune(str(cache), {".lock-" + KEYS[0]: "stale"}, check_mode=False)
    finally:
        holder.kill()
        holder.wait()
    assert freed == {} and ".lock-" + KEYS[0] in stayed and lock.exists()


def test_qcow2_reader_bounds_and_non_files(tmp_path):
    raw = tmp_path / "raw"
    raw.write_bytes(b"\0" * 100)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link.qcow2").symlink_to(raw)
    assert ip.qcow2_backing(str(raw)) is None
    assert ip.qcow2_backing(str(tmp_path / "fifo")) is None
    assert ip.qcow2_backing(str(tmp_path / "link.qcow2")) is None
    assert ip.qcow2_backing("/dev/null") is None
    lone = tmp_path / "lone.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(lone), "1M"], check=True)
    assert ip.qcow2_backing(str(lone)) == ""
    # a header claiming a 64 KiB backing name is not believed
    data = bytearray(lone.read_bytes())
    data[8:20] = (512).to_bytes(8, "big") + (65536).to_bytes(4, "big")
    lone.write_bytes(bytes(data))
    assert ip.qcow2_backing(str(lone)) is None


def test_backing_loop_ends(tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(b), "-F", "qcow2", str(a), "1M"],
                   check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(a), "-F", "qcow2", str(b), "1M"],
                   check=True)
    assert ip.backing_chain(str(a)) == [str(b), str(a)]


def test_a_cache_not_made_yet_is_an_empty_one(tmp_path):
    found = ip.read_cache(str(tmp_path / "none"))
    assert found == {"images": {}, "locks": [], "builds": []}
    assert ip.plan_prune(found, KEYS[0], 1, {}, set()) == ({}, {})
    assert ip.prune(str(tmp_path / "none"), {}, check_mode=False) == ({}, {}, {})


def open_files():
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink("/proc/self/fd/" + fd))
        except OSError:
            pass
    return names


def test_build_lock_whose_file_pruning_unlinked_meanwhile_is_taken_again(tmp_path):
    """A build that opened the lock file just before pruning unlinked it must not lock the orphaned inode (a second
    build would then lock the new file and both would build one key)."""
    import threading
    from ansible_collections.qemulab.network.plugins.module_utils._guest_image import BuildLock
    path = tmp_path / (".lock-" + KEYS[0])
    path.write_text("")
    holder = hold_lock(path)
    try:
        lock = BuildLock(str(tmp_path), KEYS[0])
        entered = threading.Event()
        thread = threading.Thread(target=lambda: (lock.__enter__(), entered.set()))
        thread.start()
        # the build has opened the file (and then waits in flock on it)
        for _ in range(200):
            if str(path) in open_files():
                break
            time.sleep(0.01)
        time.sleep(0.1)
        assert not entered.is_set()
        path.unlink()
    finally:
        holder.kill()
        holder.wait()
    thread.join(10)
    try:
        assert entered.is_set()
        assert os.fstat(lock.fd).st_ino == os.stat(path).st_ino
    finally:
        lock.__exit__(None, None, None)
