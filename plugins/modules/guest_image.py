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
  - The kernel command line returned in RV(append) boots the guest's own init (no systemd); the per-VM part
    (C(qemulab.nics=), C(qemulab.mgmt=), C(qemulab.hostname=)) is added by the lab roles.
  - The image holds no SSH key. Its init installs, at every boot, the authorized key from the fw_cfg item
    C(opt/qemulab/authorized_keys) and the guest's host key from C(opt/qemulab/ssh_host_ed25519_key) (the
    qemulab.network.vm_launch role hands over both, a host key of its own per VM); a guest booted without a host key
    makes one. So one image serves any key, and no two guests share a host key.
author:
  - qemulab developers (@qemulab)
requirements:
  - debootstrap, e2fsprogs (mke2fs with -d), cpio, openssh-client (ssh-keygen) on the lab host
options:
  state:
    description: C(present) builds or reuses the image; C(absent) deletes the image of these inputs.
    type: str
    choices: [present, absent]
    default: present
  cache_dir:
    description: Directory holding one subdirectory per image key.
    type: path
    default: /var/cache/qemulab/images
  deb_cache_dir:
    description: Where debootstrap keeps downloaded packages between builds (C(--cache-dir)); empty for none.
    type: path
    default: /var/cache/qemulab/debs
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
attributes:
  check_mode:
    description: Reports what would change without changing anything.
    support: full
  diff_mode:
    description: Returns the state before and after.
    support: full
"""

EXAMPLES = r"""
- name: The default guest image
  qemulab.network.guest_image:
    packages: [linux-image-amd64, busybox-static, kmod, ifupdown, iproute2, openssh-server, python3]
    files_dir: "{{ role_path }}/files/rootfs"
    initramfs_init: "{{ role_path }}/files/initramfs-init"
  register: image
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
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qemulab.network.plugins.module_utils._guest_image import (
    BuildLock, GuestImageError, build_image, cached_apt_candidate, host_debian_mirror, image_inputs, image_key,
    boot_kernel, image_paths, read_image, tree_digest,
)

ROOT_ARGS = "root=/dev/vda rw init=/sbin/qemulab-init"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            cache_dir=dict(type="path", default="/var/cache/qemulab/images"),
            deb_cache_dir=dict(type="path", default="/var/cache/qemulab/debs"),
            suite=dict(type="str", default="bookworm"),
            mirror=dict(type="str", default=""),
            packages=dict(type="list", elements="str", required=True),
            kernel_version=dict(type="str", default=""),
            files_dir=dict(type="path", required=True),
            initramfs_init=dict(type="path", required=True),
            initramfs_modules=dict(type="list", elements="str", default=["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"]),
            disk_size_mb=dict(type="int", default=2048),
            kernel_args=dict(type="str", default="console=ttyS0 quiet"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    for opt in ("files_dir", "initramfs_init"):
        if not os.path.exists(p[opt]):
            module.fail_json(msg=f"guest_image: {opt} {p[opt]} does not exist; point it at the guest_image role's files")
    try:
        mirror = p["mirror"].rstrip("/") or host_debian_mirror(p["suite"])
        kernel_version = p["kernel_version"] or cached_apt_candidate("linux-image-amd64", p["cache_dir"])
        if not kernel_version:
            module.fail_json(msg="guest_image: apt-cache policy linux-image-amd64 has no candidate on this host; "
                                 "run apt-get update or set kernel_version (guest_image_kernel_version)")
        inputs = image_inputs(p["suite"], mirror, p["packages"], kernel_version,
                              tree_digest([p["files_dir"], p["initramfs_init"]]), p["disk_size_mb"],
                              p["initramfs_modules"])
        key = image_key(inputs)
        paths = image_paths(p["cache_dir"], key)
        manifest = read_image(p["cache_dir"], key)
        result = dict(key=key, dir=paths["dir"], kernel=boot_kernel(paths, manifest), initrd=paths["initrd"], disk=paths["disk"],
                      append=f"{ROOT_ARGS} {p['kernel_args']}".strip(), mirror=mirror,
                      kernel_version=kernel_version, manifest=manifest or {})
        before = {"key": key, "built": manifest is not None}
        if p["state"] == "absent":
            changed = os.path.exists(paths["dir"])
            if changed and not module.check_mode:
                import shutil
                shutil.rmtree(paths["dir"])
            module.exit_json(changed=changed, diff={"before": before, "after": {"key": key, "built": False}},
                             **result)
        changed = manifest is None
        if changed and not module.check_mode:
            with BuildLock(p["cache_dir"], key):
                # Another run may have built it while this one waited for the lock.
                manifest = read_image(p["cache_dir"], key)
                if manifest is None:
                    manifest = build_image(
                        p["cache_dir"], key, inputs, mirror, p["packages"], p["suite"], p["files_dir"],
                        p["initramfs_init"], p["disk_size_mb"], p["initramfs_modules"], p["deb_cache_dir"],
                        module.log)
            result["manifest"] = manifest
            result["kernel"] = boot_kernel(paths, manifest)
    except GuestImageError as e:
        module.fail_json(msg=str(e))
    module.exit_json(changed=changed, diff={"before": before, "after": {"key": key, "built": True}}, **result)


if __name__ == "__main__":
    main()
