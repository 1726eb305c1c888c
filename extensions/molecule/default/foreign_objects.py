#!/usr/bin/env python3
"""Objects the lab did not make, planted by this molecule scenario; recorded, and removed only while still the same.

The scenario plants them to prove the lab leaves what is not its own alone. Everything it plants it records at once
in a state file (JSON, in molecule's ephemeral directory of the scenario): a namespace by the device and inode of its
/run/netns entry and the alias of its lo, an interface by its namespace's identity, its ifindex, name, kind and
alias. Each alias holds a token drawn for this scenario run. `remove` deletes an interface only while its namespace is
still the recorded one and the interface of the recorded ifindex still has the recorded name, kind and alias; a
namespace only while it is still the recorded one (identity and lo's alias) and holds nothing but `lo`. Anything
else of the same name is somebody else's (a host's own br1x; a namespace made again since, where ifindexes start
again from 1) and is left alone, and named.

Nothing is planted in, or removed from, the namespace this runs in: the scenario's objects live in named namespaces.

    foreign_objects.py STATE netns NAME                      an unmarked namespace NAME (what `ip netns add` makes)
    foreign_objects.py STATE bridge NETNS NAME [--mark M]    a bridge in namespace NETNS
    foreign_objects.py STATE veth NETNS NAME PEER [--mark M] a veth pair in namespace NETNS
    foreign_objects.py STATE check [NAME ...]                {"same": [names], "changed": [{name, why}], "gone": [..]}
    foreign_objects.py STATE remove [NAME ...]               {"removed": [names], "kept": [{name, why}], "gone": [..]}

Marks (--mark): `scenario` (default), the alias `molecule-foreign:<token>`, no qemulab mark at all; `other-lab`, the
alias `qemulab:mol-<token>`, the mark of a qemulab lab that is not the one under test. check and remove act on every
record, or on the records of the names given. Each command prints one JSON document; a failure exits 1 with a message.
"""
import argparse
import json
import os
import secrets
import subprocess
import sys

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

NETNS_DIR = "/run/netns"
MARKS = {"scenario": "molecule-foreign:%s", "other-lab": "qemulab:mol-%s"}
IFNAMSIZ = 15


class Refused(Exception):
    """Something the helper will not do; the message says what and why."""


# --- the state file -----------------------------------------------------------------------------------------------

def load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {"token": secrets.token_hex(4), "objects": []}


def save(path, state):
    """Atomically; no records left, no file left."""
    if not state["objects"]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(state, handle, indent=1, sort_keys=True)
    os.rename(tmp, path)


def selected(state, names):
    return [record for record in state["objects"] if not names or record["name"] in names]


# --- what is on the host now --------------------------------------------------------------------------------------

def netns_identity(name):
    """(device, inode) of the namespace's /run/netns entry, or None when there is no such namespace."""
    path = os.path.join(NETNS_DIR, name)
    if not os.path.ismount(path):
        return None
    stat = os.stat(path)
    return [stat.st_dev, stat.st_ino]


def check_name(name):
    if not name or len(name) > IFNAMSIZ or not all(c.isalnum() or c in "-_." for c in name):
        raise Refused("%r is not a name this helper uses (letters, digits, '-', '_', '.'; at most 15)" % name)


class Namespace:
    """A netlink socket in a named namespace that exists and is still the one with `identity` (when given)."""

    def __init__(self, name, identity=None):
        if not name:
            raise Refused("the scenario plants nothing in the namespace it runs in; name a namespace")
        self.name, self.identity = name, identity
        self.ipr = None

    def __enter__(self):
        found = netns_identity(self.name)
        if found is None:
            raise Refused("namespace %s does not exist" % self.name)
        if self.identity is not None and found != self.identity:
            raise Refused("namespace %s is another namespace than the one recorded (made again since)" % self.name)
        # flags=0: never create the namespace (pyroute2's default would make one of that name)
        self.ipr = IPRoute(netns=self.name, flags=0)
        if netns_identity(self.name) != found:
            self.ipr.close()
            raise Refused("namespace %s was replaced while being opened" % self.name)
        self.identity = found
        return self

    def __exit__(self, *exc):
        self.ipr.close()

    def link(self, index=None, name=None):
        """{index, name, kind, alias} of the link with this ifindex or name, or None."""
        try:
            found = self.ipr.get_links(index) if index is not None else self.ipr.get_links(ifname=name)
        except NetlinkError:
            return None
        if not found:
            return None
        msg = found[0]
        linkinfo = msg.get_attr("IFLA_LINKINFO")
        return {"index": msg["index"], "name": msg.get_attr("IFLA_IFNAME"), "alias": msg.get_attr("IFLA_IFALIAS"),
                "kind": linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None}

    def names(self):
        return sorted(msg.get_attr("IFLA_IFNAME") for msg in self.ipr.get_links())


# --- planting -----------------------------------------------------------------------------------------------------

def plant_netns(path, state, name):
    check_name(name)
    if os.path.lexists(os.path.join(NETNS_DIR, name)):
        raise Refused("namespace %s exists already; the scenario plants only what it makes" % name)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True)
    # The alias of its lo is the scenario's mark (no qemulab mark, so the lab still finds it unmarked): a namespace
    # made later under this name whose inode happens to be the same still is not taken for this one.
    alias = MARKS["scenario"] % state["token"]
    with Namespace(name) as ns:
        ns.ipr.link("set", index=ns.link(name="lo")["index"], ifalias=alias)
        state["objects"].append({"type": "netns", "name": name, "identity": ns.identity, "alias": alias})
    save(path, state)
    return {"planted": [name], "alias": alias}


def plant_links(path, state, netns, kind, names, mark):
    for name in names:
        check_name(name)
    alias = MARKS[mark] % state["token"]
    planted = []
    with Namespace(netns) as ns:
        for name in names:
            if ns.link(name=name) is not None:
                raise Refused("%s exists already in namespace %s; the scenario plants only what it makes"
                              % (name, netns))
        if kind == "bridge":
            ns.ipr.link("add", ifname=names[0], kind="bridge")
        else:
            ns.ipr.link("add", ifname=names[0], kind="veth", peer={"ifname": names[1]})
        # Recorded as soon as it exists: a run killed after this point leaves an object destroy can find and remove.
        for name in names:
            link = ns.link(name=name)
            ns.ipr.link("set", index=link["index"], ifalias=alias)
            state["objects"].append({"type": "link", "name": name, "kind": kind, "netns": netns,
                                     "netns_identity": ns.identity, "ifindex": link["index"], "alias": alias})
            save(path, state)
            planted.append(name)
    return {"planted": planted, "alias": alias}


# --- checking and removing ----------------------------------------------------------------------------------------

def compare(record):
    """None when the recorded object is still there unchanged, "gone" when nothing of it is left, else why not."""
    if record["type"] == "netns":
        if netns_identity(record["name"]) is None:
            return "gone"
        try:
            with Namespace(record["name"], record["identity"]) as ns:
                alias = ns.link(name="lo")["alias"]
        except Refused as exc:
            return str(exc)
        return None if alias == record["alias"] else "namespace %s: its lo has alias %r, not the recorded %r" % (
            record["name"], alias, record["alias"])
    try:
        with Namespace(record["netns"], record["netns_identity"]) as ns:
            now = ns.link(index=record["ifindex"])
            by_name = ns.link(name=record["name"])
    except Refused as exc:
        return "gone" if netns_identity(record["netns"]) is None else str(exc)
    if now is None:
        return "gone" if by_name is None else "%s is now ifindex %d, not the recorded %d (made again since)" % (
            record["name"], by_name["index"], record["ifindex"])
    for field in ("name", "kind", "alias"):
        if now[field] != record[field]:
            return "ifindex %d has %s %r, not the recorded %r" % (record["ifindex"], field, now[field], record[field])
    return None


def sort_into(report, still, other, record, why):
    """Name the record under `still` (the recorded object is there unchanged), "gone", or `other` with why not."""
    if why is None:
        report[still].append(record["name"])
    elif why == "gone":
        report["gone"].append(record["name"])
    else:
        report[other].append({"name": record["name"], "why": why})


def check(state, names):
    report = {"same": [], "changed": [], "gone": []}
    for record in selected(state, names):
        sort_into(report, "same", "changed", record, compare(record))
    return report


def remove(path, state, names):
    """Interfaces first (a namespace holding one is not deleted), then namespaces."""
    report = {"removed": [], "kept": [], "gone": []}
    chosen = selected(state, names)
    for record in sorted(chosen, key=lambda item: item["type"] == "netns"):
        why = compare(record)
        if why is None and record["type"] == "link":
            with Namespace(record["netns"], record["netns_identity"]) as ns:
                ns.ipr.link("del", index=record["ifindex"])
        elif why is None:
            with Namespace(record["name"], record["identity"]) as ns:
                others = [name for name in ns.names() if name != "lo"]
            if others:
                report["kept"].append({"name": record["name"], "why": "namespace %s holds interfaces the scenario "
                                       "did not record: %s" % (record["name"], ", ".join(others))})
                continue  # still the scenario's: its record stays for the next destroy
            subprocess.run(["ip", "netns", "delete", record["name"]], check=True, capture_output=True, text=True)
        # A veth's peer goes with it: found gone, it is dropped like any record of an object no longer there.
        sort_into(report, "removed", "kept", record, why)
        state["objects"].remove(record)  # removed, gone, or somebody else's now: never the scenario's again
        save(path, state)
    return report


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("state")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("netns").add_argument("name")
    bridge = commands.add_parser("bridge")
    bridge.add_argument("netns")
    bridge.add_argument("name")
    veth = commands.add_parser("veth")
    veth.add_argument("netns")
    veth.add_argument("name")
    veth.add_argument("peer")
    for command in (bridge, veth):
        command.add_argument("--mark", choices=sorted(MARKS), default="scenario")
    for name in ("check", "remove"):
        commands.add_parser(name).add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    state = load(args.state)
    try:
        if args.command == "netns":
            result = plant_netns(args.state, state, args.name)
        elif args.command == "bridge":
            result = plant_links(args.state, state, args.netns, "bridge", [args.name], args.mark)
        elif args.command == "veth":
            result = plant_links(args.state, state, args.netns, "veth", [args.name, args.peer], args.mark)
        elif args.command == "check":
            result = check(state, args.names)
        else:
            result = remove(args.state, state, args.names)
    except (Refused, NetlinkError, OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        sys.stderr.write("foreign_objects.py %s: %s %s\n" % (args.command, exc, detail.strip()))
        return 1
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
