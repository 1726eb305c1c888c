"""_netem: value rules, the tc argv that sets and removes impairment, the reading of `tc -j qdisc show` and the
comparison that makes a re-run change nothing; the host probe and its cache."""
import json
import subprocess

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _netem

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text,us", [("40ms", 40000), ("500us", 500), ("1.5ms", 1500), ("1s", 1000000),
                                     (" 2 ms ", 2000), ("10s", 10000000)])
def test_times_in_microseconds(text, us):
    assert _netem.parse_time(text) == (us, None)


@pytest.mark.parametrize("value,words", [(40, "not a time"), ("40", "not a time"), ("40min", "not a time"),
                                         ("-5ms", "not a time"), ("11s", "more than 10s")])
def test_bad_times_say_why_and_the_fix(value, words):
    result, why = _netem.parse_time(value)
    assert result is None and words in why and ("like 40ms" in why or "at most 10s" in why), why


@pytest.mark.parametrize("text,percent", [("2%", 2.0), ("0.1%", 0.1), ("100%", 100.0), ("0%", 0.0),
                                          ("0.00049%", 0.0), ("12.3456%", 12.346)])
def test_percentages(text, percent):
    assert _netem.parse_percent(text) == (percent, None)


@pytest.mark.parametrize("value,words", [(2, "not a percentage"), ("2", "not a percentage"),
                                         ("0.02", "not a percentage"), ("101%", "more than 100%"),
                                         ("-1%", "not a percentage")])
def test_bad_percentages(value, words):
    result, why = _netem.parse_percent(value)
    assert result is None and words in why, why


@pytest.mark.parametrize("text,bits", [("10mbit", 10000000), ("500kbit", 500000), ("1gbit", 10 ** 9),
                                       ("5Mbit", 5000000), ("1.5mbit", 1500000), ("8001bit", 8000)])
def test_rates_in_whole_bytes_per_second(text, bits):
    assert _netem.parse_rate(text) == (bits, None)


@pytest.mark.parametrize("value,words", [("10mbps", "bytes per second"), ("10", "not a rate"),
                                         (10, "not a rate"), ("1kbit", "outside 8kbit to 100gbit"),
                                         ("101gbit", "outside")])
def test_bad_rates(value, words):
    result, why = _netem.parse_rate(value)
    assert result is None and words in why, why


def test_normalize_keeps_only_what_impairs():
    want, problems = _netem.normalize({"delay": "40ms", "jitter": "5ms", "loss": "2%", "rate": "10mbit",
                                       "duplicate": "0.1%", "corrupt": "0%", "reorder": "0%"})
    assert problems == []
    assert want == {"delay": 40000, "jitter": 5000, "loss": 2.0, "rate": 10000000, "duplicate": 0.1}
    assert _netem.normalize(None) == ({}, [])
    assert _netem.normalize({"delay": "0ms"}) == ({}, [])


def test_normalize_lists_every_problem_naming_the_key():
    want, problems = _netem.normalize({"delay": "fast", "los": "2%", "jitter": "1ms", "loss": "200%"})
    assert want == {}
    assert any(p.startswith("delay: 'fast' is not a time") for p in problems), problems
    assert any("'los' is not a netem key; use delay, jitter" in p for p in problems), problems
    assert any(p.startswith("loss: '200%' is more than 100%") for p in problems), problems
    assert any(p.startswith("jitter needs a delay") for p in problems), problems
    assert _netem.normalize("40ms")[1] == ["'40ms' is not a mapping; write it like {delay: 40ms, loss: 2%}"]


def test_reorder_needs_delay():
    assert _netem.normalize({"reorder": "5%"})[1] == [
        "reorder needs a delay (netem varies or reorders only delayed packets); add delay"]


def test_replace_argv_is_a_list_in_tc_order():
    want = _netem.normalize({"rate": "10mbit", "loss": "2%", "delay": "40ms", "jitter": "5ms", "duplicate": "0.1%",
                             "corrupt": "0.5%", "reorder": "25%"})[0]
    assert _netem.replace_argv("eth1", want) == [
        "tc", "qdisc", "replace", "dev", "eth1", "root", "netem", "delay", "40ms", "5ms", "loss", "2%",
        "duplicate", "0.1%", "reorder", "25%", "corrupt", "0.5%", "rate", "10mbit"]
    assert _netem.replace_argv("vport21", {"delay": 1500}, netns="qemulab-seed") == [
        "tc", "-n", "qemulab-seed", "qdisc", "replace", "dev", "vport21", "root", "netem", "delay", "1500us"]
    assert _netem.delete_argv("vport21", "qemulab-seed") == [
        "tc", "-n", "qemulab-seed", "qdisc", "del", "dev", "vport21", "root"]
    assert _netem.show_argv("eth0") == ["tc", "-j", "qdisc", "show", "dev", "eth0"]


# iproute2's JSON for a netem root qdisc (q_netem.c netem_print_opt): times in seconds, percentages as fractions,
# the rate in bytes per second; written out by hand for 'delay 40ms 5ms loss 2% duplicate 0.1% rate 10mbit'.
NETEM_SHOW = json.dumps([{
    "kind": "netem", "handle": "8001:", "root": True, "refcnt": 2,
    "options": {"limit": 1000, "delay": {"delay": 0.04, "jitter": 0.005, "correlation": 0},
                "loss-random": {"loss": 0.02, "correlation": 0},
                "duplicate": {"duplicate": 0.000999999, "correlation": 0},
                "rate": {"rate": 1250000, "packetoverhead": 0, "cellsize": 0, "celloverhead": 0},
                "ecn": False, "gap": 0}}])
DEFAULT_SHOW = json.dumps([{"kind": "pfifo_fast", "handle": "0:", "root": True, "refcnt": 2,
                            "options": {"bands": 3, "priomap": [1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
                                        "multiqueue": False}}])


def test_parse_show_reads_netem_normalised_like_the_inventory():
    kind, have = _netem.parse_show(NETEM_SHOW, "eth1")
    assert kind == "netem"
    want = _netem.normalize({"delay": "40ms", "jitter": "5ms", "loss": "2%", "duplicate": "0.1%",
                             "rate": "10mbit"})[0]
    assert have == want
    assert _netem.plan("eth1", want, kind, have) == (None, "delay 40ms jitter 5ms loss 2% duplicate 0.1% rate "
                                                           "10mbit", "delay 40ms jitter 5ms loss 2% duplicate 0.1% "
                                                                     "rate 10mbit")


def test_parse_show_of_another_qdisc_or_none():
    assert _netem.parse_show(DEFAULT_SHOW, "eth0") == ("pfifo_fast", {})
    assert _netem.parse_show("[]", "eth0") == (None, {})
    assert _netem.parse_show("", "eth0") == (None, {})
    with pytest.raises(ValueError):
        _netem.parse_show("Cannot find device", "eth0")


def test_plan_changes_only_what_differs():
    want = {"delay": 50000}
    kind, have = _netem.parse_show(NETEM_SHOW, "eth1")
    argv, before, after = _netem.plan("eth1", want, kind, have)
    assert argv == ["tc", "qdisc", "replace", "dev", "eth1", "root", "netem", "delay", "50ms"]
    assert (before, after) == ("delay 40ms jitter 5ms loss 2% duplicate 0.1% rate 10mbit", "delay 50ms")
    # the default qdisc: add
    assert _netem.plan("eth0", want, "pfifo_fast", {})[0][2] == "replace"
    # no longer wanted: removed
    assert _netem.plan("eth1", {}, kind, have) == (["tc", "qdisc", "del", "dev", "eth1", "root"],
                                                   "delay 40ms jitter 5ms loss 2% duplicate 0.1% rate 10mbit",
                                                   "none")
    # never wanted and not netem: someone else's qdisc stays
    assert _netem.plan("eth0", {}, "tbf", {}) == (None, "none", "none")


class _Proc:
    def __init__(self, rc, stderr=""):
        self.returncode, self.stderr = rc, stderr


def test_probe_tries_a_throwaway_namespace_and_reports_the_kernels_answer():
    calls = []

    def refuses(argv, **kwargs):
        calls.append(argv)
        return _Proc(2, "Error: Specified qdisc kind is unknown.\n")
    works, reason = _netem.probe_host(refuses)
    assert calls == [["unshare", "--net", "--", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]]
    assert not works and "no sch_netem" in reason and "Specified qdisc kind is unknown." in reason
    assert _netem.probe_host(lambda argv, **kw: _Proc(0)) == (True, "the lab host's kernel takes netem qdiscs "
                                                                    "(sch_netem)")

    def broken(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, 20)
    assert _netem.probe_host(broken)[0] is False


def test_probe_is_cached_per_kernel_release(tmp_path):
    cache = str(tmp_path / "netem.json")
    runs = []

    def run(argv, **kwargs):
        runs.append(argv)
        return _Proc(0)
    assert _netem.host_has_netem(cache, write=False, run=run)[0] is True
    assert not (tmp_path / "netem.json").exists()  # check mode writes nothing
    assert _netem.host_has_netem(cache, run=run)[0] is True
    works, reason = _netem.host_has_netem(cache, run=lambda argv, **kw: _Proc(2))
    assert works is True and "cached probe" in reason and len(runs) == 2
    assert _netem.placement(True) == "host" and _netem.placement(False) == "guest"


# Recorded from the default guest image (Debian 12, iproute2 6.1, kernel 6.1) after
# `tc qdisc replace dev eth1 root netem delay 40ms 5ms loss 2% duplicate 0.1% corrupt 0.5% reorder 25% rate 10mbit`.
GUEST_SHOW = ('[{"kind":"netem","handle":"8001:","root":true,"refcnt":2,"options":{"limit":1000,"delay":{"delay":0.04,'
              '"jitter":0.005,"correlation":0},"loss-random":{"loss":0.02,"correlation":0},"duplicate":{"duplicate":'
              '0.001,"correlation":0},"reorder":{"reorder":0.25,"correlation":0},"corrupt":{"corrupt":0.005,'
              '"correlation":0},"rate":{"rate":1250000,"packetoverhead":0,"cellsize":0,"celloverhead":0},"ecn":false,'
              '"gap":1}}]')


def test_the_guests_own_tc_output_reads_back_as_what_was_set():
    want = _netem.normalize({"delay": "40ms", "jitter": "5ms", "loss": "2%", "duplicate": "0.1%", "corrupt": "0.5%",
                             "reorder": "25%", "rate": "10mbit"})[0]
    assert _netem.replace_argv("eth1", want)[7:] == ["delay", "40ms", "5ms", "loss", "2%", "duplicate", "0.1%",
                                                     "reorder", "25%", "corrupt", "0.5%", "rate", "10mbit"]
    assert _netem.parse_show(GUEST_SHOW, "eth1") == ("netem", want)
    assert _netem.plan("eth1", want, *_netem.parse_show(GUEST_SHOW, "eth1"))[0] is None
