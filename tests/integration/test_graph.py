"""The committed topology picture of the seed is current: playbooks/graph.yml regenerates it into a temp dir.

This runs the real playbook and the real Graphviz `dot` (it creates no interface, namespace or VM), so it is marked
integration. Graphviz is part of the suite's setup (`make apt`): without `dot` these tests fail, naming the fix. The
seed's pictures are drawn once for the module and shared by the tests that read them. When a test fails because the
picture is stale, run `make graph` and commit docs/topology/.
"""
import os
import shutil
import struct

import pytest

from conftest import run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.second_lane]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED_INVENTORY = os.path.join(REPO_ROOT, "inventories", "seed")
COMMITTED = os.path.join(REPO_ROOT, "docs", "topology")
GRAPH_PLAYBOOK = os.path.join(REPO_ROOT, "playbooks", "graph.yml")

def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG" % path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def seed_pictures(tmp_path_factory):
    """graph.yml run once for the module on the seed: (output directory, its result)."""
    assert shutil.which("dot"), "Graphviz `dot` is not installed: run `make apt` (Debian package graphviz)"
    out = tmp_path_factory.mktemp("graph") / "topology"
    result = run_playbook(GRAPH_PLAYBOOK, inventory=SEED_INVENTORY, extra_vars={"lab_graph_output_dir": str(out)},
                          timeout=300)
    assert result.rc == 0, result
    return out, result


@pytest.mark.parametrize("suffix", [".dot", ".md"])
def test_committed_seed_picture_is_not_stale(seed_pictures, suffix):
    out, _ = seed_pictures
    with open(os.path.join(out, "seed" + suffix)) as f:
        fresh = f.read()
    committed_path = os.path.join(COMMITTED, "seed" + suffix)
    assert os.path.exists(committed_path), "docs/topology/seed%s is missing; run `make graph` and commit it" % suffix
    with open(committed_path) as f:
        committed = f.read()
    assert committed == fresh, ("docs/topology/seed%s differs from what the seed inventory gives now; run `make graph` "
                                "and commit docs/topology/" % suffix)


def test_pictures_are_rendered_and_sized_for_a_screen(seed_pictures):
    out, result = seed_pictures
    assert result.changed() == 4, result  # .dot, .md, then Graphviz for .svg and .png
    width, height = png_size(os.path.join(out, "seed.png"))
    # Drawn top to bottom the seed fits a screen's width at 96 dpi; a left-to-right chain of nine ranks would not.
    assert 600 <= width <= 1400 and 800 <= height <= 2400, (width, height)
    with open(os.path.join(out, "seed.svg")) as f:
        svg = f.read()
    for text in ("10.20.60.0/24", "eth2 10.20.60.1/24", "tap vport61", "lab host port veth1", "htest"):
        assert text in svg


def test_committed_png_is_the_rendered_one(seed_pictures):
    out, _ = seed_pictures
    # PNG bytes may differ between Graphviz builds; the size must not, or the committed picture is from another .dot
    assert png_size(os.path.join(COMMITTED, "seed.png")) == png_size(os.path.join(out, "seed.png"))


def test_second_run_changes_nothing(seed_pictures, playbook):
    out, _ = seed_pictures
    again = playbook(GRAPH_PLAYBOOK, inventory=SEED_INVENTORY, extra_vars={"lab_graph_output_dir": str(out)},
                     timeout=300)
    assert again.rc == 0 and again.changed() == 0, again


def test_a_broken_inventory_draws_nothing_and_lists_its_problems(tmp_path, playbook):
    broken = os.path.join(REPO_ROOT, "tests", "bad_inventories", "mac_used_twice")
    result = playbook(GRAPH_PLAYBOOK, inventory=broken, extra_vars={"lab_graph_output_dir": str(tmp_path)},
                      timeout=300, expect_failure=True)
    assert any("b1: vm_nics[0].mac" in msg for msg in result.failure_messages()), result
    assert os.listdir(tmp_path) == []


def test_text_only_without_graphviz(tmp_path, playbook):
    result = playbook(GRAPH_PLAYBOOK, inventory=SEED_INVENTORY, timeout=300,
                      extra_vars={"lab_graph_output_dir": str(tmp_path), "lab_graph_render": False})
    assert result.rc == 0, result
    assert sorted(os.listdir(tmp_path)) == ["seed.dot", "seed.md"]


def test_missing_graphviz_is_named_with_the_fix(tmp_path, playbook):
    result = playbook(GRAPH_PLAYBOOK, inventory=SEED_INVENTORY, timeout=300,
                      extra_vars={"lab_graph_output_dir": str(tmp_path),
                                  "lab_graph_dot_command": "/nonexistent/qemulab-no-dot"}, expect_failure=True)
    assert any("apt-get install graphviz" in msg for msg in result.failure_messages()), result
