"""_qemu_argv: argv of every seed machine option for option, NIC variants, vhost, fds, and values escaped in
option strings only."""
import shlex

import pytest

from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import build_argv, option_string
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError, normalise_config
from ansible_collections.qemulab.network.plugins.module_utils._qemu_host import decide_vhost

pytestmark = pytest.mark.unit

# The seed's qemu-system-x86_64 lines (seed-lab.md, "Setting Up a Complex Network with Six VMs" and after, plus the
# vhost and user-mode examples), with the seed's paths shortened.
SEED_LINES = {
    "rt1": """qemu-system-x86_64 -kernel vms/bzImagert1.bin -m 1G
      -drive "file=vms/rt1.ext4,if=virtio,format=raw"
      -device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:71' -netdev tap,id=net0,ifname=vport11,script=no,downscript=no
      -device virtio-net-pci,netdev=net1,mac='12:34:56:AB:CD:72' -netdev tap,id=net1,ifname=vport21,script=no,downscript=no
      -device virtio-net-pci,netdev=net2,mac='12:34:56:AB:CD:73' -netdev tap,id=net2,ifname=vport31,script=no,downscript=no
      -name rt1 -daemonize --append "root=/dev/vda rw" """,
    "rt2": """qemu-system-x86_64 -kernel vms/bzImagert2.bin -m 1G
      -drive "file=vms/rt2.ext4,if=virtio,format=raw"
      -device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:74' -netdev tap,id=net0,ifname=vport22,script=no,downscript=no
      -device virtio-net-pci,netdev=net1,mac='12:34:56:AB:CD:75' -netdev tap,id=net1,ifname=vport42,script=no,downscript=no
      -name rt2 -daemonize --append "root=/dev/vda rw" """,
    "rt3": """qemu-system-x86_64 -kernel vms/bzImagert3.bin -m 1G
      -drive "file=vms/rt3.ext4,if=virtio,format=raw"
      -device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:76' -netdev tap,id=net0,ifname=vport32,script=no,downscript=no
      -device virtio-net-pci,netdev=net1,mac='12:34:56:AB:CD:77' -netdev tap,id=net1,ifname=vport52,script=no,downscript=no
      -name rt3 -daemonize --append "root=/dev/vda rw" """,
    "rt4": """qemu-system-x86_64 -kernel vms/bzImagert4.bin -m 1G
      -drive "file=vms/rt4.ext4,if=virtio,format=raw"
      -device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:78' -netdev tap,id=net0,ifname=vport41,script=no,downscript=no
      -device virtio-net-pci,netdev=net1,mac='12:34:56:AB:CD:79' -netdev tap,id=net1,ifname=vport51,script=no,downscript=no
      -device virtio-net-pci,netdev=net2,mac='12:34:56:AB:CD:7A' -netdev tap,id=net2,ifname=vport61,script=no,downscript=no
      -name rt4 -daemonize --append "root=/dev/vda rw" """,
    "h1": """qemu-system-x86_64 -kernel vms/bzImageh1.bin -m 1G
      -drive "file=vms/h1.ext4,if=virtio,format=raw"
      -device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:7B' -netdev tap,id=net0,ifname=vport12,script=no,downscript=no
      -name h1 -daemonize --append "root=/dev/vda rw" """,
    "h2": """qemu-system-x86_64 -kernel vms/bzImageh2.bin -m 1G
      -drive "file=vms/h2.ext4,if=virtio,format=raw"
      -device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:7C' -netdev tap,id=net0,ifname=vport62,script=no,downscript=no
      -name h2 -daemonize --append "root=/dev/vda rw" """,
    "htest": """qemu-system-x86_64 -kernel vms/bzImagehtest.bin -m 1G
      -drive "file=vms/htest.ext4,if=virtio,format=raw"
      -device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:7D'
      -netdev tap,id=net0,ifname=vport13,script=no,downscript=no
      -name htest -daemonize --append "root=/dev/vda rw" """,
    "vhost_h1": """qemu-system-x86_64 -kernel vms2/bzImageh1.bin -m 1G
      -drive "file=vms2/h1.ext4,if=virtio,format=raw"
      -device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:7B'
      -netdev tap,id=net0,ifname=vport11,script=no,downscript=no,vhost=on
      -name h1 --append "root=/dev/vda console=ttyS0 rw" -nographic -D ./log1.txt""",
    "user_mode": """qemu-system-x86_64
      -drive file=core-image-minimal-qemux86-64.ext4,if=virtio,format=raw
      -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:02
      -netdev user,id=net0
      -kernel bzImage-qemux86-64.bin -nographic
      -append "root=/dev/vda rw mem=256M console=ttyS0" """,
}

# The same machines as qemu_vm task options.
SEED_TASKS = {
    "rt1": dict(kernel="vms/bzImagert1.bin", memory="1G", disks=[{"file": "vms/rt1.ext4"}], append="root=/dev/vda rw",
                nics=[{"mac": "12:34:56:AB:CD:71", "ifname": "vport11"}, {"mac": "12:34:56:AB:CD:72", "ifname": "vport21"},
                      {"mac": "12:34:56:AB:CD:73", "ifname": "vport31"}]),
    "rt2": dict(kernel="vms/bzImagert2.bin", memory="1G", disks=[{"file": "vms/rt2.ext4"}], append="root=/dev/vda rw",
                nics=[{"mac": "12:34:56:AB:CD:74", "ifname": "vport22"}, {"mac": "12:34:56:AB:CD:75", "ifname": "vport42"}]),
    "rt3": dict(kernel="vms/bzImagert3.bin", memory="1G", disks=[{"file": "vms/rt3.ext4"}], append="root=/dev/vda rw",
                nics=[{"mac": "12:34:56:AB:CD:76", "ifname": "vport32"}, {"mac": "12:34:56:AB:CD:77", "ifname": "vport52"}]),
    "rt4": dict(kernel="vms/bzImagert4.bin", memory="1G", disks=[{"file": "vms/rt4.ext4"}], append="root=/dev/vda rw",
                nics=[{"mac": "12:34:56:AB:CD:78", "ifname": "vport41"}, {"mac": "12:34:56:AB:CD:79", "ifname": "vport51"},
                      {"mac": "12:34:56:AB:CD:7A", "ifname": "vport61"}]),
    "h1": dict(kernel="vms/bzImageh1.bin", memory="1G", disks=[{"file": "vms/h1.ext4"}], append="root=/dev/vda rw",
               nics=[{"mac": "12:34:56:AB:CD:7B", "ifname": "vport12"}]),
    "h2": dict(kernel="vms/bzImageh2.bin", memory="1G", disks=[{"file": "vms/h2.ext4"}], append="root=/dev/vda rw",
               nics=[{"mac": "12:34:56:AB:CD:7C", "ifname": "vport62"}]),
    "htest": dict(kernel="vms/bzImagehtest.bin", memory="1G", disks=[{"file": "vms/htest.ext4"}],
                  append="root=/dev/vda rw", nics=[{"mac": "12:34:56:AB:CD:7D", "ifname": "vport13"}]),
    "vhost_h1": dict(name="h1", kernel="vms2/bzImageh1.bin", memory=1024, disks=[{"file": "vms2/h1.ext4"}],
                     append="root=/dev/vda console=ttyS0 rw",
                     nics=[{"mac": "12:34:56:AB:CD:7B", "ifname": "vport11", "vhost": "on"}]),
    "user_mode": dict(name="user-mode", kernel="bzImage-qemux86-64.bin", memory=128,
                      disks=[{"file": "core-image-minimal-qemux86-64.ext4"}],
                      append="root=/dev/vda rw mem=256M console=ttyS0",
                      nics=[{"mac": "52:54:00:12:34:02", "backend": "user", "restrict": False}]),
}

MEMORY_MIB = {"1G": 1024, "128M": 128}


def machine_options(argv):
    """What a QEMU command line asks for, independent of option order, quoting and MAC case."""
    opts = {"drives": [], "nics": [], "kernel": None, "append": None, "memory": None, "name": None}
    netdevs, devices = {}, []
    args = iter(argv[1:])
    for arg in args:
        key = arg.lstrip("-")
        if key in ("kernel", "append", "name"):
            opts[key] = next(args)
        elif key == "m":
            value = next(args)
            opts["memory"] = MEMORY_MIB.get(value, int(value) if value.isdigit() else value)
        elif key == "drive":
            opts["drives"].append(next(args))
        elif key == "device":
            devices.append(next(args))
        elif key == "netdev":
            netdev = next(args).split(",")
            ident = next(p for p in netdev if p.startswith("id="))
            netdevs[ident[3:]] = [netdev[0]] + sorted(p for p in netdev[1:] if not p.startswith("id="))
    for device in devices:
        parts = device.split(",")
        fields = dict(p.split("=", 1) for p in parts[1:])
        opts["nics"].append((parts[0], fields.get("mac", "").lower(), netdevs[fields["netdev"]]))
    return opts


def seed_argv(machine):
    return shlex.split(" ".join(SEED_LINES[machine].split()))


def our_argv(machine, vhost_usable=False, rng=False):
    params = dict(SEED_TASKS[machine])
    params["name"] = params.get("name", machine) or machine
    params["rng"] = rng  # the seed's lines have no RNG device: qemulab adds one by default (tested below)
    config = normalise_config(params)
    vhost = {}
    for index, nic in enumerate(config["nics"]):
        if nic["backend"] == "tap":
            vhost[index], _ = decide_vhost(nic, vhost_usable, "test", config["name"], index)
    return build_argv(config, "tcg", vhost)


@pytest.mark.parametrize("machine", sorted(SEED_LINES))
def test_seed_machine_argv_matches_option_for_option(machine):
    # The seed's vhost example ran where /dev/vhost-net works; the others leave QEMU's default (vhost off).
    seed = machine_options(seed_argv(machine))
    ours = machine_options(our_argv(machine, vhost_usable=machine == "vhost_h1"))
    if machine == "user_mode":
        seed["name"] = ours["name"]  # the seed's user-mode example has no -name
        seed["memory"] = 128  # and no -m (QEMU's default is 128 MiB)
    assert ours == seed


def test_a_virtio_rng_is_added_unless_turned_off():
    with_rng, without = our_argv("h1", rng=True), our_argv("h1", rng=False)
    assert [with_rng[i + 1] for i, a in enumerate(with_rng) if a == "-device" and "rng" in with_rng[i + 1]] == \
        ["virtio-rng-pci"]
    assert not [a for a in without if "rng" in a]
    assert normalise_config(dict(name="h1"))["rng"] is True


def test_seed_tap_netdevs_use_ifname_without_scripts():
    argv = our_argv("rt1")
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs == ["tap,id=net0,ifname=vport11,script=no,downscript=no",
                       "tap,id=net1,ifname=vport21,script=no,downscript=no",
                       "tap,id=net2,ifname=vport31,script=no,downscript=no"]


def test_process_model_options():
    config = normalise_config(dict(name="h1", lab="seed", kernel="k"))
    argv = build_argv(config, "tcg")
    joined = " ".join(argv)
    run = "/run/qemulab/seed/h1"
    assert "-pidfile %s/qemu.pid" % run in joined
    assert "-qmp unix:%s/qmp.sock,server=on,wait=off" % run in joined
    # the log lies on the console directory's own tmpfs (_qemu_console)
    assert ("-chardev socket,id=console,path=%s/console.sock,server=on,wait=off,logfile=%s/console/console.log "
            "-serial chardev:console" % (run, run)) in joined
    assert "-D %s/qemu.log" % run in joined
    assert "-display none -nodefaults -no-user-config" in joined
    assert "-accel tcg,tb-size=64" in joined
    assert argv[argv.index("-sandbox") + 1] == "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    # The sandbox forbids the fork and setsid that -daemonize needs (QEMU 7.2 dies with SIGSYS): we detach it.
    assert "-daemonize" not in argv
    assert "-sandbox" not in build_argv(normalise_config(dict(name="h1", sandbox=False)), "tcg")


def test_kvm_has_no_tb_size():
    argv = build_argv(normalise_config(dict(name="h1")), "kvm")
    assert argv[argv.index("-accel") + 1] == "kvm"


@pytest.mark.parametrize("model", ["e1000", "rtl8139", "virtio-net-pci"])
def test_nic_models(model):
    config = normalise_config(dict(name="h1", nics=[{"model": model, "mac": "52:54:00:00:00:01", "ifname": "t0"}]))
    argv = build_argv(config, "tcg")
    assert argv[argv.index("-device") + 1] == "%s,netdev=net0,mac=52:54:00:00:00:01" % model


def test_tap_fd_replaces_ifname():
    config = normalise_config(dict(name="h1", netns="lab", nics=[{"mac": "52:54:00:00:00:01", "ifname": "t0"}]))
    argv = build_argv(config, "tcg", {0: False}, {0: 7})
    assert argv[argv.index("-netdev") + 1] == "tap,id=net0,fd=7"


def test_user_mode_restricted_forwards_on_loopback_only():
    config = normalise_config(dict(name="h1", nics=[{"backend": "user", "mac": "52:54:00:00:00:09", "net": "10.0.2.0/24",
                                                     "hostfwd": [{"host_port": 2201, "guest_port": 22},
                                                                 {"host_port": 5353, "guest_port": 53,
                                                                  "protocol": "udp"}]}]))
    argv = build_argv(config, "tcg")
    assert argv[argv.index("-netdev") + 1] == ("user,id=net0,net=10.0.2.0/24,restrict=on,"
                                               "hostfwd=tcp:127.0.0.1:2201-:22,hostfwd=udp:127.0.0.1:5353-:53")


def test_vhost_decision_reaches_the_netdev():
    argv = our_argv("vhost_h1", vhost_usable=True)
    assert argv[argv.index("-netdev") + 1].endswith(",vhost=on")
    # auto turns vhost on wherever it is usable
    assert our_argv("h1", vhost_usable=True)[our_argv("h1").index("-netdev") + 1].endswith(",vhost=on")
    with pytest.raises(QemuConfigError, match="vhost is on but"):
        our_argv("vhost_h1", vhost_usable=False)


def test_fds_for_an_unprivileged_qemu_reach_the_command_line():
    config = normalise_config(dict(SEED_TASKS["rt1"], name="rt1", run_as="nobody",
                                   disks=[{"file": "/private/rt1.qcow2", "format": "qcow2"},
                                          {"file": "/private/data.img", "readonly": True}]))
    argv = build_argv(config, "tcg", vhost={0: True}, tap_fds={0: 10, 1: 11, 2: 12}, vhost_fds={0: 20},
                      disk_fds={0: [30, 31], 1: [32]})
    text = " ".join(argv)
    assert "-add-fd fd=30,set=1,opaque=disks[0] -add-fd fd=31,set=1,opaque=disks[0]" in text
    assert "-add-fd fd=32,set=2,opaque=disks[1]" in text
    assert "file=/dev/fdset/1,if=virtio,format=qcow2" in text and "file=/dev/fdset/2,if=virtio,format=raw,readonly=on" in text
    assert "/private/" not in text
    assert "tap,id=net0,fd=10,vhost=on,vhostfd=20" in text and "tap,id=net1,fd=11" in text


@pytest.mark.parametrize("items,text", [
    (("tap", ("id", "net0"), ("fd", 7)), "tap,id=net0,fd=7"),
    (("/tmp/a,b/x", ("server", "on")), "/tmp/a,,b/x,server=on"),
    ((("file", "a,,b"),), "file=a,,,,b"),
    (("on",), "on"),
])
def test_option_string_doubles_commas_in_values(items, text):
    assert option_string(*items) == text


def test_a_comma_in_a_path_is_doubled_inside_option_strings_and_kept_where_qemu_takes_the_argument_whole():
    run_dir = "/tmp/a,b/vm"
    config = normalise_config(dict(name="h1", lab="seed", run_dir=run_dir, kernel="/tmp/a,b/vmlinux",
                                   initrd="/tmp/a,b/initrd", append="console=ttyS0,115200",
                                   disks=[{"file": "/tmp/a,b/disk.img"}],
                                   fw_cfg=[{"name": "opt/qemulab/interfaces", "content": ""}]))
    argv = build_argv(config, "tcg")

    def after(flag):
        return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]
    assert after("-kernel") == ["/tmp/a,b/vmlinux"] and after("-initrd") == ["/tmp/a,b/initrd"]
    assert after("-append") == ["console=ttyS0,115200"]
    assert after("-pidfile") == ["/tmp/a,b/vm/qemu.pid"] and after("-D") == ["/tmp/a,b/vm/qemu.log"]
    assert after("-drive") == ["file=/tmp/a,,b/disk.img,if=virtio,format=raw"]
    assert after("-qmp") == ["unix:/tmp/a,,b/vm/qmp.sock,server=on,wait=off"]
    assert after("-chardev") == ["socket,id=console,path=/tmp/a,,b/vm/console.sock,server=on,wait=off,"
                                 "logfile=/tmp/a,,b/vm/console/console.log"]
    assert after("-fw_cfg") == ["name=opt/qemulab/interfaces,file=/tmp/a,,b/vm/fw_cfg/qemulab_interfaces"]


def test_extra_args_are_passed_as_given():
    argv = build_argv(normalise_config(dict(name="h1", extra_args=["-device", "x,a=1"])), "tcg")
    assert argv[-2:] == ["-device", "x,a=1"]
