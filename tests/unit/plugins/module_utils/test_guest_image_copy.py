"""A built image carried to another cache (pack, publish): what arrives is the image, byte for byte and still sparse,
published all or nothing; a copy whose files, key or members do not match is refused and leaves nothing behind."""
import json
import os
import tarfile

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _guest_image as gi
from ansible_collections.qemulab.network.plugins.module_utils import _guest_image_copy as copy

pytestmark = pytest.mark.unit

INPUTS = {"suite": "bookworm", "packages": ["busybox-static"], "disk_size_mb": 64}
KEY = gi.image_key(INPUTS)
DISK_BYTES = 64 << 20


def _image(cache, key=KEY, inputs=INPUTS):
    """A finished image as build_image leaves it: files, a sparse disk, a manifest naming key and sizes, and a clone
    template beside them (which is not part of the image)."""
    directory = cache / key
    (directory / "templates" / "t1").mkdir(parents=True)
    (directory / "templates" / "t1" / "state").write_bytes(b"template")
    (directory / "vmlinuz").write_bytes(b"kernel" * 100)
    (directory / "initrd.img").write_bytes(b"initrd" * 50)
    with open(directory / "disk.ext4", "wb") as f:
        f.write(b"superblock")
        f.seek(DISK_BYTES - 4)
        f.write(b"tail")
    sizes = dict((name, os.path.getsize(directory / name)) for name in ("vmlinuz", "initrd.img", "disk.ext4"))
    (directory / "manifest.json").write_text(json.dumps({"key": key, "inputs": inputs, "sizes": sizes}))
    return directory


def _packed(tmp_path):
    source = tmp_path / "a"
    _image(source)
    archive = str(tmp_path / "image.tar")
    return copy.pack(str(source), KEY, archive), archive


def _leftovers(cache):
    return sorted(name for name in os.listdir(cache) if name.startswith(".build-")) if os.path.isdir(cache) else []


def test_the_copy_is_the_image_byte_for_byte_still_sparse_without_the_templates(tmp_path):
    packed, archive = _packed(tmp_path)
    assert sorted(packed["files"]) == ["disk.ext4", "initrd.img", "manifest.json", "vmlinuz"]
    # the holes travel as holes: the archive holds the disk's data, not its 64 MiB
    assert packed["bytes"] < DISK_BYTES // 8
    target = tmp_path / "b"
    manifest, published = copy.publish(str(target), KEY, archive, packed["files"])
    assert published and manifest == gi.read_image(str(target), KEY) == packed["manifest"]
    for name, digest in packed["files"].items():
        assert copy.sha256_file(str(target / KEY / name)) == digest
    assert os.stat(target / KEY / "disk.ext4").st_blocks * 512 < DISK_BYTES // 8
    assert not (target / KEY / "templates").exists() and _leftovers(target) == []
    # a second publish finds the image and leaves it alone
    assert copy.publish(str(target), KEY, archive, packed["files"]) == (manifest, False)


def test_a_file_that_differs_from_the_source_is_never_published(tmp_path):
    packed, archive = _packed(tmp_path)
    sums = dict(packed["files"], **{"disk.ext4": "0" * 64})
    target = tmp_path / "b"
    with pytest.raises(copy.ImageCopyError, match="disk.ext4 has sha256 .* the image it was copied from 0000"):
        copy.publish(str(target), KEY, archive, sums)
    assert not (target / KEY).exists() and _leftovers(target) == []


def test_a_copy_of_another_key_is_never_published_as_this_hosts_image(tmp_path):
    other = dict(INPUTS, suite="trixie")
    source = tmp_path / "a"
    _image(source, gi.image_key(other), other)
    archive = str(tmp_path / "image.tar")
    packed = copy.pack(str(source), gi.image_key(other), archive)
    target = tmp_path / "b"
    with pytest.raises(copy.ImageCopyError, match="manifest names key %s, this lab host's inputs key %s"
                       % (gi.image_key(other), KEY)):
        copy.publish(str(target), KEY, archive, packed["files"])
    assert os.listdir(target) == [".lock-%s" % KEY]


def test_a_manifest_whose_inputs_do_not_hash_to_its_key_is_refused(tmp_path):
    source = tmp_path / "a"
    _image(source, KEY, dict(INPUTS, suite="forged"))
    archive = str(tmp_path / "image.tar")
    packed = copy.pack(str(source), KEY, archive)
    with pytest.raises(copy.ImageCopyError, match="inputs its manifest lists hash to"):
        copy.publish(str(tmp_path / "b"), KEY, archive, packed["files"])


@pytest.mark.parametrize("extra", ["../escape", "link", "extra"])
def test_an_archive_with_anything_but_the_images_plain_files_is_refused_before_unpacking(tmp_path, extra):
    packed, archive = _packed(tmp_path)
    with tarfile.open(archive, "a") as tar:
        if extra == "link":
            info = tarfile.TarInfo("vmlinuz")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo(extra)
            tar.addfile(info)
    target = tmp_path / "b"
    with pytest.raises(copy.ImageCopyError, match="not the image's files"):
        copy.publish(str(target), KEY, archive, packed["files"])
    assert not (target / KEY).exists() and _leftovers(target) == [] and not (tmp_path / "escape").exists()


def test_an_untrusted_leftover_under_the_key_is_replaced(tmp_path):
    packed, archive = _packed(tmp_path)
    target = tmp_path / "b"
    (target / KEY).mkdir(parents=True)
    (target / KEY / "disk.ext4").write_bytes(b"half a build")
    manifest, published = copy.publish(str(target), KEY, archive, packed["files"])
    assert published and sorted(os.listdir(target / KEY)) == ["disk.ext4", "initrd.img", "manifest.json", "vmlinuz"]


def test_pack_refuses_an_image_that_is_not_finished_and_a_key_that_is_not_one(tmp_path):
    source = tmp_path / "a"
    _image(source)
    os.unlink(source / KEY / "initrd.img")
    with pytest.raises(copy.ImageCopyError, match="has no finished image"):
        copy.pack(str(source), KEY, str(tmp_path / "x.tar"))
    with pytest.raises(copy.ImageCopyError, match="is not an image key"):
        copy.pack(str(source), "../../etc", str(tmp_path / "x.tar"))
    assert not os.path.exists(tmp_path / "x.tar")



def test_the_digest_is_the_content_whichever_zeros_are_holes(tmp_path):
    sparse, dense, other = tmp_path / "sparse", tmp_path / "dense", tmp_path / "other"
    with open(sparse, "wb") as f:
        f.write(b"head")
        f.seek(5 * copy.CHUNK + 7)
        f.write(b"tail")
    data = b"head" + bytes(5 * copy.CHUNK + 3) + b"tail"
    dense.write_bytes(data)
    assert os.path.getsize(sparse) == os.path.getsize(dense)
    assert copy.sha256_file(str(sparse)) == copy.sha256_file(str(dense))
    # a byte anywhere, or a longer run of zeros at the end, is another content
    other.write_bytes(data[:copy.CHUNK + 1] + b"x" + data[copy.CHUNK + 2:])
    assert copy.sha256_file(str(other)) != copy.sha256_file(str(dense))
    other.write_bytes(data + bytes(1))
    assert copy.sha256_file(str(other)) != copy.sha256_file(str(dense))
