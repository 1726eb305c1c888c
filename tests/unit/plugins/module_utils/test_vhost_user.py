"""vhost-user NICs in qemu_vm's configuration and QEMU's argv: the datapath socket as a chardev, guest RAM in a shared
memfd backend, no MSI-X vectors under TCG (QEMU 7.2 segfaults otherwise, docs/dpdk.md), and never a clone."""
import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _qemu_clone
from ansible_collections.qemulab.network.plugins.module_utils._qemu_argv import build_argv
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError, normalise_config

pytestmark = pytest.mark.unit

SOCKET = "/run/qemulab/lab1/dpdk/dp1/h1-eth0.sock"


def config(nic=None, **changes):
    vhu = {"backend": "vhost-user", "mac": "52:54:00:00:00:01", "socket": SOCKET}
    vhu.update(nic or {})
    params = dict(name="h1", memory=256, kernel="/img/vmlinux", disks=[{"file": "/d/h1.qcow2", "format": "qcow2"}],
                  nics=[vhu, {"backend": "user", "mac": "52:54:00:aa:00:01"}])
    params.update(changes)
    return normalise_config(params)


def after(argv, flag):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_tcg_argv_has_the_shared_memfd_the_socket_chardev_and_no_msix_vectors():
    argv = build_argv(config(), "tcg")
    assert after(argv, "-object") == ["memory-backend-memfd,id=ram,size=256M,share=on"]
    assert after(argv, "-machine") == ["memory-backend=ram"]
    assert after(argv, "-m") == ["256"]
    assert "socket,id=vhu0,path=%s" % SOCKET in after(argv, "-chardev")
    assert after(argv, "-netdev")[0] == "vhost-user,id=net0,chardev=vhu0"
    assert after(argv, "-device")[0] == "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,vectors=0"
    # the management NIC keeps its MSI-X vectors: only vhost-user's start path crashes
    assert after(argv, "-device")[1] == "virtio-net-pci,netdev=net1,mac=52:54:00:aa:00:01"


def test_kvm_keeps_msix_and_a_vm_without_vhost_user_keeps_private_memory():
    argv = build_argv(config(), "kvm")
    assert after(argv, "-device")[0] == "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01"
    plain = build_argv(config(nics=[{"backend": "user", "mac": "52:54:00:aa:00:01"}]), "tcg")
    assert "-object" not in plain and "-machine" not in plain


def test_a_comma_in_the_socket_path_is_doubled():
    argv = build_argv(config({"socket": "/run/a,b/x.sock"}), "tcg")
    assert "socket,id=vhu0,path=/run/a,,b/x.sock" in after(argv, "-chardev")


@pytest.mark.parametrize("nic, changes, words", [
    ({"socket": None}, {}, "socket"),
    ({"socket": "relative.sock"}, {}, "absolute path"),
    ({"model": "e1000"}, {}, "virtio-net-pci"),
    ({}, {"run_as": "qemulab"}, "run as root"),
])
def test_config_refuses_what_cannot_work(nic, changes, words):
    with pytest.raises(QemuConfigError) as err:
        config(nic, **changes)
    assert words in str(err.value) and "VM h1: nics[0]" in str(err.value)


def test_a_vm_with_a_vhost_user_nic_is_never_a_clone():
    assert "shared memory backend" in _qemu_clone.clone_problem(config())
    assert _qemu_clone.clone_problem(config(nics=[{"backend": "user", "mac": "52:54:00:aa:00:01"}])) is None
