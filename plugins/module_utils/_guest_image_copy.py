# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A built guest image carried from one lab host's cache to another's, instead of building it there.

    pack     on the lab host that has the image: its files (kernel, uncompressed kernel, initrd, sparse disk,
             manifest; not the clone templates beside them) in one sparse tar, and the sha256 of each (of its
             size and non-zero blocks with their offsets: `sha256_file`)
    publish  on a lab host that lacks it: under the image's build lock, the tar is checked to hold exactly those
             plain files, unpacked into `.build-<key>-<pid>` (what a crashed build leaves, so pruning removes it),
             each file's sha256 compared with what pack read, the manifest's key with the key this host computed
             from its own inputs (and with the hash of the inputs the manifest lists), then renamed into place: the
             same all-or-nothing publication as a build

Measured (bench/README.md, "multihost"): copying the built image to a second lab host takes seconds, building it
there minutes.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import re
import subprocess
import tarfile

from ansible_collections.qemulab.network.plugins.module_utils._guest_image import (
    MANIFEST, BuildLock, GuestImageError, image_key, image_paths, new_build_dir, publish_build, read_image,
    remove_build_dir,
)

KEY_RE = re.compile(r"^[0-9a-f]{16}\Z")
CHUNK = 1 << 20


class ImageCopyError(GuestImageError):
    """The image could not be packed or a copy was not trusted; the message names the file and the fix."""


def check_key(key):
    if not KEY_RE.match(str(key)):
        raise ImageCopyError("guest image copy: key %r is not an image key (16 hex digits, guest_image's key)" % key)


def sha256_file(path):
    """sha256 over the file's size and each block of CHUNK bytes that is not all zeros, with its offset: the content
    decides it, not which zeros are holes (the 2 GiB disk is mostly holes, and tar -xS makes its own), and holes are
    skipped unread (SEEK_DATA), so the disk costs its data, not its size."""
    h = hashlib.sha256()
    zeros = bytes(CHUNK)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(b"size %d\n" % size)
        offset = 0
        while offset < size:
            try:
                offset = os.lseek(f.fileno(), offset, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: only a hole is left
            offset -= offset % CHUNK
            f.seek(offset)
            block = f.read(CHUNK)
            if not block:
                break
            if block != zeros[:len(block)]:
                h.update(b"block %d %d\n" % (offset, len(block)))
                h.update(block)
            offset += len(block)
    return h.hexdigest()


def image_files(manifest):
    """The files an image consists of: what its manifest sizes, and the manifest itself."""
    return sorted(set(manifest.get("sizes", {})) | {MANIFEST})


def pack(cache_dir, key, archive):
    """The image `key` of `cache_dir` as a sparse tar at `archive`: {files: {name: sha256}, bytes, manifest}."""
    check_key(key)
    manifest = read_image(cache_dir, key)
    if manifest is None:
        raise ImageCopyError("guest image copy: %s has no finished image %s to copy; build it there first"
                             % (cache_dir, key))
    directory = image_paths(cache_dir, key)["dir"]
    names = image_files(manifest)
    sums = dict((name, sha256_file(os.path.join(directory, name))) for name in names)
    tmp = archive + ".part"
    # GNU tar -S stores the disk's holes as holes: the 2 GiB raw disk travels as the data it holds
    done = subprocess.run(["tar", "-cSf", tmp, "-C", directory, "--"] + names, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        _unlink(tmp)
        raise ImageCopyError("guest image copy: tar of %s failed: %s" % (directory, done.stderr.strip()))
    os.rename(tmp, archive)
    return {"files": sums, "bytes": os.path.getsize(archive), "manifest": manifest}


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def archive_members(archive, expected):
    """The tar's member names, refused unless they are exactly `expected`, each a plain file (no link, directory,
    device, path or duplicate): nothing in it can land outside the build directory or replace what it checks."""
    try:
        with tarfile.open(archive, "r:") as tar:
            members = tar.getmembers()
    except (OSError, tarfile.TarError) as e:
        raise ImageCopyError("guest image copy: %s is not a readable tar (%s); copy it again" % (archive, e))
    names = [member.name for member in members]
    bad = [member.name for member in members if not member.isreg() or "/" in member.name
           or member.name in ("", ".", "..")]
    if bad or len(names) != len(set(names)) or sorted(names) != sorted(expected):
        raise ImageCopyError("guest image copy: %s holds %s, not the image's files %s as plain files; it is not "
                             "this image's copy" % (archive, ", ".join(sorted(names)) or "nothing",
                                                    ", ".join(sorted(expected))))
    return names


def verify(directory, key, sums):
    """Why the unpacked image in `directory` must not be used as image `key`, or None."""
    for name in sorted(sums):
        have = sha256_file(os.path.join(directory, name))
        if have != sums[name]:
            return "%s has sha256 %s, the image it was copied from %s" % (name, have, sums[name])
    manifest = read_image(os.path.dirname(directory), os.path.basename(directory))
    if manifest is None:
        return "its manifest or a file's size does not match the manifest"
    if manifest.get("key") != key:
        return "its manifest names key %s, this lab host's inputs key %s" % (manifest.get("key"), key)
    if image_key(manifest.get("inputs")) != key:
        return "the inputs its manifest lists hash to %s, not %s" % (image_key(manifest.get("inputs")), key)
    if sorted(sums) != image_files(manifest):
        return "it has %s, its manifest lists %s" % (", ".join(sorted(sums)), ", ".join(image_files(manifest)))
    return None


def publish(cache_dir, key, archive, sums, log=None):
    """Image `key` in `cache_dir` from `archive`, trusted only if it checks out; the manifest, and whether it was
    published here (False: a trusted image was there already, possibly built or copied while this one waited)."""
    check_key(key)
    if not isinstance(sums, dict) or not sums:
        raise ImageCopyError("guest image copy: no checksums of the image's files were given; give pack's `files`")
    with BuildLock(cache_dir, key):
        manifest = read_image(cache_dir, key)
        if manifest is not None:
            return manifest, False
        archive_members(archive, sums)
        work = new_build_dir(cache_dir, key)
        try:
            done = subprocess.run(["tar", "-xSf", archive, "-C", work, "--no-same-owner", "--no-overwrite-dir",
                                   "--"] + sorted(sums), capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ImageCopyError("guest image copy: unpacking %s failed: %s" % (archive, done.stderr.strip()))
            problem = verify(work, key, sums)
            if problem is not None:
                raise ImageCopyError("guest image copy: the copy of image %s is not used: %s; nothing was "
                                     "published (copy it again, or set guest_image_copy false to build it on this "
                                     "lab host)" % (key, problem))
            final = publish_build(work, cache_dir, key)
        except BaseException:
            remove_build_dir(work)
            raise
        if log:
            log("guest image %s copied into %s" % (key, final))
        return read_image(cache_dir, key), True
