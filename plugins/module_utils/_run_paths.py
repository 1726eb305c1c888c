# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a lab keeps its files on the lab host: the one place that decides the roots.

Root keeps the system paths (/run/qemulab, /var/cache/qemulab, /var/lib/qemulab). A user without root (a rootless
lab, docs/rootless.md) gets their own:
    run    $XDG_RUNTIME_DIR/qemulab   run state (pidfiles, sockets, locks, claims, namespace holders), gone at reboot
    cache  ~/.cache/qemulab           images, .deb cache, probe caches (rebuildable)
    state  ~/.local/share/qemulab     disks, keys, known_hosts, captures
The home directory comes from the password database, not $HOME, and $XDG_CACHE_HOME/$XDG_DATA_HOME are not read:
a later run (another shell, another Ansible connection) must find the same lab whatever its environment. Only
$XDG_RUNTIME_DIR is read, since logind sets it for every session of the user; without it, /run/user/<uid> (what
logind would have made) is used and `runtime_dir_problem` says what is missing.

Root never consults the environment or the password database, so its paths are the same strings as always.
Pure: no file is created here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import os
import pwd
import stat


class Roots(collections.namedtuple("Roots", "run cache state rootless")):
    """The three roots and what lies directly under them (derived here once, so no caller joins names itself)."""

    __slots__ = ()

    @property
    def netns_markers(self):
        # beside the per-lab run directories; no valid lab name starts with "_", so none collides
        return os.path.join(self.run, "_netns")

    @property
    def images(self):
        return os.path.join(self.cache, "images")

    @property
    def debs(self):
        return os.path.join(self.cache, "debs")

    @property
    def accel_cache(self):
        return os.path.join(self.cache, "accel.json")

    @property
    def netem_cache(self):
        return os.path.join(self.cache, "netem.json")

    @property
    def labs(self):
        return os.path.join(self.state, "labs")

    @property
    def ssh_key(self):
        return os.path.join(self.state, "ssh", "id_ed25519")

    @property
    def jump(self):
        return os.path.join(self.state, "jump")

    def lab_run(self, lab):
        return os.path.join(self.run, lab)


ROOT = Roots(run="/run/qemulab", cache="/var/cache/qemulab", state="/var/lib/qemulab", rootless=False)


def system_runtime_dir(uid):
    return "/run/user/%d" % uid


def roots(uid, home, runtime_dir=None):
    """The roots for `uid`; `home` is its home directory, `runtime_dir` the value of $XDG_RUNTIME_DIR (or None)."""
    if uid == 0:
        return ROOT
    # XDG: a relative value is invalid and ignored
    if not runtime_dir or not os.path.isabs(runtime_dir):
        runtime_dir = system_runtime_dir(uid)
    return Roots(run=os.path.join(runtime_dir, "qemulab"),
                 cache=os.path.join(home, ".cache", "qemulab"),
                 state=os.path.join(home, ".local", "share", "qemulab"),
                 rootless=True)


def current(environ=None, euid=None):
    """The roots of the user this process runs as."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return ROOT
    environ = os.environ if environ is None else environ
    try:
        home = pwd.getpwuid(euid).pw_dir
    except KeyError:
        # a uid without a passwd entry (some containers): its $HOME is all there is
        home = environ.get("HOME") or "/nonexistent"
    return roots(euid, home, environ.get("XDG_RUNTIME_DIR"))


def runtime_dir_problem(paths, euid=None, lstat=os.lstat):
    """None when the run root's parent is a directory of this user's, mode 0700 (what logind makes); else the fix."""
    if not paths.rootless:
        return None
    euid = os.geteuid() if euid is None else euid
    parent = os.path.dirname(paths.run)
    try:
        st = lstat(parent)
    except OSError:
        return ("the runtime directory %s does not exist: log in through a session that sets XDG_RUNTIME_DIR "
                "(or have the administrator run `loginctl enable-linger <user>`), or set XDG_RUNTIME_DIR to a "
                "directory of your own with mode 0700" % parent)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or stat.S_IMODE(st.st_mode) & 0o077:
        return ("the runtime directory %s must be a directory owned by uid %d with mode 0700 (it holds the lab's "
                "sockets and locks)" % (parent, euid))
    return None


CURRENT = current()
