"""Unit tests (no kernel): DOCUMENTATION of netns, bridge, tap and veth (with their doc fragments) matches each
argument spec option for option, type, default and choices."""
import pytest
import yaml

from ansible_collections.qemulab.network.plugins.doc_fragments.netns import ModuleDocFragment
from ansible_collections.qemulab.network.plugins.modules import bridge, netns, tap, veth

pytestmark = pytest.mark.unit

FRAGMENTS = {
    "qemulab.network.netns": ModuleDocFragment.DOCUMENTATION,
    "qemulab.network.netns.ownership": ModuleDocFragment.OWNERSHIP,
    "qemulab.network.netns.holder": ModuleDocFragment.HOLDER,
}


def documented_options(module):
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = dict(doc.get("options") or {})
    for fragment in doc.get("extends_documentation_fragment", []):
        options.update(yaml.safe_load(FRAGMENTS[fragment])["options"])
    return options


@pytest.mark.parametrize("module", [netns, bridge, tap, veth], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_docs_match_argument_spec(module):
    spec = module.argument_spec()
    docs = documented_options(module)
    assert sorted(docs) == sorted(spec)
    for name, option in spec.items():
        doc = docs[name]
        assert doc.get("type", "str") == option.get("type", "str"), name
        assert doc.get("default") == option.get("default"), name
        assert doc.get("choices") == option.get("choices"), name
        assert bool(doc.get("required")) == bool(option.get("required")), name
        assert doc.get("elements") == option.get("elements"), name
    yaml.safe_load(module.EXAMPLES)
    yaml.safe_load(module.RETURN)
