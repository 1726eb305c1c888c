"""_qemu: argv of every seed machine option for option, NIC variants, memory sizes, fingerprints, vhost, accelerator."""
import json
import shlex
import subprocess

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _qemu
from ansible_collections.qemulab.network.plugins.module_utils._qemu import (
    QemuConfigError, build_argv, config_diff, decide_vhost, fingerprint, is_our_qemu, normalise_config,
    parse_memory, resolve_accelerator)

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
    "user_mode": dict(name=None, kernel="bzImage-qemux86-64.bin", memory=128,
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
    assert ("-chardev socket,id=console,path=%s/console.sock,server=on,wait=off,logfile=%s/console.log "
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


def test_vhost_variants():
    nic = {"vhost": "auto"}
    assert decide_vhost(nic, True, "usable", "h1", 0) == (True, "usable")
    assert decide_vhost(nic, False, "/dev/vhost-net does not exist", "h1", 0) == (False, "/dev/vhost-net does not exist")
    assert decide_vhost({"vhost": "off"}, True, "usable", "h1", 0)[0] is False
    with pytest.raises(QemuConfigError, match=r"VM h1: nics\[0\]\.vhost is on but /dev/vhost-net does not exist"):
        decide_vhost({"vhost": "on"}, False, "/dev/vhost-net does not exist", "h1", 0)
    argv = our_argv("vhost_h1", vhost_usable=True)
    assert argv[argv.index("-netdev") + 1].endswith(",vhost=on")
    # auto turns vhost on wherever it is usable
    assert our_argv("h1", vhost_usable=True)[our_argv("h1").index("-netdev") + 1].endswith(",vhost=on")
    with pytest.raises(QemuConfigError, match="vhost is on but"):
        our_argv("vhost_h1", vhost_usable=False)


@pytest.mark.parametrize("value,mib", [(512, 512), ("512", 512), ("512M", 512), ("1G", 1024), ("1g", 1024),
                                       ("2GiB", 2048), ("256MiB", 256), (" 1G ", 1024)])
def test_memory_sizes(value, mib):
    assert parse_memory(value) == mib


@pytest.mark.parametrize("value", ["1X", "", "G", "1.5G", "-1G", True, "8", "64K"])
def test_memory_rejects_naming_the_field(value):
    with pytest.raises(QemuConfigError, match=r"^VM rt1: memory: "):
        parse_memory(value, "rt1")


def test_duplicate_mac_is_named():
    with pytest.raises(QemuConfigError, match=r"VM rt1: nics\[1\]\.mac 12:34:56:ab:cd:71 is already used by nics\[0\]"):
        normalise_config(dict(name="rt1", nics=[{"mac": "12:34:56:AB:CD:71", "ifname": "a"},
                                                {"mac": "12:34:56:ab:cd:71", "ifname": "b"}]))


def test_fingerprint_and_diff():
    base = normalise_config(dict(SEED_TASKS["rt1"], name="rt1"))
    same = normalise_config(dict(SEED_TASKS["rt1"], name="rt1", memory=1024))
    assert fingerprint(base) == fingerprint(same)
    changed_nics = [dict(n) for n in SEED_TASKS["rt1"]["nics"]]
    changed_nics[0]["mac"] = "12:34:56:ab:cd:99"
    other = normalise_config(dict(SEED_TASKS["rt1"], name="rt1", nics=changed_nics, memory="2G"))
    assert fingerprint(base) != fingerprint(other)
    before, after = config_diff(base, other)
    assert sorted(after) == ["memory", "nics"]
    assert (before["memory"], after["memory"]) == (1024, 2048)
    assert after["nics"][0]["mac"] == "12:34:56:ab:cd:99"
    assert config_diff(base, same) == ({}, {})


def test_pid_of_unrelated_process_is_not_our_qemu(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert not is_our_qemu(sleeper.pid, str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not is_our_qemu(None, str(tmp_path))


def test_accelerator_cache_is_used_and_written(tmp_path, monkeypatch):
    cache = tmp_path / "accel.json"
    calls = []

    def fake_probe(binary, kernel):
        calls.append(kernel)
        return False, "probe guest printed nothing"

    monkeypatch.setattr(_qemu, "probe_kvm", fake_probe)
    monkeypatch.setattr(_qemu, "qemu_version", lambda binary: "7.2.22")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    k = str(kernel)
    assert resolve_accelerator("tcg", "qemu-system-x86_64", k, str(cache)) == ("tcg", "tcg requested")
    # A disk-booted VM has no kernel to probe with: TCG for now, nothing cached.
    assert resolve_accelerator("auto", "qemu-system-x86_64", None, str(cache))[0] == "tcg"
    assert calls == [] and not cache.exists()
    accel, reason = resolve_accelerator("auto", "qemu-system-x86_64", k, str(cache))
    assert (accel, reason) == ("tcg", "probe guest printed nothing") and calls == [k]
    stored = json.loads(cache.read_text())
    assert list(stored.values())[0]["accelerator"] == "tcg"
    assert resolve_accelerator("auto", "qemu-system-x86_64", k, str(cache))[0] == "tcg" and calls == [k]
    assert resolve_accelerator("auto", "qemu-system-x86_64", "k", str(tmp_path / "none.json"), probe=False)[0] == "tcg"


def test_taken_forward_port_is_named_unless_this_vm_holds_it():
    import socket
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        config = normalise_config(dict(name="h1", nics=[{"backend": "user", "mac": "52:54:00:00:00:09",
                                                         "hostfwd": [{"host_port": port, "guest_port": 22}]}]))
        assert _qemu.hostfwd_problems(config) == [
            "VM h1: nics[0].hostfwd host_port %d (tcp) on 127.0.0.1 is already taken; pick a free port" % port]
        assert _qemu.hostfwd_problems(config, held={(port, "tcp")}) == []
    finally:
        holder.close()
    assert _qemu.hostfwd_problems(config) == []


def test_missing_boot_files_are_named_with_the_fix(tmp_path):
    config = normalise_config(dict(name="h1", initrd=str(tmp_path / "initrd.img"),
                                   disks=[{"file": str(tmp_path / "h1.qcow2"), "format": "qcow2"}]))
    assert _qemu.missing_files(config) == [
        "VM h1: initrd %s does not exist; build the image first (qemulab.network guest_image role) or fix the path"
        % (tmp_path / "initrd.img"),
        "VM h1: disks[0].file %s does not exist; create it (qemu-img create) or fix the path" % (tmp_path / "h1.qcow2"),
        "VM h1: initrd is set without kernel; give kernel too",
    ]
    (tmp_path / "initrd.img").write_bytes(b"i")
    (tmp_path / "h1.qcow2").write_bytes(b"d")
    (tmp_path / "vmlinuz").write_bytes(b"k")
    config["kernel"] = str(tmp_path / "vmlinuz")
    assert _qemu.missing_files(config) == []


def test_port_in_use_sees_listeners_but_not_time_wait_of_a_stopped_guest():
    import socket
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libslirp's tcp_listen does for hostfwd
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    assert _qemu.port_in_use(port)
    client = socket.create_connection(("127.0.0.1", port))
    served, _addr = listener.accept()
    served.close()  # the forwarding side closes first, as when QEMU stops: 127.0.0.1:port lingers in TIME_WAIT
    client.close()
    listener.close()
    assert not _qemu.port_in_use(port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        assert _qemu.port_in_use(udp.getsockname()[1], "udp")
    finally:
        udp.close()


def test_run_as_is_part_of_the_fingerprint_only_when_set():
    """Labs started before run_as existed keep their fingerprint (no restart on upgrade); setting it restarts."""
    import hashlib
    import json
    from ansible_collections.qemulab.network.plugins.module_utils._qemu import CONFIG_FIELDS
    base = normalise_config(dict(SEED_TASKS["rt1"], name="rt1"))
    assert base["run_as"] is None
    older = json.dumps(dict((k, base.get(k)) for k in CONFIG_FIELDS if k != "run_as"), sort_keys=True)
    assert fingerprint(base) == hashlib.sha256(older.encode("utf-8")).hexdigest()
    as_user = normalise_config(dict(SEED_TASKS["rt1"], name="rt1", run_as="qemulab"))
    assert fingerprint(as_user) != fingerprint(base)
    assert config_diff(base, as_user) == ({"run_as": None}, {"run_as": "qemulab"})


def test_unknown_run_as_user_is_named_with_the_fix():
    from ansible_collections.qemulab.network.plugins.module_utils._qemu import resolve_user
    config = normalise_config(dict(SEED_TASKS["rt1"], name="rt1", run_as="qemulab-no-such-user"))
    with pytest.raises(QemuConfigError, match=r"VM rt1: run_as: there is no user 'qemulab-no-such-user'.*useradd"):
        resolve_user(config)
    assert resolve_user(normalise_config(dict(SEED_TASKS["rt1"], name="rt1")))["uid"] == 0
    assert resolve_user(normalise_config(dict(SEED_TASKS["rt1"], name="rt1", run_as="nobody")))["name"] == "nobody"


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
