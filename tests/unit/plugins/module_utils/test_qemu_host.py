"""_qemu_host: vhost decision, accelerator probe cache, forwarded ports, boot files and the user QEMU runs as."""
import json
import socket

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _qemu_host
from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import build_argv
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError, normalise_config
from ansible_collections.qemulab.network.plugins.module_utils._qemu_host import (
    decide_vhost, held_forwards, hostfwd_problems, missing_files, port_in_use, resolve_accelerator, resolve_user)

pytestmark = pytest.mark.unit


def test_vhost_variants():
    nic = {"vhost": "auto"}
    assert decide_vhost(nic, True, "usable", "h1", 0) == (True, "usable")
    assert decide_vhost(nic, False, "/dev/vhost-net does not exist", "h1", 0) == (False, "/dev/vhost-net does not exist")
    assert decide_vhost({"vhost": "off"}, True, "usable", "h1", 0)[0] is False
    with pytest.raises(QemuConfigError, match=r"VM h1: nics\[0\]\.vhost is on but /dev/vhost-net does not exist"):
        decide_vhost({"vhost": "on"}, False, "/dev/vhost-net does not exist", "h1", 0)


# The host's three states as vhost_usable reports them: (usable, reason).
HOST_STATES = {
    "present": (True, "/dev/vhost-net usable"),
    "absent": (False, "/dev/vhost-net does not exist"),
    "unopenable": (False, "/dev/vhost-net cannot be opened: Permission denied"),
}


@pytest.mark.parametrize("model", ["virtio-net-pci", "e1000", "rtl8139"])
@pytest.mark.parametrize("host", sorted(HOST_STATES))
@pytest.mark.parametrize("wanted", ["auto", "on", "off"])
def test_vhost_is_on_only_for_virtio_net_on_a_host_that_offers_it(model, host, wanted):
    usable, reason = HOST_STATES[host]
    nic = {"model": model, "vhost": wanted}
    virtio = model == "virtio-net-pci"
    if wanted == "on" and not (virtio and usable):
        # an impossible `on` is an inventory error naming the VM, the NIC and why (the model first: no device helps)
        why = "model %s" % model if not virtio else reason
        with pytest.raises(QemuConfigError, match=r"VM r1: nics\[2\]\.vhost is on but %s" % why):
            decide_vhost(nic, usable, reason, "r1", 2)
        return
    on, said = decide_vhost(nic, usable, reason, "r1", 2)
    assert on is (virtio and usable and wanted != "off")
    if wanted == "off":
        assert said == "vhost: off requested"
    elif not virtio:
        assert said == "model %s: vhost-net serves virtio-net only" % model
    else:
        assert said == reason


def test_accelerator_cache_is_used_and_written(tmp_path, monkeypatch):
    cache = tmp_path / "accel.json"
    calls = []

    def fake_probe(binary, kernel):
        calls.append(kernel)
        return False, "probe guest printed nothing"

    monkeypatch.setattr(_qemu_host, "probe_kvm", fake_probe)
    monkeypatch.setattr(_qemu_host, "qemu_version", lambda binary: "7.2.22")
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
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        config = normalise_config(dict(name="h1", nics=[{"backend": "user", "mac": "52:54:00:00:00:09",
                                                         "hostfwd": [{"host_port": port, "guest_port": 22}]}]))
        assert hostfwd_problems(config) == [
            "VM h1: nics[0].hostfwd host_port %d (tcp) on 127.0.0.1 is already taken; pick a free port" % port]
        assert hostfwd_problems(config, held={(port, "tcp")}) == []
    finally:
        holder.close()
    assert hostfwd_problems(config) == []


def test_a_running_qemu_without_its_record_holds_the_forwards_of_its_command_line():
    """A QEMU whose run was killed before its record was written is restarted; the ports its command line forwards
    are its own, not taken by someone else (a rerun after such a kill refused them)."""
    config = normalise_config(dict(name="h1", nics=[
        {"backend": "user", "mac": "52:54:00:00:00:09", "hostfwd": [{"host_port": 2201, "guest_port": 22},
                                                                    {"host_port": 5353, "guest_port": 53,
                                                                     "protocol": "udp"}]},
        {"backend": "user", "mac": "52:54:00:00:00:0a", "hostfwd": [{"host_port": 8080, "guest_port": 80}]}]))
    argv = build_argv(config, "tcg")
    assert held_forwards(None, argv) == {(2201, "tcp"), (5353, "udp"), (8080, "tcp")}
    assert held_forwards(config) == held_forwards(config, argv) == held_forwards(None, argv)
    assert held_forwards(None, ["qemu-system-x86_64", "-netdev", "user,id=n0"]) == set()
    assert held_forwards(None, None) == set()


def test_missing_boot_files_are_named_with_the_fix(tmp_path):
    config = normalise_config(dict(name="h1", initrd=str(tmp_path / "initrd.img"),
                                   disks=[{"file": str(tmp_path / "h1.qcow2"), "format": "qcow2"}]))
    assert missing_files(config) == [
        "VM h1: initrd %s does not exist; build the image first (qemulab.network guest_image role) or fix the path"
        % (tmp_path / "initrd.img"),
        "VM h1: disks[0].file %s does not exist; create it (qemu-img create) or fix the path" % (tmp_path / "h1.qcow2"),
        "VM h1: initrd is set without kernel; give kernel too",
    ]
    (tmp_path / "initrd.img").write_bytes(b"i")
    (tmp_path / "h1.qcow2").write_bytes(b"d")
    (tmp_path / "vmlinuz").write_bytes(b"k")
    config["kernel"] = str(tmp_path / "vmlinuz")
    assert missing_files(config) == []


def test_port_in_use_sees_listeners_but_not_time_wait_of_a_stopped_guest():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libslirp's tcp_listen does for hostfwd
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    assert port_in_use(port)
    client = socket.create_connection(("127.0.0.1", port))
    served, _addr = listener.accept()
    served.close()  # the forwarding side closes first, as when QEMU stops: 127.0.0.1:port lingers in TIME_WAIT
    client.close()
    listener.close()
    assert not port_in_use(port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        assert port_in_use(udp.getsockname()[1], "udp")
    finally:
        udp.close()


def test_unknown_run_as_user_is_named_with_the_fix():
    config = normalise_config(dict(name="rt1", run_as="qemulab-no-such-user"))
    with pytest.raises(QemuConfigError, match=r"VM rt1: run_as: there is no user 'qemulab-no-such-user'.*useradd"):
        resolve_user(config)
    assert resolve_user(normalise_config(dict(name="rt1")))["uid"] == 0
    assert resolve_user(normalise_config(dict(name="rt1", run_as="nobody")))["name"] == "nobody"


def test_labs_started_together_probe_once_and_keep_every_cache_entry(tmp_path, monkeypatch):
    """Issue 14: accel.json is shared by every lab on the host. Four processes (two labs' VMs on each of two QEMU
    binaries) resolve `auto` at once with an empty cache: each binary is probed once, and neither entry is lost in
    the read-modify-write of the cache. Without the cache's flock all four probe."""
    import os
    import time

    cache, probes = tmp_path / "cache" / "accel.json", tmp_path / "probes.log"
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")

    def slow_probe(binary, kernel_path):
        with open(str(probes), "a") as log:
            log.write(binary + "\n")
        time.sleep(0.5)  # a real probe boots a guest for seconds
        return False, "probed by %d" % os.getpid()

    monkeypatch.setattr(_qemu_host, "probe_kvm", slow_probe)
    monkeypatch.setattr(_qemu_host, "qemu_version", lambda binary: "7.2.22")
    start_r, start_w = os.pipe()
    children = []
    for binary in ("qemu-a", "qemu-b", "qemu-a", "qemu-b"):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                os.read(start_r, 1)
                status = 0 if resolve_accelerator("auto", binary, str(kernel), str(cache))[0] == "tcg" else 1
            finally:
                os._exit(status)
        children.append(pid)
    os.write(start_w, b"go!!")
    assert [os.waitpid(pid, 0)[1] for pid in children] == [0, 0, 0, 0]
    assert sorted(probes.read_text().split()) == ["qemu-a", "qemu-b"]
    stored = json.loads(cache.read_text())
    assert sorted(key.split("|")[1] for key in stored) == ["qemu-a", "qemu-b"]
