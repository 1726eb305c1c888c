"""Unit tests: the lab schema is the one place a field is declared, and docs/inventory.md says what it says."""
import os

import pytest

from ansible_collections.qemulab.network.plugins.plugin_utils import _lab_schema as schema

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
DOC = os.path.join(REPO, "docs", "inventory.md")


def test_the_inventory_doc_tables_are_the_schema():
    """`make docs` regenerates them; a field added, changed or removed without it fails here."""
    text = open(DOC).read()
    assert text == schema.render_inventory_doc(text), "docs/inventory.md differs from the schema: run make docs"
    for scope in schema.SCOPES:
        assert "<!-- schema:%s -->" % scope in text, "docs/inventory.md has no table for %s fields" % scope


def test_every_field_is_declared_once_with_meaning_and_example():
    seen = set()
    for field in schema.SCHEMA:
        assert field.scope in schema.SCOPES
        assert (field.scope, field.name) not in seen, "%s.%s is declared twice" % (field.scope, field.name)
        seen.add((field.scope, field.name))
        assert field.meaning.strip() and field.example.strip(), field.name
        assert field.type_text, "%s.%s has a reader without a type" % (field.scope, field.name)


@pytest.mark.parametrize("scope,name,value,ok", [
    ("lab", "lab_name", "seed", True), ("lab", "lab_name", "..", False), ("lab", "lab_name", "", False),
    ("lab", "lab_name", "a/b", False), ("lab", "lab_netns", "x$(id)", False), ("vm", "inventory_hostname", "hb,x",
                                                                                False),
    ("nic", "tap", "t,vhost=on", False), ("nic", "bridge", "br.10", False), ("vm", "vm_memory", "8M", False),
    ("vm", "vm_memory", "4096G", False), ("vm", "vm_memory", "512M", True), ("vm", "vm_vcpus", 512, False),
    ("nic", "mtu", 9000, True), ("nic", "mtu", 67, False), ("nic", "vhost", False, True), ("nic", "mac", "0a:00",
                                                                                          False),
])
def test_each_reader_holds_its_rule(scope, name, value, ok):
    result, why = schema.field(scope, name).read(value)
    assert (why is None) == ok, (value, why)
    if not ok:
        assert ";" in why, "%r: the message offers no fix" % why
