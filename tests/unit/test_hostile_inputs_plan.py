"""The hostile inventories of tests/hostile_inputs, through the plan filter alone.

The integration test (tests/integration/test_hostile_inputs.py) runs every case through the real lab.yml in a private
mount namespace; this one gives the same verdicts in milliseconds for the cases that are about the inventory (the
cleanup cases' hostile part is on the command line, so they need the playbook). The lab host's resources are fixed
here, so the capacity cases do not depend on the machine running the tests.
"""
import os

import pytest
import yaml

from ansible_collections.qemulab.network.plugins.filter.lab_plan import lab_plan

# the broken-inventory corpus's own loading and matching: one way to read an inventory as a playbook would
from test_bad_inventories import load_inventory, matches

pytestmark = pytest.mark.unit

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hostile_inputs")
ALL_CASES = sorted(name for name in os.listdir(CORPUS) if os.path.isdir(os.path.join(CORPUS, name)))
# A small lab host: 4 GiB available, 2 CPUs.
HOST_RESOURCES = {"mem_available_mib": 4096, "cpus": 2}


def load_case(case):
    with open(os.path.join(CORPUS, case, "case.yml")) as handle:
        return yaml.safe_load(handle)


def is_cleanup(spec):
    return "cleanup" in (spec.get("args") or [])


INVENTORY_CASES = [case for case in ALL_CASES if not is_cleanup(load_case(case))]


def test_the_corpus_has_at_least_twenty_five_cases():
    assert len(ALL_CASES) >= 25


def test_every_case_says_what_is_hostile_and_what_must_happen():
    for case in ALL_CASES:
        with open(os.path.join(CORPUS, case, "hosts.yml")) as handle:
            first = handle.readline()
        assert first.startswith("# "), "%s: hosts.yml does not start with a comment saying what is hostile" % case
        spec = load_case(case)
        assert isinstance(spec.get("args"), list), "%s: case.yml has no args list" % case
        assert spec.get("accepted") is True or spec.get("errors"), "%s: case.yml expects neither errors nor " \
                                                                   "acceptance" % case


@pytest.mark.parametrize("case", INVENTORY_CASES)
def test_hostile_inventory_gets_the_plans_verdict(case):
    spec = load_case(case)
    hostvars, groups = load_inventory(os.path.join(CORPUS, case, "hosts.yml"))

    plan = lab_plan(hostvars, groups, host_resources=HOST_RESOURCES)

    errors = plan["errors"]
    if spec.get("accepted"):
        assert errors == [], "%s: a careless but valid inventory was refused:\n%s" % (case, "\n".join(errors))
        return
    assert errors, "%s: the hostile inventory was accepted" % case
    for item in spec["errors"]:
        assert any(matches(error, item) for error in errors), "%s: no error like %r among\n%s" % (
            case, item, "\n".join(errors))
    for error in errors:
        assert ";" in error, "%s: %r offers no fix" % (case, error)
