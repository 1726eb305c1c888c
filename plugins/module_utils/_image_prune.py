# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pruning the guest image cache: which cached images are in use, which to keep, and removing the rest.

Only names the collection makes are ever touched (_guest_image's layout): ``<key>/`` (a finished image: its
``manifest.json`` names the key), ``.lock-<key>`` (a build's flock) and ``.build-<key>-<pid>/`` (a build under way or
a crashed one). Anything else in the cache directory, or inside an image directory, is foreign and stays.

An image is in use when an overlay under ``<state_dir>/labs/`` has it in its backing chain (read from the qcow2
header, bounded, never through a link), when a running QEMU's command line names it or an overlay over it, when any
process has one of its files open, or when its build lock is held.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import struct

from ansible_collections.qemulab.network.plugins.module_utils._guest_image import (
    IMAGE_FILES, MANIFEST, read_image, remove_build_dir, _pid_alive,
)
from ansible_collections.qemulab.network.plugins.module_utils._qemu_process import open_dir, proc_cmdline

KEY = r"[0-9a-f]{16}"
IMAGE_NAME = re.compile(r"^(%s)$" % KEY)
LOCK_NAME = re.compile(r"^\.lock-(%s)$" % KEY)
BUILD_NAME = re.compile(r"^\.build-(%s)-(\d+)$" % KEY)
# Every file an image directory may hold; anything else found there is foreign and keeps the directory.
OWN_IMAGE_FILES = tuple(IMAGE_FILES) + ("vmlinux", MANIFEST)
# The image's clone templates (_qemu_clone.TEMPLATES_DIR), removed with it.
TEMPLATES_DIR = "templates"
MAX_MANIFEST = 1024 * 1024
QCOW2_MAGIC = b"QFI\xfb"
# QEMU refuses a backing file name longer than 1023 bytes; a longer one is no overlay of ours.
MAX_BACKING_NAME = 1023
MAX_CHAIN = 16
# labs/<lab>/<vm>.qcow2 is where vm_launch puts overlays; one level below that covers a user's own layout.
MAX_OVERLAY_DEPTH = 2
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


# ---------------------------------------------------------------------------------------------------------------
# What the cache holds
# ---------------------------------------------------------------------------------------------------------------

def _manifest_at(dir_fd, key):
    """The manifest of the image directory `key` when it is ours (a regular manifest naming `key`), else None."""
    try:
        fd = os.open(os.path.join(key, MANIFEST), _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST:
            return None
        manifest = json.loads(os.read(fd, MAX_MANIFEST).decode("utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return manifest if isinstance(manifest, dict) and manifest.get("key") == key else None


def read_cache(cache_dir):
    """{images: {key: {built, mtime, complete}}, locks: [key], builds: [(name, pid)]}: the cache's own entries.

    An image directory counts only when it is a real directory (no link) whose manifest names its key; a lock only
    when it is a regular file. Everything else is left out, so nothing else can be removed.
    """
    found = {"images": {}, "locks": [], "builds": []}
    try:
        dir_fd = open_dir(cache_dir)
    except OSError:
        return found
    try:
        for name in sorted(os.listdir(dir_fd)):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            image, lock, build = IMAGE_NAME.match(name), LOCK_NAME.match(name), BUILD_NAME.match(name)
            if image and stat.S_ISDIR(st.st_mode):
                manifest = _manifest_at(dir_fd, name)
                if manifest is not None:
                    found["images"][name] = {"built": str(manifest.get("built", "")), "mtime": st.st_mtime_ns,
                                             "complete": read_image(cache_dir, name) is not None}
            elif lock and stat.S_ISREG(st.st_mode):
                found["locks"].append(lock.group(1))
            elif build and stat.S_ISDIR(st.st_mode):
                found["builds"].append((name, int(build.group(2))))
    finally:
        os.close(dir_fd)
    return found


def lock_held(cache_dir, key):
    """True when a process holds the flock of `.lock-<key>` (a build of that key is under way)."""
    try:
        fd = os.open(os.path.join(cache_dir, ".lock-" + key), _OPEN_FLAGS)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    return False


# ---------------------------------------------------------------------------------------------------------------
# What uses an image
# ---------------------------------------------------------------------------------------------------------------

def qcow2_backing(path):
    """The backing file name in the qcow2 header of the regular file `path` (relative names resolved against its
    directory), '' when it has none, None when it is no qcow2. Reads at most the header and the name."""
    try:
        # lstat first: opening a device node may act on the device; O_NOFOLLOW and fstat then catch a swap
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.pread(fd, 20, 0)
        if len(head) < 20 or head[:4] != QCOW2_MAGIC:
            return None
        offset, size = struct.unpack(">QI", head[8:20])
        if not offset:
            return ""
        if size > MAX_BACKING_NAME:
            return None
        name = os.pread(fd, size, offset).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    if name.startswith("json:") or os.path.isabs(name):
        return name
    return os.path.join(os.path.dirname(path), name)


def backing_chain(path):
    """The backing file names below the qcow2 `path`, nearest first (at most MAX_CHAIN, a loop ends it)."""
    chain = []
    backing = qcow2_backing(path)
    while backing and backing not in chain and len(chain) < MAX_CHAIN:
        chain.append(backing)
        backing = qcow2_backing(backing)
    return chain


class ImageRefs:
    """Finds which keys of `cache_dir` a path names: the cache as given and as resolved, a key directory below it."""

    def __init__(self, cache_dir):
        roots = {os.path.normpath(os.path.abspath(cache_dir)), os.path.realpath(cache_dir)}
        self.pattern = re.compile("(?:%s)/(%s)(?=/|$|,|\")" % ("|".join(re.escape(r) for r in sorted(roots)), KEY))

    def keys(self, text, resolve=True):
        keys = set(self.pattern.findall(text))
        if not keys and resolve and text.startswith("/"):
            keys = set(self.pattern.findall(os.path.realpath(text)))
        return keys


def overlays_under(state_dir):
    """[(path, backing chain)] of every qcow2 file with a backing file under <state_dir>/labs (links not followed)."""
    top = os.path.join(state_dir, "labs")
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath[len(top):].count(os.sep) >= MAX_OVERLAY_DEPTH:
            dirnames[:] = []
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            chain = backing_chain(path)
            if chain:
                found.append((path, chain))
    return found


def _argv_paths(argv):
    """Every absolute file name a QEMU command line holds: whole arguments (-kernel, -initrd) and the values of option
    strings (-drive file=..., commas doubled inside a value: _qemu_argv.option_string)."""
    paths = []
    for arg in argv[1:]:
        for part in arg.replace(",,", "\0").split(","):
            value = part.split("=", 1)[1] if "=" in part and not part.startswith("/") else part
            if value.startswith("/"):
                paths.append(value.replace("\0", ","))
    return paths


def _is_qemu(pid):
    try:
        return "qemu" in os.path.basename(os.readlink("/proc/%d/exe" % pid))
    except OSError:
        return False


def process_refs(refs):
    """{key: reason} for images a process uses: a QEMU whose command line names an image file or an overlay over
    one, or any process holding one of an image's files open."""
    used = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fd_dir = "/proc/%d/fd" % pid
        try:
            targets = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:
            targets = []
        for target in targets:
            # the kernel names an open file by its real path already
            for key in refs.keys(target, resolve=False):
                used.setdefault(key, "process %d has %s open" % (pid, target))
        if not _is_qemu(pid):
            continue
        for path in _argv_paths(proc_cmdline(pid) or []):
            for key in refs.keys(path):
                used.setdefault(key, "QEMU %d names %s" % (pid, path))
            for backing in backing_chain(path):
                for key in refs.keys(backing):
                    used.setdefault(key, "QEMU %d runs %s over %s" % (pid, path, backing))
    return used


def images_in_use(cache_dir, state_dir):
    """{key: reason} of every image an overlay under the state directory or a running process uses."""
    refs = ImageRefs(cache_dir)
    used = {}
    for path, chain in overlays_under(state_dir):
        for backing in chain:
            for key in refs.keys(backing):
                used.setdefault(key, "overlay %s is backed by %s" % (path, backing))
    for key, reason in process_refs(refs).items():
        used.setdefault(key, reason)
    return used


# ---------------------------------------------------------------------------------------------------------------
# Plan and act
# ---------------------------------------------------------------------------------------------------------------

def plan_prune(cache, current, keep, in_use, held, alive=_pid_alive):
    """({name: reason} to keep, {name: reason} to remove) over the cache's own entries (read_cache).

    Kept: the image of this run's inputs, images in use or whose lock is held, then the `keep` newest finished
    images among the rest. Removed: every other image, every lock no process holds, builds whose process is gone.
    """
    kept, removed = {}, {}
    rest = []
    for key, info in cache["images"].items():
        if key == current:
            kept[key] = "the image of this run's inputs"
        elif key in in_use:
            kept[key] = "in use: " + in_use[key]
        elif key in held:
            kept[key] = "its build lock is held"
        elif not info["complete"]:
            removed[key] = "unfinished or damaged (its files do not match its manifest)"
        else:
            rest.append(key)
    rest.sort(key=lambda k: (cache["images"][k]["built"], cache["images"][k]["mtime"], k), reverse=True)
    for rank, key in enumerate(rest):
        if rank < keep:
            kept[key] = "one of the %d newest other images (built %s)" % (keep, cache["images"][key]["built"])
        else:
            removed[key] = "older than the %d newest other images (built %s)" % (keep, cache["images"][key]["built"])
    for key in cache["locks"]:
        name = ".lock-" + key
        if key in held:
            kept[name] = "held by a running build"
        else:
            removed[name] = "no process holds it"
    for name, pid in cache["builds"]:
        if alive(pid):
            kept[name] = "its build (pid %d) is running" % pid
        else:
            removed[name] = "its build (pid %d) is gone" % pid
    return kept, removed


def _disk_usage(dir_fd, name):
    """Bytes a cache entry occupies on disk (its own files only)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_blocks * 512
    total = 0
    for own in OWN_IMAGE_FILES:
        try:
            total += os.stat(os.path.join(name, own), dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
        except OSError:
            pass
    return total


def _remove_lock(dir_fd, name):
    """Unlink a lock file while holding its flock, and only if the name still is that file: a build that opened it
    meanwhile waits on it and BuildLock then sees the name gone and opens a new one. False when it is held."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        st = os.fstat(fd)
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
            os.unlink(name, dir_fd=dir_fd)
        return True
    finally:
        os.close(fd)


def _foreign_in(dir_fd, key):
    """Names inside the image directory `key` that are not the image's own files."""
    try:
        image_fd = open_dir(key, dir_fd=dir_fd)
    except OSError:
        return []
    try:
        return sorted(set(os.listdir(image_fd)) - set(OWN_IMAGE_FILES) - {TEMPLATES_DIR})
    finally:
        os.close(image_fd)


def _remove_image(dir_fd, key):
    """Unlink an image's own files, the manifest last (a half-removed image is then still recognised as ours and
    untrusted), then its directory unless a foreign file keeps it."""
    try:
        image_fd = open_dir(key, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        # its clone templates first (_qemu_clone: templates/<key>/ and their builds), they are nothing without it
        try:
            shutil.rmtree(TEMPLATES_DIR, dir_fd=image_fd)
        except FileNotFoundError:
            pass
        for own in sorted(OWN_IMAGE_FILES, key=lambda n: n == MANIFEST):
            try:
                os.unlink(own, dir_fd=image_fd)
            except FileNotFoundError:
                pass
        if os.listdir(image_fd):
            return
    finally:
        os.close(image_fd)
    os.rmdir(key, dir_fd=dir_fd)


def prune(cache_dir, removed, check_mode):
    """Remove the entries `removed` names: ({name: bytes freed} of what goes (in check mode, would go), {name: why
    it stays} of what could not go (a lock a process took meanwhile), {name: note} on what went only in part (an
    image directory holding foreign files keeps them and itself))."""
    freed, stayed, notes = {}, {}, {}
    if not removed:
        # a cache directory not made yet holds nothing to remove
        return freed, stayed, notes
    dir_fd = open_dir(cache_dir)
    try:
        for name in sorted(removed):
            size = _disk_usage(dir_fd, name)
            if IMAGE_NAME.match(name):
                foreign = _foreign_in(dir_fd, name)
                if foreign:
                    notes[name] = "its directory stays with what is not the image's: %s" % ", ".join(foreign)
            if check_mode:
                freed[name] = size
            elif LOCK_NAME.match(name):
                if _remove_lock(dir_fd, name):
                    freed[name] = size
                else:
                    stayed[name] = "a process took it meanwhile"
            elif BUILD_NAME.match(name):
                remove_build_dir(os.path.join(cache_dir, name))
                freed[name] = size
            else:
                _remove_image(dir_fd, name)
                freed[name] = size
    finally:
        os.close(dir_fd)
    return freed, stayed, notes


def own_entries(cache):
    """Sorted names of the cache's own entries (for the diff)."""
    locks = [".lock-" + key for key in cache["locks"]]
    return sorted(list(cache["images"]) + locks + [name for name, _pid in cache["builds"]])
