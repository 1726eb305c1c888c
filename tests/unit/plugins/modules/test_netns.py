"""Unit tests (no kernel): the netns module's plan."""
import pytest

from ansible_collections.qemulab.network.plugins.modules import netns

pytestmark = pytest.mark.unit

ABSENT = {"state": "absent", "owner": None}


def ours(lab="seed"):
    return {"state": "present", "owner": lab}


def test_create_plans_state_and_marker():
    tracker, error = netns.plan_netns("ns1", ABSENT, "seed", False, "present")
    assert error is None and tracker.fields == ["state", "owner"]


def test_own_namespace_is_unchanged_and_deleted_on_absent():
    tracker, _error = netns.plan_netns("ns1", ours(), "seed", False, "present")
    assert not tracker.changed
    tracker, _error = netns.plan_netns("ns1", ours(), "seed", False, "absent")
    assert tracker.fields == ["state", "owner"] and tracker.get("state") == ("present", "absent")


def test_absent_of_missing_namespace_is_no_change():
    tracker, _error = netns.plan_netns("ns1", ABSENT, "seed", False, "absent")
    assert not tracker.changed


@pytest.mark.parametrize("owner", [None, "other"])
@pytest.mark.parametrize("state", ["present", "absent"])
def test_foreign_namespace_refused_unless_forced(owner, state):
    have = {"state": "present", "owner": owner}
    tracker, error = netns.plan_netns("ns1", have, "seed", False, state)
    assert tracker is None and error.startswith("namespace ns1 exists") and "force: true" in error
    tracker, error = netns.plan_netns("ns1", have, "seed", True, state)
    assert error is None
    assert tracker.fields == (["owner"] if state == "present" else ["state", "owner"])
