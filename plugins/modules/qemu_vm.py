#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: qemu_vm
short_description: Run one QEMU guest of a lab and manage its whole life (start, stop, restart, remove)
version_added: 0.1.0
description:
  - Builds the QEMU command line from the options, starts QEMU detached with a pidfile, a QMP socket and a serial
    console socket with a log in a private run directory, and keeps a fingerprint of the configuration there. The
    console log lies on a small tmpfs of its own (O(console_log_limit)), so a guest cannot fill the host with it.
  - Idempotent. A running VM whose configuration is unchanged is left alone; a changed configuration restarts it
    (or is only reported with O(on_change=report)). Liveness comes from QMP C(query-status); a PID is never
    signalled unless C(/proc/PID/cmdline) is a QEMU whose pidfile lies in O(run_dir).
  - Taps in a namespace are opened by this module inside that namespace and handed to QEMU as file descriptors, so
    QEMU itself stays in the root namespace and user-mode C(hostfwd) ports on 127.0.0.1 are reachable.
  - QEMU runs under C(-sandbox) by default; because the sandbox forbids fork and setsid, QEMU is detached by this
    module rather than with C(-daemonize).
author:
  - qemulab developers (@qemulab)
options:
  name:
    description:
      - Name of the VM (QEMU C(-name)) and of its run directory. Lower-case letters, digits and C(-), starting with a
        letter or digit, at most 32 characters; any other name is refused before anything changes.
    type: str
    required: true
  lab:
    description: Lab the VM belongs to; part of the default run directory. The same rule as O(name), at most 15 characters.
    type: str
    default: default
  state:
    description:
      - C(running) starts the VM if needed and restarts it when its configuration changed.
      - C(stopped) powers it down (ACPI, then QMP quit, then signals). C(absent) also removes the run directory.
      - C(restarted) always restarts it.
    type: str
    choices: [running, stopped, absent, restarted]
    default: running
  run_dir:
    description: Directory for pidfile, sockets, logs and fingerprint. Defaults to C(/run/qemulab/<lab>/<name>).
    type: path
  kernel:
    description: Kernel for direct kernel boot.
    type: path
  initrd:
    description: Initial ramdisk; needs O(kernel).
    type: path
  append:
    description: Kernel command line.
    type: str
  disks:
    description: Disks, in order.
    type: list
    elements: dict
    default: []
    suboptions:
      file:
        description: Image file.
        type: path
        required: true
      interface:
        description: QEMU drive interface.
        type: str
        choices: [virtio, ide, scsi, none]
        default: virtio
      format:
        description: Image format.
        type: str
        choices: [raw, qcow2]
        default: raw
      readonly:
        description: Attach read-only.
        type: bool
        default: false
  memory:
    description: Guest memory; an integer in MiB or a string such as C(512M) or C(1G), at least 64 MiB.
    type: raw
    default: 512
  vcpus:
    description: Number of virtual CPUs.
    type: int
    default: 1
  accelerator:
    description:
      - C(auto) probes KVM once per host with a bounded boot that must print on the serial console and caches the
        result in C(/var/cache/qemulab/accel.json); C(kvm) and C(tcg) force one.
    type: str
    choices: [auto, kvm, tcg]
    default: auto
  tb_size:
    description: TCG translation cache size in MiB; 0 keeps QEMU's default of 1 GiB, which makes a guest use ~850 MB resident.
    type: int
    default: 64
  nics:
    description: Network cards, in guest order.
    type: list
    elements: dict
    default: []
    suboptions:
      model:
        description: Emulated NIC model.
        type: str
        choices: [virtio-net-pci, e1000, rtl8139]
        default: virtio-net-pci
      mac:
        description: MAC address.
        type: str
      backend:
        description:
          - C(tap) uses an existing tap; C(user) is QEMU user-mode networking.
          - C(vhost-user) connects the NIC to a user-space datapath's socket (O(nics[].socket), served by
            M(qemulab.network.dpdk_datapath)); guest memory then becomes a shared memfd backend, under TCG the
            device gets no MSI-X vectors (QEMU 7.2 crashes otherwise, see docs/dpdk.md), and QEMU must run as root.
        type: str
        choices: [tap, user, vhost-user]
        default: tap
      socket:
        description: The datapath's vhost-user socket (backend vhost-user); QEMU connects to it as the client.
        type: path
      ifname:
        description:
          - Name of the tap (backend tap). It must already exist (qemulab.network.tap). The name rule of O(name), at
            most 15 characters.
        type: str
      netns:
        description: Namespace the tap lives in; defaults to O(netns). The name rule of O(name).
        type: str
      vhost:
        description:
          - C(auto) enables vhost for a C(virtio-net-pci) NIC where /dev/vhost-net is usable, never for C(e1000) or
            C(rtl8139); C(on) fails where vhost cannot work.
        type: str
        choices: [auto, "on", "off"]
        default: auto
      hostfwd:
        description: Port forwards from 127.0.0.1 on the host to the guest (backend user).
        type: list
        elements: dict
        suboptions:
          host_port:
            description: Port on 127.0.0.1; must be free.
            type: int
            required: true
          guest_port:
            description: Port in the guest.
            type: int
            required: true
          protocol:
            description: Protocol.
            type: str
            choices: [tcp, udp]
            default: tcp
      net:
        description: User-mode network in CIDR form (backend user), QEMU's default 10.0.2.0/24 when omitted.
        type: str
      restrict:
        description: Isolate a user-mode guest from the outside (only forwards reach it).
        type: bool
        default: true
      mtu:
        description:
          - MTU the device announces to the guest (virtio-net's C(host_mtu); the guest's driver takes it as its
            interface's MTU). Other models have no such property and ignore it. Give the tap the same MTU.
        type: int
  netns:
    description: Namespace the taps live in; empty for the root namespace. The name rule of O(name).
    type: str
    default: ""
  userns_pid:
    description:
      - A rootless lab (docs/rootless.md), the module run by the lab's user. QEMU runs inside the user and network
        namespace of the M(qemulab.network.lab_userns) holder with this pid, as that user (root inside), so its
        O(nics[].hostfwd) ports are on that namespace's 127.0.0.1 (reach them with
        RV(qemulab.network.lab_userns#module:enter), e.g. an SSH C(ProxyCommand) of C(nsenter --preserve-credentials -U -n -t <pid> socat - TCP:127.0.0.1:%p)).
      - The pid is checked as the holder's in O(qemulab.network.bridge#module:userns_pid). A helper joins the
        namespaces, opens the taps there (they must be there, made by M(qemulab.network.tap) with the same
        O(userns_pid)) and execs QEMU; QEMU opens its own disks, kernel and initrd as the user.
      - Excludes O(run_as), O(netns), O(nics[].netns) and vhost-user NICs; vhost-net is never used. The console log
        is a plain file in O(run_dir) (the user cannot mount its tmpfs), not bounded by O(console_log_limit).
      - Part of the configuration, so a new holder restarts the VM (the old QEMU is still in the old namespaces).
    type: int
  stop_timeout:
    description: Seconds to wait after ACPI powerdown before QMP quit; 0 quits at once.
    type: int
    default: 10
  on_change:
    description: What to do when a running VM's configuration differs.
    type: str
    choices: [restart, report]
    default: restart
  qemu_binary:
    description: QEMU system emulator.
    type: str
    default: qemu-system-x86_64
  extra_args:
    description: Further QEMU arguments, appended as given.
    type: list
    elements: str
    default: []
  sandbox:
    description: Run QEMU with C(-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny).
    type: bool
    default: true
  fw_cfg:
    description:
      - Files handed to the guest through QEMU's firmware configuration device (C(-fw_cfg name=...,file=...)); a
        Linux guest reads them under C(/sys/firmware/qemu_fw_cfg/by_name/) once the C(qemu_fw_cfg) module is
        loaded. The default guest image's init reads C(opt/qemulab/interfaces) and C(opt/qemulab/sysctl) to
        configure its network at boot.
      - Each content is written to O(run_dir)/fw_cfg/ (mode 0600). QEMU reads it only at start, so changed contents
        are written for the next boot without restarting a running VM (reported as changed, in RV(fw_cfg_updated));
        adding or removing an item restarts it like any other configuration change.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The item's name, C(opt/) followed by at most 51 characters of letters, digits, C(._-/).
        type: str
        required: true
      content:
        description: The item's contents.
        type: str
        required: true
      secret:
        description:
          - The content is a secret (a guest's private host key) that no result, diff or message of the module
            shows; a diff names a changed secret item by a digest only.
        type: bool
        default: false
  run_as:
    description:
      - Run QEMU as this unprivileged user (name or uid) instead of root. QEMU is started with the user's ids
        (before exec, so the sandbox's set*id denial still holds) and gets everything privileged as file
        descriptors opened by the module - its taps, its disks (an C(-add-fd) set, so the lab's overlays stay
        private to root) and C(/dev/vhost-net) - so it never needs C(/dev/net/tun) or root's files.
      - Each tap must be owned by this user (O(qemulab.network.tap#module:owner)); otherwise the task fails naming
        the tap. The kernel and initrd must be readable by the user (checked before QEMU starts). With
        O(accelerator=auto), KVM is used only if the user can open C(/dev/kvm).
      - O(run_dir) then belongs to the user (0700); the module trusts a QEMU found there only when its process
        runs as root or as that directory's owner.
      - Unset (the default), QEMU runs as root, as in the seed lab. Changing it restarts the VM.
    type: str
  clone_from:
    description:
      - A clone template's directory (made by M(qemulab.network.vm_template)). When the VM starts, it is restored
        from that template instead of booting, if it can come out exactly as a boot would; otherwise it boots and
        RV(boot_reason) says why. Exactly means the template was made for this VM's machine (QEMU and its version,
        accelerator, memory, vCPUs, kernel, initrd, image, its NICs' models and device options, rng), the VM's
        last NIC is its user-mode management NIC, it has no O(extra_args), and its one disk is a qcow2 overlay over
        the template's disk that holds no data of its own yet (so its memory and its disk are of the same moment).
      - The restored VM has the template's NIC devices with its own MACs and backends; the guest hears its own
        settings (the O(append) values, the time) on a virtio-serial port and moves each NIC from the template's MAC
        to its own. Only the default guest image's init does that.
      - Unless O(run_as) is set, its guest RAM is a private mapping of the template's RAM file (C(ram), a
        C(memory-backend-file) with C(share=off)); pages the guest has not written are the template's, one copy in
        the page cache for all its clones. Its state is loaded with the C(x-ignore-shared) migration capability
        (C(-incoming defer), then QMP C(migrate-incoming)). With O(run_as) the template's RAM is in its saved state
        and copied into the clone's own memory (the template's files are root's).
      - Not part of the configuration compared for O(on_change), since a clone and a booted VM run the same machine.
    type: path
  rng:
    description:
      - Give the guest a virtio RNG (C(-device virtio-rng-pci), fed from the host's C(/dev/urandom)). Under TCG a
        guest otherwise gathers its boot entropy from timer jitter, and sshd waits for it; seven lab guests booting
        together reached SSH ~2 s sooner with it (bench/guest_boot.py, 2026-11-25). The guest needs the
        C(virtio_rng) driver; the default image's init loads every virtio driver it finds a device for.
    type: bool
    default: true
  console_log_limit:
    description:
      - Largest size of the serial console log, as digits with C(K), C(M) or C(G) (also C(KiB), C(MB), ..., any
        case; a bare number is bytes), from C(64K) to C(1G).
      - The log is O(run_dir)C(/console/console.log), on a tmpfs of this size of its own that the module mounts
        before QEMU starts (source C(qemulab-console); C(nosuid), C(nodev), C(noexec); owned by the user QEMU runs
        as). A guest flooding its console (C(cat /dev/zero > /dev/ttyS0)) fills that tmpfs and no more of the
        host's memory or C(/run). Once it is full QEMU stops logging (the writes fail with C(ENOSPC)); the guest
        runs on, and the console socket still carries everything.
      - Every start gets a new, empty log. A stopped VM keeps its log (and the tmpfs) until its next start or
        O(state=absent), which unmounts it; so do qemulab.network.qemu_vms and qemulab.network.lab_dirs with
        C(state=absent), also for a tmpfs a killed run left. Changing it restarts the VM.
    type: raw
    default: 4M
  serial_ports:
    description:
      - Serial links to other VMs, in order - the guest's C(ttyS1), C(ttyS2), C(ttyS3) (C(ttyS0) stays the console);
        at most three. Each is a null-modem cable between two QEMU processes, a unix socket C(serial<link>.sock) in
        the run directory of the VM whose end has O(serial_ports[].server=true).
      - The listening end serves the socket without waiting for its peer; the other end connects to it in its
        peer's run directory (a sibling of O(run_dir)) and retries every second, so either VM may start first and
        a restarted peer is found again. Bytes written while no peer is connected are lost, as on an unplugged
        cable.
      - The UARTs are part of a clone template's devices (their number is in its key, see O(clone_from)).
    type: list
    elements: dict
    default: []
    suboptions:
      peer:
        description: The VM at the other end; the name rule of O(name), not this VM.
        type: str
        required: true
      link:
        description: The link's number in the lab, from 0 to 999; names the socket C(serial<link>.sock).
        type: int
        required: true
      server:
        description: This end listens on the socket (in O(run_dir)); the peer's end has C(false).
        type: bool
        required: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
"""

EXAMPLES = r"""
- name: Router rt1 of the seed lab, three NICs on taps in the lab namespace, plus a management forward
  qemulab.network.qemu_vm:
    name: rt1
    lab: seed
    netns: qlab-seed
    kernel: /var/cache/qemulab/images/abc/vmlinuz
    initrd: /var/cache/qemulab/images/abc/initrd.img
    append: root=/dev/vda rw console=ttyS0
    disks:
      - file: /var/lib/qemulab/labs/seed/rt1.qcow2
        format: qcow2
    memory: 1G
    nics:
      - {mac: "12:34:56:ab:cd:71", ifname: vport11}
      - {mac: "12:34:56:ab:cd:72", ifname: vport21}
      - {mac: "12:34:56:ab:cd:73", ifname: vport31}
      - {backend: user, mac: "52:54:00:00:01:01", hostfwd: [{host_port: 2201, guest_port: 22}]}

- name: The same kind of VM run by the unprivileged user qemulab (its taps created with owner qemulab)
  qemulab.network.qemu_vm:
    name: h1
    lab: seed
    netns: qlab-seed
    run_as: qemulab
    kernel: /var/cache/qemulab/images/abc/vmlinuz
    disks:
      - file: /var/lib/qemulab/labs/seed/h1.qcow2
        format: qcow2
    nics:
      - {ifname: vport41}

- name: Routers rt1 and rt2 joined by a serial cable, rt1's ttyS1 to rt2's ttyS1 (rt2's task says server false)
  qemulab.network.qemu_vm:
    name: rt1
    lab: seed
    kernel: /var/cache/qemulab/images/abc/vmlinuz
    disks:
      - file: /var/lib/qemulab/labs/seed/rt1.qcow2
        format: qcow2
    serial_ports:
      - {peer: rt2, link: 0, server: true}

- name: Stop it and remove its run files
  qemulab.network.qemu_vm:
    name: rt1
    lab: seed
    state: absent
"""

RETURN = r"""
state:
  description: QMP status after the task (running, paused, shutdown, ...) or C(not running).
  returned: always
  type: str
pid:
  description: QEMU's process id, when running.
  returned: always
  type: int
user:
  description: The user QEMU runs (or would run) as - C(root), or the user of O(run_as).
  returned: always
  type: str
accelerator:
  description: Accelerator used (kvm or tcg).
  returned: when the VM was started or is running
  type: str
accelerator_reason:
  description: Why that accelerator was chosen.
  returned: when the VM was started or is running
  type: str
started:
  description: Whether this task started the VM's QEMU (a first start, a restart); its guest has nothing a run set.
  returned: always
  type: bool
boot:
  description: C(clone) when the VM was (or would be) restored from O(clone_from)'s template, C(boot) when it boots.
  returned: when the VM was started or is running
  type: str
boot_reason:
  description: Why a VM given O(clone_from) boots instead (empty for a clone).
  returned: when the VM was started or is running
  type: str
argv:
  description: QEMU command line of the last start (tap file descriptor numbers are per launch).
  returned: always
  type: list
  elements: str
qmp_socket:
  description: QMP socket path.
  returned: always
  type: str
console_socket:
  description: Serial console socket path.
  returned: always
  type: str
console_log:
  description:
    - Serial console log path, O(run_dir)C(/console/console.log), on a tmpfs of O(console_log_limit) of its own.
  returned: always
  type: str
  sample: /run/qemulab/seed/rt1/console/console.log
log:
  description: QEMU's own log (C(-D)).
  returned: always
  type: str
run_dir:
  description: Run directory.
  returned: always
  type: str
nics:
  description: NICs as configured, with the vhost decision for taps (C(vhost), C(vhost_reason)).
  returned: always
  type: list
  elements: dict
stopped_by:
  description: How QEMU ended (powerdown, quit, SIGTERM, SIGKILL, not running).
  returned: when the task stopped a VM
  type: str
changes:
  description: Configuration fields that differ from the running VM.
  returned: always
  type: list
  elements: str
fw_cfg_updated:
  description: Names of O(fw_cfg) items whose contents this task wrote anew (read by the guest at its next boot).
  returned: when any changed
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QEMU_VM_ARGUMENT_SPEC
from ansible_collections.qemulab.network.plugins.module_utils._qemu_task import run_qemu_vm


def main():
    module = AnsibleModule(argument_spec=QEMU_VM_ARGUMENT_SPEC, supports_check_mode=True)
    module.exit_json(**run_qemu_vm(module))


if __name__ == "__main__":
    main()
