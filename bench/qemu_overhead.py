# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How much resident memory a QEMU process of the collection uses beyond its guest's RAM (TCG, default image).

    .venv/bin/python bench/qemu_overhead.py [--sizes 128,256,512,1024] [--runs 3] [--tb-size 64] [--no-touch]
                                            [--image-dir DIR] [--json FILE]

Boots one guest at a time with the argv the collection itself builds (module_utils/_qemu*.py normalise_config +
build_argv: `-accel tcg,tb-size=N`, default machine, one vCPU, virtio-rng, sandbox, QMP, pidfile, serial console
socket with a log) on the default guest image, from a throwaway qcow2 overlay in a temp dir, with one
virtio-net-pci NIC on user-mode networking (`restrict=on`, no forwards) in place of the lab's NICs (no tap is
created). When the guest's serial root shell answers, it reads /proc/PID/status and smaps ("after boot"); then the
guest drops its caches and fills its free memory (`dd` of a MemFree-sized buffer from /dev/zero) so that QEMU
backs (nearly) every guest page, and it reads them again ("after touch"). QEMU is then stopped with SIGTERM to its
pid. Each smaps mapping is put in one class:

  guest RAM    the anonymous mapping of exactly the guest's size
  TB cache     the anonymous executable mapping (TCG's translation buffer, tb-size MiB)
  image files  mappings of the guest image's kernel/initrd (QEMU keeps the ELF kernel mapped; page cache that
               every QEMU booting the same image shares)
  other files  QEMU's binary and libraries (page cache shared by every QEMU on the host)
  anon other   heap, thread arenas and stacks, ROMs, device state: private to this QEMU

overhead = VmRSS - guest RAM RSS = TB cache + image files + other files + anon other. The worst case of one VM is
guest RAM + overhead (after touch). "anonymous overhead" is the part of it that is not page cache (smaps
Anonymous outside guest RAM: TB cache, anon other and the few file pages QEMU wrote to): what each further VM adds
once the QEMU binary and the image's kernel are in the page cache, which every QEMU on them shares.

Prints a Markdown table of medians (max in brackets); --json keeps every value. Everything it starts is stopped and
every file it makes is removed, on any exit (Ctrl-C, SIGTERM). About 5 minutes with the defaults on 2 busy cores.
"""

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.join(REPO_ROOT, ".build", "collections"))
from _harness import log, sigterm_as_interrupt  # noqa: E402

MODULE_UTILS = "ansible_collections.qemulab.network.plugins.module_utils."


def _collection_function(name, modules=("_qemu", "_qemu_config", "_qemu_argv")):
    """`name` from the first of the collection's QEMU modules that has it (the one module or its split parts)."""
    import importlib
    errors = []
    for module in modules:
        try:
            found = getattr(importlib.import_module(MODULE_UTILS + module), name, None)
        except ImportError as exc:
            errors.append(str(exc))
            continue
        if found:
            return found
    raise SystemExit("no %s in the collection's module_utils (%s); run `make setup` first"
                     % (name, "; ".join(errors) or "not defined"))


try:
    from ansible_collections.qemulab.network.plugins.module_utils import _guest_image  # noqa: E402
except ImportError as exc:  # pragma: no cover - a setup problem, said plainly
    raise SystemExit("cannot import the collection (%s): run `make setup` first" % exc)

IMAGE_CACHE = "/var/cache/qemulab/images"
ROLE_DEFAULTS = os.path.join(REPO_ROOT, "roles", "guest_image", "defaults", "main.yml")
MGMT_MAC = "52:54:00:0e:7e:01"
CLASSES = ("ram", "tb", "image", "file", "anon")
# Sent to the guest's serial root shell; the arithmetic keeps the shell's echo of the command from matching, and
# a match needs the whole line (a read can end in the middle of a number).
UP_CMD = "echo QL_$((6*7))_UP\n"
UP_RE = re.compile(rb"(?m)^QL_42_UP\r?\n")
TOUCH_RESERVE_MIB = 12
TOUCH_CMD = ("echo 3 > /proc/sys/vm/drop_caches; n=$(( $(awk '/^MemFree:/{print $2}' /proc/meminfo) / 1024 - %d ));"
             " dd if=/dev/zero of=/dev/null bs=${n}M count=1 2>/dev/null; echo QL_$((6*7))_TOUCHED $n\n"
             % TOUCH_RESERVE_MIB)
TOUCH_RE = re.compile(rb"QL_42_TOUCHED (-?\d+)\r?\n")


def default_image():
    """(paths, manifest) of the newest finished image in the cache."""
    best = None
    for key in os.listdir(IMAGE_CACHE) if os.path.isdir(IMAGE_CACHE) else []:
        manifest = _guest_image.read_image(IMAGE_CACHE, key)
        if manifest and (best is None or manifest.get("built", "") > best[1].get("built", "")):
            best = (_guest_image.image_paths(IMAGE_CACHE, key), manifest)
    return best


def image_from_dir(path):
    path = os.path.abspath(path)
    cache, key = os.path.split(path.rstrip("/"))
    manifest = _guest_image.read_image(cache, key)
    if not manifest:
        raise SystemExit("%s holds no finished guest image (manifest.json and sizes)" % path)
    return _guest_image.image_paths(cache, key), manifest


def kernel_args():
    """The guest_image role's default kernel arguments (what labs boot with)."""
    import yaml
    with open(ROLE_DEFAULTS) as f:
        return " ".join(str(yaml.safe_load(f)["guest_image_kernel_args"]).split())


def vm_argv(run_dir, memory_mib, tb_size, paths, manifest, append):
    overlay = os.path.join(run_dir, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", paths["disk"], "-F", "raw", overlay],
                   check=True, capture_output=True)
    config = _collection_function("normalise_config")({
        "name": "ovh%d" % memory_mib, "lab": "qemu-overhead", "run_dir": run_dir,
        "kernel": _guest_image.boot_kernel(paths, manifest), "initrd": paths["initrd"],
        "append": "%s qemulab.hostname=ovh qemulab.mgmt=%s" % (append, MGMT_MAC),
        "disks": [{"file": overlay, "format": "qcow2", "interface": "virtio"}],
        "memory": memory_mib, "tb_size": tb_size,
        "nics": [{"backend": "user", "model": "virtio-net-pci", "mac": MGMT_MAC, "restrict": True}],
    })
    vpaths = _collection_function("vm_paths")(run_dir)
    # QEMU opens its console log in there (a lab mounts a bounded tmpfs on it; a benchmark run's log stays small)
    os.makedirs(vpaths["console_dir"], exist_ok=True)
    return _collection_function("build_argv")(config, "tcg", daemon=True), vpaths


def classify(smaps_path, guest_kib, image_dir):
    """{class: Rss kB} over the mappings of one smaps file, plus each class's largest mapping size."""
    rss = dict.fromkeys(CLASSES, 0)
    anonymous = dict.fromkeys(CLASSES, 0)
    sizes = dict.fromkeys(CLASSES, 0)
    ram_seen = False
    current = None
    with open(smaps_path) as f:
        for line in f:
            head = line.split(None, 5)
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", head[0]):
                start, end = (int(x, 16) for x in head[0].split("-"))
                perms = head[1]
                path = head[5].strip() if len(head) > 5 else ""
                size_kib = (end - start) // 1024
                if not path and size_kib == guest_kib and not ram_seen:
                    current, ram_seen = "ram", True
                elif not path and "x" in perms:
                    current = "tb"
                elif path.startswith(image_dir + "/"):
                    current = "image"
                elif path.startswith("/"):
                    current = "file"
                else:
                    current = "anon"
                sizes[current] = max(sizes[current], size_kib)
            elif head[0] == "Rss:":
                rss[current] += int(head[1])
            elif head[0] == "Anonymous:":
                anonymous[current] += int(head[1])
    return rss, anonymous, sizes


def status_kib(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1])
    return out


def snapshot(pid, guest_mib, image_dir):
    rss, anonymous, sizes = classify("/proc/%d/smaps" % pid, guest_mib * 1024, image_dir)
    status = status_kib(pid)
    mib = dict((k, round(v / 1024.0, 1)) for k, v in rss.items())
    mib.update(dict((k, round(v / 1024.0, 1)) for k, v in status.items()))
    mib["overhead"] = round((status["VmRSS"] - rss["ram"]) / 1024.0, 1)
    mib["anon_overhead"] = round(sum(v for k, v in anonymous.items() if k != "ram") / 1024.0, 1)
    mib["tb_mapping"] = round(sizes["tb"] / 1024.0, 1)
    return mib


class Console:
    """The guest's serial console: QEMU's chardev socket (server) in the run directory."""

    def __init__(self, path, deadline):
        self.buf = b""
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                return
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def send(self, text):
        self.sock.sendall(text.encode())

    def wait_for(self, regex, timeout, resend=None, every=2.0):
        deadline = time.monotonic() + timeout
        next_send = 0
        while True:
            match = regex.search(self.buf)
            if match:
                self.buf = self.buf[match.end():]
                return match
            now = time.monotonic()
            if now > deadline:
                return None
            if resend and now >= next_send:
                self.send(resend)
                next_send = now + every
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if ready:
                data = self.sock.recv(65536)
                if not data:
                    return None
                self.buf += data

    def close(self):
        self.sock.close()


def stop(proc):
    """SIGTERM to the QEMU we started (by its pid), SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(run_dir, name):
    try:
        with open(os.path.join(run_dir, name), "rb") as f:
            return f.read()[-400:]
    except OSError:
        return b""


def one_run(memory_mib, tb_size, paths, manifest, append, touch, boot_timeout):
    run_dir = tempfile.mkdtemp(prefix="qemu-overhead-")
    proc = None
    console = None
    try:
        argv, vpaths = vm_argv(run_dir, memory_mib, tb_size, paths, manifest, append)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(run_dir, "stderr"), "wb"), start_new_session=True)
        console = Console(vpaths["console_socket"], t0 + 10)
        if not console.wait_for(UP_RE, boot_timeout, resend=UP_CMD):
            raise RuntimeError("%d MiB guest: no shell on the serial console after %.0f s (QEMU exit status %s, "
                               "stderr %r); console: %r"
                               % (memory_mib, time.monotonic() - t0, proc.poll(), _tail(run_dir, "stderr"),
                                  console.buf[-400:]))
        result = {"guest_mib": memory_mib, "boot_s": round(time.monotonic() - t0, 1), "argv": argv}
        time.sleep(1)
        result["boot"] = snapshot(proc.pid, memory_mib, paths["dir"])
        if touch:
            t1 = time.monotonic()
            console.send(TOUCH_CMD)
            match = console.wait_for(TOUCH_RE, 60 + memory_mib / 8.0)
            if not match:
                raise RuntimeError("%d MiB guest: the memory fill did not finish (exit %s); console: %r"
                                   % (memory_mib, proc.poll(), console.buf[-400:]))
            result["touch_s"] = round(time.monotonic() - t1, 1)
            result["touched_mib"] = int(match.group(1))
            time.sleep(1)
            result["touch"] = snapshot(proc.pid, memory_mib, paths["dir"])
        return result
    finally:
        if console:
            console.close()
        if proc:
            stop(proc)
        shutil.rmtree(run_dir, ignore_errors=True)


def med_max(values):
    return "%.0f (%.0f)" % (statistics.median(values), max(values))


def table(results, touch):
    cols = ["guest MiB", "boot s", "RSS after boot", "guest RAM after boot", "overhead after boot"]
    if touch:
        cols += ["RSS after touch", "guest RAM after touch", "overhead after touch", "VmHWM"]
    cols += ["TB cache (mapping)", "image files", "other files", "anon other", "anonymous overhead",
             "worst case = guest + overhead"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for size in sorted(results):
        runs = results[size]
        last = "touch" if touch else "boot"

        def col(phase, key):
            return med_max([r[phase][key] for r in runs])
        row = [str(size), "%.1f" % statistics.median([r["boot_s"] for r in runs]),
               col("boot", "VmRSS"), col("boot", "ram"), col("boot", "overhead")]
        if touch:
            row += [col("touch", "VmRSS"),
                    "%s = %.0f %%" % (col("touch", "ram"),
                                      100.0 * statistics.median([r["touch"]["ram"] for r in runs]) / size),
                    col("touch", "overhead"), col("touch", "VmHWM")]
        row += ["%s of %.0f" % (col(last, "tb"), runs[0][last]["tb_mapping"]), col(last, "image"), col(last, "file"),
                col(last, "anon"), col(last, "anon_overhead"),
                "%.0f" % (size + max(r[last]["overhead"] for r in runs))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128,256,512,1024", help="guest memory sizes in MiB (comma-separated)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tb-size", type=int, default=64, help="TCG translation cache in MiB (collection default)")
    parser.add_argument("--no-touch", action="store_true", help="measure after boot only (no memory fill)")
    parser.add_argument("--image-dir", help="a guest image directory (default: newest in %s)" % IMAGE_CACHE)
    parser.add_argument("--boot-timeout", type=int, default=120)
    parser.add_argument("--json", help="write every value of every run here")
    args = parser.parse_args()
    sigterm_as_interrupt()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    image = image_from_dir(args.image_dir) if args.image_dir else default_image()
    if not image:
        raise SystemExit("no finished guest image under %s (the guest_image role builds one)" % IMAGE_CACHE)
    paths, manifest = image
    append = "%s %s" % (_guest_image_root_args(), kernel_args())
    touch = not args.no_touch
    log("image %s, kernel %s, tb-size %d MiB, sizes %s, %d run(s) each, load %s, transparent hugepages %s"
        % (paths["dir"], os.path.basename(_guest_image.boot_kernel(paths, manifest)), args.tb_size, sizes, args.runs,
           " ".join(open("/proc/loadavg").read().split()[:3]), thp_mode()))
    results = {}
    t0 = time.monotonic()
    try:
        for run in range(args.runs):
            for size in sizes:
                r = one_run(size, args.tb_size, paths, manifest, append, touch, args.boot_timeout)
                results.setdefault(size, []).append(r)
                last = r.get("touch", r["boot"])
                log("%4d MiB run %d: boot %.1f s, RSS %.0f MiB after boot (RAM %.0f, overhead %.0f)%s"
                    % (size, run + 1, r["boot_s"], r["boot"]["VmRSS"], r["boot"]["ram"], r["boot"]["overhead"],
                       ", after touching %d MiB in %.1f s: RSS %.0f (RAM %.0f, overhead %.0f: TB %.0f, image %.0f, "
                       "files %.0f, anon %.0f)" % (r["touched_mib"], r["touch_s"], last["VmRSS"], last["ram"],
                                                   last["overhead"], last["tb"], last["image"], last["file"],
                                                   last["anon"]) if touch else ""))
    except KeyboardInterrupt:
        log("interrupted; QEMU stopped, files removed")
        return 130
    print("\nQEMU resident memory, MiB, median (max) of %d run(s), tb-size %d MiB, %s, %.0f s in all\n"
          % (args.runs, args.tb_size, "after filling the guest's free memory" if touch else "after boot only",
             time.monotonic() - t0))
    print(table(results, touch))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tb_size": args.tb_size, "image": paths["dir"], "touch": touch, "thp": thp_mode(),
                       "runs": [r for size in sorted(results) for r in results[size]]}, f, indent=1)
    return 0


def thp_mode():
    """The host's transparent hugepage mode: QEMU madvises guest RAM and the TB cache, so both fault in 2 MiB
    pieces unless it is `never`."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return re.search(r"\[(\w+)\]", f.read()).group(1)
    except (OSError, AttributeError):
        return "unknown"


def _guest_image_root_args():
    """The fixed start of the default image's kernel command line (modules/guest_image.py ROOT_ARGS)."""
    try:
        from ansible_collections.qemulab.network.plugins.modules.guest_image import ROOT_ARGS
        return ROOT_ARGS
    except ImportError:
        return "root=/dev/vda rw init=/sbin/qemulab-init"


if __name__ == "__main__":
    sys.exit(main())
