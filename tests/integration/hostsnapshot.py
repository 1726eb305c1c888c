"""A comparable picture of what a lab could leave behind: links, addresses, routes, sysctls, processes, files.

Taken before and after a test, in the root namespace or in a namespace the test made; two equal snapshots mean the
lab left nothing behind and changed nothing it did not own.
"""
import glob
import os
import socket
import subprocess

from pyroute2 import IPRoute, NetNS

SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/rp_filter",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
)
LAB_PATHS = ("/run/qemulab", "/var/lib/qemulab/labs")


def _netlink(netns):
    return NetNS(netns) if netns else IPRoute()


def _sysctls(netns):
    values = {}
    for key in SYSCTLS:
        if netns:
            out = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/sys/" + key],
                                 capture_output=True, text=True)
            values[key] = out.stdout.strip()
        elif os.path.exists("/proc/sys/" + key):
            with open("/proc/sys/" + key) as f:
                values[key] = f.read().strip()
        else:
            values[key] = ""
    return values


def snapshot(netns=None):
    with _netlink(netns) as ipr:
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
        links = []
        for m in ipr.get_links():
            info = m.get_attr("IFLA_LINKINFO")
            links.append((m.get_attr("IFLA_IFNAME"), info.get_attr("IFLA_INFO_KIND") if info else None,
                          names.get(m.get_attr("IFLA_MASTER")), m.get_attr("IFLA_IFALIAS"), bool(m["flags"] & 1)))
        addresses = sorted(((names.get(m["index"]), m.get_attr("IFA_ADDRESS"), m["prefixlen"])
                           for m in ipr.get_addr()), key=str)
        routes = list((r["family"], r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY"),
                         names.get(r.get_attr("RTA_OIF")), r.get_attr("RTA_TABLE"))
                        for r in ipr.get_routes(family=socket.AF_UNSPEC))
    return {
        "links": sorted(links, key=lambda link: link[0]),
        "addresses": addresses,
        "routes": sorted(routes, key=str),
        "sysctls": _sysctls(netns),
    }


def lab_qemu_processes(lab_name):
    """{pid: argv} of the QEMU processes of a lab of this name (their run files are under .../qemulab/<lab>/)."""
    procs = {}
    for pid_dir in glob.glob("/proc/[0-9]*"):
        try:
            with open(os.path.join(pid_dir, "cmdline"), "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "qemu-system" in os.path.basename(argv[0]) and any("/qemulab/%s/" % lab_name in a for a in argv):
            procs[int(os.path.basename(pid_dir))] = argv
    return procs


def lab_leftovers(lab_name):
    """Processes and files a lab of this name may have left: QEMU processes, run directories, overlays."""
    procs = [" ".join(argv)[:160] for argv in lab_qemu_processes(lab_name).values()]
    files = [p for base in LAB_PATHS for p in glob.glob(os.path.join(base, lab_name)) if os.path.exists(p)]
    return {"processes": procs, "files": files}
