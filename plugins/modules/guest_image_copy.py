#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: guest_image_copy
short_description: Carry a built guest image from one lab host's image cache to another's
version_added: 0.1.0
description:
  - With O(state=packed), on a lab host that has the image O(key) in O(cache_dir), its files (C(vmlinuz),
    C(vmlinux), C(initrd.img), the sparse C(disk.ext4), C(manifest.json); not the clone templates beside them) go into
    one sparse tar at O(archive), and RV(files) returns a sha256 of each (over its size and its non-zero blocks with
    their offsets, so the content decides it, not which zeros are holes, and holes are not read). The cache does not
    change.
  - With O(state=present), on a lab host whose own inputs give the same O(key), unless the image is there already,
    under the same build lock as qemulab.network.guest_image (C(.lock-<key>)), the tar is checked to hold exactly
    those plain files, unpacked into C(.build-<key>-<pid>), each file's sha256 compared with O(files), the manifest's
    key with O(key) and with the hash of the inputs it lists; only then is it renamed to O(cache_dir)C(/<key>), as a
    finished build is. A copy that does not match is removed and the module fails; it is never used.
  - The qemulab.network.guest_image role uses it so a lab over several lab hosts builds its image once
    (docs/multi-host.md).
author:
  - qemulab developers (@qemulab)
requirements:
  - GNU tar on both lab hosts
options:
  state:
    description: C(packed) writes the archive on the host that has the image; C(present) publishes it from the archive.
    type: str
    choices: [packed, present]
    default: present
  cache_dir:
    description: The image cache (the guest_image module's O(cache_dir)).
    type: path
    default: /var/cache/qemulab/images
  key:
    description: The image's key, 16 hex digits (the guest_image module's RV(key); with O(state=present) the key this host computed).
    type: str
    required: true
  archive:
    description: The tar's path on this host (written with O(state=packed), read with O(state=present)).
    type: path
    required: true
  files:
    description: With O(state=present), the sha256 of each of the image's files, as O(state=packed) returned them.
    type: dict
attributes:
  check_mode:
    description: With O(state=present) reports whether the image would be published; O(state=packed) writes nothing.
    support: full
  diff_mode:
    description: Returns whether the image is in the cache before and after.
    support: full
"""

EXAMPLES = r"""
- name: Pack the image on the lab host that built it
  qemulab.network.guest_image_copy:
    state: packed
    key: 6df36600a114538e
    archive: /tmp/qemulab-image.tar
  register: packed

- name: Publish the copy on another lab host, checked against the sums read where it was built
  qemulab.network.guest_image_copy:
    key: 6df36600a114538e
    archive: /tmp/qemulab-image.tar
    files: "{{ packed.files }}"
"""

RETURN = r"""
key:
  description: The image's key.
  returned: always
  type: str
  sample: 6df36600a114538e
files:
  description: The sha256 of each of the image's files (with O(state=packed)).
  returned: when O(state=packed)
  type: dict
  sample: {disk.ext4: 5f2b..., initrd.img: 9c1e..., manifest.json: 04aa..., vmlinux: 77d0..., vmlinuz: 3be1...}
bytes:
  description: The archive's size in bytes (with O(state=packed)).
  returned: when O(state=packed)
  type: int
manifest:
  description: The image's manifest; empty when it is not in the cache (check mode).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qemulab.network.plugins.module_utils._guest_image import GuestImageError, read_image
from ansible_collections.qemulab.network.plugins.module_utils._guest_image_copy import check_key, pack, publish


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["packed", "present"], default="present"),
            cache_dir=dict(type="path", default="/var/cache/qemulab/images"),
            key=dict(type="str", required=True, no_log=False),
            archive=dict(type="path", required=True),
            files=dict(type="dict"),
        ),
        required_if=[("state", "present", ("files",))],
        supports_check_mode=True,
    )
    p = module.params
    try:
        check_key(p["key"])
        manifest = read_image(p["cache_dir"], p["key"])
        before = {"key": p["key"], "in_cache": manifest is not None}
        if p["state"] == "packed":
            # writes only the archive the caller asked for: the cache is read, never changed
            if module.check_mode:
                module.exit_json(changed=False, key=p["key"], files={}, bytes=0, manifest=manifest or {},
                                 diff={"before": before, "after": before})
            result = pack(p["cache_dir"], p["key"], p["archive"])
            module.exit_json(changed=False, key=p["key"], diff={"before": before, "after": before}, **result)
        changed = manifest is None
        if changed and not module.check_mode:
            manifest, changed = publish(p["cache_dir"], p["key"], p["archive"], p["files"], module.log)
    except (GuestImageError, OSError) as e:
        module.fail_json(msg=str(e) if isinstance(e, GuestImageError) else "guest_image_copy: %s" % e)
    module.exit_json(changed=changed, key=p["key"], manifest=manifest or {},
                     diff={"before": before, "after": {"key": p["key"], "in_cache": manifest is not None or changed}})


if __name__ == "__main__":
    main()
