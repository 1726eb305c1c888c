# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU's command line for a normalised VM configuration, and the paths of a VM's run directory.

Every value placed inside a QEMU option string (`key=value,...`) passes through option_string, which doubles its
commas (_validate.qemu_opt); arguments QEMU takes whole (-kernel, -initrd, -append, -pidfile, -D) stay as they are.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.qemulab.network.plugins.module_utils._validate import qemu_opt

# QEMU's seccomp filter: no obsolete calls, no set*id, no fork/exec, no scheduler or affinity changes.
SANDBOX = ("on", ("obsolete", "deny"), ("elevateprivileges", "deny"), ("spawn", "deny"), ("resourcecontrol", "deny"))


# The directory of the run directory that the console log's own tmpfs is mounted on (_qemu_console).
CONSOLE_DIR = "console"


def vm_paths(run_dir):
    return {
        "run_dir": run_dir,
        "pidfile": os.path.join(run_dir, "qemu.pid"),
        "qmp_socket": os.path.join(run_dir, "qmp.sock"),
        "console_socket": os.path.join(run_dir, "console.sock"),
        "console_dir": os.path.join(run_dir, CONSOLE_DIR),
        "console_log": os.path.join(run_dir, CONSOLE_DIR, "console.log"),
        "log": os.path.join(run_dir, "qemu.log"),
        "fingerprint": os.path.join(run_dir, "fingerprint.json"),
        "go_socket": os.path.join(run_dir, "go.sock"),
    }


# The virtio-serial port a clone template waits on and a clone hears "go" on (_qemu_clone; the guest's init).
GO_PORT = "org.qemulab.go"


def serial_args(ports):
    """The serial links' chardevs and UARTs: port i is the guest's ttyS<i+1> (isa-serial index i+1: the legacy
    I/O port and IRQ the guest kernel probes), ttyS0 stays the console. A listening end serves its socket without
    waiting; the other end connects and retries every second (reconnect), so either QEMU may start first and a
    restarted peer is found again. A port without a socket (a clone template's) gets a null backend: a migration
    carries the UART, not what it is connected to."""
    argv = []
    for index, port in enumerate(ports or []):
        chardev = "serial%d" % (index + 1)
        if not port.get("socket"):
            argv += ["-chardev", option_string("null", ("id", chardev))]
        elif port["server"]:
            argv += ["-chardev", option_string("socket", ("id", chardev), ("path", port["socket"]), ("server", "on"),
                                               ("wait", "off"))]
        else:
            argv += ["-chardev", option_string("socket", ("id", chardev), ("path", port["socket"]),
                                               ("reconnect", 1))]
        argv += ["-device", option_string("isa-serial", ("chardev", chardev), ("index", index + 1))]
    return argv


def nic_device(index, nic):
    """The -device (or QMP device_add) properties of NIC `index`: model, its netdev, MAC and the model's options."""
    device = [nic["model"], ("netdev", "net%d" % index)]
    if nic.get("mac"):
        device.append(("mac", nic["mac"]))
    for key, (_spec, prop, models) in sorted(NIC_DEVICE_OPTIONS.items()):
        if nic.get(key) is not None and nic["model"] in models:
            device.append((prop, nic[key]))
    return device


def option_string(*items):
    """A QEMU option string from items, each a bare value or a (key, value) pair: the one place values are escaped."""
    parts = []
    for item in items:
        if isinstance(item, tuple):
            parts.append("%s=%s" % (item[0], qemu_opt(item[1])))
        else:
            parts.append(qemu_opt(item))
    return ",".join(parts)


# NIC options qemu_vm passes to the NIC's -device: its argument spec, the device property it becomes and the models
# that have that property. qemu_vm's spec and normalisation take their NIC options from here, so a new one is
# declared once, beside the code that uses it.
NIC_DEVICE_OPTIONS = {
    "mtu": (dict(type="int"), "host_mtu", ("virtio-net-pci",)),
}


def _netdev_tap(index, nic, vhost, tap_fd, vhost_fd=None):
    items = ["tap", ("id", "net%d" % index)]
    if tap_fd is not None:
        items.append(("fd", tap_fd))
    else:
        items += [("ifname", nic["ifname"]), ("script", "no"), ("downscript", "no")]
    if vhost:
        items.append(("vhost", "on"))
        if vhost_fd is not None:
            items.append(("vhostfd", vhost_fd))
    return items


def _netdev_vhost_user(index):
    # the chardev of the same index connects to the datapath's socket (build_argv adds it)
    return ["vhost-user", ("id", "net%d" % index), ("chardev", "vhu%d" % index)]


def shared_memory(config):
    """True when a NIC's datapath (vhost-user) maps guest memory: it must then be a shared memory backend."""
    return any(nic["backend"] == "vhost-user" for nic in config["nics"])


# QEMU 7.2's virtio-pci dereferences the KVM-only MSI-X irqfd table when a vhost-user NIC starts under TCG
# (virtio_pci_one_vector_unmask -> kvm_virtio_pci_irqfd_use, SIGSEGV); with no MSI-X vectors it never goes there
# and interrupts reach the guest through QEMU's own notifier handler (docs/dpdk.md).
VHOST_USER_TCG_DEVICE = (("vectors", 0),)


def _netdev_user(index, nic):
    items = ["user", ("id", "net%d" % index)]
    if nic.get("net"):
        items.append(("net", nic["net"]))
    if nic.get("restrict", True):
        items.append(("restrict", "on"))
    for fwd in nic.get("hostfwd") or []:
        items.append(("hostfwd", "%s:127.0.0.1:%d-:%d" % (fwd["protocol"], fwd["host_port"], fwd["guest_port"])))
    return items


def build_argv(config, accelerator, vhost=None, tap_fds=None, daemon=True, disk_fds=None, vhost_fds=None,
               layout="boot", incoming_fd=None, ram_file=None):
    """QEMU's argv for `config`. vhost: {nic index: bool}; tap_fds / vhost_fds: {nic index: fd} and disk_fds:
    {disk index: [fds]} for files we opened for it (an unprivileged QEMU gets its disks as an fd set: QEMU picks
    the fd whose access mode matches each open it makes, so a writable disk comes read-write and read-only).

    layout "clone" (a clone template, and a clone restored from one): the boot layout plus the go port and vmgenid,
    devices a migration stream carries like the NICs (a template has the same NIC devices as its clones:
    _qemu_clone); incoming_fd: the saved state.

    ram_file {"path", "share"}: guest RAM is that file (memory-backend-file, named by -machine so that its RAM block is
    "ram" in the template and in every clone): share=True for a clone template (its RAM is the file, saved with
    x-ignore-shared), share=False for a clone (a private mapping of the template's file). A clone with a RAM file
    starts with `-incoming defer`: x-ignore-shared must be set before the stream is read, and QEMU 7.2 takes it over
    QMP only (_qemu_clone.start_clone); the fd stays open in QEMU for migrate-incoming."""
    vhost = vhost or {}
    tap_fds = tap_fds or {}
    disk_fds = disk_fds or {}
    vhost_fds = vhost_fds or {}
    paths = vm_paths(config["run_dir"])
    accel = [accelerator]
    if accelerator == "tcg" and config.get("tb_size"):
        accel.append(("tb-size", config["tb_size"]))
    argv = [config["qemu_binary"], "-name", option_string(config["name"]), "-accel", option_string(*accel),
            "-m", option_string(config["memory"]), "-smp", option_string(config["vcpus"])]
    if shared_memory(config):
        # a vhost-user datapath maps guest RAM through the fds QEMU passes it: memfd, shared (docs/dpdk.md)
        argv += ["-object", option_string("memory-backend-memfd", ("id", "ram"), ("size", "%dM" % config["memory"]),
                                          ("share", "on")),
                 "-machine", option_string(("memory-backend", "ram"))]
    elif ram_file:
        # its size must be -m's; the file is the template's, never written through a clone's private mapping
        argv += ["-object", option_string("memory-backend-file", ("id", "ram"), ("size", "%dM" % config["memory"]),
                                          ("mem-path", ram_file["path"]),
                                          ("share", "on" if ram_file["share"] else "off")),
                 "-machine", option_string(("memory-backend", "ram"))]
    # QEMU takes these three whole, commas included.
    if config.get("kernel"):
        argv += ["-kernel", config["kernel"]]
    if config.get("initrd"):
        argv += ["-initrd", config["initrd"]]
    if config.get("append"):
        argv += ["-append", config["append"]]
    for index, disk in enumerate(config["disks"]):
        path = disk["file"]
        if disk_fds.get(index):
            for fd in disk_fds[index]:
                argv += ["-add-fd", option_string(("fd", fd), ("set", index + 1), ("opaque", "disks[%d]" % index))]
            path = "/dev/fdset/%d" % (index + 1)
        drive = [("file", path), ("if", disk["interface"]), ("format", disk["format"])]
        if disk.get("readonly"):
            drive.append(("readonly", "on"))
        argv += ["-drive", option_string(*drive)]
    for index, nic in enumerate(config["nics"]):
        device = nic_device(index, nic)
        if nic["backend"] == "tap":
            netdev = _netdev_tap(index, nic, vhost.get(index, False), tap_fds.get(index), vhost_fds.get(index))
        elif nic["backend"] == "vhost-user":
            argv += ["-chardev", option_string("socket", ("id", "vhu%d" % index), ("path", nic["socket"]))]
            netdev = _netdev_vhost_user(index)
            if accelerator == "tcg":
                device += list(VHOST_USER_TCG_DEVICE)
        else:
            netdev = _netdev_user(index, nic)
        argv += ["-device", option_string(*device), "-netdev", option_string(*netdev)]
    for item in config.get("fw_cfg") or []:
        argv += ["-fw_cfg", option_string(("name", item["name"]), ("file", item["file"]))]
    if config.get("rng"):
        argv += ["-device", option_string("virtio-rng-pci")]
    if layout == "clone":
        # vmgenid: a restored guest's kernel reseeds its RNG when the generation ID changes (auto: new per start)
        argv += ["-device", option_string("virtio-serial-pci"),
                 "-chardev", option_string("socket", ("id", "go"), ("path", paths["go_socket"]), ("server", "on"),
                                           ("wait", "off")),
                 "-device", option_string("virtserialport", ("chardev", "go"), ("name", GO_PORT)),
                 "-device", option_string("vmgenid")]
    if incoming_fd is not None:
        argv += ["-incoming", "defer" if ram_file else "fd:%d" % incoming_fd]
    argv += ["-display", "none", "-nodefaults", "-no-user-config"]
    if daemon:
        # -pidfile and -D take a plain path; -qmp's unix: and -chardev parse an option string.
        argv += ["-pidfile", paths["pidfile"],
                 "-qmp", "unix:" + option_string(paths["qmp_socket"], ("server", "on"), ("wait", "off")),
                 "-chardev", option_string("socket", ("id", "console"), ("path", paths["console_socket"]),
                                           ("server", "on"), ("wait", "off"), ("logfile", paths["console_log"])),
                 "-serial", "chardev:console", "-D", paths["log"]]
    argv += serial_args(config.get("serial_ports"))
    if config.get("sandbox"):
        argv += ["-sandbox", option_string(*SANDBOX)]
    argv += config.get("extra_args") or []
    return argv
