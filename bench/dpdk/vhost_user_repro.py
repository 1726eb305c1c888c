#!/usr/bin/env python3
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reproduce (or disprove) the QEMU crash with vhost-user NICs on this host: two guests of the default image on one
user-space switch (dpdk-testpmd forwarding between two net_vhost ports, or OVS-DPDK with dpdkvhostuserclient
ports), then a ping between them over the serial consoles' root shells.

Standalone on purpose (no collection import): run as root from the repository root, e.g.

    flock /tmp/qemulab-heavy.lock python3 bench/dpdk/vhost_user_repro.py --backend memfd --switch testpmd

Everything it makes lives in one private directory (removed at the end): a hugetlbfs mount of its own, the qcow2
overlays over the cached image (never written), sockets, logs. It adds the hugepages it needs to
/proc/sys/vm/nr_hugepages and gives exactly those back, ends every process it started by pid, and prints one JSON
result line (QEMU's exit signal, stderr tail, gdb backtrace with --gdb, ping result).
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
IMAGE_CACHE = "/var/cache/qemulab/images"
KERNEL_ARGS = ("console=ttyS0 quiet net.ifnames=0 mitigations=off tsc=reliable no_timer_check cryptomgr.notests "
               "8250.nr_uarts=1 random.trust_cpu=on init_on_alloc=0 rodata=off audit=0")
MACS = ("52:54:00:d0:00:01", "52:54:00:d0:00:02")
ADDRS = ("10.250.0.1", "10.250.0.2")


def newest_image(cache):
    """The newest complete image directory (one with a manifest) in the collection's image cache."""
    dirs = [d for d in glob.glob(os.path.join(cache, "*")) if os.path.exists(os.path.join(d, "manifest.json"))]
    if not dirs:
        sys.exit("no built guest image under %s: run the lab once (roles/guest_image) first" % cache)
    return max(dirs, key=lambda d: os.path.getmtime(os.path.join(d, "manifest.json")))


class Run:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="qemulab-vhu-")
        os.chmod(self.dir, 0o700)
        self.huge = os.path.join(self.dir, "huge")
        self.procs = []
        self.added_pages = 0
        self.netns = None
        self.mounted = False
        self.prefix = os.path.basename(self.dir)
        self.had_dpdk_dir = os.path.isdir("/var/run/dpdk")
        self.result = {"args": vars(args), "dir": self.dir}

    # -- host resources, each undone in close()
    def reserve_hugepages(self, pages):
        with open(NR_HUGEPAGES) as f:
            before = int(f.read())
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(before + pages))
        with open(NR_HUGEPAGES) as f:
            got = int(f.read()) - before
        self.added_pages = got
        if got < pages:
            raise RuntimeError("asked the kernel for %d more 2 MiB hugepages, got %d" % (pages, got))
        os.makedirs(self.huge)
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0700", "qemulab-vhu", self.huge],
                       check=True)
        self.mounted = True

    def start(self, name, argv, **kw):
        log = open(os.path.join(self.dir, name + ".log"), "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append((name, proc))
        return proc

    def close(self):
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        if self.netns:
            subprocess.run(["ip", "netns", "delete", self.netns], check=False)
        if self.mounted:
            subprocess.run(["umount", self.huge], check=False)
        # DPDK's EAL keeps a runtime directory per --file-prefix (its multi-process socket, config files).
        for prefix in (self.prefix, self.prefix + "-ovs"):
            shutil.rmtree(os.path.join("/var/run/dpdk", prefix), ignore_errors=True)
        if not self.had_dpdk_dir and os.path.isdir("/var/run/dpdk") and not os.listdir("/var/run/dpdk"):
            os.rmdir("/var/run/dpdk")
        if self.added_pages:
            with open(NR_HUGEPAGES) as f:
                now = int(f.read())
            with open(NR_HUGEPAGES, "w") as f:
                f.write(str(max(0, now - self.added_pages)))
        if self.args.keep:
            print("kept", self.dir, file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the switch
    def start_testpmd(self, socks):
        argv = ["dpdk-testpmd", "-l", self.args.lcores, "--no-pci", "--huge-dir", self.huge,
                "--file-prefix", os.path.basename(self.dir), "-m", "256", "--log-level", "lib.vhost.*:info"]
        for i, sock in enumerate(socks):
            argv += ["--vdev", "net_vhost%d,iface=%s,queues=%d,client=0" % (i, sock, self.args.queues)]
        argv += ["--", "--forward-mode=io", "--auto-start", "--stats-period", "5",
                 "--total-num-mbufs=8192", "--rxq=%d" % self.args.queues, "--txq=%d" % self.args.queues]
        proc = self.start("testpmd", argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not all(os.path.exists(s) for s in socks):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("testpmd did not create its vhost sockets: " + self.tail("testpmd"))
            time.sleep(0.2)
        return "server"

    def start_ovs(self, socks):
        run = os.path.join(self.dir, "ovs")
        os.makedirs(run)
        env = dict(os.environ, OVS_RUNDIR=run, OVS_DBDIR=run, OVS_LOGDIR=run, OVS_SYSCONFDIR=run)
        db = os.path.join(run, "conf.db")
        subprocess.run(["ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema"], check=True, env=env)
        dbsock = os.path.join(run, "db.sock")
        self.start("ovsdb", ["ovsdb-server", db, "--remote=punix:" + dbsock, "--pidfile=" + run + "/ovsdb.pid",
                             "--unixctl=" + run + "/ovsdb.ctl"], env=env)
        vsctl = ["ovs-vsctl", "--db=unix:" + dbsock, "--no-wait"]
        deadline = time.monotonic() + 20
        while not os.path.exists(dbsock):
            if time.monotonic() > deadline:
                raise RuntimeError("ovsdb-server did not start: " + self.tail("ovsdb"))
            time.sleep(0.1)
        subprocess.run(vsctl + ["init"], check=True, env=env)
        subprocess.run(vsctl + ["set", "Open_vSwitch", ".", "other_config:dpdk-init=true",
                                "other_config:dpdk-extra=--no-pci --huge-dir %s --file-prefix %s-ovs" % (
                                    self.huge, os.path.basename(self.dir)),
                                "other_config:dpdk-socket-mem=256", "other_config:pmd-cpu-mask=0x2",
                                "other_config:dpdk-lcore-mask=0x1",
                                "other_config:vhost-sock-dir=" + run], check=True, env=env)
        # The netdev datapath makes persistent taps (ovs-netdev, one per bridge) in vswitchd's network namespace:
        # a namespace of this run's own, deleted at the end with them, keeps them out of the host's.
        self.netns = "qlvhu%d" % os.getpid()
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.start("ovs-vswitchd", ["ip", "netns", "exec", self.netns,
                                    "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk", "unix:" + dbsock,
                                    "--pidfile=" + run + "/vswitchd.pid", "--unixctl=" + run + "/vswitchd.ctl",
                                    "--log-file=" + run + "/vswitchd.log"], env=env)
        vsctl = vsctl[:2] + ["--timeout=60"]
        subprocess.run(vsctl + ["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"], check=True,
                       env=env)
        for i, sock in enumerate(socks):
            subprocess.run(vsctl + ["add-port", "br0", "vhu%d" % i, "--", "set", "Interface", "vhu%d" % i,
                                    "type=dpdkvhostuserclient", "options:vhost-server-path=" + sock], check=True,
                           env=env)
        return "client"

    def start_bridge(self, count):
        """A private netns with a kernel bridge and one tap per guest; QEMU runs inside it (ip netns exec)."""
        self.netns = "qlvhu%d" % os.getpid()
        ns = ["ip", "-n", self.netns]
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(ns + ["link", "add", "br0", "type", "bridge"], check=True)
        subprocess.run(ns + ["link", "set", "br0", "up"], check=True)
        for i in range(count):
            subprocess.run(ns + ["tuntap", "add", "dev", "tap%d" % i, "mode", "tap"], check=True)
            subprocess.run(ns + ["link", "set", "tap%d" % i, "master", "br0", "up"], check=True)
        return "tap"

    def tail(self, name, n=3000):
        try:
            with open(os.path.join(self.dir, name + ".log"), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    # -- the guests
    def qemu_argv(self, i, image, sock, mode):
        a = self.args
        overlay = os.path.join(self.dir, "vm%d.qcow2" % i)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(image, "disk.ext4"), "-F",
                        "raw", overlay], check=True)
        interfaces = os.path.join(self.dir, "vm%d.interfaces" % i)
        with open(interfaces, "w") as f:
            f.write("auto lo eth0\niface lo inet loopback\n\niface eth0 inet static\n    address %s\n"
                    "    netmask 255.255.255.0\n" % ADDRS[i])
        kernel = os.path.join(image, "vmlinux")
        if not os.path.exists(kernel):
            kernel = os.path.join(image, "vmlinuz")
        mem = "%dM" % a.memory
        if a.backend == "memfd":
            obj = "memory-backend-memfd,id=mem,size=%s,share=on" % mem
        else:
            obj = "memory-backend-file,id=mem,size=%s,share=on,mem-path=%s,prealloc=on" % (mem, self.huge)
        server = ",server=on,wait=off" if mode == "client" else ""
        dev = "virtio-net-pci,netdev=net0,mac=%s" % MACS[i] + ("," + a.features if a.features else "")
        argv = [a.qemu] + a.qemu_arg + ["-name", "vhu%d,debug-threads=on" % i, "-accel", a.accel,
                "-m", mem, "-smp", str(a.vcpus)]
        if mode == "tap":
            netdev = ["-netdev", "tap,id=net0,ifname=tap%d,script=no,downscript=no" % i]
        else:
            argv += ["-object", obj]
            netdev = ["-chardev", "socket,id=chr0,path=%s%s" % (sock, server),
                      "-netdev", "vhost-user,id=net0,chardev=chr0,queues=%d" % a.queues]
        if mode != "tap":
            argv += ["-numa", "node,memdev=mem"] if a.numa else ["-machine", "memory-backend=mem"]
        argv += ["-kernel", kernel, "-initrd", os.path.join(image, "initrd.img"),
                 "-append", "root=/dev/vda rw init=/sbin/qemulab-init %s qemulab.hostname=vhu%d qemulab.nics=%s"
                 % (KERNEL_ARGS, i, MACS[i]),
                 "-drive", "file=%s,if=virtio,format=qcow2" % overlay,
                 ] + netdev + ["-device", dev,
                 "-fw_cfg", "name=opt/qemulab/interfaces,file=%s" % interfaces,
                 "-chardev", "socket,id=con,path=%s,server=on,wait=off" % os.path.join(self.dir, "con%d.sock" % i),
                 "-serial", "chardev:con", "-display", "none", "-nodefaults", "-no-user-config"]
        if a.gdb:
            argv = ["gdb", "-q", "-batch", "-ex", "handle SIGUSR1 nostop noprint pass",
                    "-ex", "handle SIGPIPE nostop noprint pass", "-ex", "run",
                    "-ex", "info registers rip rsp rax rdi rsi rdx", "-ex", "x/6i $pc", "-ex", "thread",
                    "-ex", "bt 30", "-ex", "info sharedlibrary", "--args"] + argv
        if mode == "tap":
            argv = ["ip", "netns", "exec", self.netns] + argv
        return argv


def cpu_seconds(pids):
    """utime+stime of each pid and its threads, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            out[name] = None
    return out


def run_iperf(run, consoles, qemus, seconds):
    """iperf3 TCP guest 0 -> guest 1 over the lab NICs, and the CPU each host process used meanwhile."""
    alive = lambda: all(q.poll() is None for q in qemus)  # noqa: E731
    consoles[1].run("iperf3 -s -D -1", 20, alive)
    time.sleep(1)
    pids = {name: proc.pid for name, proc in run.procs}
    before, t0 = cpu_seconds(pids), time.monotonic()
    rc, out = consoles[0].run("iperf3 -c %s -t %d -f m" % (ADDRS[1], seconds), seconds + 60, alive)
    wall = time.monotonic() - t0
    after = cpu_seconds(pids)
    cpu = {name: round((after[name] - before[name]) / wall * 100, 1)
           for name in pids if after.get(name) is not None and before.get(name) is not None}
    summary = [line for line in out.splitlines() if "sender" in line or "receiver" in line]
    mbits = [float(m.group(1)) for line in summary for m in [re.search(r"([\d.]+) Mbits/sec", line)] if m]
    return {"rc": rc, "summary": summary, "mbit_s": mbits, "cpu_percent_of_one_core": cpu,
            "tail": out[-400:] if rc else ""}


class Console:
    """The guest's serial root shell (qemulab-init starts one on ttyS0)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        for _ in range(50):
            try:
                self.sock.connect(path)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                time.sleep(0.1)  # QEMU binds the socket before it listens
        else:
            self.sock.connect(path)
        self.sock.settimeout(0.5)
        self.buf = b""

    def read_until(self, pattern, timeout, alive):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.buf)
            if m:
                return m
            if not alive():
                return None
            try:
                data = self.sock.recv(65536)
                if not data:
                    return None
                self.buf += data
            except socket.timeout:
                pass
        return None

    def run(self, cmd, timeout, alive):
        marker = b"QLDONE%d" % int(time.monotonic() * 1000)
        self.buf = b""
        self.sock.sendall(cmd.encode() + b"; echo " + marker[:2] + b"''" + marker[2:] + b" $?\n")
        m = self.read_until(marker + rb" (\d+)", timeout, alive)
        return (int(m.group(1)) if m else None), self.buf.decode(errors="replace")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("memfd", "hugefile"), default="memfd")
    p.add_argument("--switch", choices=("testpmd", "ovs", "bridge"), default="testpmd",
                   help="bridge: the same guests on taps of a kernel bridge in a private netns (the baseline)")
    p.add_argument("--features", default="", help="extra virtio-net-pci properties, e.g. mrg_rxbuf=off,packed=off")
    p.add_argument("--queues", type=int, default=1)
    p.add_argument("--numa", action="store_true", help="-numa node,memdev= instead of -machine memory-backend=")
    p.add_argument("--vms", type=int, choices=(1, 2), default=2)
    p.add_argument("--memory", type=int, default=256, help="MiB per guest")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--accel", default="tcg,tb-size=64")
    p.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary (e.g. one unpacked from backports)")
    p.add_argument("--qemu-arg", action="append", default=[], help="extra QEMU argument, e.g. -L=DIR (repeatable)")
    p.add_argument("--lcores", default="0,1", help="testpmd -l (one main lcore + one forwarding lcore)")
    p.add_argument("--gdb", action="store_true", help="run each QEMU under gdb -batch: backtrace on a crash")
    p.add_argument("--boot-timeout", type=int, default=90)
    p.add_argument("--iperf", type=int, default=0, help="seconds of iperf3 TCP from guest 0 to guest 1 (0: none)")
    p.add_argument("--image", default=None, help="image directory (default: the newest in the image cache)")
    p.add_argument("--keep", action="store_true", help="keep the private directory (logs) for a look")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it mounts hugetlbfs and reserves hugepages")
    image = args.image or newest_image(IMAGE_CACHE)
    run = Run(args)
    res = run.result
    res["image"] = image
    try:
        guests_pages = args.vms * args.memory // 2 if args.backend == "hugefile" else 0
        socks = [os.path.join(run.dir, "vhu%d.sock" % i) for i in range(args.vms)]
        if args.switch == "bridge":
            mode = run.start_bridge(args.vms)
        else:
            run.reserve_hugepages(128 + 8 + guests_pages)
            mode = run.start_testpmd(socks) if args.switch == "testpmd" else run.start_ovs(socks)
        qemus = []
        for i in range(args.vms):
            qemus.append(run.start("qemu%d" % i, run.qemu_argv(i, image, socks[i], mode)))
        consoles = []
        t0 = time.monotonic()
        for i, q in enumerate(qemus):
            path = os.path.join(run.dir, "con%d.sock" % i)
            while not os.path.exists(path) and q.poll() is None and time.monotonic() - t0 < 30:
                time.sleep(0.1)
            consoles.append(Console(path) if q.poll() is None else None)
        booted = []
        for i, (q, c) in enumerate(zip(qemus, consoles)):
            # qemulab-init starts busybox's shell on ttyS0 last, after ifup -a brought eth0 up.
            ok = c is not None and c.read_until(rb"Enter 'help'", args.boot_timeout,
                                                lambda q=q: q.poll() is None) is not None
            booted.append(bool(ok and q.poll() is None))
        res["boot_s"] = round(time.monotonic() - t0, 1)
        if all(booted):
            rc, out = consoles[0].run("cat /sys/class/net/eth0/operstate", 20, lambda: qemus[0].poll() is None)
            res["eth0_operstate"] = out.strip().splitlines()[-2:-1]
            if args.vms == 2:
                rc, out = consoles[0].run("ping -c 5 -W 2 %s" % ADDRS[1], 40, lambda: all(
                    q.poll() is None for q in qemus))
                res["ping_rc"] = rc
                res["ping"] = out.strip()[-600:]
            if args.vms == 2 and args.iperf and res["ping_rc"] == 0:
                res["iperf"] = run_iperf(run, consoles, qemus, args.iperf)
        time.sleep(2)
        res["qemu"] = []
        for i, q in enumerate(qemus):
            code = q.poll()
            log = run.tail("qemu%d" % i, 6000)
            res["qemu"].append({"exit": code, "booted": booted[i], "log_tail": log,
                                "console_tail": consoles[i].buf.decode(errors="replace")[-1500:]
                                if consoles[i] else ""})
        res["switch_log_tail"] = run.tail(args.switch if args.switch == "testpmd" else "ovs-vswitchd", 2500)
        if args.switch == "ovs":
            try:
                with open(os.path.join(run.dir, "ovs", "vswitchd.log")) as f:
                    res["switch_log_tail"] = f.read()[-2500:]
            except OSError:
                pass
    finally:
        run.close()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
