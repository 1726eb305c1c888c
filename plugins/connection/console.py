# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run commands on a guest through its serial console: for images with no SSH server and no Python."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: console
short_description: Run commands on a qemulab guest through its serial console socket
description:
  - Connects to the unix socket QEMU serves the VM's serial console on (C(/run/qemulab/<lab>/<vm>/console.sock)),
    logs in when the console shows a login prompt, and runs each command in a fresh C(sh) with unique markers
    around its output and exit status. Made for guests without SSH or Python (a Yocto C(core-image-minimal));
    M(ansible.builtin.raw), M(ansible.builtin.script) and file transfer work; modules need Python on the guest.
  - QEMU serves one client at a time; QEMU's console log keeps being written while this plugin is attached, and
    whatever the guest prints meanwhile (command output included) goes there too.
  - The lab host must be the controller (the socket is reached on this machine).
author:
  - qemulab developers (@qemulab)
version_added: 1.1.0
options:
  socket:
    description:
      - Path of the console's unix socket. Its last component must not be a symbolic link.
      - Default C(<run_root>/<lab_name>/<inventory_hostname>/console.sock), the path M(qemulab.network.qemu_vm)
        makes.
    type: str
    vars:
      - name: ansible_qemulab_console_socket
  run_root:
    description: Directory holding the labs' run directories, used only to build the default I(socket).
    type: str
    default: /run/qemulab
    vars:
      - name: ansible_qemulab_console_run_root
      - name: lab_run_root
  lab_name:
    description: The lab's name, used only to build the default I(socket).
    type: str
    vars:
      - name: ansible_qemulab_console_lab
      - name: lab_name
  vm:
    description: The VM's name, used only to build the default I(socket).
    type: str
    vars:
      - name: ansible_qemulab_console_vm
      - name: inventory_hostname
  user:
    description: User to log in as when the console shows a login prompt.
    type: str
    default: root
    vars:
      - name: ansible_qemulab_console_user
  password:
    description:
      - Password to give when the console asks for one; empty (the default) answers with an empty line, as a Yocto
        image with C(debug-tweaks) expects for C(root).
    type: str
    default: ''
    vars:
      - name: ansible_qemulab_console_password
  shell_timeout:
    description:
      - Seconds to wait for a shell on the console (a guest still booting is waited for), and for each transfer
        step.
    type: int
    default: 120
    vars:
      - name: ansible_qemulab_console_timeout
  command_timeout:
    description: Seconds one command may run before the task fails; 0 waits for ever.
    type: int
    default: 600
    vars:
      - name: ansible_qemulab_console_command_timeout
notes:
  - The guest needs a POSIX shell with C(printf), C(stty), C(rm), C(wc), C(dd) and C(base64) (busybox has all of them);
    a command's script and an uploaded file go through C(${TMPDIR:-/tmp}).
  - Output passes a terminal, so line ends come back as C(\n) (the terminal's C(\r\n) is undone), escape sequences
    (colours, cursor queries) are dropped, and a line that looks like a kernel message (C([  12.345678] text)) is
    removed wherever it lands - also one a program printed itself. Use M(ansible.builtin.fetch) or
    I(fetch_file) for exact bytes.
  - C(stderr) comes back separately, after the command has ended.
  - Pipelining and become are not supported; the console is the root shell of the guest, or logs in as I(user).
"""

EXAMPLES = r"""
# inventory: a Yocto router without sshd, configured through its console
# host_vars/rt1.yml
#   ansible_connection: qemulab.network.console
#   ansible_qemulab_console_socket: /run/qemulab/mylab/rt1/console.sock
- name: Ask the router its name
  ansible.builtin.raw: uname -n
"""

import base64
import errno
import os
import re
import secrets
import select
import shlex
import socket
import stat
import time

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

# CSI (colours, cursor moves, busybox's cursor query), OSC (titles), charset selection, any other two-byte escape.
_ANSI_RE = re.compile(rb"\x1b\[[0-9;?<=>]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[@-_]")
# A printk line as the serial console prints it; it may start in the middle of a line of the command's output.
_KERNEL_RE = re.compile(rb"\[ *[0-9]+\.[0-9]{6}\] [^\r\n]*\r?\n")
_LOGIN_RE = re.compile(rb"login: *$")
_PASSWORD_RE = re.compile(rb"[Pp]assword: *$")
_INCORRECT_RE = re.compile(rb"Login incorrect")
# A tty in canonical mode takes at most 4095 characters a line and holds 4096 unread: keep lines and batches under.
LINE_CHARS = 900
BATCH_LINES = 3
# Characters a printf format in single quotes shows as themselves; every other byte goes as \ooo.
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 ,._/-=:+@^{}[]()<>;|&*!?#~$\"`")
# Ctrl-U: the tty's (and busybox line editing's) kill-line character.
KILL_LINE = "\x15"
# Bytes read from the guest per fetch step (its base64 is 4/3 of that).
FETCH_BYTES = 24576


def clean(raw):
    """The console's bytes as a program wrote them: escapes and kernel lines dropped, the terminal's \\r\\n undone."""
    text = _ANSI_RE.sub(b"", raw)
    text = _KERNEL_RE.sub(b"", text)
    return text.replace(b"\r\n", b"\n").replace(b"\r", b"")


def printf_literal(data):
    """`data` (bytes) as one single-quoted printf format that prints exactly those bytes in any POSIX shell."""
    return "'" + "".join(chr(byte) if byte in _PLAIN else "\\%03o" % byte for byte in data) + "'"


def split_lines(data, size=LINE_CHARS):
    """`data` (bytes) in pieces whose printf_literal stays under `size` characters."""
    pieces, current, length = [], bytearray(), 2
    for byte in data:
        cost = 1 if byte in _PLAIN else 4
        if current and length + cost > size:
            pieces.append(bytes(current))
            current, length = bytearray(), 2
        current.append(byte)
        length += cost
    if current or not pieces:
        pieces.append(bytes(current))
    return pieces


class ConsoleError(Exception):
    pass


class ConsoleSession:
    """A shell on a serial console: a connected stream socket (or any object with fileno/send/recv)."""

    def __init__(self, sock, user="root", password="", timeout=120, command_timeout=600):
        self.sock = sock
        self.user, self.password = user, password
        self.timeout, self.command_timeout = timeout, command_timeout
        self.raw = b""  # what was read and not yet consumed

    # --- the wire ---------------------------------------------------------------------------------------------
    def send(self, text):
        data = to_bytes(text)
        while data:
            sent = self.sock.send(data)
            data = data[sent:]

    def _read(self, seconds):
        """Read what arrives within `seconds` (returns early once something came and the line went quiet)."""
        deadline = time.monotonic() + seconds
        got = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            ready, _w, _x = select.select([self.sock], [], [], min(left, 0.3 if got else left))
            if not ready:
                if got:
                    return True
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConsoleError("the console socket was closed (the VM stopped?)")
            self.raw += chunk
            got = True

    def expect(self, pattern, seconds, what):
        """Read until the cleaned text matches `pattern`; return the match, the cleaned text before it consumed."""
        deadline = None if not seconds else time.monotonic() + seconds
        while True:
            text = clean(self.raw)
            match = pattern.search(text)
            if match:
                self.raw = text[match.end():]
                return text, match
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ConsoleError("no %s on the console within %d s; it last showed: %r"
                                   % (what, seconds, to_text(text[-300:], errors="surrogate_or_replace")))
            ready, _w, _x = select.select([self.sock], [], [], 1.0 if left is None else min(left, 1.0))
            if ready:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConsoleError("the console socket was closed (the VM stopped?) while waiting for %s" % what)
                self.raw += chunk

    @staticmethod
    def token():
        return "q" + secrets.token_hex(8)

    def line_acked(self, line, seconds=None):
        """Send one shell line followed by an acknowledgement and wait for it (so the tty's buffer never overflows).
        The marker is split in two words, so an echo of the line does not contain what its output contains."""
        token = self.token()
        self.send("%s\nprintf '%%s%%s\\n' QLA %s\n" % (line, token))
        self.expect(re.compile(b"QLA" + token.encode() + b"\n"), seconds or self.timeout, "acknowledgement")

    # --- getting a shell --------------------------------------------------------------------------------------
    def open(self):
        """Wake the console, log in if it asks, and wait for a shell that answers; then quiet it."""
        deadline = time.monotonic() + self.timeout
        logins = 0
        while time.monotonic() < deadline:
            # Ctrl-U first: it drops a half line left in the tty (a client cut off mid-line). "\n", not "\r": a getty
            # that read the login name ending in \n leaves ICRNL off, and then a \r would be part of the next line.
            self.send(KILL_LINE + "\n")
            self._read(min(1.5, max(0.1, deadline - time.monotonic())))
            tail = clean(self.raw)[-200:].rstrip(b"\n")
            if _LOGIN_RE.search(tail):
                if logins and _INCORRECT_RE.search(clean(self.raw)):
                    raise ConsoleError("the guest refused the login of %r (Login incorrect); set "
                                       "ansible_qemulab_console_user/_password" % self.user)
                logins += 1
                self.raw = b""
                self.send(self.user + "\n")
                self._read(3)
                if _PASSWORD_RE.search(clean(self.raw).rstrip(b"\n")):
                    self.raw = b""
                    self.send(self.password + "\n")
                    self._read(3)
                continue
            if _PASSWORD_RE.search(tail):
                self.raw = b""
                self.send("\n")  # a password prompt nobody asked for: let it fail back to a login prompt
                self._read(3)
                continue
            token = self.token()
            self.raw = b""
            self.send(KILL_LINE + "printf '%%s%%s\\n' QLS %s\n" % token)
            try:
                self.expect(re.compile(b"QLS" + token.encode() + b"\n"), min(5, max(1, deadline - time.monotonic())),
                            "shell")
            except ConsoleError:
                continue
            # No echo: the console log is not filled with uploads, busybox's line editing steps aside. Console
            # loglevel 1: the kernel's routine messages stay in dmesg instead of landing in the output.
            self.line_acked("stty -echo 2>/dev/null; dmesg -n 1 2>/dev/null")
            self.raw = b""
            return
        shown = to_text(clean(self.raw)[-300:], errors="surrogate_or_replace")
        raise ConsoleError("no shell on the console within %d s (still booting? no getty on ttyS0? QEMU serves one "
                           "client at a time: is a socat still attached?); it last showed: %r" % (self.timeout, shown))

    def close(self):
        """Give the console its echo back for the next person who attaches; waited for, since QEMU drops what it has
        not yet passed to the guest when the client goes."""
        try:
            self.line_acked("stty echo 2>/dev/null", 10)
        except (OSError, ConsoleError):
            pass

    # --- commands and files -----------------------------------------------------------------------------------
    def run(self, command):
        """(rc, stdout, stderr) of `command` (str or bytes) run by `sh` on the guest, stdin from /dev/null."""
        token = self.token()
        script = '"${TMPDIR:-/tmp}/.qemulab-%s"' % token
        # the script's path has a shell expansion in it: written through a variable set once
        self.line_acked("Q=%s" % script)
        self.write_script(to_bytes(command))
        self.send("printf '%%s%%s\\n' QLB %s; sh \"$Q\" </dev/null 2>\"$Q.e\"; printf '\\n%%s%%s %%d\\n' QLE %s $?; "
                  "cat \"$Q.e\"; printf '\\n%%s%%s\\n' QLF %s; rm -f \"$Q\" \"$Q.e\"\n" % (token, token, token))
        self.expect(re.compile(b"QLB" + token.encode() + b"\n"), self.timeout, "start of the command")
        before_end, end = self.expect(re.compile(b"\nQLE" + token.encode() + b" ([0-9]+)\n"), self.command_timeout,
                                      "end of the command")
        stdout = before_end[:end.start()]
        before_err, err = self.expect(re.compile(b"\nQLF" + token.encode() + b"\n"), self.timeout, "its stderr")
        stderr = before_err[:err.start()]
        return int(end.group(1)), stdout, stderr

    def write_script(self, data):
        """Write `data` (bytes) with printf lines to the path in the guest's shell variable Q (exact, any bytes)."""
        pieces = split_lines(data)
        for index in range(0, len(pieces), BATCH_LINES):
            lines = ['printf %s %s "$Q"' % (printf_literal(piece), ">" if index + offset == 0 else ">>")
                     for offset, piece in enumerate(pieces[index:index + BATCH_LINES])]
            self.line_acked("\n".join(lines))

    def checked(self, command, what):
        rc, out, err = self.run(command)
        if rc != 0:
            raise ConsoleError("%s failed (rc %d): %s" % (what, rc, to_text(err or out, errors="surrogate_or_replace")
                                                          .strip()))
        return out

    def put(self, data, path):
        """Upload `data` (bytes) to the guest's `path`: base64 lines into a temporary file, decoded at the end."""
        quoted = shlex.quote(path)
        temp = shlex.quote(path + ".qemulab-part")
        self.checked("command -v base64 >/dev/null || { echo 'no base64 on the guest' >&2; exit 1; }; : > %s"
                     % temp, "preparing %s" % path)
        encoded = base64.b64encode(data)
        lines = [encoded[i:i + LINE_CHARS] for i in range(0, len(encoded), LINE_CHARS)]
        for index in range(0, len(lines), BATCH_LINES):
            self.line_acked("\n".join("printf %%s %s >> %s" % (line.decode(), temp)
                                      for line in lines[index:index + BATCH_LINES]))
        self.checked("base64 -d < %s > %s && rm -f %s" % (temp, quoted, temp), "decoding %s" % path)

    def fetch(self, path):
        """The bytes of the guest's `path`, read in base64 pieces."""
        quoted = shlex.quote(path)
        size = int(self.checked("wc -c < %s" % quoted, "reading the size of %s" % path).strip() or b"0")
        data = bytearray()
        for block in range(0, max(1, -(-size // FETCH_BYTES))):
            out = self.checked("dd if=%s bs=%d skip=%d count=1 2>/dev/null | base64" % (quoted, FETCH_BYTES, block),
                               "reading %s" % path)
            data += base64.b64decode(b"".join(out.split()))
        if len(data) != size:
            raise ConsoleError("%s: read %d bytes of %d" % (path, len(data), size))
        return bytes(data)


def open_socket(path):
    """A stream socket connected to the console socket at `path`, never through a symbolic link at its end: the run
    directory may belong to the unprivileged QEMU user, who must not point root's commands at another socket."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConsoleError("console socket %s: %s (is the VM running?)" % (path, exc.strerror))
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConsoleError("console socket %s is not a socket (a symbolic link or a file there is refused)" % path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect("/proc/self/fd/%d" % fd)
        except OSError as exc:
            sock.close()
            hint = " (the VM is not running)" if exc.errno == errno.ECONNREFUSED else ""
            raise ConsoleError("console socket %s: %s%s" % (path, exc.strerror, hint))
        return sock
    finally:
        os.close(fd)


class Connection(ConnectionBase):
    """Commands and files through a qemulab VM's serial console."""

    transport = "qemulab.network.console"
    has_pipelining = False

    def __init__(self, *args, **kwargs):
        super(Connection, self).__init__(*args, **kwargs)
        self._session = None
        self._sock = None

    def _console_path(self):
        path = self.get_option("socket")
        if path:
            return path
        lab, vm = self.get_option("lab_name"), self.get_option("vm")
        if not lab or not vm:
            raise AnsibleConnectionFailure("%s: no console socket: set ansible_qemulab_console_socket, or lab_name "
                                           "for the default path" % self._play_context.remote_addr)
        return os.path.join(self.get_option("run_root"), lab, vm, "console.sock")

    def _connect(self):
        if self._connected:
            return self
        path = self._console_path()
        display.vvv("CONSOLE %s" % path, host=self._play_context.remote_addr)
        try:
            self._sock = open_socket(path)
            self._session = ConsoleSession(self._sock, self.get_option("user"), self.get_option("password") or "",
                                           self.get_option("shell_timeout"), self.get_option("command_timeout"))
            self._session.open()
        except ConsoleError as exc:
            self.close()
            raise AnsibleConnectionFailure("console %s: %s" % (path, exc))
        self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super(Connection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if in_data is not None:
            raise AnsibleError("the console connection does not support pipelining")
        display.vvv("CONSOLE EXEC %s" % cmd, host=self._play_context.remote_addr)
        try:
            return self._session.run(cmd)
        except ConsoleError as exc:
            raise AnsibleConnectionFailure("console of %s: %s" % (self._play_context.remote_addr, exc))

    def put_file(self, in_path, out_path):
        super(Connection, self).put_file(in_path, out_path)
        display.vvv("CONSOLE PUT %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound("file or module does not exist: %s" % in_path)
        with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as handle:
            data = handle.read()
        try:
            self._session.put(data, out_path)
        except ConsoleError as exc:
            raise AnsibleError("console of %s: put %s: %s" % (self._play_context.remote_addr, out_path, exc))

    def fetch_file(self, in_path, out_path):
        super(Connection, self).fetch_file(in_path, out_path)
        display.vvv("CONSOLE FETCH %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        try:
            data = self._session.fetch(in_path)
        except ConsoleError as exc:
            raise AnsibleError("console of %s: fetch %s: %s" % (self._play_context.remote_addr, in_path, exc))
        with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as handle:
            handle.write(data)

    def close(self):
        if self._session is not None and self._connected:
            self._session.close()
        if self._sock is not None:
            self._sock.close()
        self._sock, self._session = None, None
        self._connected = False
