"""Every inventory under tests/bad_inventories is refused by qemulab.network.lab_plan with the errors it expects.

Each case is a small lab (one router, two hosts, one host port) with one thing broken (`hosts.yml`, whose first
comment says what) and `expected.yml`: the errors it must produce, each as host, field and a fragment of the message.
The inventories are loaded by Ansible itself, so they are read exactly as a playbook run would read them.
"""
import os

import pytest
import yaml

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager

from ansible_collections.qemulab.network.plugins.filter.lab_plan import lab_plan

pytestmark = pytest.mark.unit

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bad_inventories")
CASES = sorted(name for name in os.listdir(CORPUS) if os.path.isdir(os.path.join(CORPUS, name)))


def load_inventory(path):
    """hostvars (as written, untemplated) and groups of an inventory, the two inputs of the filter."""
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[path])
    variables = VariableManager(loader=loader, inventory=inventory)
    hostvars = {host.name: variables.get_vars(host=host, include_hostvars=False) for host in inventory.get_hosts()}
    return hostvars, inventory.get_groups_dict()


def matches(error, expected):
    prefix = "%s: %s " % (expected["host"], expected["field"])
    return error.startswith(prefix) and expected["fragment"] in error


def test_the_corpus_has_at_least_twenty_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES)
def test_bad_inventory_is_refused_naming_host_field_and_fix(case):
    directory = os.path.join(CORPUS, case)
    with open(os.path.join(directory, "expected.yml")) as handle:
        expected = yaml.safe_load(handle)
    hostvars, groups = load_inventory(os.path.join(directory, "hosts.yml"))

    plan = lab_plan(hostvars, groups, claims=expected.get("claims"))

    errors = plan["errors"]
    assert errors, "%s: the broken inventory was accepted" % case
    for item in expected["errors"]:
        assert any(matches(error, item) for error in errors), "%s: no error like %r among\n%s" % (
            case, item, "\n".join(errors))
    # one mistake gives its own errors, not a cascade of unrelated ones
    unexpected = [error for error in errors if not any(matches(error, item) for item in expected["errors"])]
    assert not unexpected, "%s: errors not in expected.yml:\n%s" % (case, "\n".join(unexpected))
    # a fix is always offered: every message carries advice after the description
    for error in errors:
        assert ";" in error, "%s: %r offers no fix" % (case, error)


def test_the_corpus_base_lab_without_its_breakage_is_valid(tmp_path):
    """Guards the corpus: the cases fail for their own mistake, not because the shared base lab is wrong."""
    with open(os.path.join(CORPUS, "lab_name_claimed_elsewhere", "hosts.yml")) as handle:
        text = handle.read()
    base = tmp_path / "hosts.yml"
    base.write_text(text)
    hostvars, groups = load_inventory(str(base))

    plan = lab_plan(hostvars, groups)

    assert plan["errors"] == []
    assert [vm["name"] for vm in plan["vms"]] == ["r1", "a1", "b1"]
