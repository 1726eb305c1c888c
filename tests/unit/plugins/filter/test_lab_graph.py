"""Unit tests: lab_graph_dot and lab_graph_mermaid draw a small hand-made plan faithfully.

The DOT text is checked by Graphviz itself (`dot -Tjson0` parses it and lays it out), so a syntax slip or a wrong
label fails here, not in someone's browser. Nothing here touches the kernel or QEMU.
"""
import copy
import json
import re
import shutil
import subprocess

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.qemulab.network.plugins.filter.lab_graph import FilterModule, lab_graph_dot, lab_graph_mermaid

pytestmark = pytest.mark.unit


def dot():
    """Graphviz's `dot`: the suite's own setup installs it, so its absence is a failure, not a reason to skip."""
    path = shutil.which("dot")
    if path is None:
        pytest.fail("Graphviz `dot` is not installed; run `make apt` (package graphviz, in the Makefile's "
                    "APT_PACKAGES)", pytrace=False)
    return path


def nic(index, bridge, tap, address, model="virtio-net-pci"):
    return {"index": index, "dev": "eth%d" % index, "bridge": bridge, "tap": tap, "mac": "02:00:00:00:00:%02x" % index,
            "address": address, "model": model, "vhost": "auto"}


def vm(name, kind, nics, routes=(), gateway=None, port=2201):
    return {"name": name, "kind": kind, "hypervisor": "localhost", "ssh_port": port, "memory_mb": 512, "vcpus": 1,
            "kernel": None, "initrd": None, "disk": None, "forwarding": kind == "router", "gateway": gateway,
            "routes": list(routes), "nics": nics, "mgmt_mac": "52:54:00:00:00:%02x" % (port % 256)}


def small_plan():
    """Two segments joined by one router; a host on each side; the lab host's port on the first segment."""
    return {
        "lab_name": "tiny",
        "netns": "qlt-tiny",
        "run_dir": "/run/qemulab/tiny",
        "hypervisor": "localhost",
        "bridges": [{"name": "tbr1", "subnet": "192.168.71.0/24"}, {"name": "tbr2", "subnet": "192.168.72.0/24"}],
        "taps": [],
        "host_ports": [{"name": "tve0", "peer": "tve1", "bridge": "tbr1", "address": "192.168.71.9/24",
                        "routes": [{"to": "192.168.72.0/24", "via": "192.168.71.1"}]}],
        "vms": [
            vm("r1", "router", [nic(0, "tbr1", "ttap10", "192.168.71.1/24"),
                                nic(1, "tbr2", "ttap20", "192.168.72.1/24", model="e1000")], port=2301),
            vm("a", "host", [nic(0, "tbr1", "ttap11", "192.168.71.2/24")], gateway="192.168.71.1", port=2302),
            vm("b", "host", [nic(0, "tbr2", "ttap21", "192.168.72.2/24")],
               routes=[{"to": "192.168.71.0/24", "via": "192.168.72.1", "dev": "eth0"}], port=2303),
        ],
        "errors": [],
    }


def graphviz_json(dot_text):
    proc = subprocess.run([dot(), "-Tjson0"], input=dot_text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def test_filter_module_exposes_both_filters():
    assert FilterModule().filters() == {"lab_graph_dot": lab_graph_dot, "lab_graph_mermaid": lab_graph_mermaid}


def test_dot_has_one_node_per_vm_bridge_and_host_port_with_its_shape_and_colour():
    graph = graphviz_json(lab_graph_dot(small_plan()))
    nodes = {obj["name"]: obj for obj in graph["objects"]}
    assert set(nodes) == {"bridge:tbr1", "bridge:tbr2", "vm:r1", "vm:a", "vm:b", "port:tve0"}
    assert nodes["vm:r1"]["shape"] == "box3d" and nodes["vm:r1"]["fillcolor"] == "#ffe0b2"
    for host in ("vm:a", "vm:b"):
        assert nodes[host]["shape"] == "box" and "rounded" in nodes[host]["style"]
        assert nodes[host]["fillcolor"] == "#c8e6c9"
    assert nodes["bridge:tbr1"]["fillcolor"] == "#bbdefb"
    assert nodes["port:tve0"]["shape"] == "cds"
    # segments are labelled with name and subnet, VMs with what they are and how they route
    assert "tbr2" in nodes["bridge:tbr2"]["label"] and "192.168.72.0/24" in nodes["bridge:tbr2"]["label"]
    assert "router, 512 MiB" in nodes["vm:r1"]["label"] and "ssh 127.0.0.1:2301" in nodes["vm:r1"]["label"]
    assert "default via 192.168.71.1" in nodes["vm:a"]["label"]
    assert "192.168.71.0/24 via 192.168.72.1" in nodes["vm:b"]["label"]
    assert "tve1" in nodes["port:tve0"]["label"] and "192.168.71.9/24" in nodes["port:tve0"]["label"]
    assert "192.168.72.0/24 via 192.168.71.1" in nodes["port:tve0"]["label"]
    assert "qlt-tiny" in graph["label"]


def test_dot_has_one_link_per_nic_and_host_port_labelled_with_interface_address_and_tap():
    graph = graphviz_json(lab_graph_dot(small_plan()))
    names = {obj["_gvid"]: obj["name"] for obj in graph["objects"]}
    links = {frozenset((names[e["tail"]], names[e["head"]])): e["label"].replace("\\n", "\n") for e in graph["edges"]}
    assert links == {
        frozenset(("vm:r1", "bridge:tbr1")): "eth0 192.168.71.1/24\ntap ttap10",
        frozenset(("vm:r1", "bridge:tbr2")): "eth1 192.168.72.1/24\ntap ttap20 (e1000)",
        frozenset(("vm:a", "bridge:tbr1")): "eth0 192.168.71.2/24\ntap ttap11",
        frozenset(("vm:b", "bridge:tbr2")): "eth0 192.168.72.2/24\ntap ttap21",
        frozenset(("port:tve0", "bridge:tbr1")): "tve0 (veth)",
    }


def test_dot_lays_the_lab_out_from_the_host_port_outwards():
    graph = graphviz_json(lab_graph_dot(small_plan()))
    # Graphviz's y grows upwards; top-to-bottom ranks mean falling y away from the lab host's port
    height = {obj["name"]: float(obj["pos"].split(",")[1]) for obj in graph["objects"]}
    assert height["port:tve0"] > height["bridge:tbr1"] > height["vm:r1"] > height["bridge:tbr2"] > height["vm:b"]
    assert height["vm:a"] == height["vm:r1"]


def test_dot_escapes_names_graphviz_would_misread():
    plan = small_plan()
    plan["vms"][1]["name"] = 'we"ird<&>\\name'
    plan["lab_name"] = 'lab"x'
    text = lab_graph_dot(plan)
    graph = graphviz_json(text)
    nodes = {obj["name"]: obj for obj in graph["objects"]}
    # the id is made safe; the label shows the name as written
    assert "vm:we_22ird_3c_26_3e_5cname" in nodes
    assert 'we&quot;ird&lt;&amp;&gt;\\name' in nodes["vm:we_22ird_3c_26_3e_5cname"]["label"]
    assert 'lab&quot;x' in graph["label"]
    assert len(nodes) == 6 and len(graph["edges"]) == 5


def test_dot_draws_an_unaddressed_nic_a_bridge_without_subnet_and_a_second_island():
    plan = small_plan()
    plan["vms"].append(vm("c", "host", [nic(0, "tbr3", "ttap30", None)], port=2304))
    plan["bridges"].append({"name": "tbr3", "subnet": None})
    text = lab_graph_dot(plan)
    assert '"bridge:tbr3"' in text and "no subnet" in text
    assert '"bridge:tbr3" -- "vm:c" [label="eth0 no address\\ntap ttap30"]' in text \
        or '"vm:c" -- "bridge:tbr3" [label="eth0 no address\\ntap ttap30"]' in text
    graphviz_json(text)


def test_both_outputs_are_deterministic_and_do_not_change_the_plan():
    plan = small_plan()
    before = copy.deepcopy(plan)
    assert lab_graph_dot(plan) == lab_graph_dot(copy.deepcopy(plan))
    assert lab_graph_mermaid(plan) == lab_graph_mermaid(copy.deepcopy(plan))
    assert plan == before


def test_mermaid_draws_the_same_nodes_links_and_classes():
    text = lab_graph_mermaid(small_plan())
    lines = text.splitlines()
    assert lines[0] == "flowchart TB"
    assert '  vm_r1{{"<b>r1</b><br/>router, 512 MiB<br/>ssh 127.0.0.1:2301"}}' in lines
    assert '  vm_a("<b>a</b><br/>host, 512 MiB<br/>ssh 127.0.0.1:2302<br/>default via 192.168.71.1")' in lines
    assert '  bridge_tbr1[/"<b>tbr1</b><br/>192.168.71.0/24"/]' in lines
    assert any(line.startswith('  port_tve0>"<b>lab host port tve1</b><br/>192.168.71.9/24') for line in lines)
    links = [line for line in lines if "---|" in line]
    assert len(links) == 5
    assert '  bridge_tbr1 ---|"eth0 192.168.71.2/24<br/>tap ttap11"| vm_a' in links
    assert '  vm_r1 ---|"eth1 192.168.72.1/24<br/>tap ttap20 (e1000)"| bridge_tbr2' in links
    assert '  port_tve0 ---|"tve0 (veth)"| bridge_tbr1' in links
    assert "  class vm_r1 router" in lines and "  class vm_a,vm_b host" in lines
    assert "  class bridge_tbr1,bridge_tbr2 bridge" in lines and "  class port_tve0 port" in lines


def test_mermaid_ids_are_plain_words_and_labels_escape_quotes():
    plan = small_plan()
    plan["vms"][1]["name"] = 'a-"1".x'
    text = lab_graph_mermaid(plan)
    node_ids = re.findall(r"^  (\w+)[\[({>]", text, re.MULTILINE)
    assert "vm_a_2d_221_22_2ex" in node_ids  # '-' is 2d, '"' 22, '.' 2e
    assert len(node_ids) == len(set(node_ids)) == 6
    assert '<b>a-#quot;1#quot;.x</b>' in text
    assert 'a-"1"' not in text


@pytest.mark.parametrize("graph_filter", [lab_graph_dot, lab_graph_mermaid])
def test_a_plan_with_errors_is_refused_naming_them(graph_filter):
    plan = small_plan()
    plan["errors"] = ["a: vm_nics[0].mac 00:00:00:00:00:00 is not usable; give the NIC a real MAC"]
    with pytest.raises(AnsibleFilterError, match=r"1 error\(s\).*vm_nics\[0\]\.mac"):
        graph_filter(plan)


@pytest.mark.parametrize("graph_filter", [lab_graph_dot, lab_graph_mermaid])
@pytest.mark.parametrize("not_a_plan", [None, [], "seed", {"lab_name": "x"}, {"vms": "rt1"}])
def test_input_that_is_not_a_plan_is_refused_with_the_fix(graph_filter, not_a_plan):
    with pytest.raises(AnsibleFilterError, match="qemulab.network.lab_plan"):
        graph_filter(not_a_plan)


# -- every valid lab, as lab_plan plans it, is drawn completely ---------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402  (kept next to the property it serves)

from ansible_collections.qemulab.network.plugins.filter.lab_plan import lab_plan  # noqa: E402
from test_lab_plan_properties import valid_labs  # noqa: E402  (the lab_plan tests' own generator of valid labs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_labs())
def test_every_planned_lab_is_drawn_with_every_nic_and_port(lab):
    hostvars, groups = lab
    plan = lab_plan(hostvars, groups, check_files=False)
    assert plan["errors"] == []
    graph = graphviz_json(lab_graph_dot(plan))
    nics = [(vm["name"], nic) for vm in plan["vms"] for nic in vm["nics"]]
    assert len(graph["objects"]) == len(plan["bridges"]) + len(plan["vms"]) + len(plan["host_ports"])
    labels = sorted(edge["label"].replace("\\n", "\n") for edge in graph["edges"])
    expected = sorted(["%s %s\ntap %s%s" % (nic["dev"], nic["address"], nic["tap"],
                                            "" if nic["model"] == "virtio-net-pci" else " (%s)" % nic["model"])
                       for _, nic in nics] + ["%s (veth)" % port["name"] for port in plan["host_ports"]])
    assert labels == expected
    mermaid = lab_graph_mermaid(plan)
    assert mermaid.count("---|") == len(nics) + len(plan["host_ports"])
    node_ids = re.findall(r"^  (\w+)[\[({>]", mermaid, re.MULTILINE)
    assert len(node_ids) == len(set(node_ids)) == len(graph["objects"])


def test_a_user_mode_nic_and_nat_are_written_under_their_vm_without_a_link():
    plan = small_plan()
    router = plan["vms"][0]
    router["nics"].append({"index": 2, "dev": "eth2", "backend": "user", "bridge": None, "tap": None,
                           "mac": "02:00:00:00:00:09", "address": "10.0.3.15/24", "model": "virtio-net-pci",
                           "vhost": None, "net": "10.0.3.0/24",
                           "hostfwd": [{"host_port": 8080, "guest_port": 80, "protocol": "tcp"}]})
    router["nat"] = [{"type": "masquerade", "inside": "eth0", "outside": "eth1", "inside_subnet": "192.168.71.0/24"},
                     {"type": "static", "inside": "eth0", "outside": "eth1", "inside_address": "192.168.71.2",
                      "outside_address": "192.168.72.10"}]
    lines = lab_graph_mermaid(plan).splitlines()
    node = next(line for line in lines if line.startswith("  vm_r1{{"))
    assert "eth2 user-mode 10.0.3.15/24 127.0.0.1:8080 to port 80" in node
    assert "NAT: masquerade 192.168.71.0/24 out of eth1" in node
    assert "NAT: 192.168.71.2 published as 192.168.72.10" in node
    # still one link per bridged NIC and host port: the user-mode NIC has no segment to join
    assert len([line for line in lines if "---|" in line]) == 5
    graphviz_json(lab_graph_dot(plan))
