"""docs/roles.md says what the roles declare, and every reuse it shows is an example file a test runs.

- every role under roles/ has a section naming each of its entry points, and its variable table lists exactly the
  options of the role's meta/argument_specs.yml (all entry points), each with the type and default rendered from the
  spec (the meaning column is prose);
- every `<role>_<name>` the page mentions is an option of that role, a fact the role sets or a filter plugin;
- every YAML snippet names its example file (playbooks/examples/...) just before it and is a verbatim excerpt of it;
- every role is included by some snippet, every example playbook is listed on the page and run by an
  integration test.
"""
import glob
import os
import re

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(REPO, "docs", "roles.md")
ROLES = sorted(os.path.basename(os.path.dirname(os.path.dirname(p)))
               for p in glob.glob(os.path.join(REPO, "roles", "*", "meta", "argument_specs.yml")))
EXAMPLES = os.path.join(REPO, "playbooks", "examples")
EXAMPLE_REF = re.compile(r"playbooks/examples/[\w/.-]+\.yml")
SNIPPET = re.compile(r"^```yaml\n(.*?)^```$", re.S | re.M)


def _page():
    with open(DOC) as f:
        return f.read()


def _entry_points(role):
    with open(os.path.join(REPO, "roles", role, "meta", "argument_specs.yml")) as f:
        return yaml.safe_load(f)["argument_specs"]


def _options(role):
    """The options of every entry point of the role (main first; entry points may share them)."""
    options = {}
    for _name, spec in sorted(_entry_points(role).items(), key=lambda item: item[0] != "main"):
        for option, option_spec in (spec.get("options") or {}).items():
            options.setdefault(option, option_spec)
    return options


def _facts(role):
    """What a role sets for later tasks (set_fact keys, registered results), its internal `__` names left out."""
    names = set()
    for path in glob.glob(os.path.join(REPO, "roles", role, "tasks", "*.yml")):
        with open(path) as f:
            for task in yaml.safe_load(f) or []:
                names.update(task.get("ansible.builtin.set_fact", {}) or {})
                if task.get("register"):
                    names.add(task["register"])
    return {name for name in names if not name.startswith("__")}


def _filters():
    paths = glob.glob(os.path.join(REPO, "plugins", "filter", "*.yml"))
    return {os.path.splitext(os.path.basename(path))[0] for path in paths}


def _section(page, role):
    """The text of the role's `## <role> — ...` section, up to the next `## `."""
    match = re.search(r"^## %s\b.*?(?=^## |\Z)" % re.escape(role), page, re.S | re.M)
    return match.group(0) if match else None


def render_type(spec):
    kind = spec.get("type", "str")
    text = "list of %s" % spec.get("elements", "any") if kind == "list" else kind
    if spec.get("choices"):
        text += ": " + ", ".join("`%s`" % choice for choice in spec["choices"])
    return text


def render_default(spec):
    if spec.get("required"):
        return "required"
    if "default" not in spec or spec["default"] is None:
        return "—"
    value = spec["default"]
    if isinstance(value, bool):
        return "`%s`" % str(value).lower()
    if isinstance(value, list):
        return "`[%s]`" % ", ".join(str(item) for item in value)
    return "`%s`" % value if value != "" else '`""`'


def _table(section):
    """{variable: (type, default)} of the section's `| variable | type | default | meaning |` table."""
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 4 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def table_problems(page, role):
    """Why the role's section disagrees with its argument spec: no section, rows missing or extra, type or default."""
    section = _section(page, role)
    if not section:
        return ["docs/roles.md has no section '## %s — ...'" % role]
    rows, options = _table(section), _options(role)
    problems = ["%s: the section does not name the entry point `%s` (tasks_from: %s)" % (role, name, name)
                for name in sorted(_entry_points(role)) if name != "main" and "`%s`" % name not in section]
    problems += ["%s: the table lacks %s, declared in roles/%s/meta/argument_specs.yml" % (role, name, role)
                 for name in sorted(set(options) - set(rows))]
    problems += ["%s: the table lists %s, which roles/%s/meta/argument_specs.yml does not declare" % (role, name, role)
                 for name in sorted(set(rows) - set(options))]
    problems += ["%s: the row should start | `%s` | %s | %s | (the page has: %s | %s)"
                 % ((role, name, render_type(spec), render_default(spec)) + rows[name])
                 for name, spec in sorted(options.items())
                 if name in rows and rows[name] != (render_type(spec), render_default(spec))]
    return problems


def undeclared_names(page):
    """Every `<role>_<name>` on the page that is no option of the role, fact it sets or filter plugin."""
    filters, found = _filters(), []
    for role in ROLES:
        known = set(_options(role)) | _facts(role) | filters
        found += sorted(name for name in set(re.findall(r"\b%s_[a-z0-9_]+\b" % re.escape(role), page))
                        if name not in known)
    return found


def snippet_problems(page):
    """Each YAML snippet must be introduced by exactly one example file (the text since the previous fence or
    heading names it) and be a verbatim excerpt of that file."""
    problems = []
    for match in SNIPPET.finditer(page):
        before = re.split(r"^```$|^#+ ", page[:match.start()], flags=re.M)[-1]
        refs = EXAMPLE_REF.findall(before)
        if len(refs) != 1:
            problems.append("the snippet starting %r names %s, not exactly one example file (playbooks/examples/...)"
                            % (match.group(1)[:60], refs or "none"))
        elif not os.path.isfile(os.path.join(REPO, refs[0])):
            problems.append("the snippet names %s, which does not exist" % refs[0])
        else:
            with open(os.path.join(REPO, refs[0])) as f:
                if match.group(1) not in f.read():
                    problems.append("the snippet for %s is not an excerpt of it:\n%s" % (refs[0], match.group(1)))
    return problems


def test_the_roles_are_found():
    assert len(ROLES) >= 6 and "router_nat" in ROLES and "guest_image" in ROLES, ROLES


@pytest.mark.parametrize("role", ROLES)
def test_each_role_has_a_section_whose_table_is_its_argument_specs(role):
    problems = table_problems(_page(), role)
    assert not problems, "docs/roles.md:\n" + "\n".join(problems)


def test_every_role_variable_the_page_names_is_declared():
    assert undeclared_names(_page()) == [], "docs/roles.md names role variables no argument spec declares"


def test_every_snippet_is_an_excerpt_of_the_example_file_it_names():
    page = _page()
    assert SNIPPET.search(page)
    assert snippet_problems(page) == []


def test_the_checks_catch_a_stale_page():
    """Each check fails on the page made stale in the way it guards against, so the tests above can fail."""
    page = _page()
    # a variable no spec declares, in prose or in a snippet
    assert undeclared_names(page + "\nSet `vm_launch_no_such_option`.\n") == ["vm_launch_no_such_option"]
    # a role's section gone; a row gone; a default changed
    without_nat = re.sub(r"^## router_nat\b.*?(?=^## )", "", page, flags=re.S | re.M)
    assert table_problems(without_nat, "router_nat") == ["docs/roles.md has no section '## router_nat — ...'"]
    no_row = re.sub(r"^\| `teardown_stop_timeout` .*\n", "", page, flags=re.M)
    assert [p for p in table_problems(no_row, "teardown") if "lacks teardown_stop_timeout" in p]
    bad_default = page.replace("| `teardown_run_root` | str | `/run/qemulab` |",
                               "| `teardown_run_root` | str | `/run` |")
    assert [p for p in table_problems(bad_default, "teardown") if "teardown_run_root" in p]
    # a snippet edited on the page only, and one that names no example file
    edited = page.replace("guest_network_forwarding: true", "guest_network_forwarding: false", 1)
    assert [p for p in snippet_problems(edited) if "router_on_any_debian.yml is not an excerpt" in p]
    unnamed = page + "\n## extra\n\n```yaml\n- hosts: all\n```\n"
    assert [p for p in snippet_problems(unnamed) if "not exactly one example file" in p]


def test_every_role_is_shown_reused_in_a_snippet():
    snippets = "".join(m.group(1) for m in SNIPPET.finditer(_page()))
    missing = [role for role in ROLES if "role: qemulab.network.%s\n" % role not in snippets]
    assert not missing, "docs/roles.md shows no snippet including %s" % missing


def test_every_example_playbook_is_on_the_page_and_run_by_an_integration_test():
    page = _page()
    tests = ""
    for path in glob.glob(os.path.join(REPO, "tests", "integration", "test_*.py")):
        with open(path) as f:
            tests += f.read()
    for path in sorted(glob.glob(os.path.join(EXAMPLES, "*.yml"))):
        name = os.path.basename(path)
        assert "playbooks/examples/%s" % name in page, "docs/roles.md does not list " + name
        assert '"%s"' % name in tests or "'%s'" % name in tests, "no integration test runs " + name
