# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The default guest image: a cached kernel, tiny initramfs and raw ext4 Debian userland, keyed by its inputs.

Layout of one image: ``<cache_dir>/<key>/{vmlinuz,vmlinux,initrd.img,disk.ext4,manifest.json}``. It is built in
``<cache_dir>/.build-<key>-<pid>/`` and renamed into place only when complete, so a directory named by its key
always holds a finished image; a crashed build leaves only a ``.build-*`` directory that nothing trusts and the
next build removes.

Root builds with debootstrap. Any other user builds rootless (docs/rootless.md): `mmdebstrap --mode=unshare` makes
the root filesystem with the guest's ids on the user's subordinate ids, and every later step runs in a user
namespace with the same map (`_guest_image_userns`), so the image's owners are the guest's.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import glob
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import struct
import time
import zlib

from ansible_collections.qemulab.network.plugins.module_utils._guest_image_userns import (
    UsernsError, current_ranges, remove_tree, run_mapped, user_ids_inside,
)

# Bumped when the build procedure changes in a way the inputs do not show.
# 2: the image also carries the kernel uncompressed (vmlinux), which QEMU boots through its PVH entry.
# 3: no SSH keys in the image: the authorized key and each guest's host key come through fw_cfg at boot.
IMAGE_FORMAT = 3
MANIFEST = "manifest.json"
IMAGE_FILES = ("vmlinuz", "initrd.img", "disk.ext4")
# What a rootless image is built with, in its inputs: mmdebstrap's root filesystem is not debootstrap's byte for
# byte (its own apt configuration and logs, its cleanup), so the two never share a key. A root image has no such
# entry: its key stays what it always was.
ROOTLESS_BUILDER = "mmdebstrap-unshare"
DEBIAN_SUITES = ("buster", "bullseye", "bookworm", "trixie", "forky", "sid", "stable", "testing", "unstable")


class GuestImageError(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------

def _deb822_stanzas(text):
    stanza, key = {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
            continue
        if line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
            continue
        if ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            stanza[key] = value.strip()
    if stanza:
        yield stanza


def apt_source_entries(sources_list="/etc/apt/sources.list", sources_dir="/etc/apt/sources.list.d"):
    """Every (uri, suite) of type deb in the host's apt sources, deb822 files first, in file order."""
    entries = []
    for path in sorted(glob.glob(os.path.join(sources_dir, "*.sources"))):
        with open(path) as f:
            for stanza in _deb822_stanzas(f.read()):
                if stanza.get("enabled", "yes").lower() == "no" or "deb" not in stanza.get("types", "").split():
                    continue
                for uri in stanza.get("uris", "").split():
                    for suite in stanza.get("suites", "").split():
                        entries.append((uri, suite))
    list_files = [sources_list] + sorted(glob.glob(os.path.join(sources_dir, "*.list")))
    for path in list_files:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                # deb [options] uri suite components...
                m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    entries.append((m.group(1), m.group(2)))
    return entries


def host_debian_mirror(suite, sources_list="/etc/apt/sources.list", sources_dir="/etc/apt/sources.list.d"):
    """The mirror the host's own apt uses for Debian `suite` itself (not -security/-updates, not third-party)."""
    entries = apt_source_entries(sources_list, sources_dir)
    for uri, entry_suite in entries:
        if entry_suite == suite:
            return uri.rstrip("/")
    # A host on another Debian release still points at a Debian archive that also serves `suite`.
    for uri, entry_suite in entries:
        if entry_suite in DEBIAN_SUITES:
            return uri.rstrip("/")
    raise GuestImageError(
        f"guest image: no Debian mirror found in the host's apt sources ({sources_list}, {sources_dir}/*.sources, "
        f"*.list) for suite {suite}; set guest_image_mirror (module option mirror) to a Debian mirror URL")


def apt_candidate(package):
    """The version apt would install for `package` on this host (what the mirror serves), or ''."""
    try:
        out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, LC_ALL="C"), check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    return m.group(1) if m and m.group(1) != "(none)" else ""


def cached_apt_candidate(package, cache_dir, lists_dir="/var/lib/apt/lists"):
    """apt_candidate, remembered until apt's package lists change (apt-cache costs ~0.4 s, most of a cache hit)."""
    try:
        stamp = max(os.stat(lists_dir).st_mtime_ns,
                    *(os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(lists_dir, "*_Packages*"))))
    except (OSError, ValueError):
        return apt_candidate(package)
    memo = os.path.join(cache_dir, ".apt-candidates.json")
    try:
        with open(memo) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    entry = known.get(package, {})
    if entry.get("lists_mtime_ns") == stamp and entry.get("version"):
        return entry["version"]
    version = apt_candidate(package)
    if version and os.path.isdir(cache_dir):
        known[package] = {"lists_mtime_ns": stamp, "version": version}
        tmp = f"{memo}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(known, f)
        os.rename(tmp, memo)
    return version


def tree_digest(paths):
    """sha256 over the names, modes and contents (or link targets) of files under `paths`."""
    h = hashlib.sha256()
    for top in paths:
        walk = [(top, [], [os.path.basename(top)])] if not os.path.isdir(top) else os.walk(top)
        for dirpath, dirnames, filenames in walk:
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name) if os.path.isdir(top) else top
                rel = os.path.relpath(path, top) if os.path.isdir(top) else name
                st = os.lstat(path)
                h.update(f"{rel}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(path).encode())
                else:
                    with open(path, "rb") as f:
                        h.update(f.read())
                h.update(b"\0")
    return h.hexdigest()


def image_inputs(suite, mirror, packages, kernel_version, files_digest, disk_size_mb, initramfs_modules,
                 builder=None):
    """What the image is built from; no key is among them, so one image serves every lab host key and guest.
    `builder` is ROOTLESS_BUILDER for a rootless build and None (no entry) for root's debootstrap."""
    inputs = {
        "format": IMAGE_FORMAT,
        "suite": suite,
        "mirror": mirror,
        "packages": sorted(set(packages)),
        "kernel_version": kernel_version,
        "files": files_digest,
        "disk_size_mb": disk_size_mb,
        "initramfs_modules": list(initramfs_modules),
    }
    if builder:
        inputs["builder"] = builder
    return inputs


def image_key(inputs):
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------

def image_paths(cache_dir, key):
    d = os.path.join(cache_dir, key)
    return {
        "dir": d,
        "kernel": os.path.join(d, "vmlinuz"),
        "kernel_uncompressed": os.path.join(d, "vmlinux"),
        "initrd": os.path.join(d, "initrd.img"),
        "disk": os.path.join(d, "disk.ext4"),
        "manifest": os.path.join(d, MANIFEST),
    }


def read_image(cache_dir, key):
    """The manifest of a finished image under `key`, or None when there is none to trust."""
    paths = image_paths(cache_dir, key)
    try:
        with open(paths["manifest"]) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    sizes = manifest.get("sizes", {})
    for name in set(IMAGE_FILES) | set(sizes):
        try:
            if os.path.getsize(os.path.join(paths["dir"], name)) != sizes.get(name):
                return None
        except OSError:
            return None
    return manifest


def boot_kernel(paths, manifest):
    """The kernel file a VM should boot: the uncompressed one when the image has it (see uncompressed_kernel)."""
    if manifest and "vmlinux" in manifest.get("sizes", {}):
        return paths["kernel_uncompressed"]
    return paths["kernel"]


# ---------------------------------------------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------------------------------------------

# Under TCG the bzImage's own decompressor is emulated: it took ~4 s of a ~7 s boot here (2026-11-24, one VM, xz
# payload). QEMU boots an uncompressed vmlinux ELF directly through its PVH entry point, so the image keeps one.
KERNEL_PAYLOADS = ((b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b\x08", "gzip"))
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4


def _align4(n):
    return (n + 3) & ~3


def has_pvh_entry(elf):
    """True when `elf` (bytes of an ELF64 image) carries the PVH entry note QEMU's -kernel needs to boot it."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        if phoff + (i + 1) * phentsize > len(elf):
            return False
        p_type, _flags, offset, _vaddr, _paddr, size = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != PT_NOTE:
            continue
        pos, end = offset, min(offset + size, len(elf))
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + _align4(namesz) + _align4(descsz)
    return False


def _decompress(fmt, data):
    if fmt == "xz":
        return lzma.LZMADecompressor().decompress(data)
    if fmt == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    # zstd has no module in Python 3.11's standard library; the tool ignores the bzImage's trailing bytes badly,
    # so its exit status says nothing and the ELF check below decides.
    return subprocess.run(["zstd", "-dcq"], input=data, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          check=False).stdout


def uncompressed_kernel(bzimage):
    """The bootable vmlinux inside a bzImage (bytes), or None when its payload does not decompress to one.

    The payload's place comes from the x86 boot protocol's setup header (2.08+): it starts payload_offset bytes into
    the protected-mode part, which follows the (setup_sects + 1) 512-byte sectors of real-mode setup code.
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        return None
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    payload = bzimage[(setup_sects + 1) * 512 + offset:][:length]
    for magic, fmt in KERNEL_PAYLOADS:
        if payload.startswith(magic):
            try:
                elf = _decompress(fmt, payload)
            except (lzma.LZMAError, zlib.error, OSError, EOFError):
                return None
            return elf if has_pvh_entry(elf) else None
    return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mounts_under(path):
    prefix = os.path.realpath(path).rstrip("/") + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def remove_build_dir(path):
    """rmtree a build directory, after unmounting what debootstrap left mounted in it (its /proc, /sys, /dev)."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if _mounts_under(path):
        # Never recurse into a host filesystem still mounted inside the chroot.
        raise GuestImageError(f"guest image: cannot remove {path}: {_mounts_under(path)} still mounted; unmount them")
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path) and os.geteuid() != 0:
        # a rootless build's root filesystem belongs to the user's subordinate ids: only their namespace removes it
        try:
            remove_tree(path)
        except UsernsError as e:
            raise GuestImageError(f"guest image: cannot remove {path}: {e}")


def new_build_dir(cache_dir, key):
    """An empty ``.build-<key>-<pid>`` directory to make image `key` in (what a crashed build or copy leaves)."""
    work = os.path.join(cache_dir, f".build-{key}-{os.getpid()}")
    remove_build_dir(work)
    os.makedirs(work)
    return work


def publish_build(work, cache_dir, key):
    """Rename the finished `work` directory to image `key`: all or nothing. Whatever is there already is an untrusted
    leftover (read_image said no) and is replaced."""
    final = image_paths(cache_dir, key)["dir"]
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(work, final)
    return final


def remove_stale_builds(cache_dir):
    """Delete .build-* directories whose building process is gone (a crashed or killed build)."""
    removed = []
    for path in glob.glob(os.path.join(cache_dir, ".build-*")):
        m = re.search(r"-(\d+)$", path)
        if m and _pid_alive(int(m.group(1))):
            continue
        remove_build_dir(path)
        removed.append(path)
    return removed


class BuildLock:
    """One build per key at a time: a second run waits, then finds the finished image."""

    def __init__(self, cache_dir, key):
        os.makedirs(cache_dir, exist_ok=True)
        self.path = os.path.join(cache_dir, f".lock-{key}")
        self.fd = None

    def __enter__(self):
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Pruning unlinks a lock no one holds; one opened just before that is a lock of nothing: open it again.
            try:
                now = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            st = os.fstat(fd)
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# ---------------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------------

def _run(cmd, what, timeout=1800, **kwargs):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs, check=False)
    except OSError as e:
        raise GuestImageError(f"guest image: {what}: cannot run {cmd[0]}: {e}; install it (make apt)")
    except subprocess.TimeoutExpired:
        raise GuestImageError(f"guest image: {what}: {cmd[0]} did not finish in {timeout} s")
    if proc.returncode != 0:
        tail = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()
        raise GuestImageError(f"guest image: {what} failed (rc {proc.returncode}): {' '.join(cmd[:6])} ...\n{tail}")
    return proc


def module_load_order(modules_dir, wanted):
    """Relative .ko paths for `wanted` module names and their dependencies, dependencies first (modules.dep)."""
    deps = {}
    by_name = {}
    with open(os.path.join(modules_dir, "modules.dep")) as f:
        for line in f:
            if ":" not in line:
                continue
            path, rest = line.split(":", 1)
            deps[path] = rest.split()
            name = os.path.basename(path).split(".ko")[0].replace("-", "_")
            by_name[name] = path
    builtin = set()
    builtin_file = os.path.join(modules_dir, "modules.builtin")
    if os.path.exists(builtin_file):
        with open(builtin_file) as f:
            builtin = {os.path.basename(line.strip()).split(".ko")[0].replace("-", "_") for line in f}
    order = []

    def visit(path):
        for dep in deps.get(path, []):
            visit(dep)
        if path not in order:
            order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise GuestImageError(f"guest image: initramfs module {name} is neither a module nor built into the "
                                  f"kernel in {modules_dir}; fix guest_image_initramfs_modules")
    return order


def build_initramfs(rootfs, kernel_release, init_script, modules, out_path):
    """A cpio (newc, uncompressed: unpacks faster than it would load compressed) with busybox and `modules`."""
    staging = out_path + ".d"
    os.makedirs(os.path.join(staging, "bin"))
    os.makedirs(os.path.join(staging, "modules"))
    busybox = os.path.join(rootfs, "bin", "busybox")
    if not os.path.exists(busybox):
        raise GuestImageError("guest image: the guest has no /bin/busybox; keep busybox-static in guest_image_packages")
    shutil.copy2(busybox, os.path.join(staging, "bin", "busybox"))
    os.chmod(os.path.join(staging, "bin", "busybox"), 0o755)
    shutil.copy2(init_script, os.path.join(staging, "init"))
    os.chmod(os.path.join(staging, "init"), 0o755)
    modules_dir = os.path.join(rootfs, "lib", "modules", kernel_release)
    order = []
    for rel in module_load_order(modules_dir, modules):
        src = os.path.join(modules_dir, rel)
        name = os.path.basename(rel)
        if name.endswith((".xz", ".zst", ".gz")):
            # busybox insmod reads plain .ko only.
            decompress = {"xz": ["xz", "-dc"], "zst": ["zstd", "-dc"], "gz": ["gzip", "-dc"]}[name.rsplit(".", 1)[1]]
            name = name.rsplit(".", 1)[0]
            with open(os.path.join(staging, "modules", name), "wb") as out:
                _run(decompress + [src], f"decompress {rel}", stdout=out).stdout
        else:
            shutil.copy2(src, os.path.join(staging, "modules", name))
        order.append(name)
    with open(os.path.join(staging, "modules", "order"), "w") as f:
        f.write("".join(f"{name}\n" for name in order))
    names = []
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in sorted(dirnames) + sorted(filenames):
            names.append(os.path.relpath(os.path.join(dirpath, name), staging))
    with open(out_path, "wb") as out:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], input="\n".join(names).encode(),
                       stdout=out, cwd=staging, check=True)
    shutil.rmtree(staging)
    return order


def _copy_tree(src, dst):
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = os.path.normpath(os.path.join(dst, rel))
        os.makedirs(target_dir, exist_ok=True)
        for name in dirnames + filenames:
            s = os.path.join(dirpath, name)
            t = os.path.join(target_dir, name)
            if os.path.islink(s):
                if os.path.lexists(t):
                    os.unlink(t)
                os.symlink(os.readlink(s), t)
            elif os.path.isfile(s):
                if os.path.lexists(t):
                    os.unlink(t)
                shutil.copy2(s, t)
                os.chown(t, 0, 0)


# Trimmed from the image: documentation and caches nothing in a lab guest reads, and the Debian initrd (ours
# replaces it).
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt/archives",
        "var/lib/apt/lists", "var/cache/debconf/templates.dat-old", "var/cache/debconf/config.dat-old")


def debootstrap_argv(suite, rootfs, mirror, packages, deb_cache_dir):
    """Root's build of the root filesystem (its .deb cache through --cache-dir)."""
    cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(packages)]
    if deb_cache_dir:
        cmd.append("--cache-dir=" + deb_cache_dir)
    return cmd + [suite, rootfs, mirror]


def mmdebstrap_argv(suite, rootfs, mirror, packages, deb_cache_dir):
    """A rootless build of the root filesystem into the directory `rootfs`.

    --skip=output/dev: a user namespace may not mknod; the guest's devtmpfs makes /dev. The .deb cache is copied in
    before the download (sync-in) and the downloads out after the install (sync-out, before mmdebstrap's cleanup
    empties the archive), with --skip=essential/unlink so the essential set's .debs are still there to copy out.
    Only the hooks' fixed text is shell; sync-in/sync-out are mmdebstrap's own commands (shell-word split, so the
    path is quoted).
    """
    cmd = ["mmdebstrap", "--mode=unshare", "--variant=minbase", "--skip=output/dev",
           "--include=" + ",".join(packages)]
    if deb_cache_dir:
        cmd += ["--skip=essential/unlink",
                '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
                "--setup-hook=sync-in %s /var/cache/apt/archives/" % shlex.quote(deb_cache_dir),
                "--customize-hook=sync-out /var/cache/apt/archives %s" % shlex.quote(deb_cache_dir)]
    return cmd + [suite, rootfs, mirror]


def _debs(deb_cache_dir):
    return set(glob.glob(os.path.join(glob.escape(deb_cache_dir), "*.deb"))) if deb_cache_dir else set()


def finish_rootfs(work, rootfs, files_dir, initramfs_init, initramfs_modules, disk_size_mb, log):
    """Every step after the root filesystem exists: the guest's files, trimming, kernel, initramfs, `mke2fs -d`;
    the root filesystem is gone afterwards. Returns {release, initramfs_modules, vmlinux, timings}."""
    timings = {}
    releases = sorted(os.listdir(os.path.join(rootfs, "lib", "modules")))
    if not releases:
        raise GuestImageError("guest image: no kernel in the guest; keep linux-image-amd64 in guest_image_packages")
    release = releases[-1]

    _copy_tree(files_dir, rootfs)
    os.makedirs(os.path.join(rootfs, "root", ".ssh"), mode=0o700, exist_ok=True)
    # No keys in the image: qemulab-init installs the lab host's authorized key and the guest's own host key
    # from fw_cfg at every boot (vm_launch makes one host key per VM), so no two guests share a host key.
    for old in glob.glob(os.path.join(rootfs, "etc", "ssh", "ssh_host_*")):
        os.unlink(old)
    with open(os.path.join(rootfs, "etc", "network", "interfaces"), "w") as f:
        f.write("# Written by the qemulab guest_network role; qemulab-init runs ifup -a at boot.\n"
                "auto lo\niface lo inet loopback\n")
    with open(os.path.join(rootfs, "etc", "fstab"), "w") as f:
        f.write("/dev/vda / ext4 rw,noatime 0 1\n")
    with open(os.path.join(rootfs, "etc", "hostname"), "w") as f:
        f.write("qemulab\n")
    # Root gets no usable password ("*"), but must not be "locked" ("!"): sshd without PAM then refuses keys too.
    shadow = os.path.join(rootfs, "etc", "shadow")
    with open(shadow) as f:
        lines = f.read().splitlines()
    with open(shadow, "w") as f:
        for line in lines:
            fields = line.split(":")
            if fields[0] == "root":
                fields[1] = "*"
            f.write(":".join(fields) + "\n")
    for rel in TRIM:
        path = os.path.join(rootfs, rel)
        if os.path.isdir(path):
            shutil.rmtree(path)
            os.makedirs(path)
        elif os.path.exists(path):
            os.unlink(path)
    for old in glob.glob(os.path.join(rootfs, "boot", "initrd.img*")):
        os.unlink(old)
    os.makedirs(os.path.join(rootfs, "var", "lib", "apt", "lists", "partial"), exist_ok=True)
    os.makedirs(os.path.join(rootfs, "var", "cache", "apt", "archives", "partial"), exist_ok=True)

    t0 = time.monotonic()
    shutil.copy2(os.path.join(rootfs, "boot", f"vmlinuz-{release}"), os.path.join(work, "vmlinuz"))
    with open(os.path.join(work, "vmlinuz"), "rb") as f:
        vmlinux = uncompressed_kernel(f.read())
    if vmlinux:
        with open(os.path.join(work, "vmlinux"), "wb") as f:
            f.write(vmlinux)
    else:
        log("the kernel's payload did not decompress to a PVH-bootable ELF; VMs boot the compressed vmlinuz")
    loaded = build_initramfs(rootfs, release, initramfs_init, initramfs_modules, os.path.join(work, "initrd.img"))
    timings["initramfs_s"] = round(time.monotonic() - t0, 2)

    t0 = time.monotonic()
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "qemulab-root", "-d", rootfs,
          os.path.join(work, "disk.ext4"), f"{disk_size_mb}M"], "mke2fs -d")
    timings["mke2fs_s"] = round(time.monotonic() - t0, 1)
    remove_build_dir(rootfs)
    return {"release": release, "initramfs_modules": loaded, "vmlinux": bool(vmlinux), "timings": timings}


def finish_rootless(work, rootfs, files_dir, initramfs_init, initramfs_modules, disk_size_mb, log):
    """finish_rootfs in the user namespace mmdebstrap's map gives (as the guest's root), its files then handed
    back to the user."""
    uid_range, gid_range = current_ranges()
    owner = user_ids_inside(uid_range, gid_range)

    def finish():
        notes = []
        done = finish_rootfs(work, rootfs, files_dir, initramfs_init, initramfs_modules, disk_size_mb, notes.append)
        for name in os.listdir(work):
            os.chown(os.path.join(work, name), *owner)
        done["log"] = notes
        return done

    try:
        done = run_mapped(finish, uid_range, gid_range)
    except UsernsError as e:
        raise GuestImageError(f"guest image: {e}" if not str(e).startswith("guest image:") else str(e))
    for note in done.pop("log"):
        log(note)
    return done


def build_image(cache_dir, key, inputs, mirror, packages, suite, files_dir, initramfs_init, disk_size_mb,
                initramfs_modules, deb_cache_dir, log, rootless=False):
    """Build a complete image under `key`; nothing named by the key exists unless every step succeeded.
    `rootless`: mmdebstrap and a user namespace instead of debootstrap as root (see the module's docstring)."""
    os.makedirs(cache_dir, exist_ok=True)
    remove_stale_builds(cache_dir)
    work = new_build_dir(cache_dir, key)
    rootfs = os.path.join(work, "rootfs")

    def on_sigterm(signum, frame):
        raise GuestImageError(f"guest image: build of {key} stopped by signal {signum}")

    # A SIGTERM (task timeout, Ctrl-C of the controller) must still run the cleanup below.
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        t0 = time.monotonic()
        if deb_cache_dir:
            os.makedirs(deb_cache_dir, exist_ok=True)
        cached = _debs(deb_cache_dir)
        tool = "mmdebstrap" if rootless else "debootstrap"
        argv = (mmdebstrap_argv if rootless else debootstrap_argv)(suite, rootfs, mirror, packages, deb_cache_dir)
        # INITRD=No: the Debian kernel's hook would spend ~20 s making an initrd that ours replaces.
        _run(argv, f"{tool} {suite} from {mirror}", timeout=3600, env=dict(os.environ, INITRD="No"))
        timings = {f"{tool}_s": round(time.monotonic() - t0, 1)}

        done = (finish_rootless if rootless else finish_rootfs)(
            work, rootfs, files_dir, initramfs_init, initramfs_modules, disk_size_mb, log)
        timings.update(done["timings"])

        manifest = {
            "key": key,
            "inputs": inputs,
            "kernel_release": done["release"],
            "initramfs_modules": done["initramfs_modules"],
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "timings": timings,
            "sizes": {name: os.path.getsize(os.path.join(work, name))
                      for name in IMAGE_FILES + (("vmlinux",) if done["vmlinux"] else ())},
        }
        if rootless and deb_cache_dir:
            # what this build fetched: 0 when the .deb cache had every package
            manifest["debs_downloaded"] = len(_debs(deb_cache_dir) - cached)
        with open(os.path.join(work, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        final = publish_build(work, cache_dir, key)
        log(f"built {final}")
        return manifest
    except BaseException:
        remove_build_dir(work)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
