# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # The namespace an object lives in.
    DOCUMENTATION = r"""
options:
  netns:
    description:
      - Network namespace (a name under C(/run/netns)) to work in. Omit for the host's own namespace.
      - Lower-case letters, digits and C(-), starting with a letter or digit, at most 32 characters.
      - The namespace must exist; create it with M(qemulab.network.netns). In check mode a missing namespace is
        reported as a warning, since an earlier task would have created it.
    type: str
"""

    # A rootless lab's namespace, named by its holder (shared by every module that takes O(netns) or works in one).
    HOLDER = r"""
options:
  userns_pid:
    description:
      - Work in a rootless lab's network namespace instead (docs/rootless.md) - the one held by the
        M(qemulab.network.lab_userns) holder with this pid (its RV(qemulab.network.lab_userns#module:holder.pid)).
        Excludes O(netns).
      - The module runs as the lab's user. The pid is trusted only when a holder record of that user (under the user's
        run root, C($XDG_RUNTIME_DIR/qemulab/_userns/)) names it and the process is still that holder (same start
        time and namespaces, the user's own process); otherwise the task fails before anything changes. A short-lived
        helper joins the holder's user and network namespace and hands back what the module needs there (a netlink
        socket, C(/dev/net/tun), C(/proc/sys/net) files), so the rest of the module works as in a named namespace.
    type: int
"""

    # Which lab owns what, and overriding that.
    OWNERSHIP = r"""
options:
  lab:
    description:
      - Name of the lab that owns the object (lower-case letters, digits and C(-), starting with a letter or digit,
        at most 15 characters). Interfaces the lab creates get the alias C(qemulab:<lab>);
        namespaces get a marker file C(/run/qemulab/_netns/<name>.owner).
      - An existing object of the same name that is not marked for this lab (no mark, or another lab's) is never
        adopted or deleted silently; the task fails naming it unless O(force=true).
    type: str
    default: default
  force:
    description:
      - Adopt (mark as this lab's) an existing object that is not this lab's with O(state=present), or delete
        one with O(state=absent).
    type: bool
    default: false
notes:
  - Ownership rule shared by all qemulab host modules; see O(lab) and O(force).
"""
