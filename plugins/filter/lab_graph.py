# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab_graph_dot, lab_graph_mermaid: the planned lab as a topology picture (Graphviz DOT or Mermaid text)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# Each filter is documented in its own file next to this one (lab_graph_dot.yml, lab_graph_mermaid.yml).

import re

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # the filters are plain functions; keep them importable without Ansible for tooling
    AnsibleFilterError = ValueError

FONT = "DejaVu Sans"
# One palette for both outputs, so the DOT and Mermaid pictures read the same way.
COLOURS = {
    "router": {"fill": "#ffe0b2", "line": "#e65100"},
    "host": {"fill": "#c8e6c9", "line": "#1b5e20"},
    "bridge": {"fill": "#bbdefb", "line": "#0d47a1"},
    "port": {"fill": "#e1bee7", "line": "#4a148c"},
}
LEGEND = ("orange 3-D box = router, green rounded box = host, blue bar = segment (bridge) and its subnet,",
          "purple = the lab host's port (veth pair); each link: guest NIC, its address, the tap on the host")


# -- reading the plan --------------------------------------------------------------------------------------------
def _check_plan(plan, filter_name):
    if not isinstance(plan, dict) or not isinstance(plan.get("vms"), list):
        raise AnsibleFilterError("%s: the input is not a plan from qemulab.network.lab_plan (no list 'vms'); pass "
                                 "hostvars | qemulab.network.lab_plan(groups)" % filter_name)
    if plan.get("errors"):
        raise AnsibleFilterError("%s: the plan has %d error(s), fix the inventory first: %s"
                                 % (filter_name, len(plan["errors"]), "; ".join(str(e) for e in plan["errors"])))


def _bridges(plan):
    """Every bridge of the plan with its subnet, including ones only NICs or host ports mention."""
    subnets = {}
    for bridge in plan.get("bridges") or []:
        subnets[bridge["name"]] = bridge.get("subnet")
    for vm in plan["vms"]:
        for nic in vm.get("nics") or []:
            if nic.get("bridge"):
                subnets.setdefault(nic["bridge"], None)
    for port in plan.get("host_ports") or []:
        if port.get("bridge"):
            subnets.setdefault(port["bridge"], None)
    return subnets


def _links(plan):
    """(node, bridge node, kind, item) for every VM NIC and host port, in plan order."""
    links = []
    for vm in plan["vms"]:
        for nic in vm.get("nics") or []:
            if nic.get("bridge"):
                links.append((("vm", vm["name"]), ("bridge", nic["bridge"]), "nic", nic))
    for port in plan.get("host_ports") or []:
        if port.get("bridge"):
            links.append((("port", port["name"]), ("bridge", port["bridge"]), "port", port))
    return links


def _oriented_links(plan):
    """The links, each pointing away from the lab host, so Graphviz ranks the lab outwards from where you stand.

    Graphviz's dot layout ranks an undirected graph by the order each edge is written in. A breadth-first walk from
    the lab host's first port (else the first host VM, else the first VM) orders every link from the nearer end to
    the farther one; VMs and bridges alternate, so no link joins two nodes of one rank.
    """
    links = _links(plan)
    neighbours = {}
    for a, b, _label_a, _label_b in links:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    starts = [("port", p["name"]) for p in plan.get("host_ports") or [] if p.get("bridge")]
    starts += [("vm", vm["name"]) for vm in plan["vms"] if vm.get("kind") == "host"]
    starts += [("vm", vm["name"]) for vm in plan["vms"]]
    starts += [("bridge", name) for name in sorted(_bridges(plan))]
    depth = {}
    for start in starts:
        if start in depth or start not in neighbours:
            continue
        depth[start] = 0
        frontier = [start]
        while frontier:
            following = []
            for node in frontier:
                for other in neighbours[node]:
                    if other not in depth:
                        depth[other] = depth[node] + 1
                        following.append(other)
            frontier = following
    oriented = []
    for a, b, kind, item in links:
        if depth.get(a, 0) <= depth.get(b, 0):
            oriented.append((a, b, kind, item))
        else:
            oriented.append((b, a, kind, item))
    return oriented


def _vm_facts(vm):
    """The short lines under a VM's name: what it is, its size and SSH forward, then its routing."""
    kind = vm.get("kind") or "host"
    size = "%s MiB" % vm["memory_mb"] if vm.get("memory_mb") else None
    if vm.get("vcpus") and vm["vcpus"] != 1:
        size = "%s, %s vCPUs" % (size, vm["vcpus"]) if size else "%s vCPUs" % vm["vcpus"]
    lines = [", ".join(part for part in (kind, size) if part)]
    if vm.get("ssh_port"):
        lines.append("ssh 127.0.0.1:%s" % vm["ssh_port"])
    if vm.get("kernel"):
        lines.append("own kernel + disk")
    routing = []
    if vm.get("gateway"):
        routing.append("default via %s" % vm["gateway"])
    for route in vm.get("routes") or []:
        to = "default" if route.get("to") == "0.0.0.0/0" else route.get("to")
        routing.append("%s via %s" % (to, route.get("via")))
    # user-mode NICs have no bridge to draw a link to, and NAT is the router's own business: both are facts of the VM
    for nic in vm.get("nics") or []:
        if nic.get("backend") == "user":
            forwards = ", ".join("127.0.0.1:%s to port %s" % (f.get("host_port"), f.get("guest_port"))
                                 for f in nic.get("hostfwd") or [])
            lines.append(" ".join(part for part in (nic.get("dev"), "user-mode", nic.get("address"), forwards)
                                  if part))
    for rule in vm.get("nat") or []:
        if rule.get("type") == "masquerade":
            routing.append("NAT: masquerade %s out of %s" % (rule.get("inside_subnet"), rule.get("outside")))
        else:
            routing.append("NAT: %s published as %s" % (rule.get("inside_address"), rule.get("outside_address")))
    if kind == "router" and not vm.get("forwarding", True):
        routing.append("forwarding off")
    elif kind != "router" and vm.get("forwarding"):
        routing.append("forwarding on")
    return lines, routing


def _nic_label(nic):
    address = nic.get("address") or "no address"
    lines = ["%s %s" % (nic.get("dev") or "eth%s" % nic.get("index", "?"), address), "tap %s" % nic.get("tap")]
    if nic.get("model") and nic["model"] != "virtio-net-pci":
        lines[1] += " (%s)" % nic["model"]
    return lines


def _port_label(port):
    lines = ["lab host port %s" % (port.get("peer") or "?"), port.get("address") or "no address"]
    lines += ["%s via %s" % (r.get("to"), r.get("via")) for r in port.get("routes") or []]
    return lines


# -- DOT ----------------------------------------------------------------------------------------------------------
def _dot_id(kind, name):
    """A quoted node id; odd characters become _xx so no name can break out of its quotes."""
    return '"%s:%s"' % (kind, re.sub(r"[^A-Za-z0-9_.-]", lambda m: "_%02x" % ord(m.group(0)), str(name)))


def _dot_escape(text):
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def _html(text):
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\n", " "))


def _dot_node_label(title, lines, extra=None, extra_title=None):
    """An HTML-like label: the name in bold, facts below, an optional left-aligned list (routes) in smaller type."""
    parts = ["<B>%s</B>" % _html(title)]
    parts += ['<FONT POINT-SIZE="12">%s</FONT>' % _html(line) for line in lines]
    label = "<BR/>".join(parts)
    if extra:
        rows = [_html(extra_title)] if extra_title else []
        rows += [_html(line) for line in extra]
        label += '<BR/><FONT POINT-SIZE="12">%s<BR ALIGN="LEFT"/></FONT>' % '<BR ALIGN="LEFT"/>'.join(rows)
    return "<%s>" % label


def _dot_attrs(attrs):
    return ", ".join("%s=%s" % (key, value) for key, value in attrs)


def lab_graph_dot(plan):
    """The plan as Graphviz DOT text; see DOCUMENTATION."""
    _check_plan(plan, "lab_graph_dot")
    name = plan.get("lab_name") or "lab"
    title = "qemulab lab %s" % name
    if plan.get("netns"):
        title += " (namespace %s)" % plan["netns"]
    out = [
        "// Generated by qemulab.network.lab_graph_dot from the lab's inventory; edit the inventory, not this file.",
        "graph %s {" % _dot_id("lab", name),
        "  graph [%s];" % _dot_attrs([
            ("rankdir", "TB"), ("nodesep", "0.9"), ("ranksep", "0.6"), ("pad", "0.3"), ("fontname", '"%s"' % FONT),
            ("fontsize", "20"), ("labelloc", "t"), ("dpi", "96"),
            ("label", '<<B>%s</B><BR/><FONT POINT-SIZE="13">%s</FONT>>'
             % (_html(title), "<BR/>".join(_html(line) for line in LEGEND)))]),
        '  node [fontname="%s", fontsize=15, penwidth=1.6, margin="0.18,0.1"];' % FONT,
        '  edge [fontname="%s", fontsize=13, penwidth=1.6, color="#455a64"];' % FONT,
    ]
    subnets = _bridges(plan)
    for bridge in sorted(subnets):
        colour = COLOURS["bridge"]
        out.append("  %s [%s];" % (_dot_id("bridge", bridge), _dot_attrs([
            ("shape", "box"), ("style", '"filled,bold"'), ("fillcolor", '"%s"' % colour["fill"]),
            ("color", '"%s"' % colour["line"]), ("width", "2.4"), ("height", "0.5"),
            ("label", _dot_node_label(bridge, [subnets[bridge] or "no subnet"])),
        ])))
    for vm in plan["vms"]:
        kind = "router" if vm.get("kind") == "router" else "host"
        colour = COLOURS[kind]
        lines, routing = _vm_facts(vm)
        out.append("  %s [%s];" % (_dot_id("vm", vm["name"]), _dot_attrs([
            ("shape", "box3d" if kind == "router" else "box"),
            ("style", '"filled"' if kind == "router" else '"filled,rounded"'),
            ("fillcolor", '"%s"' % colour["fill"]), ("color", '"%s"' % colour["line"]),
            ("label", _dot_node_label(vm["name"], lines, routing, "routes:" if vm.get("routes") else None)),
        ])))
    for port in plan.get("host_ports") or []:
        colour = COLOURS["port"]
        label = _port_label(port)
        out.append("  %s [%s];" % (_dot_id("port", port["name"]), _dot_attrs([
            ("shape", "cds"), ("style", '"filled"'), ("fillcolor", '"%s"' % colour["fill"]),
            ("color", '"%s"' % colour["line"]), ("margin", '"0.3,0.15"'),
            ("label", _dot_node_label(label[0], [label[1]], label[2:], "routes:" if label[2:] else None)),
        ])))
    for tail, head, kind, item in _oriented_links(plan):
        if kind == "nic":
            label = "\\n".join(_dot_escape(line) for line in _nic_label(item))
        else:
            label = "%s (veth)" % _dot_escape(item["name"])
        out.append("  %s -- %s [label=\"%s\"];" % (_dot_id(*tail), _dot_id(*head), label))
    out.append("}")
    return "\n".join(out) + "\n"


# -- Mermaid ------------------------------------------------------------------------------------------------------
def _mermaid_id(kind, name):
    """Mermaid ids are plain words; keep the kind as a prefix so a VM and a bridge never share one."""
    return "%s_%s" % (kind, re.sub(r"[^A-Za-z0-9]", lambda m: "_%02x" % ord(m.group(0)), str(name)))


def _mermaid_text(lines, bold_first=False):
    """Label text with Mermaid's entity escapes; lines joined by <br/>, the first (a name) optionally bold."""
    escaped = []
    for line in lines:
        text = str(line).replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        escaped.append(text.replace("\n", " "))
    if bold_first and escaped:
        escaped[0] = "<b>%s</b>" % escaped[0]
    return "<br/>".join(escaped)


def lab_graph_mermaid(plan):
    """The plan as a Mermaid flowchart; the same nodes, links and labels as lab_graph_dot."""
    _check_plan(plan, "lab_graph_mermaid")
    out = ["flowchart TB"]
    subnets = _bridges(plan)
    for bridge in sorted(subnets):
        label = _mermaid_text([bridge, subnets[bridge] or "no subnet"], bold_first=True)
        out.append('  %s[/"%s"/]' % (_mermaid_id("bridge", bridge), label))
    for vm in plan["vms"]:
        lines, routing = _vm_facts(vm)
        text = _mermaid_text([vm["name"]] + lines + routing, bold_first=True)
        if vm.get("kind") == "router":
            out.append('  %s{{"%s"}}' % (_mermaid_id("vm", vm["name"]), text))
        else:
            out.append('  %s("%s")' % (_mermaid_id("vm", vm["name"]), text))
    for port in plan.get("host_ports") or []:
        text = _mermaid_text(_port_label(port), bold_first=True)
        out.append('  %s>"%s"]' % (_mermaid_id("port", port["name"]), text))
    for tail, head, kind, item in _oriented_links(plan):
        if kind == "nic":
            label = _mermaid_text(_nic_label(item))
        else:
            label = _mermaid_text(["%s (veth)" % item["name"]])
        out.append('  %s ---|"%s"| %s' % (_mermaid_id(*tail), label, _mermaid_id(*head)))
    for kind in ("router", "host", "bridge", "port"):
        out.append("  classDef %s fill:%s,stroke:%s,stroke-width:2px,color:#000" % (
            kind, COLOURS[kind]["fill"], COLOURS[kind]["line"]))
    for kind, ids in (
            ("router", [_mermaid_id("vm", vm["name"]) for vm in plan["vms"] if vm.get("kind") == "router"]),
            ("host", [_mermaid_id("vm", vm["name"]) for vm in plan["vms"] if vm.get("kind") != "router"]),
            ("bridge", [_mermaid_id("bridge", b) for b in sorted(subnets)]),
            ("port", [_mermaid_id("port", p["name"]) for p in plan.get("host_ports") or []])):
        if ids:
            out.append("  class %s %s" % (",".join(ids), kind))
    return "\n".join(out) + "\n"


class FilterModule(object):
    def filters(self):
        return {"lab_graph_dot": lab_graph_dot, "lab_graph_mermaid": lab_graph_mermaid}
