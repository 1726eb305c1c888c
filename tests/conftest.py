"""Shared pytest set-up: make the in-repo collection importable as ansible_collections.qemulab.network, hold every
test module to its directory's marker, and keep Ansible's remote temp files out of the user's home."""
import os
import shutil
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
COLLECTIONS = os.path.join(REPO_ROOT, ".build", "collections")

if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

# A module under tests/unit is marked unit (kernel and QEMU mocked or faked), one under tests/integration is marked
# integration (real bridges, taps, namespaces or guests), never both: `-m unit` and `-m integration` select what
# their names say.
MARKER_OF_DIRECTORY = {"unit": "unit", "integration": "integration"}


def marker_problems(items, tests_dir=TESTS_DIR):
    """{module path relative to tests_dir: what is wrong with its markers} for the collected test items."""
    problems = {}
    for item in items:
        relative = os.path.relpath(str(item.path), tests_dir)
        wanted = MARKER_OF_DIRECTORY.get(relative.split(os.sep, 1)[0])
        if wanted is None:
            continue
        marks = set(mark.name for mark in item.iter_markers())
        wrong = sorted((set(MARKER_OF_DIRECTORY.values()) - {wanted}) & marks)
        if wrong or wanted not in marks:
            problems[relative] = "%s; set `pytestmark = pytest.mark.%s` at its top" % (
                "is marked %s, not %s" % (" and ".join(wrong), wanted) if wrong else "lacks the %s marker" % wanted,
                wanted)
    return problems


def pytest_collection_modifyitems(session, config, items):
    problems = marker_problems(items)
    if problems:
        raise pytest.UsageError("test modules marked against their directory (tests/unit is unit, "
                                "tests/integration is integration):\n" + "\n".join(
                                    "  tests/%s %s" % (path, why) for path, why in sorted(problems.items())))


# Ansible's remote temp (also the lab host's own, over the local connection) defaults to ~/.ansible/tmp, and a run
# the fault suite kills leaves its ansible-tmp-* directory there. Every playbook the tests start inherits this one
# instead (the guests create the same path in their own /tmp); it goes with the session.
# Only ANSIBLE_REMOTE_TEMP is set: of the two names Ansible reads the later one, so a test that sets its own
# ANSIBLE_REMOTE_TEMP (the hostile-input harness, whose /tmp is read-only) would lose to an ANSIBLE_REMOTE_TMP here.
REMOTE_TMP_VARS = ("ANSIBLE_REMOTE_TEMP", "ANSIBLE_REMOTE_TMP")


def pytest_configure(config):
    if not any(os.environ.get(name) for name in REMOTE_TMP_VARS):
        path = tempfile.mkdtemp(prefix="qemulab-tests-remote-tmp-")
        config._qemulab_remote_tmp = path
        os.environ["ANSIBLE_REMOTE_TEMP"] = path
    # A module unpacks itself into $TMPDIR (ansible_<module>_payload_*) and removes that directory when it ends;
    # one the fault suite kills leaves it behind, in the host's /tmp unless every process the tests start has a
    # TMPDIR of the session's. This process keeps its own (gettempdir() is read, and cached, before TMPDIR is set).
    if not os.environ.get("TMPDIR"):
        tempfile.gettempdir()
        path = tempfile.mkdtemp(prefix="qemulab-tests-tmp-")
        config._qemulab_tmpdir = path
        os.environ["TMPDIR"] = path


def pytest_unconfigure(config):
    path = getattr(config, "_qemulab_remote_tmp", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop("ANSIBLE_REMOTE_TEMP", None)
    path = getattr(config, "_qemulab_tmpdir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop("TMPDIR", None)
