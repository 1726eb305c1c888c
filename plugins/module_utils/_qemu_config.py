# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's configuration as qemu_vm takes it: the argument spec, normalisation into a comparable dict, the fingerprint
and the difference between two configurations.

Pure: no process, namespace, signal or socket code, so the controller's plan can import it too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import ipaddress
import json
import os
import re

from ansible_collections.qemulab.network.plugins.module_utils import _validate
from ansible_collections.qemulab.network.plugins.module_utils._netlink_options import HOLDER_ARGUMENT_SPEC
from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import NIC_DEVICE_OPTIONS

RUN_ROOT = "/run/qemulab"
NIC_MODELS = ("virtio-net-pci", "e1000", "rtl8139")

# Fields that change what QEMU runs; state, timeouts and on_change do not.
# console_log_limit is one too: its tmpfs is mounted before QEMU starts (a VM started before the limit existed has an
# unbounded log, and is restarted to bound it).
CONFIG_FIELDS = ("name", "lab", "run_dir", "kernel", "initrd", "append", "disks", "memory", "vcpus", "accelerator",
                 "tb_size", "nics", "netns", "qemu_binary", "extra_args", "sandbox", "fw_cfg", "run_as", "rng",
                 "console_log_limit", "serial_ports", "userns_pid")
# Fields added after labs were already running: left out of the fingerprint while unset, so an upgrade does not
# restart every VM.
OPTIONAL_FIELDS = ("run_as", "serial_ports", "userns_pid")
# Serial links: ttyS1-ttyS3 (the guest kernel's legacy UARTs beside the console's ttyS0); a link's number names its
# socket file.
SERIAL_PORTS_MAX = 3
SERIAL_LINK_MAX = 999
# fw_cfg items are matched by name and file: their contents are read only at boot, so new contents are written for
# the next boot without restarting the VM (the lab's config stage changes the running guest itself).
FW_CFG_NAME_RE = re.compile(r"^opt/[A-Za-z0-9._/-]{1,51}$")

QEMU_VM_ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    lab=dict(type="str", default="default"),
    state=dict(type="str", default="running", choices=["running", "stopped", "absent", "restarted"]),
    run_dir=dict(type="path"),
    kernel=dict(type="path"),
    initrd=dict(type="path"),
    append=dict(type="str"),
    disks=dict(type="list", elements="dict", default=[], options=dict(
        file=dict(type="path", required=True),
        interface=dict(type="str", default="virtio", choices=["virtio", "ide", "scsi", "none"]),
        format=dict(type="str", default="raw", choices=["raw", "qcow2"]),
        readonly=dict(type="bool", default=False),
    )),
    memory=dict(type="raw", default=512),
    vcpus=dict(type="int", default=1),
    accelerator=dict(type="str", default="auto", choices=["auto", "kvm", "tcg"]),
    tb_size=dict(type="int", default=64),
    nics=dict(type="list", elements="dict", default=[], options=dict(
        model=dict(type="str", default="virtio-net-pci", choices=list(NIC_MODELS)),
        mac=dict(type="str"),
        backend=dict(type="str", default="tap", choices=["tap", "user", "vhost-user"]),
        ifname=dict(type="str"),
        # backend vhost-user: the unix socket a user-space datapath serves (qemulab.network.dpdk_datapath)
        socket=dict(type="path"),
        netns=dict(type="str"),
        vhost=dict(type="str", default="auto", choices=["auto", "on", "off"]),
        hostfwd=dict(type="list", elements="dict", options=dict(
            host_port=dict(type="int", required=True),
            guest_port=dict(type="int", required=True),
            protocol=dict(type="str", default="tcp", choices=["tcp", "udp"]),
        )),
        net=dict(type="str"),
        restrict=dict(type="bool", default=True),
        **dict((key, spec) for key, (spec, _prop, _models) in NIC_DEVICE_OPTIONS.items())
    ), required_if=[("backend", "tap", ("ifname",)), ("backend", "vhost-user", ("socket",))]),
    netns=dict(type="str", default=""),
    stop_timeout=dict(type="int", default=10),
    on_change=dict(type="str", default="restart", choices=["restart", "report"]),
    qemu_binary=dict(type="str", default="qemu-system-x86_64"),
    extra_args=dict(type="list", elements="str", default=[]),
    sandbox=dict(type="bool", default=True),
    fw_cfg=dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True),
        content=dict(type="str", required=True),
        secret=dict(type="bool", default=False),
    )),
    run_as=dict(type="str"),
    rng=dict(type="bool", default=True),
    console_log_limit=dict(type="raw", default=_validate.CONSOLE_LOG_LIMIT_DEFAULT),
    # Not a CONFIG_FIELD: a clone and a booted VM of one configuration run the same machine.
    clone_from=dict(type="path"),
    # the guest's ttyS1, ttyS2, ... joined to another VM's by a unix socket (_qemu_argv.serial_args)
    serial_ports=dict(type="list", elements="dict", default=[], options=dict(
        peer=dict(type="str", required=True),
        link=dict(type="int", required=True),
        server=dict(type="bool", required=True),
    )),
    # a rootless lab: QEMU runs inside the namespaces of this holder (lab_userns), its taps opened there
    **HOLDER_ARGUMENT_SPEC
)


def secret_contents(params):
    """The contents of the fw_cfg items marked secret (a guest's private host key): the modules add them to
    AnsibleModule.no_log_values, so no result, diff or error message shows them."""
    return [item["content"] for item in params.get("fw_cfg") or []
            if isinstance(item, dict) and item.get("secret") and isinstance(item.get("content"), str)
            and item["content"]]


class QemuConfigError(Exception):
    """The requested VM cannot be built as asked; the message names the VM, the field and the fix."""


def _vhost_user_socket(vm, index, nic, model, run_as):
    """The datapath socket of a vhost-user NIC: an absolute path, a virtio-net NIC, a QEMU that can reach it."""
    path = nic.get("socket")
    if not path or not os.path.isabs(path) or "\n" in path:
        raise QemuConfigError("VM %s: nics[%d] has backend vhost-user but socket %r is not an absolute path; give "
                              "the socket its datapath serves (dpdk_datapath's sockets)" % (vm, index, path))
    if model != "virtio-net-pci":
        raise QemuConfigError("VM %s: nics[%d] has backend vhost-user and model %s; vhost-user serves virtio queues "
                              "only, use model virtio-net-pci" % (vm, index, model))
    if run_as not in (None, ""):
        # the datapath runs as root and its socket is root's; an unprivileged QEMU could not connect
        raise QemuConfigError("VM %s: nics[%d] has backend vhost-user, which needs QEMU to run as root; drop "
                              "run_as for this VM" % (vm, index))
    return path


def parse_memory(value, vm="", field="memory"):
    """Memory in MiB from an int (MiB) or a string like `512M`, `1G`, `1GiB` (_validate.parse_memory's rule)."""
    try:
        return _validate.parse_memory(value)
    except ValueError as exc:
        raise QemuConfigError("%s: %s" % ("VM %s: %s" % (vm, field) if vm else field, exc))


def parse_console_log_limit(value, vm):
    """The console log's limit in bytes (_validate.parse_console_log_limit's rule)."""
    try:
        return _validate.parse_console_log_limit(value)
    except ValueError as exc:
        raise QemuConfigError("VM %s: console_log_limit: %s" % (vm, exc))


def normalise_mac(mac, vm, index):
    try:
        return _validate.normalize_mac(str(mac).strip().strip("'\""))
    except ValueError as exc:
        raise QemuConfigError("VM %s: nics[%d].mac: %s" % (vm, index, exc))


def check_names(params):
    """Problems with the names that become the run directory's path, QEMU options and interfaces; each names the
    VM, the field, the value and the fix."""
    name = params.get("name")
    vm = "VM %s" % name if _validate.check_name(name, "vm") is None else "VM"
    checks = [("name", name, "vm"), ("lab", params.get("lab") or "default", "lab")]
    if params.get("netns"):
        checks.append(("netns", params["netns"], "netns"))
    for index, nic in enumerate(params.get("nics") or []):
        if nic.get("ifname"):
            checks.append(("nics[%d].ifname" % index, nic["ifname"], "tap"))
        if nic.get("netns"):
            checks.append(("nics[%d].netns" % index, nic["netns"], "netns"))
    problems = []
    for field, value, kind in checks:
        problem = _validate.check_name(value, kind)
        if problem:
            problems.append("%s: %s: %s" % (vm, field, problem))
    return problems


def _forwards(vm, index, nic):
    forwards = []
    for number, fwd in enumerate(nic.get("hostfwd") or []):
        entry = {"host_port": int(fwd["host_port"]), "guest_port": int(fwd["guest_port"]),
                 "protocol": fwd.get("protocol") or "tcp"}
        for key in ("host_port", "guest_port"):
            if not 1 <= entry[key] <= 65535:
                raise QemuConfigError("VM %s: nics[%d].hostfwd[%d].%s %d is not a port; give 1 to 65535"
                                      % (vm, index, number, key, entry[key]))
        forwards.append(entry)
    return forwards


def _user_net(vm, index, net):
    if not net:
        return None
    try:
        ipaddress.IPv4Network(net, strict=False)
    except ValueError:
        raise QemuConfigError("VM %s: nics[%d].net %r is not an IPv4 network; write it like 10.0.2.0/24"
                              % (vm, index, net))
    return net


def _serial_ports(params, run_dir):
    """The serial links as the argv takes them: each with the socket path its end listens on or connects to (the
    listening VM's run directory, a sibling of this one: both VMs are in the lab's run directory)."""
    name = params["name"]
    ports = []
    for index, port in enumerate(params.get("serial_ports") or []):
        problem = _validate.check_name(port.get("peer"), "vm")
        if problem:
            raise QemuConfigError("VM %s: serial_ports[%d].peer: %s" % (name, index, problem))
        if port["peer"] == name:
            raise QemuConfigError("VM %s: serial_ports[%d].peer is the VM itself; join the port to another VM"
                                  % (name, index))
        link = int(port["link"])
        if not 0 <= link <= SERIAL_LINK_MAX:
            raise QemuConfigError("VM %s: serial_ports[%d].link %d is not a link number; give 0 to %d"
                                  % (name, index, link, SERIAL_LINK_MAX))
        owner = run_dir if port["server"] else os.path.join(os.path.dirname(run_dir), port["peer"])
        ports.append({"peer": port["peer"], "link": link, "server": bool(port["server"]),
                      "socket": os.path.join(owner, "serial%d.sock" % link)})
    if len(ports) > SERIAL_PORTS_MAX:
        raise QemuConfigError("VM %s: serial_ports has %d ports; the guest has ttyS1 to ttyS%d for them, join at most "
                              "%d" % (name, len(ports), SERIAL_PORTS_MAX, SERIAL_PORTS_MAX))
    return ports or None


def normalise_config(params):
    """The VM's desired configuration as a plain, comparable dict (defaults filled, values normalised)."""
    problems = check_names(params)
    if problems:
        raise QemuConfigError("; ".join(problems))
    name = params["name"]
    lab = params.get("lab") or "default"
    run_dir = params.get("run_dir") or os.path.join(RUN_ROOT, lab, name)
    netns = params.get("netns") or ""
    disks = []
    for disk in params.get("disks") or []:
        disks.append({
            "file": disk["file"],
            "interface": disk.get("interface") or "virtio",
            "format": disk.get("format") or "raw",
            "readonly": bool(disk.get("readonly")),
        })
    nics = []
    seen_macs = {}
    for index, nic in enumerate(params.get("nics") or []):
        backend = nic.get("backend") or "tap"
        mac = normalise_mac(nic["mac"], name, index) if nic.get("mac") else None
        if mac:
            if mac in seen_macs:
                raise QemuConfigError("VM %s: nics[%d].mac %s is already used by nics[%d]; give every NIC its own MAC"
                                      % (name, index, mac, seen_macs[mac]))
            seen_macs[mac] = index
        entry = {"model": nic.get("model") or "virtio-net-pci", "mac": mac, "backend": backend}
        # set device options only: an unset one leaves the fingerprint of a running VM as it was
        entry.update((key, nic[key]) for key in NIC_DEVICE_OPTIONS if nic.get(key) is not None)
        if backend == "tap":
            if not nic.get("ifname"):
                raise QemuConfigError("VM %s: nics[%d] has backend tap but no ifname; name the tap it uses"
                                      % (name, index))
            entry.update({"ifname": nic["ifname"], "netns": nic.get("netns") if nic.get("netns") is not None
                          else netns, "vhost": nic.get("vhost") or "auto"})
        elif backend == "vhost-user":
            entry["socket"] = _vhost_user_socket(name, index, nic, entry["model"], params.get("run_as"))
        else:
            entry.update({"hostfwd": _forwards(name, index, nic), "net": _user_net(name, index, nic.get("net")),
                          "restrict": True if nic.get("restrict") is None else bool(nic["restrict"])})
        nics.append(entry)
    userns_pid = params.get("userns_pid")
    if userns_pid is not None:
        _check_rootless(params, name, nics)
    fw_cfg = []
    for index, item in enumerate(params.get("fw_cfg") or []):
        if not FW_CFG_NAME_RE.match(item["name"] or "") or "//" in item["name"] or ".." in item["name"]:
            raise QemuConfigError("VM %s: fw_cfg[%d].name %r is not usable; QEMU wants opt/<path> of letters, digits, "
                                  "'.', '_', '-' and '/', at most 55 characters (like opt/qemulab/interfaces)"
                                  % (name, index, item["name"]))
        if item["name"] in [f["name"] for f in fw_cfg]:
            raise QemuConfigError("VM %s: fw_cfg[%d].name %s is given twice" % (name, index, item["name"]))
        fw_cfg.append({"name": item["name"],
                       "file": os.path.join(run_dir, "fw_cfg", item["name"][len("opt/"):].replace("/", "_"))})
    return {
        "name": name,
        "lab": lab,
        "run_dir": run_dir,
        "kernel": params.get("kernel") or None,
        "initrd": params.get("initrd") or None,
        "append": params.get("append") or None,
        "disks": disks,
        "memory": parse_memory(params.get("memory") if params.get("memory") is not None else 512, name),
        "vcpus": int(params.get("vcpus") or 1),
        "accelerator": params.get("accelerator") or "auto",
        "tb_size": int(params["tb_size"]) if params.get("tb_size") is not None else 64,
        "nics": nics,
        "netns": netns,
        "qemu_binary": params.get("qemu_binary") or "qemu-system-x86_64",
        "extra_args": list(params.get("extra_args") or []),
        "sandbox": True if params.get("sandbox") is None else bool(params["sandbox"]),
        "fw_cfg": fw_cfg,
        "run_as": str(params["run_as"]) if params.get("run_as") not in (None, "") else None,
        "rng": True if params.get("rng") is None else bool(params["rng"]),
        "console_log_limit": parse_console_log_limit(
            params["console_log_limit"] if params.get("console_log_limit") is not None
            else _validate.CONSOLE_LOG_LIMIT_DEFAULT, name),
        "serial_ports": _serial_ports(params, run_dir),
        "userns_pid": int(userns_pid) if userns_pid is not None else None,
    }


def _check_rootless(params, name, nics):
    """A VM inside a holder's namespaces: its taps are there, QEMU is the user's own (no run_as, no netns)."""
    pid = params["userns_pid"]
    if params.get("run_as") not in (None, ""):
        raise QemuConfigError("VM %s: run_as %s and userns_pid %s: a rootless lab's QEMU runs as the user who runs the "
                              "module; leave run_as unset" % (name, params["run_as"], pid))
    for index, nic in enumerate(nics):
        if nic.get("netns"):
            raise QemuConfigError("VM %s: nics[%d].netns %s and userns_pid %s: with userns_pid the taps are in the "
                                  "holder's namespace; leave netns unset" % (name, index, nic["netns"], pid))
        if nic["backend"] == "vhost-user":
            raise QemuConfigError("VM %s: nics[%d] has backend vhost-user, which a rootless lab (userns_pid) cannot "
                                  "serve; use a tap" % (name, index))


def fingerprint(config):
    data = json.dumps(dict((k, config.get(k)) for k in CONFIG_FIELDS
                           if not (k in OPTIONAL_FIELDS and config.get(k) is None)), sort_keys=True)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def config_diff(old, new):
    """(before, after) holding only the top-level fields that differ."""
    old = old or {}
    before, after = {}, {}
    for key in CONFIG_FIELDS:
        if old.get(key) != new.get(key):
            before[key] = old.get(key)
            after[key] = new.get(key)
    return before, after
