"""Every hostile or careless input of tests/hostile_inputs is refused by the real lab.yml before anything changes.

Each case is one ansible-playbook run inside a private mount namespace (hostile_harness.py): tmpfs over /run and
/var/lib/qemulab with a foreign lab's canary files, a read-only view of everything else. A refused case must stop in
the plan's stop task with every expected error ("<host>: <field> ..." containing the case's fragment, with a fix after
';'), and leave nothing behind: no file or namespace in its /run or /var/lib/qemulab, no damaged canary, no process, no
interface, namespace or QEMU process in the root namespace, no marker of an injected command. The one careless but
valid case (no hypervisors group) must pass the plan and create nothing but the lab's run lock.
"""
import os

import pytest
import yaml

from hostile_harness import CORPUS, run_case

pytestmark = [pytest.mark.integration, pytest.mark.alone]

CASES = sorted(name for name in os.listdir(CORPUS) if os.path.isdir(os.path.join(CORPUS, name)))


def matches(error, expected):
    prefix = "%s: %s " % (expected["host"], expected["field"])
    return error.startswith(prefix) and expected["fragment"] in error


def verdict_problems(run):
    """What is wrong with how the playbook answered the case, as sentences; empty when it answered right."""
    problems = []
    failed = [name for name, _host, _res in run.failed_tasks()]
    if run.spec.get("accepted"):
        if run.result.rc != 0 or failed:
            problems.append("a careless but valid inventory was refused (rc %s, failed: %s)" % (run.result.rc, failed))
        passed = [res for name, _host, res in run.result.tasks() if name == run.stop_task]
        if not passed or passed[0].get("skipped") or passed[0].get("failed"):
            problems.append("the plan's stop task %r did not run and pass on the lab host" % run.stop_task)
        return problems
    if run.result.rc == 0:
        problems.append("the hostile input was ACCEPTED (rc 0)")
    if failed != [run.stop_task]:
        problems.append("the run must fail in %r alone, but failed in %s" % (run.stop_task, failed or "no task"))
        return problems
    errors = run.stop_errors()
    for item in run.spec["errors"]:
        if not any(matches(error, item) for error in errors):
            problems.append("no error starting %r and containing %r among %s" % (
                "%s: %s " % (item["host"], item["field"]), item["fragment"], errors))
    problems += ["%r offers no fix (no ';')" % error for error in errors if ";" not in error]
    return problems


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_is_refused_before_anything_changes(case):
    run = run_case(case)

    allowed = ()
    if run.spec.get("accepted"):
        with open(os.path.join(CORPUS, case, "hosts.yml")) as handle:
            lab_name = yaml.safe_load(handle)["all"]["vars"]["lab_name"]
        allowed = ("/run/qemulab/%s.lock" % lab_name,)
    problems = verdict_problems(run)
    problems += ["%s: %s" % (what, items) for what, items in sorted(run.changes(allowed).items())]
    assert not problems, "%s\n  - %s" % (run.summary(), "\n  - ".join(problems))
