"""Unit tests (no kernel): interface aliases and namespace markers that say which lab owns what."""
import json

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _ownership as ownership

pytestmark = pytest.mark.unit


def test_alias_round_trip():
    assert ownership.alias_for("seed") == "qemulab:seed"
    assert ownership.owner_from_alias("qemulab:seed") == "seed"
    assert ownership.owner_from_alias("qemulab:") is None
    assert ownership.owner_from_alias("someone else's bridge") is None
    assert ownership.owner_from_alias(None) is None


def test_own_object_is_no_error():
    assert ownership.foreign_object_error("tap", "vport11", "", "seed", "seed", "absent") is None


@pytest.mark.parametrize("owner,whose", [(None, "no qemulab mark"), ("other", "lab other")])
@pytest.mark.parametrize("state,fix", [("absent", "delete it with force: true"),
                                       ("present", "adopt it with force: true")])
def test_foreign_object_error_names_object_owner_and_fix(owner, whose, state, fix):
    message = ownership.foreign_object_error("bridge", "br7", " in namespace ns1", owner, "seed", state)
    assert message.startswith("bridge br7 in namespace ns1 exists")
    assert whose in message and "not to lab seed" in message and fix in message


def test_marker_counts_only_for_the_same_namespace(tmp_path):
    markers = tmp_path / "_netns"
    ownership.write_netns_owner("ns1", (10, 4026532000, 77), "seed", marker_dir=str(markers))
    assert json.loads((markers / "ns1.owner").read_text()) == {"lab": "seed", "dev": 10, "ino": 4026532000,
                                                               "cookie": 77}
    assert ownership.read_netns_owner("ns1", (10, 4026532000, 77), marker_dir=str(markers)) == "seed"
    # The same name, another namespace (another inode): the marker is stale.
    assert ownership.read_netns_owner("ns1", (10, 4026532999, 77), marker_dir=str(markers)) is None
    # The same name and inode number (the kernel reuses it once a namespace is gone), another cookie: not ours.
    assert ownership.read_netns_owner("ns1", (10, 4026532000, 78), marker_dir=str(markers)) is None
    assert ownership.read_netns_owner("ns2", (10, 4026532000, 77), marker_dir=str(markers)) is None
    ownership.remove_netns_owner("ns1", marker_dir=str(markers))
    ownership.remove_netns_owner("ns1", marker_dir=str(markers))
    # The last marker gone, so is its directory: a cleanup leaves nothing behind.
    assert list(tmp_path.iterdir()) == []


def test_a_marker_without_a_cookie_matches_no_namespace(tmp_path):
    (tmp_path / "ns1.owner").write_text('{"lab": "seed", "dev": 10, "ino": 4026532000}')
    assert ownership.read_netns_marker("ns1", (10, 4026532000, None), marker_dir=str(tmp_path)) is None
    assert ownership.read_netns_marker("ns1", (10, 4026532000, 77), marker_dir=str(tmp_path)) is None


def test_marker_directory_stays_while_another_lab_has_a_marker(tmp_path):
    markers = tmp_path / "_netns"
    ownership.write_netns_owner("ns1", (10, 1, 5), "a", marker_dir=str(markers))
    ownership.write_netns_owner("ns2", (10, 2, 6), "b", marker_dir=str(markers))
    ownership.remove_netns_owner("ns1", marker_dir=str(markers))
    assert [p.name for p in markers.iterdir()] == ["ns2.owner"]


@pytest.mark.parametrize("content", ["not json", "[]", '{"lab": "", "dev": 1, "ino": 2}', '{"lab": 3, "dev": 1, "ino": 2}'])
def test_damaged_markers_mean_not_ours(tmp_path, content):
    (tmp_path / "ns1.owner").write_text(content)
    assert ownership.read_netns_owner("ns1", (1, 2, None), marker_dir=str(tmp_path)) is None


def test_pending_group_is_the_labs_own_and_never_the_default():
    assert ownership.pending_group("seed") == ownership.pending_group("seed") != ownership.pending_group("seeds")
    assert all(0 < ownership.pending_group(lab) < 2 ** 32 for lab in ("seed", "a", "lab-1", "x" * 15))


@pytest.mark.parametrize("alias,group,owner", [
    ("qemulab:seed", 0, "seed"),
    ("qemulab:other", None, "other"),
    (None, "pending:seed", "seed"),       # created by seed, killed before its alias
    (None, "pending:other", None),        # another lab's pending mark is not seed's to complete
    (None, 0, None),
    ("someone's", "pending:seed", None),  # an alias someone wrote wins over the group
])
def test_link_owner_reads_the_alias_or_the_labs_pending_mark(alias, group, owner):
    if isinstance(group, str):
        group = ownership.pending_group(group.split(":")[1])
    link = {"alias": alias, "group": group}
    assert ownership.link_owner(link, "seed") == owner
    assert ownership.mark_is_pending(link, "seed") == (alias is None and owner == "seed")


def test_a_namespace_that_is_not_there_has_no_mark_inside():
    assert ownership.read_netns_mark("qemulab-no-such-namespace") is None
    assert ownership.read_netns_owner("qemulab-no-such-namespace", (1, 2), marker_dir="/nonexistent") is None
