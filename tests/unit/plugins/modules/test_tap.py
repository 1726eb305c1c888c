"""Unit tests (no kernel): a tap's creation-time fields and owner/group lookup (shared by the tap and links modules)."""
import pytest

from ansible_collections.qemulab.network.plugins.module_utils._diff import DifferenceTracker
from ansible_collections.qemulab.network.plugins.module_utils import _link_kinds

pytestmark = pytest.mark.unit


def existing_tap(owner=None, group=None, multi_queue=False):
    return {"tun": {"type": "tap", "owner": owner, "group": group, "multi_queue": multi_queue}}


def test_resolve_id_takes_numbers_and_names():
    assert _link_kinds.resolve_id("1000", None, "owner: user") == 1000
    assert _link_kinds.resolve_id("root", lambda name: ("root", "x", 0), "owner: user") == 0
    assert _link_kinds.resolve_id(None, None, "owner: user") is None


def test_resolve_id_unknown_name_says_fix():
    def missing(name):
        raise KeyError(name)
    with pytest.raises(ValueError) as err:
        _link_kinds.resolve_id("nosuchuser", missing, "owner: user")
    assert "owner: user 'nosuchuser' does not exist" in str(err.value) and "numeric id" in str(err.value)


def test_new_tap_records_creation_fields_given():
    tracker = DifferenceTracker()
    want = {"owner": 1000, "group": None, "multi_queue": True}
    assert _link_kinds.plan_creation_fields(tracker, None, want, "vport11") is None
    assert tracker.fields == ["owner", "multi_queue"]


def test_existing_tap_matching_or_unspecified_is_fine():
    tracker = DifferenceTracker()
    want = {"owner": 1000, "group": None, "multi_queue": None}
    assert _link_kinds.plan_creation_fields(tracker, existing_tap(owner=1000, group=5), want, "vport11") is None
    assert not tracker.changed


def test_existing_tap_differing_in_creation_field_fails_with_fix():
    tracker = DifferenceTracker()
    want = {"owner": None, "group": None, "multi_queue": True}
    error = _link_kinds.plan_creation_fields(tracker, existing_tap(), want, "vport11")
    assert error.startswith("tap vport11: multi_queue is False but True is wanted") and "state: absent" in error
