"""Unit tests (no kernel): desired-vs-actual planning for one interface, and the diff tracker."""
import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _link as link
from ansible_collections.qemulab.network.plugins.module_utils._diff import DifferenceTracker

pytestmark = pytest.mark.unit


def existing(**fields):
    base = {"name": "vport11", "index": 3, "kind": "tun", "alias": "qemulab:seed", "master": "br1", "mtu": 1500,
            "mac": "52:54:00:00:00:01", "up": True, "addresses": [], "peer_index": None, "stp": None, "tun": None}
    base.update(fields)
    return base


def params(**overrides):
    base = {"name": "vport11", "state": "present", "netns": "ns1", "lab": "seed", "force": False, "bridge": "br1",
            "mtu": None, "addresses": None, "up": True}
    base.update(overrides)
    return base


def plan(have, state="present", force=False, **overrides):
    tracker = DifferenceTracker()
    error = link.plan_link(tracker, "tap", "vport11", "ns1", have, link.want_link(params(**overrides)), "seed", force,
                           state, ("tun",))
    return tracker, error


def test_matching_link_plans_nothing():
    tracker, error = plan(existing())
    assert error is None and not tracker.changed


def test_new_link_plans_creation_alias_master_and_up():
    tracker, error = plan(None)
    assert error is None
    assert tracker.fields == ["state", "alias", "master", "up"]
    assert tracker.get("alias") == (None, "qemulab:seed")
    assert link.predicted_view(None, tracker)["master"] == "br1"


def test_only_options_given_are_compared():
    tracker, _error = plan(existing(mtu=9000, addresses=["10.0.0.1/24"]), bridge=None)
    assert not tracker.changed
    tracker, _error = plan(existing(mtu=9000), mtu=1500, bridge="")
    assert tracker.fields == ["mtu", "master"] and tracker.get("master") == ("br1", "")


def test_addresses_are_compared_normalised_as_a_set():
    tracker, _error = plan(existing(addresses=["10.20.10.4/24"]), addresses=[" 10.20.10.4/24"])
    assert not tracker.changed
    tracker, _error = plan(existing(addresses=["10.20.10.4/24", "10.20.10.9/24"]), addresses=["10.20.10.5/24"])
    assert tracker.get("addresses") == (["10.20.10.4/24", "10.20.10.9/24"], ["10.20.10.5/24"])


@pytest.mark.parametrize("alias", [None, "qemulab:other", "made by hand"])
@pytest.mark.parametrize("state", ["present", "absent"])
def test_foreign_link_is_refused_without_force(alias, state):
    tracker, error = plan(existing(alias=alias), state=state)
    assert error.startswith("tap vport11 in namespace ns1 exists") and "force: true" in error
    assert not tracker.changed


def test_force_adopts_by_marking_and_deletes():
    tracker, error = plan(existing(alias=None), force=True)
    assert error is None and tracker.fields == ["alias"]
    tracker, error = plan(existing(alias="qemulab:other"), state="absent", force=True)
    assert error is None and tracker.fields == ["state"]


def test_absent_of_missing_link_is_no_change():
    tracker, error = plan(None, state="absent")
    assert error is None and not tracker.changed


def test_wrong_kind_is_named():
    _tracker, error = plan(existing(kind="bridge"))
    assert "is of kind bridge, not tun" in error


def test_param_errors_name_object_field_and_fix():
    errors = link.param_errors("tap", "vport1234567890123", params(name="vport1234567890123", bridge="br:1",
                                                                   mtu=10, addresses=["10.0.0.1"], lab="a b"))
    assert any(e.startswith("tap vport1234567890123: name:") and "at most 15" in e for e in errors)
    assert any("bridge:" in e and "':'" in e for e in errors)
    assert any("mtu 10" in e for e in errors)
    assert any("addresses[0]" in e and "prefix length" in e for e in errors)
    assert any("lab:" in e for e in errors)


def test_diff_tracker_before_after():
    tracker = DifferenceTracker()
    assert not tracker.compare("mtu", 1500, 1500)
    assert tracker.compare("up", False, True)
    assert tracker.diff({"state": "present"}, {"state": "present"}) == {
        "before": {"state": "present", "up": False}, "after": {"state": "present", "up": True}}
    with pytest.raises(KeyError):
        tracker.get("mtu")
