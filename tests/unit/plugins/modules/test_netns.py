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


BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"


def test_sysctls_are_compared_as_strings_and_only_the_keys_given():
    have = dict(ours(), sysctls={BRIDGE_NF: "1"})
    tracker, _error = netns.plan_netns("ns1", have, "seed", False, "present", {BRIDGE_NF: 0})
    assert tracker.fields == ["sysctls." + BRIDGE_NF] and tracker.get("sysctls." + BRIDGE_NF) == ("1", "0")
    have = dict(ours(), sysctls={BRIDGE_NF: "0"})
    tracker, _error = netns.plan_netns("ns1", have, "seed", False, "present", {BRIDGE_NF: False})
    assert not tracker.changed


def test_sysctl_the_namespace_does_not_offer_is_left_alone():
    have = dict(ours(), sysctls={BRIDGE_NF: None})
    tracker, _error = netns.plan_netns("ns1", have, "seed", False, "present", {BRIDGE_NF: 0})
    assert not tracker.changed


def test_new_namespace_plans_its_sysctls_too():
    have = dict(ABSENT, sysctls={BRIDGE_NF: None})
    tracker, _error = netns.plan_netns("ns1", have, "seed", False, "present", {BRIDGE_NF: 0})
    assert tracker.fields == ["state", "owner", "sysctls." + BRIDGE_NF]


def test_a_namespace_marked_only_inside_is_adopted_and_its_marker_written():
    """Issue 14: a run killed after the namespace appeared (its lo already carrying the lab's alias) but before the
    marker file: the next run recognises it, writes the marker, and may delete it."""
    have = {"state": "present", "owner": "seed", "marker": False}
    tracker, error = netns.plan_netns("ns1", have, "seed", False, "present")
    assert error is None and tracker.fields == ["marker"]
    tracker, error = netns.plan_netns("ns1", have, "seed", False, "absent")
    assert error is None and tracker.fields == ["state", "owner"]
    tracker, error = netns.plan_netns("ns1", dict(have, owner="other"), "seed", False, "present")
    assert tracker is None and "belongs to lab other" in error


def test_the_mount_point_a_killed_create_left_is_removed_on_absent():
    have = dict(ABSENT, mountpoint="stale")
    tracker, error = netns.plan_netns("ns1", have, "seed", False, "absent")
    assert error is None and tracker.fields == ["mountpoint"]
    tracker, error = netns.plan_netns("ns1", have, "seed", False, "present")
    assert tracker.fields == ["state", "owner"]  # created over it
