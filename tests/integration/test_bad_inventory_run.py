"""A broken inventory stops `lab.yml` in its validation step: every problem listed, and nothing on the host changed.

The unit test (tests/unit/test_bad_inventories.py) checks the messages for the whole corpus; this one runs the real
playbook on a sample of it and compares snapshots of the host before and after. The sample's runs start together
(their lab lock queues what follows the lock task, so mostly Ansible's start-up overlaps); each case is still checked
by its own test, against the snapshot taken before the first run started and after the last one ended.
"""
import concurrent.futures
import os
import time

import pytest
import yaml

from conftest import REPO_ROOT as REPO, VENV_PYTHON, PlaybookRunError, run_playbook
from hostsnapshot import lab_leftovers, snapshot
from pyroute2 import netns as pr_netns

pytestmark = pytest.mark.integration

CORPUS = os.path.join(REPO, "tests", "bad_inventories")
SAMPLE = ["mac_used_twice", "tap_name_too_long", "route_via_unattached_gateway", "memory_unit_unknown",
          "kernel_file_missing", "many_problems_at_once"]
LOCK = "/run/qemulab/bad.lock"  # the sample's lab lock; its holder removes it within 0.2 s of its run's end


def _gone(path, timeout):
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not os.path.exists(path)


@pytest.fixture(scope="module")
def sample_runs():
    """{case: its lab.yml result} for every case of the sample, run all at once, and the host before and after."""
    before, namespaces = snapshot(), sorted(pr_netns.listnetns())
    with concurrent.futures.ThreadPoolExecutor(len(SAMPLE)) as pool:
        futures = {case: pool.submit(run_playbook, os.path.join(REPO, "lab.yml"),
                                     inventory=os.path.join(CORPUS, case, "hosts.yml"), timeout=600,
                                     expect_failure=True)
                   for case in SAMPLE}
        results = {}
        for case, future in futures.items():
            try:
                results[case] = future.result()
            except PlaybookRunError as exc:  # a run that succeeded: that case's own test reports it
                results[case] = exc
    return {"results": results, "lock_gone": _gone(LOCK, 5), "before": (before, namespaces),
            "after": (snapshot(), sorted(pr_netns.listnetns()))}


@pytest.mark.parametrize("case", SAMPLE)
def test_bad_inventory_fails_in_validation_and_changes_nothing(case, sample_runs):
    expected = yaml.safe_load(open(os.path.join(CORPUS, case, "expected.yml")))["errors"]
    res = sample_runs["results"][case]
    if isinstance(res, PlaybookRunError):
        raise res

    failed = [(name, r) for name, _host, r in res.tasks() if r.get("failed")]
    assert [name for name, _r in failed] == ["Stop on an invalid inventory before anything on the host changes"], res
    message = failed[0][1]["msg"]
    for err in expected:
        assert "%s: %s" % (err["host"], err["field"]) in message and err["fragment"] in message, message
    (before, namespaces), (after, namespaces_after) = sample_runs["before"], sample_runs["after"]
    assert after == before, "the host's links, addresses, routes or sysctls changed"
    assert namespaces_after == namespaces, "a namespace was created"
    assert lab_leftovers("bad") == {"processes": [], "files": []} and sample_runs["lock_gone"], LOCK


def test_a_cleanup_still_runs_to_its_end_for_an_inventory_the_plan_refuses():
    """A cleanup needs only a valid lab name and namespace; a plan refused for anything else renders no lab host, and
    the planning play's console step once failed on that ('item' is undefined) before the cleanup could run."""
    before, namespaces = snapshot(), sorted(pr_netns.listnetns())
    res = run_playbook(os.path.join(REPO, "lab.yml"), inventory=os.path.join(CORPUS, "memory_unit_unknown",
                                                                             "hosts.yml"),
                       tags="cleanup", timeout=600,
                       # the corpus leaves the lab host's interpreter to discovery; the teardown runs modules
                       extra_vars={"ansible_python_interpreter": VENV_PYTHON})
    assert res.rc == 0 and [name for name, _host, r in res.tasks() if r.get("failed")] == [], res
    assert snapshot() == before and sorted(pr_netns.listnetns()) == namespaces
    assert lab_leftovers("bad") == {"processes": [], "files": []} and _gone(LOCK, 5)
