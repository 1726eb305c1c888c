"""Unit tests of the test suite's own rules: each test module carries its directory's marker (the check in
tests/conftest.py stops a run that breaks it), the Debian packages the tests need are the ones `make apt` installs,
and `make lint` and `make sanity` keep their caches under .build, out of the user's home."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, ".build")
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]


def collect(paths, cwd=REPO):
    return subprocess.run(PYTEST + ["--collect-only", "-q"] + paths, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("directory", ["unit", "integration"])
def test_every_test_module_carries_its_directorys_marker(directory):
    # one directory per run: the two hold modules of the same name, which one rootdir-based run cannot import
    collected = collect([os.path.join("tests", directory)])
    assert collected.returncode == 0, collected.stderr[-3000:] + collected.stdout[-1000:]


def tree(root, modules):
    """A test tree of its own under root: the repository's pytest.ini and tests/conftest.py, and these modules."""
    shutil.copy(os.path.join(REPO, "pytest.ini"), root / "pytest.ini")
    (root / "tests").mkdir()
    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), root / "tests" / "conftest.py")
    for path, text in modules.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text + "\n\ndef test_x():\n    pass\n")


def test_a_module_marked_against_its_directory_stops_the_run(tmp_path):
    """The conftest check: an unmarked unit module and an integration module marked unit are both named with the fix;
    a correctly marked module passes."""
    tree(tmp_path, {"tests/unit/test_marked.py": "import pytest\npytestmark = pytest.mark.unit",
                    "tests/unit/test_unmarked.py": "",
                    "tests/integration/test_mislabelled.py": "import pytest\npytestmark = pytest.mark.unit"})
    refused = collect(["tests/unit", "tests/integration"], cwd=str(tmp_path))
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout + refused.stderr
    assert ("tests/unit/test_unmarked.py lacks the unit marker; set `pytestmark = pytest.mark.unit` at its top"
            in refused.stderr), refused.stderr
    assert ("tests/integration/test_mislabelled.py is marked unit, not integration; set `pytestmark = "
            "pytest.mark.integration` at its top" in refused.stderr), refused.stderr
    assert "test_marked.py" not in refused.stderr
    accepted = collect(["tests/unit/test_marked.py"], cwd=str(tmp_path))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_a_misspelt_marker_is_an_error(tmp_path):
    """--strict-markers: `pytest.mark.unti` fails the run instead of quietly selecting nothing."""
    tree(tmp_path, {"tests/unit/test_typo.py": "import pytest\npytestmark = [pytest.mark.unit, pytest.mark.unti]"})
    collected = collect(["tests/unit"], cwd=str(tmp_path))
    assert collected.returncode != 0
    assert "'unti' not found in `markers` configuration option" in collected.stdout + collected.stderr


def apt_packages():
    with open(os.path.join(REPO, "Makefile")) as handle:
        text = handle.read().replace("\\\n", " ")
    return re.search(r"^APT_PACKAGES\s*:=(.*)$", text, re.MULTILINE).group(1).split()


def test_the_tools_tests_fail_without_are_installed_by_make_apt():
    # dot (the graph tests), shellcheck (sanity), socat and iptables (the network tests): they fail, not skip,
    # when missing, and their message says `make apt`
    assert {"graphviz", "shellcheck", "socat", "iptables"} <= set(apt_packages())


RESOLVE = r"""
import json, os, pathlib, sys
from ansible import constants
from ansible_compat.prerun import get_cache_dir
from ansiblelint.config import CACHE_DIR, has_custom_ansible_env
print(json.dumps({
    "home": os.path.expanduser("~"),
    "ansible-lint's version check (XDG_CACHE_HOME)": CACHE_DIR,
    "ansible-lint's cache": str(get_cache_dir(pathlib.Path(sys.argv[1]), isolated=not has_custom_ansible_env())),
    "Ansible's home": constants.ANSIBLE_HOME,
}))
"""


def test_make_lint_keeps_ansible_lint_and_ansible_under_build():
    """The lint recipe as make runs it (`make -n`), and where ansible-lint and Ansible, in that environment, put their
    files by their own code: all under .build, none in the user's home or the checkout."""
    recipe = subprocess.run(["make", "-s", "-n", "-o", "setup", "lint"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert recipe.returncode == 0, recipe.stderr
    words = shlex.split(recipe.stdout.strip().splitlines()[-1])
    assigned = {}
    while re.match(r"[A-Z_]+=", words[0]):
        name, value = words.pop(0).split("=", 1)
        assigned[name] = value
    assert words == [os.path.join(REPO, ".venv", "bin", "ansible-lint")], words
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), **assigned)
    resolved = subprocess.run([os.path.join(REPO, ".venv", "bin", "python"), "-c", RESOLVE, REPO], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert resolved.returncode == 0, resolved.stderr
    places = json.loads(resolved.stdout)
    outside = dict((what, path) for what, path in places.items()
                   if not os.path.realpath(path).startswith(BUILD + os.sep))
    assert outside == {}, "make lint writes outside .build: %s" % outside


def test_the_sanity_run_gives_ansible_test_a_home_under_build():
    """ansible-test keeps its tool venvs and get-pip under ~/.ansible/test, read from HOME and nothing else: the
    script sets HOME (and XDG_CACHE_HOME) to .build/sanity before it runs ansible-test, and writes its get-pip
    stand-in there, never into the caller's HOME."""
    with open(os.path.join(REPO, "tests", "sanity", "run")) as handle:
        script = handle.read()
    assert re.search(r'^SANITY_HOME="\$ROOT/\.build/sanity"$', script, re.MULTILINE)
    export = script.index('export HOME="$SANITY_HOME" XDG_CACHE_HOME="$SANITY_HOME/.cache"\n')
    assert script.index('"$VENV/bin/ansible-test" sanity') > export
    assert "$HOME" not in script
    assert 'GET_PIP="$SANITY_HOME/.ansible/test/cache/' in script
