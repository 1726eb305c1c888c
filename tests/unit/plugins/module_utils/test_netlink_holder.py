"""Unit tests (no holder started): a rootless lab's namespace named by its holder pid is trusted only as lab_userns
recorded it, excludes a netns name, and a VM inside it takes neither run_as nor a netns; its taps' owners do not
matter there and its forwards are checked through a socket of that namespace."""
import json
import os
import socket

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _netlink, _netlink_holder as holder
from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import QemuConfigError, normalise_config
from ansible_collections.qemulab.network.plugins.module_utils._qemu_host import port_in_use
from ansible_collections.qemulab.network.plugins.module_utils._qemu_tap import tap_problems

pytestmark = pytest.mark.unit

RECORD = {"lab": "seed", "pid": 4242, "start_time": 777, "userns": [4, 100], "netns": [4, 101]}


def write_records(run_root, *records):
    os.makedirs(os.path.join(run_root, "_userns"))
    for record in records:
        with open(os.path.join(run_root, "_userns", record["lab"] + ".json"), "w") as f:
            json.dump(record, f)


def test_a_record_is_found_by_its_pid_only_while_its_holder_lives(tmp_path, monkeypatch):
    other = dict(RECORD, lab="other", pid=5151)
    write_records(str(tmp_path), RECORD, other)
    live = []
    monkeypatch.setattr(holder._userns, "live_holder", lambda record, lab: record if lab in live else None)
    assert holder.find_record(4242, str(tmp_path)) is None  # recorded, but that process is no longer the holder
    live.append("seed")
    assert holder.find_record(4242, str(tmp_path)) == RECORD
    assert holder.find_record(5151, str(tmp_path)) is None
    assert holder.find_record(1, str(tmp_path)) is None


def test_an_unrecorded_pid_is_refused_naming_it_the_records_and_the_fix(tmp_path):
    with pytest.raises(holder.HolderError) as exc:
        holder.holder_namespace(os.getpid(), run_root=str(tmp_path))
    msg = str(exc.value)
    assert "userns_pid %d" % os.getpid() in msg and str(tmp_path / "_userns") in msg
    assert "qemulab.network.lab_userns" in msg


def test_a_namespace_that_is_not_the_recorded_one_is_not_entered(tmp_path, monkeypatch):
    """The fds are compared with the record after they are opened: a pid reused between check and open fails."""
    me = os.getpid()
    st = os.stat("/proc/self/ns/user")
    record = dict(RECORD, pid=me, userns=[st.st_dev, st.st_ino + 1])
    monkeypatch.setattr(holder, "find_record", lambda pid, run_root: record)
    with pytest.raises(holder.HolderError) as exc:
        holder.holder_namespace(me, run_root=str(tmp_path))
    assert "user namespace changed since its record was written" in str(exc.value)
    assert me not in holder._RESOLVED


def test_the_recorded_namespaces_are_held_as_fds_and_named_in_messages(tmp_path, monkeypatch):
    me = os.getpid()
    ids = dict((kind, [os.stat("/proc/self/ns/" + kind).st_dev, os.stat("/proc/self/ns/" + kind).st_ino])
               for kind in ("user", "net"))
    record = dict(RECORD, pid=me, userns=ids["user"], netns=ids["net"])
    monkeypatch.setattr(holder, "find_record", lambda pid, run_root: record)
    monkeypatch.setattr(holder, "_RESOLVED", {})
    found = holder.holder_namespace(me, run_root=str(tmp_path))
    try:
        assert found == "holder %d of lab seed" % me and found.pid == me
        assert [os.fstat(found.userns_fd).st_ino, os.fstat(found.netns_fd).st_ino] == [ids["user"][1], ids["net"][1]]
        assert _netlink.netns_exists(found)
        assert holder.holder_namespace(me) is found  # once per process
    finally:
        os.close(found.userns_fd)
        os.close(found.netns_fd)


def test_netns_and_userns_pid_exclude_each_other():
    with pytest.raises(_netlink.NetlinkError) as exc:
        _netlink.namespace_param({"netns": "qlab-seed", "userns_pid": 4242})
    assert "netns qlab-seed and userns_pid 4242: give one of them" in str(exc.value)
    assert _netlink.namespace_param({"netns": "qlab-seed"}) == "qlab-seed"
    assert _netlink.namespace_param({"netns": ""}) is None


VM = dict(name="h1", kernel="vmlinuz", disks=[{"file": "h1.qcow2"}], userns_pid=4242,
          nics=[{"ifname": "tap1", "backend": "tap"}, {"backend": "user", "mac": "52:54:00:00:00:01"}])


@pytest.mark.parametrize("change, fragment", [
    ({"run_as": "qemulab"}, "run_as qemulab and userns_pid 4242"),
    ({"netns": "qlab-seed"}, "nics[0].netns qlab-seed and userns_pid 4242"),
    ({"nics": [{"ifname": "tap1", "backend": "tap", "netns": "x"}]}, "nics[0].netns x and userns_pid 4242"),
    ({"nics": [{"backend": "vhost-user", "socket": "/run/x.sock"}]}, "nics[0] has backend vhost-user"),
])
def test_a_vm_inside_a_holder_takes_no_run_as_netns_or_vhost_user(change, fragment):
    with pytest.raises(QemuConfigError) as exc:
        normalise_config(dict(VM, **change))
    assert fragment in str(exc.value) and "VM h1" in str(exc.value)


def test_the_holder_is_part_of_the_configuration():
    assert normalise_config(VM)["userns_pid"] == 4242
    assert normalise_config(dict(VM, userns_pid=None))["userns_pid"] is None


def test_taps_inside_a_holder_are_read_there_and_their_owner_does_not_matter(monkeypatch):
    config = normalise_config(VM)
    asked = []
    monkeypatch.setattr("ansible_collections.qemulab.network.plugins.module_utils._qemu_tap.holder_namespace",
                        lambda pid: "holder %d of lab seed" % pid)

    def get_tap(ifname, netns):
        asked.append((ifname, netns))
        return {"tun": {"owner": None}}
    user = {"name": "student", "uid": 1000, "gid": 1000, "groups": []}
    assert tap_problems(config, get_tap, user) == []
    assert asked == [("tap1", "holder 4242 of lab seed")]
    assert "owned by no user" in " ".join(tap_problems(dict(config, userns_pid=None), get_tap, user))


def test_a_forward_is_checked_on_the_socket_of_the_namespace_qemu_runs_in():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        opened = []

        def open_socket(protocol):
            opened.append(protocol)
            return socket.socket()  # a namespace of its own would be free; here it is the same one
        assert port_in_use(port, "tcp", open_socket) and opened == ["tcp"]
