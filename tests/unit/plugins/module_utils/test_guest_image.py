"""The guest image's inputs, key, cache trust and initramfs module order, on files made in tmp_path."""
import json
import os
import subprocess

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _guest_image as gi

pytestmark = pytest.mark.unit

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main
"""


def _sources(tmp_path, deb822=None, one_line=None, extra_list=None):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    if deb822 is not None:
        (d / "debian.sources").write_text(deb822)
    if extra_list is not None:
        (d / "third.list").write_text(extra_list)
    lst = tmp_path / "sources.list"
    if one_line is not None:
        lst.write_text(one_line)
    return str(lst), str(d)


def test_mirror_comes_from_deb822_sources(tmp_path):
    lst, d = _sources(tmp_path, deb822=DEB822, extra_list="deb https://packages.example.com/apt cloud-sdk main\n")
    assert gi.host_debian_mirror("bookworm", lst, d) == "http://mirror.example.org/debian"


def test_mirror_comes_from_one_line_sources_list(tmp_path):
    lst, d = _sources(tmp_path, one_line="# deb http://old.example.org/debian bookworm main\n"
                                         "deb [arch=amd64] http://ftp.example.net/debian bookworm main\n"
                                         "deb-src http://src.example.net/debian bookworm main\n")
    assert gi.host_debian_mirror("bookworm", lst, d) == "http://ftp.example.net/debian"


def test_disabled_deb822_stanza_is_ignored_and_other_release_still_gives_a_debian_mirror(tmp_path):
    lst, d = _sources(tmp_path, deb822="Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\nEnabled: no\n\n"
                                       "Types: deb\nURIs: http://b.example/debian\nSuites: trixie\n")
    assert gi.host_debian_mirror("bookworm", lst, d) == "http://b.example/debian"


def test_no_debian_source_is_an_error_naming_the_variable(tmp_path):
    lst, d = _sources(tmp_path, extra_list="deb https://deb.nodesource.com/node_20.x nodistro main\n")
    with pytest.raises(gi.GuestImageError, match="guest_image_mirror"):
        gi.host_debian_mirror("bookworm", lst, d)


def _inputs(**over):
    base = dict(suite="bookworm", mirror="http://m/debian", packages=["b", "a"], kernel_version="6.1.1",
                files_digest="f", disk_size_mb=2048,
                initramfs_modules=["virtio_blk"])
    base.update(over)
    return gi.image_inputs(**base)


def test_key_ignores_package_order_but_not_any_input():
    key = gi.image_key(_inputs())
    assert gi.image_key(_inputs(packages=["a", "b", "a"])) == key
    for change in (dict(suite="trixie"), dict(mirror="http://n/debian"), dict(packages=["a"]),
                   dict(kernel_version="6.1.2"), dict(files_digest="g"),
                   dict(disk_size_mb=4096), dict(initramfs_modules=["virtio_blk", "ext4"])):
        assert gi.image_key(_inputs(**change)) != key, change


def test_a_root_key_is_what_it_was_before_rootless_builds_and_a_rootless_one_differs():
    # computed with the code before rootless builds existed: a changed root key would rebuild every lab host's
    # shared image in /var/cache/qemulab
    assert "builder" not in _inputs()
    assert gi.image_key(_inputs()) == "baec5dd028925266"
    rootless = gi.image_inputs(**dict(suite="bookworm", mirror="http://m/debian", packages=["b", "a"],
                                      kernel_version="6.1.1", files_digest="f", disk_size_mb=2048,
                                      initramfs_modules=["virtio_blk"]), builder=gi.ROOTLESS_BUILDER)
    assert rootless["builder"] == "mmdebstrap-unshare"
    assert gi.image_key(rootless) != gi.image_key(_inputs())


def test_root_builds_with_debootstrap_as_before():
    assert gi.debootstrap_argv("bookworm", "/c/w/rootfs", "http://m/debian", ["a", "b"], "/c/debs") == [
        "debootstrap", "--variant=minbase", "--include=a,b", "--cache-dir=/c/debs", "bookworm", "/c/w/rootfs",
        "http://m/debian"]
    assert "--cache-dir" not in " ".join(gi.debootstrap_argv("bookworm", "/r", "http://m", ["a"], ""))


def test_a_rootless_build_runs_mmdebstrap_in_unshare_mode_into_a_directory_with_the_deb_cache_synced():
    argv = gi.mmdebstrap_argv("bookworm", "/h/.cache/qemulab/images/.build-k-1/rootfs", "http://m/debian",
                              ["linux-image-amd64", "busybox-static"], "/h/.cache/qemulab/debs")
    assert argv[:5] == ["mmdebstrap", "--mode=unshare", "--variant=minbase", "--skip=output/dev",
                        "--include=linux-image-amd64,busybox-static"]
    assert argv[-3:] == ["bookworm", "/h/.cache/qemulab/images/.build-k-1/rootfs", "http://m/debian"]
    hooks = argv[5:-3]
    # the essential set's .debs stay until sync-out copies them; the cache goes in before any download
    assert hooks == ["--skip=essential/unlink",
                     '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
                     "--setup-hook=sync-in /h/.cache/qemulab/debs /var/cache/apt/archives/",
                     "--customize-hook=sync-out /var/cache/apt/archives /h/.cache/qemulab/debs"]
    assert gi.mmdebstrap_argv("bookworm", "/r", "http://m", ["a"], "")[4:] == ["--include=a", "bookworm", "/r",
                                                                              "http://m"]


def test_a_deb_cache_path_is_one_shell_word_in_mmdebstraps_hooks():
    import shlex
    argv = gi.mmdebstrap_argv("bookworm", "/r", "http://m", ["a"], "/home/a b/$(x)'y")
    sync_in = [a for a in argv if "sync-in" in a][0].split("=", 1)[1]
    assert shlex.split(sync_in) == ["sync-in", "/home/a b/$(x)'y", "/var/cache/apt/archives/"]


def test_a_rootless_build_finishes_in_the_namespace_publishes_and_counts_downloads(tmp_path, monkeypatch):
    cache, debs = tmp_path / "images", tmp_path / "debs"
    debs.mkdir()
    (debs / "old_1_all.deb").write_text("x")
    ran, mapped = [], []

    def fake_run(cmd, what, timeout=1800, **kwargs):
        ran.append(cmd)
        assert kwargs["env"]["INITRD"] == "No"
        (debs / "new_1_all.deb").write_text("x")  # what sync-out brings back

    def fake_finish(work, rootfs, *args):
        mapped.append(work)
        for name in gi.IMAGE_FILES:
            (tmp_path / "images" / os.path.basename(work) / name).write_bytes(b"img")
        return {"release": "6.1.0-1-amd64", "initramfs_modules": [], "vmlinux": False, "timings": {"mke2fs_s": 1}}

    monkeypatch.setattr(gi, "_run", fake_run)
    monkeypatch.setattr(gi, "finish_rootless", fake_finish)
    monkeypatch.setattr(gi, "finish_rootfs", lambda *a: pytest.fail("the root steps ran outside the namespace"))
    manifest = gi.build_image(str(cache), "k1", {"builder": gi.ROOTLESS_BUILDER}, "http://m", ["a"], "bookworm",
                              str(tmp_path), str(tmp_path), 2048, [], str(debs), lambda msg: None, rootless=True)
    assert ran[0][0] == "mmdebstrap" and ran[0][-2].endswith("/rootfs")
    assert mapped and os.path.basename(mapped[0]).startswith(".build-k1-")
    assert manifest["debs_downloaded"] == 1 and "mmdebstrap_s" in manifest["timings"]
    assert gi.read_image(str(cache), "k1")["inputs"] == {"builder": gi.ROOTLESS_BUILDER}
    assert sorted(os.listdir(cache)) == ["k1"]


def test_a_failed_rootless_build_leaves_no_build_directory(tmp_path, monkeypatch):
    def failing_run(cmd, what, timeout=1800, **kwargs):
        raise gi.GuestImageError("guest image: mmdebstrap failed")

    monkeypatch.setattr(gi, "_run", failing_run)
    with pytest.raises(gi.GuestImageError, match="mmdebstrap failed"):
        gi.build_image(str(tmp_path / "images"), "k1", {}, "http://m", ["a"], "bookworm", str(tmp_path),
                       str(tmp_path), 2048, [], "", lambda msg: None, rootless=True)
    assert os.listdir(tmp_path / "images") == []


def test_no_ssh_key_is_an_input_of_the_image():
    # the keys reach each guest at boot (fw_cfg): a new lab host key must not rebuild the image
    assert not [name for name in _inputs() if "key" in name]
    assert gi.IMAGE_FORMAT >= 3


def test_tree_digest_sees_content_mode_and_names(tmp_path):
    (tmp_path / "sbin").mkdir()
    init = tmp_path / "sbin" / "init"
    init.write_text("#!/bin/sh\n")
    os.chmod(init, 0o755)
    first = gi.tree_digest([str(tmp_path)])
    os.chmod(init, 0o644)
    assert gi.tree_digest([str(tmp_path)]) != first
    os.chmod(init, 0o755)
    assert gi.tree_digest([str(tmp_path)]) == first
    init.write_text("#!/bin/sh\n:\n")
    assert gi.tree_digest([str(tmp_path)]) != first


def _fake_image(cache, key):
    d = cache / key
    d.mkdir(parents=True)
    sizes = {}
    for name in gi.IMAGE_FILES:
        (d / name).write_bytes(b"x" * 10)
        sizes[name] = 10
    (d / gi.MANIFEST).write_text(json.dumps({"key": key, "sizes": sizes}))
    return d


def test_only_a_complete_image_is_trusted(tmp_path):
    d = _fake_image(tmp_path, "k1")
    assert gi.read_image(str(tmp_path), "k1")["key"] == "k1"
    (d / "disk.ext4").write_bytes(b"short")
    assert gi.read_image(str(tmp_path), "k1") is None
    (d / "disk.ext4").unlink()
    assert gi.read_image(str(tmp_path), "k1") is None
    assert gi.read_image(str(tmp_path), "missing") is None


def test_stale_build_dirs_go_live_ones_stay(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".build-k1-{dead.pid}").mkdir()
    (tmp_path / f".build-k2-{os.getpid()}").mkdir()
    removed = gi.remove_stale_builds(str(tmp_path))
    assert removed == [str(tmp_path / f".build-k1-{dead.pid}")]
    assert (tmp_path / f".build-k2-{os.getpid()}").exists()


def test_initramfs_modules_come_with_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"
        "kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n"
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_ring.ko:\n")
    (tmp_path / "modules.builtin").write_text("kernel/crypto/crc32c_generic.ko\n")
    order = gi.module_load_order(str(tmp_path), ["virtio_blk", "crc32c_generic", "ext4"])
    assert order.index("kernel/drivers/virtio/virtio_ring.ko") < order.index("kernel/drivers/virtio/virtio.ko")
    assert order.index("kernel/drivers/virtio/virtio.ko") < order.index("kernel/drivers/block/virtio_blk.ko")
    assert order[-1] == "kernel/fs/ext4/ext4.ko"
    assert len(order) == len(set(order)) == 7
    with pytest.raises(gi.GuestImageError, match="guest_image_initramfs_modules"):
        gi.module_load_order(str(tmp_path), ["no_such_module"])


def _elf64(notes):
    """A minimal ELF64 image whose only program header is a PT_NOTE holding `notes` [(name, type, desc)]."""
    import struct
    blob = b""
    for name, note_type, desc in notes:
        n = name + b"\0"
        blob += struct.pack("<III", len(n), len(desc), note_type)
        blob += n + b"\0" * (-len(n) % 4) + desc + b"\0" * (-len(desc) % 4)
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", gi.PT_NOTE, 4, 64 + 56, 0, 0, len(blob), len(blob), 4)
    return bytes(header) + phdr + blob


PVH_NOTE = (b"Xen", gi.XEN_ELFNOTE_PHYS32_ENTRY, b"\x50\x08\x00\x01\x00\x00\x00\x00")


def test_pvh_entry_note_is_found_among_other_notes():
    assert gi.has_pvh_entry(_elf64([(b"Xen", 6, b"linux\0"), (b"GNU", 3, b"x" * 20), PVH_NOTE]))
    assert not gi.has_pvh_entry(_elf64([(b"Xen", 6, b"linux\0")]))
    assert not gi.has_pvh_entry(b"MZ not an elf" * 10)


def _bzimage(payload, setup_sects=3, version=0x20F):
    """Real-mode setup sectors with the boot protocol header, then protected-mode code holding `payload`."""
    import struct
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, 100, len(payload))
    # A false gzip magic in the decompressor stub before the payload, and the trailer after it.
    return bytes(setup) + (b"\x1f\x8b\x08 stub" * 20)[:100] + payload + b"\x00trailer" * 8


@pytest.mark.parametrize("fmt", ["xz", "gzip"])
def test_uncompressed_kernel_reads_the_payload_the_setup_header_points_at(fmt):
    import gzip
    import lzma
    elf = _elf64([PVH_NOTE]) + b"\0" * 4096
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ) if fmt == "xz" else gzip.compress(elf)
    assert gi.uncompressed_kernel(_bzimage(payload)) == elf
    # Boot protocol before 2.08 has no payload fields: nothing to trust.
    assert gi.uncompressed_kernel(_bzimage(payload, version=0x207)) is None


def test_uncompressed_kernel_refuses_an_elf_without_pvh_entry_or_a_broken_payload():
    import lzma
    payload = lzma.compress(_elf64([(b"Xen", 6, b"linux\0")]), format=lzma.FORMAT_XZ)
    assert gi.uncompressed_kernel(_bzimage(payload)) is None
    assert gi.uncompressed_kernel(_bzimage(payload[:40])) is None
    assert gi.uncompressed_kernel(b"MZ" * 1000) is None


def test_boot_kernel_prefers_vmlinux_only_when_the_manifest_lists_it(tmp_path):
    paths = gi.image_paths(str(tmp_path), "k")
    assert gi.boot_kernel(paths, {"sizes": {"vmlinuz": 1, "vmlinux": 2}}) == paths["kernel_uncompressed"]
    assert gi.boot_kernel(paths, {"sizes": {"vmlinuz": 1}}) == paths["kernel"]
    assert gi.boot_kernel(paths, None) == paths["kernel"]
