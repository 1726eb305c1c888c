"""_qemu_config: the name rule for everything that becomes a path, an option or an interface, memory sizes, MACs,
fingerprints and configuration differences."""
import hashlib
import json

import pytest

from ansible_collections.qemulab.network.plugins.module_utils._qemu_config import (
    CONFIG_FIELDS, QemuConfigError, check_names, config_diff, fingerprint, normalise_config, parse_memory)

pytestmark = pytest.mark.unit

RT1 = dict(name="rt1", kernel="vms/bzImagert1.bin", memory="1G", disks=[{"file": "vms/rt1.ext4"}],
           append="root=/dev/vda rw",
           nics=[{"mac": "12:34:56:AB:CD:71", "ifname": "vport11"}, {"mac": "12:34:56:AB:CD:72", "ifname": "vport21"},
                 {"mac": "12:34:56:AB:CD:73", "ifname": "vport31"}])


@pytest.mark.parametrize("value,mib", [(512, 512), ("512", 512), ("512M", 512), ("1G", 1024), ("1g", 1024),
                                       ("2GiB", 2048), ("256MiB", 256), (" 1G ", 1024), (64, 64), ("64M", 64)])
def test_memory_sizes(value, mib):
    assert parse_memory(value) == mib


@pytest.mark.parametrize("value", ["1X", "", "G", "1.5G", "-1G", True, "8", "64K", 63, "32M", "2T", None, 1.5])
def test_memory_rejects_naming_the_field(value):
    with pytest.raises(QemuConfigError, match=r"^VM rt1: memory: "):
        parse_memory(value, "rt1")


def test_memory_floor_and_cap_say_the_limit():
    with pytest.raises(QemuConfigError, match=r"below 64 MiB.*at least 64M"):
        parse_memory(63, "rt1")
    with pytest.raises(QemuConfigError, match=r"over 1048576 MiB"):
        parse_memory("1025G", "rt1")
    assert parse_memory("1024G") == 1024 * 1024


@pytest.mark.parametrize("params,field", [
    (dict(name="../x"), "name"), (dict(name="a,b"), "name"), (dict(name="$(x)"), "name"), (dict(name="Rt1"), "name"),
    (dict(name="rt_1"), "name"), (dict(name="x" * 33), "name"), (dict(name=""), "name"),
    (dict(name="rt1", lab="seed.1"), "lab"), (dict(name="rt1", lab="x" * 16), "lab"),
    (dict(name="rt1", netns="../../proc/1/ns/net"), "netns"),
    (dict(name="rt1", nics=[{"ifname": "vport,1"}]), "nics[0].ifname"),
    (dict(name="rt1", nics=[{"ifname": "vport1", "netns": "a/b"}]), "nics[0].netns"),
])
def test_names_that_would_reach_a_path_or_an_option_are_refused_naming_the_field(params, field):
    with pytest.raises(QemuConfigError) as err:
        normalise_config(params)
    msg = str(err.value)
    value = params[field] if field in params else params["nics"][0][field.split(".")[1]]
    assert ": %s: %r " % (field, value) in msg, msg
    assert "lower-case letters, digits and '-'" in msg or "pick a shorter one" in msg, msg


def test_a_valid_name_is_named_in_the_message_an_invalid_one_is_not_repeated():
    assert check_names(dict(name="rt1", lab="Seed")) == [
        "VM rt1: lab: 'Seed' is not a lab name (it contains 'S'); use lower-case letters, digits and '-', starting "
        "with a letter or digit, at most 15 characters"]
    assert check_names(dict(name="../x"))[0].startswith("VM: name: '../x' is not a VM name (it contains '.', '/')")
    assert check_names(dict(name="rt1", lab="seed", netns="qlab-seed", nics=[{"ifname": "vport11"}])) == []


def test_the_run_dir_of_valid_names_stays_under_the_run_root():
    assert normalise_config(dict(name="rt1", lab="seed"))["run_dir"] == "/run/qemulab/seed/rt1"
    assert normalise_config(dict(name="rt1"))["run_dir"] == "/run/qemulab/default/rt1"


@pytest.mark.parametrize("nic,fragment", [
    ({"backend": "user", "net": "10.0.2.0,hostfwd=tcp::22-:22"}, "nics[0].net"),
    ({"backend": "user", "net": "fd00::/64"}, "not an IPv4 network"),
    ({"backend": "user", "hostfwd": [{"host_port": 0, "guest_port": 22}]}, "nics[0].hostfwd[0].host_port 0"),
    ({"backend": "user", "hostfwd": [{"host_port": 2222, "guest_port": 70000}]}, "guest_port 70000"),
    ({"mac": "01:00:5e:00:00:01", "ifname": "t0"}, "nics[0].mac: MAC address '01:00:5e:00:00:01' is multicast"),
    ({"mac": "12:34:56", "ifname": "t0"}, "nics[0].mac: MAC address '12:34:56' is not six hex pairs"),
])
def test_user_mode_network_forwards_and_macs_are_checked(nic, fragment):
    with pytest.raises(QemuConfigError, match=r"^VM h1: ") as err:
        normalise_config(dict(name="h1", nics=[nic]))
    assert fragment in str(err.value)


def test_macs_are_lower_case():
    assert normalise_config(RT1)["nics"][0]["mac"] == "12:34:56:ab:cd:71"


def test_duplicate_mac_is_named():
    with pytest.raises(QemuConfigError, match=r"VM rt1: nics\[1\]\.mac 12:34:56:ab:cd:71 is already used by nics\[0\]"):
        normalise_config(dict(name="rt1", nics=[{"mac": "12:34:56:AB:CD:71", "ifname": "a"},
                                                {"mac": "12:34:56:ab:cd:71", "ifname": "b"}]))


def test_fingerprint_and_diff():
    base = normalise_config(RT1)
    same = normalise_config(dict(RT1, memory=1024))
    assert fingerprint(base) == fingerprint(same)
    changed_nics = [dict(n) for n in RT1["nics"]]
    changed_nics[0]["mac"] = "12:34:56:ab:cd:99"
    other = normalise_config(dict(RT1, nics=changed_nics, memory="2G"))
    assert fingerprint(base) != fingerprint(other)
    before, after = config_diff(base, other)
    assert sorted(after) == ["memory", "nics"]
    assert (before["memory"], after["memory"]) == (1024, 2048)
    assert after["nics"][0]["mac"] == "12:34:56:ab:cd:99"
    assert config_diff(base, same) == ({}, {})


def test_run_as_is_part_of_the_fingerprint_only_when_set():
    """Labs started before run_as existed keep their fingerprint (no restart on upgrade); setting it restarts."""
    base = normalise_config(RT1)
    assert base["run_as"] is None
    older = json.dumps(dict((k, base.get(k)) for k in CONFIG_FIELDS if k not in ("run_as", "serial_ports", "userns_pid")),
                       sort_keys=True)
    assert fingerprint(base) == hashlib.sha256(older.encode("utf-8")).hexdigest()
    as_user = normalise_config(dict(RT1, run_as="qemulab"))
    assert fingerprint(as_user) != fingerprint(base)
    assert config_diff(base, as_user) == ({"run_as": None}, {"run_as": "qemulab"})


def _imports(module):
    """The names a module imports: stdlib top-level modules and the collection's modules (module_utils.X)."""
    import ast
    import inspect
    stdlib, collection = set(), set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["%s.%s" % (node.module, alias.name) for alias in node.names]
        for name in names:
            if name.startswith("ansible_collections."):
                parts = name.split(".")
                collection.add(".".join(parts[:parts.index("module_utils") + 2]))
            else:
                stdlib.add(name.split(".")[0])
    return stdlib, collection


def test_the_module_is_pure():
    """The controller's plan imports it: no process, namespace, signal or socket code comes with it, nor with what
    it imports from the collection."""
    import importlib
    from ansible_collections.qemulab.network.plugins.module_utils import _qemu_config
    seen, todo, stdlib = set(), [_qemu_config], set()
    while todo:
        module = todo.pop()
        own, collection = _imports(module)
        stdlib |= own
        for name in collection - seen:
            seen.add(name)
            todo.append(importlib.import_module(name))
    assert stdlib <= {"__future__", "hashlib", "ipaddress", "json", "os", "re"}, stdlib
    assert all(name.rsplit(".", 1)[1] in ("_validate", "_qemu_argv", "_netlink_options") for name in seen), seen
