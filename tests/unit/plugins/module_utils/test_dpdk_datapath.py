"""_dpdk_datapath without DPDK: testpmd's argv, the core rule, hugepages reserved all-or-nothing and given back
exactly, and a recorded pid trusted only while it is still that segment's testpmd."""
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _dpdk_datapath as dp

pytestmark = pytest.mark.unit


def test_testpmd_serves_one_socket_per_port_in_the_segment_dir_and_polls_the_asked_cores():
    argv = dp.testpmd_argv("/run/qemulab/lab1", "dp1", ["h1-eth0", "h2-eth0"], 2)
    assert argv[:3] == ["dpdk-testpmd", "-l", "0-2"]
    assert argv[argv.index("--huge-dir") + 1] == "/run/qemulab/lab1.dpdk/dp1/huge"
    assert argv[argv.index("--file-prefix") + 1] == "qemulab-lab1-dp1"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--vdev"] == [
        "net_vhost0,iface=/run/qemulab/lab1.dpdk/dp1/h1-eth0.sock,queues=1",
        "net_vhost1,iface=/run/qemulab/lab1.dpdk/dp1/h2-eth0.sock,queues=1"]
    assert "--nb-cores=2" in argv and "--forward-mode=io" in argv and "--stats-period" in argv


@pytest.mark.parametrize("cores, cpus, ok", [(1, 2, True), (1, 1, False), (2, 2, False), (3, 4, True), (0, 8, False)])
def test_a_datapath_needs_its_polling_cores_plus_one_cpu(cores, cpus, ok):
    assert (dp.cores_problem(cores, cpus) is None) is ok


def test_hugepages_are_added_and_exactly_those_given_back(tmp_path):
    pool = tmp_path / "nr_hugepages"
    pool.write_text("10\n")
    assert dp.reserve_hugepages(80, str(pool)) == 80
    assert pool.read_text() == "90\n"
    pool.write_text("95\n")  # someone else reserved 5 meanwhile: theirs stay
    dp.release_hugepages(80, str(pool))
    assert pool.read_text() == "15\n"


def test_a_short_pool_is_given_back_and_refused(tmp_path, monkeypatch):
    pool = tmp_path / "nr_hugepages"
    pool.write_text("0\n")
    real_write = dp._write_int

    def kernel_gives_at_most_30(path, value):
        real_write(path, min(value, 30))
    monkeypatch.setattr(dp, "_write_int", kernel_gives_at_most_30)
    with pytest.raises(dp.DatapathError) as err:
        dp.reserve_hugepages(80, str(pool))
    assert "gave 30 of 80" in str(err.value)
    assert pool.read_text() == "0\n"


def test_a_recorded_pid_counts_only_while_it_is_that_segments_testpmd(tmp_path):
    run_dir = str(tmp_path / "lab1")
    os.makedirs(dp.segment_dir(run_dir, "dp1"))
    # a live process that is not testpmd (a recycled pid)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with open(os.path.join(dp.segment_dir(run_dir, "dp1"), dp.STATE), "w") as f:
            json.dump({"pid": other.pid, "ports": ["a", "b"], "cores": 1, "hugepages": 0, "sockets": {}}, f)
        state = dp.read_state(run_dir, "dp1")
        assert state["running"] is False and state["mounted"] is False
        assert not dp.wanted_matches(state, ["a", "b"], 1)
        assert dp.stop(run_dir, "dp1") is True  # nothing signalled, the directory removed
        assert other.poll() is None
        assert not os.path.exists(dp.segment_dir(run_dir, "dp1"))
        assert not os.path.exists(dp.lab_dir(run_dir))  # the lab's datapath directory went with its last one
        assert dp.stop(run_dir, "dp1") is False
    finally:
        other.kill()
        other.wait()


def test_start_without_testpmd_installed_changes_nothing(tmp_path):
    with pytest.raises(dp.DatapathError) as err:
        dp.start(str(tmp_path / "lab1"), "dp1", ["a", "b"], 1, binary="no-such-testpmd")
    assert "dpdk-dev" in str(err.value)
    assert not os.path.exists(str(tmp_path / "lab1"))


def test_a_labs_datapaths_live_beside_its_run_directory_and_count_their_hugepages(tmp_path):
    run_dir = str(tmp_path / "lab1")
    # beside, not inside: every directory in the run directory is a VM's (qemu_vms and qemu_vm_info list them)
    assert dp.segment_dir(run_dir, "dp1") == str(tmp_path / "lab1.dpdk" / "dp1")
    assert dp.segments(run_dir) == [] and dp.reserved_hugepages(run_dir) == 0
    for segment, pages in (("dp2", 80), ("dp1", 40)):
        os.makedirs(dp.segment_dir(run_dir, segment))
        with open(os.path.join(dp.segment_dir(run_dir, segment), dp.STATE), "w") as f:
            json.dump({"pid": None, "ports": ["a", "b"], "cores": 1, "hugepages": pages, "sockets": {}}, f)
    assert dp.segments(run_dir) == ["dp1", "dp2"]
    assert dp.reserved_hugepages(run_dir) == 120
