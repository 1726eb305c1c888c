"""A broken inventory stops `lab.yml` in its validation step: every problem listed, and nothing on the host changed.

The unit test (tests/unit/test_bad_inventories.py) checks the messages for the whole corpus; this one runs the real
playbook on a sample of it and compares snapshots of the host before and after.
"""
import os

import pytest
import yaml

from hostsnapshot import lab_leftovers, snapshot
from pyroute2 import netns as pr_netns

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(REPO, "tests", "bad_inventories")
SAMPLE = ["mac_used_twice", "tap_name_too_long", "route_via_unattached_gateway", "memory_unit_unknown",
          "kernel_file_missing", "many_problems_at_once"]


@pytest.mark.parametrize("case", SAMPLE)
def test_bad_inventory_fails_in_validation_and_changes_nothing(case, playbook):
    expected = yaml.safe_load(open(os.path.join(CORPUS, case, "expected.yml")))["errors"]
    before, namespaces = snapshot(), sorted(pr_netns.listnetns())

    res = playbook(os.path.join(REPO, "lab.yml"), inventory=os.path.join(CORPUS, case, "hosts.yml"))

    assert res.rc != 0, res
    failed = [(name, r) for name, _host, r in res.tasks() if r.get("failed")]
    assert [name for name, _r in failed] == ["Stop on an invalid inventory before anything on the host changes"], res
    message = failed[0][1]["msg"]
    for err in expected:
        assert "%s: %s" % (err["host"], err["field"]) in message and err["fragment"] in message, message
    assert snapshot() == before, "the host's links, addresses, routes or sysctls changed"
    assert sorted(pr_netns.listnetns()) == namespaces, "a namespace was created"
    assert lab_leftovers("bad") == {"processes": [], "files": []}
