"""Unit tests (no kernel): a VXLAN port's validation, plan and views (plugins/module_utils/_vxlan.py)."""
import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _vxlan as vxlan
from ansible_collections.qemulab.network.plugins.module_utils._diff import DifferenceTracker
from ansible_collections.qemulab.network.plugins.module_utils._ownership import pending_group

pytestmark = pytest.mark.unit


def params(**overrides):
    base = {"name": "vx-br1-2", "state": "present", "netns": "qemulab-seed", "lab": "seed", "force": False,
            "vni": 1001, "local": "192.0.2.11", "remote": "192.0.2.12", "port": 4789, "bridge": "br1", "mtu": None}
    base.update(overrides)
    return base


def existing(**fields):
    """A vxlan as read_vxlan returns it: the link fields plus the flattened creation fields."""
    base = {"name": "vx-br1-2", "index": 7, "kind": "vxlan", "alias": "qemulab:seed", "group": 0, "master": "br1",
            "mtu": 1450, "mac": "0a:00:00:00:00:01", "up": True, "addresses": [], "vni": 1001, "local": "192.0.2.11",
            "remote": "192.0.2.12", "port": 4789, "learning": False, "underlay_in_host": True}
    base.update(fields)
    return base


def plan(have, **overrides):
    tracker = DifferenceTracker()
    error, recreate = vxlan.plan_vxlan(tracker, have, params(**overrides))
    return tracker, error, recreate


def test_matching_device_plans_nothing():
    tracker, error, recreate = plan(existing())
    assert (error, recreate, tracker.changed) == (None, False, False)


def test_new_device_plans_creation_fields_then_the_link():
    tracker, error, recreate = plan(None)
    assert error is None and not recreate
    assert tracker.fields == list(vxlan.CREATION_FIELDS) + ["state", "alias", "master", "up"]
    assert tracker.get("vni") == (None, 1001)
    assert tracker.get("underlay_in_host") == (None, True)
    assert tracker.get("alias") == (None, "qemulab:seed")


@pytest.mark.parametrize("field, value", [("vni", 1002), ("remote", "192.0.2.13"), ("port", 8472),
                                          ("local", "192.0.2.21")])
def test_changed_creation_field_recreates_the_device(field, value):
    tracker, error, recreate = plan(existing(), **{field: value})
    assert error is None and recreate
    assert tracker.get(field) == (existing()[field], value)
    assert tracker.get("state") == ("present", "recreated")
    assert tracker.has("alias") and tracker.has("master") and tracker.has("up")  # all set again on the new one


def test_device_whose_socket_is_in_the_lab_namespace_is_recreated():
    tracker, error, recreate = plan(existing(underlay_in_host=False))
    assert recreate and tracker.get("underlay_in_host") == (False, True)


def test_mtu_and_bridge_change_in_place():
    tracker, error, recreate = plan(existing(), mtu=1400, bridge="br2")
    assert error is None and not recreate
    assert tracker.fields == ["mtu", "master"]


def test_addresses_are_compared_in_normal_form():
    tracker, error, recreate = plan(existing(local="2001:db8::b", remote="2001:db8::c"),
                                    local="2001:DB8:0::B", remote="2001:db8::c")
    assert (error, recreate, tracker.changed) == (None, False, False)


def test_foreign_device_is_refused_not_recreated():
    tracker, error, recreate = plan(existing(alias=None, vni=5))
    assert "belongs to no qemulab lab" in error and "force: true" in error
    assert not recreate and not tracker.changed


def test_other_lab_device_is_refused_on_absent():
    tracker, error, recreate = plan(existing(alias="qemulab:other"), state="absent")
    assert "belongs to lab other" in error and not tracker.changed


def test_absent_removes_only_an_owned_device():
    tracker, error, _ = plan(existing(), state="absent")
    assert error is None and tracker.get("state") == ("present", "absent")
    tracker, error, _ = plan(None, state="absent")
    assert error is None and not tracker.changed


def test_pending_mark_is_completed():
    tracker, error, recreate = plan(existing(alias=None, group=pending_group("seed")))
    assert error is None and not recreate
    assert tracker.get("alias") == (None, "qemulab:seed") and tracker.get("group") == (pending_group("seed"), 0)


def test_other_kind_of_same_name_is_refused():
    tracker, error, _ = plan(existing(kind="bridge"))
    assert "of kind bridge, not vxlan" in error


@pytest.mark.parametrize("overrides, expected", [
    ({"vni": 0}, "vni: 0 is outside 1..16777215"),
    ({"vni": 16777216}, "vni: 16777216 is outside"),
    ({"port": 70000}, "port: 70000 is not a UDP port"),
    ({"local": "host1"}, "local: 'host1' is not an IP address"),
    ({"remote": "239.1.1.1"}, "remote: 239.1.1.1 is not a unicast address"),
    ({"remote": "2001:db8::1"}, "of different IP versions"),
    ({"remote": "192.0.2.11"}, "is this host's own address"),
    ({"name": "vx;rm -rf"}, "vxlan vx;rm -rf: name:"),
    ({"bridge": "../br"}, "bridge:"),
    ({"mtu": 10}, "mtu"),
])
def test_bad_options_are_named(overrides, expected):
    errors = vxlan.vxlan_param_errors(params(**overrides))
    assert any(expected in error for error in errors), errors


def test_good_options_pass():
    assert vxlan.vxlan_param_errors(params()) == []
    assert vxlan.vxlan_param_errors(params(state="absent", vni=None, local=None, remote=None)) == []


def test_missing_local_address_is_named_with_the_fix():
    error = vxlan.local_error(params(local="192.0.2.99"), {"127.0.0.1", "192.0.2.11"})
    assert "local: 192.0.2.99 is not an address of this lab host" in error
    assert "192.0.2.11" in error and "lab_underlay_address" in error
    assert vxlan.local_error(params(), {"192.0.2.11"}) is None


def test_check_mode_view_of_a_new_device_is_the_planned_one():
    tracker, _, _ = plan(None)
    before, after = vxlan.vxlan_view(None, tracker, "present")
    assert before == {"state": "absent"}
    assert after["state"] == "present" and after["kind"] == "vxlan"
    assert (after["vni"], after["remote"], after["master"], after["alias"]) == (1001, "192.0.2.12", "br1",
                                                                                "qemulab:seed")


def test_view_of_a_removal():
    tracker, _, _ = plan(existing(), state="absent")
    before, after = vxlan.vxlan_view(existing(), tracker, "absent")
    assert before["state"] == "present" and before["vni"] == 1001 and after == {"state": "absent"}
