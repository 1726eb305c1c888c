"""Unit tests (temporary directories; no testpmd, hugepage or mount is touched): dpdk_datapath with state=absent
and no segment stops every datapath of the lab but those `keep` names, says so in check mode without acting, and
finds nothing to do the second time; lab_host_info counts the lab's reserved hugepages back into its memory."""
import json
import os

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.qemulab.network.plugins.module_utils import _dpdk_datapath as dp
from ansible_collections.qemulab.network.plugins.modules import dpdk_datapath, lab_host_info

pytestmark = pytest.mark.unit


class Exited(Exception):
    def __init__(self, result):
        super().__init__(result)
        self.result = result


def run(monkeypatch, module, check=False, **args):
    def exit_json(_module, **result):
        raise Exited(result)

    def fail_json(_module, **result):
        raise Exited(dict(result, failed=True))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    with patch_module_args(dict(args, _ansible_check_mode=check)), pytest.raises(Exited) as exited:
        module.main()
    return exited.value.result


def stale(run_root, segment, pages=0):
    """A datapath's record as a killed run leaves it: no live testpmd, no mount."""
    directory = dp.segment_dir(os.path.join(run_root, "lab1"), segment)
    os.makedirs(directory)
    with open(os.path.join(directory, dp.STATE), "w") as f:
        json.dump({"pid": None, "ports": ["a", "b"], "cores": 1, "hugepages": pages, "sockets": {}}, f)


def test_absent_without_a_segment_stops_all_but_keep_and_then_has_nothing_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(dp, "DPDK_RUNTIME", str(tmp_path / "dpdk-runtime"))
    root = str(tmp_path)
    for segment in ("dp1", "dp2", "dp3"):
        stale(root, segment)
    args = dict(lab="lab1", run_root=root, state="absent", keep=["dp2"])
    check = run(monkeypatch, dpdk_datapath, check=True, **args)
    assert check["changed"] is True and check["stopped"] == ["dp1", "dp3"]
    assert dp.segments(os.path.join(root, "lab1")) == ["dp1", "dp2", "dp3"]
    done = run(monkeypatch, dpdk_datapath, **args)
    assert done["changed"] is True and done["stopped"] == ["dp1", "dp3"]
    assert dp.segments(os.path.join(root, "lab1")) == ["dp2"]
    again = run(monkeypatch, dpdk_datapath, **args)
    assert again["changed"] is False and again["stopped"] == []
    last = run(monkeypatch, dpdk_datapath, lab="lab1", run_root=root, state="absent")
    assert last["stopped"] == ["dp2"] and not os.path.exists(os.path.join(root, "lab1.dpdk"))


def test_present_needs_a_segment_and_two_ports(monkeypatch, tmp_path):
    missing = run(monkeypatch, dpdk_datapath, lab="lab1", run_root=str(tmp_path), ports=["a", "b"])
    assert missing["failed"] and "segment" in missing["msg"]
    one = run(monkeypatch, dpdk_datapath, lab="lab1", segment="dp1", run_root=str(tmp_path), ports=["a"])
    assert one["failed"] and "exactly two ports" in one["msg"]


def test_lab_host_info_counts_the_labs_hugepages_back_and_names_its_datapaths(monkeypatch, tmp_path):
    before = run(monkeypatch, lab_host_info, check=True, lab="lab1", run_root=str(tmp_path))
    assert before["dpdk_segments"] == []
    stale(str(tmp_path), "dp1", pages=500)
    after = run(monkeypatch, lab_host_info, check=True, lab="lab1", run_root=str(tmp_path))
    assert after["dpdk_segments"] == ["dp1"]
    # 500 pages of 2 MiB are 1000 MiB; MemAvailable moves a little between the two reads
    assert abs(after["mem_available_mib"] - before["mem_available_mib"] - 1000) < 200
