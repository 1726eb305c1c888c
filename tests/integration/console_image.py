"""A stand-in for a Yocto core-image-minimal, built from Debian packages without debootstrap, cached by its inputs.

What a course's Yocto build gives: a kernel (`bzImage`) and an ext4 root disk whose init is busybox, with a login
prompt on ttyS0, busybox's ifupdown applets, no sshd and no Python. Here the kernel is Debian's `vmlinuz` (unpacked
from the kernel .deb with `dpkg-deb -x`, never installed on the host) and the disk is made with `mke2fs -d` from a
directory holding `busybox-static` (the host's /bin/busybox) and a few files of /etc.

One difference from Yocto's qemux86-64 kernel: Debian builds virtio and ext4 as modules, so this image also has a
small initrd that loads them, mounts /dev/vda and switches to it (the inventory's `vm_initrd`, which docs/own-images.md
describes for exactly this case).

Run as a script to build (or find) the cached image and print its paths.
"""
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import minimal_guest

CACHE_ROOT = "/var/cache/qemulab/test-console-image"
# Loaded by the initrd in this order (each module's dependencies first; modinfo -F depends on Debian 6.1's).
# crc32c_generic: ext4's metadata checksums ask the crypto API for crc32c, which would need modprobe otherwise.
MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk",
           "failover", "net_failover", "virtio_net", "crc16", "mbcache", "jbd2", "crc32c_generic", "ext4"]
DISK_SIZE = "24M"

INITRD_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in %(modules)s; do insmod /lib/modules/$m.ko; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initrd: cannot mount /dev/vda"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
""" % {"modules": " ".join(MODULES)}

# The root disk's files: busybox init, a getty with a login prompt on ttyS0, root without a password (as Yocto's
# debug-tweaks), ifupdown's directories and state under /run, the persisted sysctl and interfaces applied at boot.
ROOT_FILES = {
    "etc/inittab": "::sysinit:/etc/init.d/rcS\n"
                   "ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100\n"
                   "::shutdown:/bin/umount -a -r\n",
    "etc/init.d/rcS": r"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
for arg in $(cat /proc/cmdline); do
  case "$arg" in qemulab.hostname=*) hostname "${arg#qemulab.hostname=}" ;; esac
done
ip link set lo up
for f in /etc/sysctl.d/*.conf; do [ -f "$f" ] && sysctl -p "$f" >/dev/null; done
[ -f /etc/network/interfaces ] && ifup -a
echo "qemulab console image up"
""",
    "etc/passwd": "root::0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/issue": "Poky (Yocto Project Reference Distro) stand-in \\n \\l\n\n",
    "etc/profile": "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nPS1='\\u@\\h:\\w# '\n",
}
ROOT_DIRS = ("proc", "sys", "dev", "run", "tmp", "root", "mnt", "etc/sysctl.d", "etc/network/if-pre-up.d",
             "etc/network/if-up.d", "etc/network/if-down.d", "etc/network/if-post-down.d", "usr/bin", "usr/sbin", "sbin")


def _cache_key(pkg, version):
    data = json.dumps({"kernel": [pkg, version], "busybox": minimal_guest.busybox_version(), "init": INITRD_INIT,
                       "files": ROOT_FILES, "dirs": ROOT_DIRS, "modules": MODULES, "size": DISK_SIZE},
                      sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _kernel_tree(cache_root, work, pkg, version):
    deb_dir = os.path.join(cache_root, "debs")
    os.makedirs(deb_dir, exist_ok=True)
    name = "%s_%s_" % (pkg, version.replace(":", "%3a"))
    debs = [os.path.join(deb_dir, f) for f in os.listdir(deb_dir) if f.startswith(name)]
    if not debs:
        minimal_guest._run(["apt-get", "download", "%s=%s" % (pkg, version)], cwd=deb_dir)
        debs = [os.path.join(deb_dir, f) for f in os.listdir(deb_dir) if f.startswith(name)]
    tree = os.path.join(work, "tree")
    minimal_guest._run(["dpkg-deb", "-x", debs[0], tree])
    return tree


def _rootfs(root):
    for sub in ROOT_DIRS:
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    shutil.copy(minimal_guest.BUSYBOX, os.path.join(root, "bin", "busybox"))
    # every applet as a link, where busybox itself would put it (/sbin/init, /sbin/ifup, /bin/login, ...)
    applets = minimal_guest._run([minimal_guest.BUSYBOX, "--list-full"]).stdout.split()
    for applet in applets:
        link = os.path.join(root, applet)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)
    os.makedirs(os.path.join(root, "var"), exist_ok=True)
    os.symlink("/run", os.path.join(root, "var", "run"))  # ifupdown's state file, on the tmpfs
    for rel, text in ROOT_FILES.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
    os.chmod(os.path.join(root, "etc/init.d/rcS"), 0o755)
    os.chmod(os.path.join(root, "root"), 0o700)
    os.chmod(os.path.join(root, "tmp"), 0o1777)


def _initrd(tree, work, dest):
    root = os.path.join(work, "initrd")
    for sub in ("bin", "proc", "sys", "dev", "newroot", "lib/modules"):
        os.makedirs(os.path.join(root, sub))
    shutil.copy(minimal_guest.BUSYBOX, os.path.join(root, "bin", "busybox"))
    for name in MODULES:
        minimal_guest._copy_module(tree, name, os.path.join(root, "lib", "modules"))
    with open(os.path.join(root, "init"), "w") as handle:
        handle.write(INITRD_INIT)
    os.chmod(os.path.join(root, "init"), 0o755)
    files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, check=True,
                          capture_output=True).stdout
    with gzip.open(dest, "wb") as handle:
        handle.write(cpio)


def build(cache_root=CACHE_ROOT):
    """Build the image (or reuse the cached one); {"kernel": bzImage, "initrd": path, "disk": pristine ext4}."""
    pkg, version = minimal_guest.kernel_package()
    out_dir = os.path.join(cache_root, _cache_key(pkg, version))
    result = {"kernel": os.path.join(out_dir, "bzImage"), "initrd": os.path.join(out_dir, "initrd.gz"),
              "disk": os.path.join(out_dir, "rootfs.ext4")}
    if os.path.exists(os.path.join(out_dir, "done")):
        return result
    os.makedirs(cache_root, exist_ok=True)
    work = tempfile.mkdtemp(prefix="build-", dir=cache_root)
    try:
        tree = _kernel_tree(cache_root, work, pkg, version)
        staging = os.path.join(work, "out")
        os.makedirs(staging)
        vmlinuz = [f for f in os.listdir(os.path.join(tree, "boot")) if f.startswith("vmlinuz-")][0]
        shutil.copy(os.path.join(tree, "boot", vmlinuz), os.path.join(staging, "bzImage"))
        _initrd(tree, work, os.path.join(staging, "initrd.gz"))
        root = os.path.join(work, "rootfs")
        _rootfs(root)
        minimal_guest._run(["mke2fs", "-q", "-t", "ext4", "-L", "rootfs", "-d", root,
                            os.path.join(staging, "rootfs.ext4"), DISK_SIZE])
        open(os.path.join(staging, "done"), "w").close()
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    print(json.dumps(build(sys.argv[1] if len(sys.argv) > 1 else CACHE_ROOT)))
