# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small QMP client over a VM's unix socket (QEMU Machine Protocol, JSON lines)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import array
import json
import os
import socket
import stat
import struct
import time

# A QMP reply larger than this is not QEMU talking (query-qmp-schema, the largest, is ~200 KiB): stop reading.
MAX_MESSAGE = 8 * 1024 * 1024


class QMPError(Exception):
    """QMP could not be reached or answered with an error."""


def peer_credentials(sock):
    """(pid, uid, gid) of the process that made the other end of a connected unix socket (SO_PEERCRED)."""
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


class QMPClient(object):
    """One QMP session: greeting, qmp_capabilities, then commands. Use as a context manager.

    peer_check(pid, uid, gid), when given, must accept the process serving the socket before a byte is sent: a
    socket path in a directory another user owns may have been swapped for a link to someone else's socket."""

    def __init__(self, path, timeout=5.0, peer_check=None):
        self.path = path
        self.timeout = timeout
        self.peer_check = peer_check
        self.peer = None
        self._sock = None
        self._buf = b""
        self.greeting = None

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def connect(self):
        try:
            is_socket = stat.S_ISSOCK(os.lstat(self.path).st_mode)
        except OSError as exc:
            raise QMPError("cannot connect to QMP socket %s: %s" % (self.path, exc))
        if not is_socket:  # a link (its target is never connected to) or anything else
            raise QMPError("QMP socket %s is not a socket" % self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except (OSError, socket.error) as exc:
            sock.close()
            raise QMPError("cannot connect to QMP socket %s: %s" % (self.path, exc))
        self._sock = sock
        try:
            self.peer = peer_credentials(sock)
        except (OSError, socket.error, struct.error) as exc:
            self.close()
            raise QMPError("QMP socket %s: cannot read its peer credentials: %s" % (self.path, exc))
        if self.peer_check is not None and not self.peer_check(*self.peer):
            self.close()
            raise QMPError("QMP socket %s is served by pid %d (uid %d), not by this VM's QEMU"
                           % (self.path, self.peer[0], self.peer[1]))
        # QMP serves one client at a time: a busy monitor shows up as a greeting timeout.
        self.greeting = self._read_message()
        if "QMP" not in self.greeting:
            raise QMPError("unexpected QMP greeting on %s: %r" % (self.path, self.greeting))
        self.command("qmp_capabilities")

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _read_message(self):
        deadline = time.time() + self.timeout
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_MESSAGE or time.time() > deadline:
                raise QMPError("QMP socket %s: no complete message within %s bytes and %ss"
                               % (self.path, MAX_MESSAGE, self.timeout))
            try:
                chunk = self._sock.recv(65536)
            except (OSError, socket.error) as exc:
                raise QMPError("reading QMP socket %s: %s" % (self.path, exc))
            if not chunk:
                raise QMPError("QMP socket %s closed" % self.path)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line.decode("utf-8"))
        except ValueError:
            raise QMPError("QMP socket %s sent invalid JSON: %r" % (self.path, line[:200]))

    def command(self, execute, **arguments):
        """Run one command and return its `return` value; asynchronous events in between are skipped. (Not `name`:
        set_link's own argument is called that.)"""
        return self.command_with_fds(execute, (), **arguments)

    def command_with_fds(self, execute, fds, **arguments):
        """command(), passing open file descriptors with it (SCM_RIGHTS), as `getfd` and `add-fd` take them."""
        name = execute
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        data = json.dumps(msg).encode("utf-8") + b"\n"
        try:
            if fds:
                self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            else:
                self._sock.sendall(data)
        except (OSError, socket.error) as exc:
            raise QMPError("writing QMP socket %s: %s" % (self.path, exc))
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            reply = self._read_message()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                err = reply["error"]
                raise QMPError("QMP %s failed: %s: %s" % (name, err.get("class"), err.get("desc")))
        raise QMPError("QMP %s: no reply within %ss" % (name, self.timeout))


def query_status(path, timeout=3.0, peer_check=None):
    """The VM's run status (`running`, `paused`, `shutdown`, ...) or None when QMP does not answer (or the socket's
    server fails `peer_check`)."""
    try:
        with QMPClient(path, timeout=timeout, peer_check=peer_check) as qmp:
            return qmp.command("query-status").get("status")
    except QMPError:
        return None
