#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: guest_image
short_description: Build or reuse the cached default guest image (kernel, tiny initramfs, raw ext4 Debian userland)
version_added: 0.1.0
description:
  - Makes sure a guest image built from exactly the given inputs exists under O(cache_dir)/<key>/, where <key> is a
    hash of the inputs (suite, mirror, package list, kernel version, the files put into the guest, disk size,
    initramfs modules). Files are C(vmlinuz), C(vmlinux) (the same kernel uncompressed, when its
    payload decompresses to an ELF with a PVH entry), C(initrd.img), C(disk.ext4) and C(manifest.json).
  - An existing image with the same key is reused (changed false, no network access beyond C(apt-cache policy)).
    Otherwise it is built with C(debootstrap --variant=minbase), the tiny initramfs is assembled from the guest's own
    busybox and kernel modules, and C(mke2fs -t ext4 -d) makes the raw disk without loop mounts; the result is
    renamed into place only when complete.
  - Run by a user other than root, it builds without root (docs/rootless.md) into that user's cache
    (C(~/.cache/qemulab)) - C(mmdebstrap --mode=unshare --variant=minbase --skip=output/dev) into a directory, every
    later step in a user namespace with mmdebstrap's id map, so the image's files have the guest's owners. Such an
    image's key also names its builder (C(mmdebstrap-unshare)); root's key is unchanged. Before anything changes it
    fails naming what is missing (mmdebstrap, newuidmap/newgidmap from uidmap, a subordinate uid and gid range of
    the user in C(/etc/subuid) and C(/etc/subgid)) and the administrator's fix.
  - The kernel command line returned in RV(append) boots the guest's own init (no systemd); the per-VM part
    (C(qemulab.nics=), C(qemulab.mgmt=), C(qemulab.hostname=)) is added by the lab roles.
  - The image holds no SSH key. Its init installs, at every boot, the authorized key from the fw_cfg item
    C(opt/qemulab/authorized_keys) and the guest's host key from C(opt/qemulab/ssh_host_ed25519_key) (the
    qemulab.network.vm_launch role hands over both, a host key of its own per VM); a guest booted without a host key
    makes one. So one image serves any key, and no two guests share a host key.
  - With O(prune=true), old images are removed from O(cache_dir) after the image is ensured. Kept are the image of
    these inputs, every image in use (an overlay under O(state_dir)C(/labs/) has it in its qcow2 backing chain, a
    running QEMU's command line names it or an overlay over it, a process has one of its files open, or its build
    lock is held) and the O(prune_keep) newest of the others. Also removed are C(.lock-<key>) files no process holds
    (tried with a non-blocking flock) and C(.build-<key>-<pid>) directories whose build process is gone. Only the
    cache's own names are touched (C(<key>/) holding a C(manifest.json) that names C(<key>), and within it only the
    image's own files); anything else there stays.
author:
  - qemulab developers (@qemulab)
requirements:
  - debootstrap, e2fsprogs (mke2fs with -d), cpio, openssh-client (ssh-keygen) on the lab host
  - for a build without root, mmdebstrap and uidmap, and 65536 subordinate uids and gids of the user
options:
  state:
    description: C(present) builds or reuses the image; C(absent) deletes the image of these inputs.
    type: str
    choices: [present, absent]
    default: present
  cache_dir:
    description:
      - Directory holding one subdirectory per image key.
      - Unset, C(images) under the cache root of the user the module runs as (C(/var/cache/qemulab/images) for
        root, C(~/.cache/qemulab/images) for any other user).
    type: path
  deb_cache_dir:
    description:
      - Where downloaded packages are kept between builds (debootstrap's C(--cache-dir); copied in and out of a
        rootless build by mmdebstrap's C(sync-in)/C(sync-out) hooks). Empty for none.
      - Unset, C(debs) under the user's cache root (C(/var/cache/qemulab/debs) for root).
    type: path
  suite:
    description: Debian suite of the guest userland.
    type: str
    default: bookworm
  mirror:
    description:
      - Debian mirror URL to build from.
      - Empty means the mirror the host's own apt sources use for O(suite) (deb822 C(*.sources) and C(sources.list)).
    type: str
    default: ''
  packages:
    description: Packages installed into the guest on top of minbase (must include the kernel and busybox-static).
    type: list
    elements: str
    required: true
  kernel_version:
    description:
      - Version of C(linux-image-amd64) the image is keyed by, so a new kernel on the mirror means a rebuild.
      - Empty means the host's C(apt-cache policy linux-image-amd64) candidate.
    type: str
    default: ''
  files_dir:
    description: A directory tree copied over the guest's root (the init, sshd and acpid configuration).
    type: path
    required: true
  initramfs_init:
    description: The initramfs's C(/init) script.
    type: path
    required: true
  initramfs_modules:
    description: Kernel modules the initramfs loads (with their dependencies) before mounting the root disk.
    type: list
    elements: str
    default: [virtio_pci, virtio_blk, crc32c_generic, ext4]
  disk_size_mb:
    description: Size of the raw ext4 base disk in MiB.
    type: int
    default: 2048
  kernel_args:
    description: Kernel arguments appended after C(root=/dev/vda rw init=/sbin/qemulab-init) in RV(append).
    type: str
    default: console=ttyS0 quiet
  build:
    description:
      - With O(state=present), build the image when it is missing. C(false) only computes its key and paths (and
        keeps it from pruning), as C(--tags prune) of the lab playbook does.
    type: bool
    default: true
  prune:
    description: Remove old images, stale locks and abandoned builds from O(cache_dir) (see the description).
    type: bool
    default: false
  prune_keep:
    description: How many of the newest images that are neither these inputs' image nor in use pruning keeps.
    type: int
    default: 1
  state_dir:
    description:
      - The lab state directory whose C(labs/) subtree (two levels) is searched for qcow2 overlays; an image in any
        overlay's backing chain is in use. Use the same directory as the vm_launch role's C(vm_launch_state_dir).
      - Unset, the state root of the user the module runs as (C(/var/lib/qemulab) for root,
        C(~/.local/share/qemulab) for any other user).
    type: path
attributes:
  check_mode:
    description: Reports what would change without changing anything.
    support: full
  diff_mode:
    description:
      - Returns the state before and after; with O(prune), also the cache's own entries when pruning changes them.
    support: full
"""

EXAMPLES = r"""
- name: The default guest image
  qemulab.network.guest_image:
    packages: [linux-image-amd64, busybox-static, kmod, ifupdown, iproute2, openssh-server, python3]
    files_dir: "{{ role_path }}/files/rootfs"
    initramfs_init: "{{ role_path }}/files/initramfs-init"
  register: image

- name: Keep only what labs use plus the two newest other images
  qemulab.network.guest_image:
    packages: [linux-image-amd64, busybox-static, kmod, ifupdown, iproute2, openssh-server, python3]
    files_dir: "{{ role_path }}/files/rootfs"
    initramfs_init: "{{ role_path }}/files/initramfs-init"
    build: false
    prune: true
    prune_keep: 2
"""

RETURN = r"""
key:
  description: The image key (hash of the inputs).
  returned: always
  type: str
dir:
  description: The image directory.
  returned: always
  type: str
kernel:
  description:
    - Path of the kernel a VM should boot. The uncompressed C(vmlinux) when the image has one, because the
      bzImage's decompressor costs seconds of every boot under TCG; otherwise C(vmlinuz).
  returned: always
  type: str
initrd:
  description: Path of the tiny initramfs.
  returned: always
  type: str
disk:
  description: Path of the raw ext4 base disk (use it as the backing file of per-VM overlays).
  returned: always
  type: str
append:
  description: Kernel command line without the per-VM part.
  returned: always
  type: str
mirror:
  description: The Debian mirror the image is (or would be) built from.
  returned: always
  type: str
kernel_version:
  description: The linux-image-amd64 version the key uses.
  returned: always
  type: str
manifest:
  description: The image's manifest (inputs, kernel release, file sizes, build timings); empty when there is none.
  returned: always
  type: dict
prune:
  description: What pruning kept and removed (in check mode, would remove), each entry with its reason.
  returned: when O(prune=true)
  type: dict
  contains:
    kept:
      description: Entries of the cache that stay, each C({name, path, reason}).
      type: list
      elements: dict
    removed:
      description: Entries removed, each C({name, path, reason, bytes}) (C(bytes) freed on disk).
      type: list
      elements: dict
    freed_bytes:
      description: Sum of the C(bytes) of the removed entries.
      type: int
  sample:
    kept:
      - {name: 6df36600a114538e, path: /var/cache/qemulab/images/6df36600a114538e,
         reason: "the image of this run's inputs"}
    removed:
      - {name: af33079de5b207fa, path: /var/cache/qemulab/images/af33079de5b207fa, bytes: 755159040,
         reason: "older than the 1 newest other images (built 2026-11-27T09:50:26Z)"}
      - {name: .lock-af33079de5b207fa, path: /var/cache/qemulab/images/.lock-af33079de5b207fa, bytes: 0,
         reason: no process holds it}
    freed_bytes: 755159040
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qemulab.network.plugins.module_utils._guest_image import (
    ROOTLESS_BUILDER, BuildLock, GuestImageError, build_image, cached_apt_candidate, host_debian_mirror, image_inputs,
    image_key, boot_kernel, image_paths, read_image, tree_digest,
)
from ansible_collections.qemulab.network.plugins.module_utils._guest_image_userns import problems
from ansible_collections.qemulab.network.plugins.module_utils._run_paths import current
from ansible_collections.qemulab.network.plugins.module_utils._image_prune import (
    images_in_use, lock_held, own_entries, plan_prune, prune, read_cache,
)

ROOT_ARGS = "root=/dev/vda rw init=/sbin/qemulab-init"


def prune_cache(module, key, state):
    """Plan and (outside check mode) act on the cache: (result, entries before, entries after, changed)."""
    p = module.params
    cache = read_cache(p["cache_dir"])
    held = {k for k in cache["locks"] if lock_held(p["cache_dir"], k)}
    # /proc and the overlays are read only when there is an image pruning could remove
    in_use = images_in_use(p["cache_dir"], p["state_dir"]) if set(cache["images"]) - {key} else {}
    kept, removed = plan_prune(cache, key, p["prune_keep"], in_use, held)
    freed, stayed, notes = prune(p["cache_dir"], removed, module.check_mode)
    kept.update(stayed)
    removed.update((n, "%s; %s" % (removed[n], note)) for n, note in notes.items())
    before = own_entries(cache)
    after = [n for n in before if n not in freed and not (state == "absent" and n == key)]
    at = p["cache_dir"]
    result = {
        "kept": [{"name": n, "path": os.path.join(at, n), "reason": kept[n]} for n in sorted(kept)],
        "removed": [{"name": n, "path": os.path.join(at, n), "reason": removed[n], "bytes": freed[n]}
                    for n in sorted(freed)],
        "freed_bytes": sum(freed.values()),
    }
    return result, before, after, bool(freed)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            cache_dir=dict(type="path"),
            deb_cache_dir=dict(type="path"),
            suite=dict(type="str", default="bookworm"),
            mirror=dict(type="str", default=""),
            packages=dict(type="list", elements="str", required=True),
            kernel_version=dict(type="str", default=""),
            files_dir=dict(type="path", required=True),
            initramfs_init=dict(type="path", required=True),
            initramfs_modules=dict(type="list", elements="str", default=["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"]),
            disk_size_mb=dict(type="int", default=2048),
            kernel_args=dict(type="str", default="console=ttyS0 quiet"),
            build=dict(type="bool", default=True),
            prune=dict(type="bool", default=False),
            prune_keep=dict(type="int", default=1),
            state_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    # the user's own roots (root's are the system paths these options always had as defaults)
    roots = current()
    for opt, path in (("cache_dir", roots.images), ("deb_cache_dir", roots.debs), ("state_dir", roots.state)):
        if p[opt] is None:
            p[opt] = path
    rootless = roots.rootless
    for opt in ("files_dir", "initramfs_init"):
        if not os.path.exists(p[opt]):
            module.fail_json(msg=f"guest_image: {opt} {p[opt]} does not exist; point it at the guest_image role's files")
    if p["prune_keep"] < 0:
        module.fail_json(msg=f"guest_image: prune_keep {p['prune_keep']} is negative; give how many old images to "
                             "keep, 0 or more (guest_image_prune_keep)")
    try:
        mirror = p["mirror"].rstrip("/") or host_debian_mirror(p["suite"])
        kernel_version = p["kernel_version"] or cached_apt_candidate("linux-image-amd64", p["cache_dir"])
        if not kernel_version:
            module.fail_json(msg="guest_image: apt-cache policy linux-image-amd64 has no candidate on this host; "
                                 "run apt-get update or set kernel_version (guest_image_kernel_version)")
        inputs = image_inputs(p["suite"], mirror, p["packages"], kernel_version,
                              tree_digest([p["files_dir"], p["initramfs_init"]]), p["disk_size_mb"],
                              p["initramfs_modules"], builder=ROOTLESS_BUILDER if rootless else None)
        key = image_key(inputs)
        paths = image_paths(p["cache_dir"], key)
        manifest = read_image(p["cache_dir"], key)
        result = dict(key=key, dir=paths["dir"], kernel=boot_kernel(paths, manifest), initrd=paths["initrd"], disk=paths["disk"],
                      append=f"{ROOT_ARGS} {p['kernel_args']}".strip(), mirror=mirror,
                      kernel_version=kernel_version, manifest=manifest or {})
        before = {"key": key, "built": manifest is not None}
        if p["state"] == "absent":
            changed = os.path.exists(paths["dir"])
            after = {"key": key, "built": False}
            if changed and not module.check_mode:
                shutil.rmtree(paths["dir"])
        else:
            changed = manifest is None and p["build"]
            after = {"key": key, "built": manifest is not None or p["build"]}
            missing = problems() if changed and rootless else []
            if missing:
                module.fail_json(msg="guest_image: cannot build image %s without root: %s" % (key, "; ".join(missing)),
                                 key=key)
            if changed and not module.check_mode:
                with BuildLock(p["cache_dir"], key):
                    # Another run may have built it while this one waited for the lock.
                    manifest = read_image(p["cache_dir"], key)
                    if manifest is None:
                        manifest = build_image(
                            p["cache_dir"], key, inputs, mirror, p["packages"], p["suite"], p["files_dir"],
                            p["initramfs_init"], p["disk_size_mb"], p["initramfs_modules"], p["deb_cache_dir"],
                            module.log, rootless=rootless)
                result["manifest"] = manifest
                result["kernel"] = boot_kernel(paths, manifest)
        if p["prune"]:
            result["prune"], cache_before, cache_after, pruned = prune_cache(module, key, p["state"])
            # the cache's own entries appear in the diff when pruning changes them
            if cache_before != cache_after:
                before["cache"], after["cache"] = cache_before, cache_after
            changed = changed or pruned
    except (GuestImageError, OSError) as e:
        module.fail_json(msg=f"guest_image: {e}" if isinstance(e, OSError) else str(e))
    module.exit_json(changed=changed, diff={"before": before, "after": after}, **result)


if __name__ == "__main__":
    main()
