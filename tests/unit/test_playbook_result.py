"""The integration tests' PlaybookResult cannot pass a failed or unparsable run as one that changed nothing.

Fed completed processes as ansible-playbook would leave them (no playbook runs here): a run with no recap, a
recap without the asked host, a failed run read as a success, and the explicit expect_failure path.
"""
import importlib.util
import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.unit

CONFTEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "integration", "conftest.py")


@pytest.fixture(scope="module")
def fixtures():
    """tests/integration/conftest.py by its path (the name `conftest` alone finds tests/conftest.py)."""
    spec = importlib.util.spec_from_file_location("qemulab_integration_conftest_unit", CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recap(changed=0, failures=0, host="localhost", failed_msg=None):
    """The results_json callback's stdout for one task on one host."""
    result = {"changed": bool(changed)}
    if failed_msg:
        result.update(failed=True, msg=failed_msg)
    stats = {host: {"changed": changed, "failures": failures, "ok": 1, "unreachable": 0, "skipped": 0,
                    "rescued": 0, "ignored": 0}}
    return json.dumps({"plays": [{"play": {"name": "p"}, "tasks": [{"task": {"name": "t"}, "hosts": {host: result}}]}],
                       "stats": stats})


def run(fixtures, rc, stdout, stderr="", **kwargs):
    return fixtures.PlaybookResult(subprocess.CompletedProcess(["ansible-playbook"], rc, stdout, stderr), **kwargs)


@pytest.mark.parametrize("stdout", ["", "ERROR! the playbook could not be parsed\n", '{"plays": [], "stats"',
                                    json.dumps({"msg": "not a recap"})])
def test_a_run_without_a_recap_passes_no_check(fixtures, stdout):
    for rc in (0, 2):
        res = run(fixtures, rc, stdout, stderr="ERROR! something broke")
        for read in (res.changed, res.failed, lambda: res.stats, lambda: list(res.tasks()), res.failure_messages,
                     lambda: res.result("t")):
            with pytest.raises(fixtures.PlaybookRunError, match="something broke"):
                read()
        assert "no recap" in repr(res)  # what an assertion prints never raises


def test_a_failed_run_is_not_read_as_one_that_changed_nothing(fixtures):
    res = run(fixtures, 2, recap(failures=1, failed_msg="bridge br7 is not ours"))
    with pytest.raises(fixtures.PlaybookRunError, match=r"failed \(bridge br7 is not ours\), but the test did not say"):
        res.changed()
    with pytest.raises(fixtures.PlaybookRunError, match="did not say expect_failure"):
        res.result("t")
    # inspecting what failed needs no declaration: the recap is there
    assert res.failure_messages() == ["bridge br7 is not ours"] and res.stats["localhost"]["failures"] == 1


def test_a_host_without_stats_has_no_count(fixtures):
    res = run(fixtures, 0, recap(changed=1, host="rt1"))
    assert res.changed("rt1") == 1
    with pytest.raises(fixtures.PlaybookRunError, match=r"no stats for host localhost \(hosts: \['rt1'\]\)"):
        res.changed()
    with pytest.raises(fixtures.PlaybookRunError, match="no stats for host h9"):
        res.failed("h9")


def test_expect_failure_reads_a_failed_run_and_refuses_a_successful_one(fixtures):
    failed = run(fixtures, 2, recap(failures=1, failed_msg="refused"), expect_failure=True)
    assert failed.failed() == 1 and failed.changed() == 0 and failed.result("t")["msg"] == "refused"
    succeeded = run(fixtures, 0, recap(), expect_failure=True)
    with pytest.raises(fixtures.PlaybookRunError, match="expects it to fail"):
        succeeded.failed()
    with pytest.raises(fixtures.PlaybookRunError, match="no JSON recap"):
        run(fixtures, 4, "", expect_failure=True).failed()


def test_a_good_run_reads_as_before(fixtures):
    res = run(fixtures, 0, "[WARNING]: a line before the recap\n" + recap(changed=2))
    assert (res.changed(), res.failed(), res.result("t")["changed"]) == (2, 0, True)
    assert [name for name, _host, _res in res.tasks()] == ["t"]
