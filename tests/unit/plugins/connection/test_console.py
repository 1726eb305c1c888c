"""Unit tests: the console connection against a real busybox shell behind a fake getty on a pseudo-terminal, served
over a socketpair as QEMU serves a console socket. It logs in (or finds a shell), runs commands between markers
(exit status, stdout, stderr kept apart), drops kernel lines and escape sequences the "guest" prints in the middle
of the output, and moves files both ways exactly."""
import os
import pty
import select
import shutil
import signal
import socket
import threading

import pytest

from ansible_collections.qemulab.network.plugins.connection import console
from ansible_collections.qemulab.network.plugins.connection.console import (ConsoleError, ConsoleSession, clean,
                                                                             printf_literal, split_lines)

pytestmark = pytest.mark.unit

BUSYBOX = shutil.which("busybox")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox (Debian busybox-static) is not installed")

# What the bridge puts in the "guest's" output in place of \001 and \002: a kernel message and colour noise.
KERNEL_LINE = b"[   12.345678] virtio_net virtio0 eth0: link becomes ready\r\n"
ANSI = b"\x1b[1;31m\x1b]0;title\x07\x1b[6n\x1b(B\x1b[0m"

# A getty and login in one: an empty name asks again, a wrong name or password says "Login incorrect".
FAKE_GETTY = r"""
while :; do
  printf '\r\nqemulab-fake login: '
  read -r user || exit 1
  [ -z "$user" ] && continue
  printf 'Password: '
  stty -echo; read -r pw; stty echo; printf '\r\n'
  if [ "$user" = "$FAKE_USER" ] && [ "$pw" = "$FAKE_PASSWORD" ]; then
    printf 'Welcome\r\n\033[32mmotd in colour\033[0m\r\n'
    PS1='\033[1m\u@fake\033[0m# ' exec busybox sh -i
  fi
  printf 'Login incorrect\r\n'
done
"""


class FakeConsole:
    """A program on a pty's slave side; the test's end of a socketpair carries its master side, with noise."""

    def __init__(self, tmp_path, argv, env):
        self.pid, self.master = pty.fork()
        if self.pid == 0:
            os.execve(argv[0], argv, env)
        self.ours, self.theirs = socket.socketpair()
        self.stop = False
        self.thread = threading.Thread(target=self._bridge, daemon=True)
        self.thread.start()

    def _bridge(self):
        while not self.stop:
            ready, _w, _x = select.select([self.master, self.theirs], [], [], 0.2)
            try:
                if self.master in ready:
                    data = os.read(self.master, 65536)
                    self.theirs.sendall(data.replace(b"\x01", KERNEL_LINE).replace(b"\x02", ANSI))
                if self.theirs in ready:
                    data = self.theirs.recv(65536)
                    if not data:
                        return
                    os.write(self.master, data)
            except OSError:
                return

    def close(self):
        self.stop = True
        self.ours.close()
        self.thread.join(5)
        self.theirs.close()
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.master)


def fake_env(tmp_path, **extra):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "TERM": "vt100",
           "ENV": "/dev/null"}
    env.update(extra)
    return env


@pytest.fixture
def getty(tmp_path):
    fakes = []

    def start(user="root", password=""):
        fake = FakeConsole(tmp_path, [BUSYBOX, "sh", "-c", FAKE_GETTY],
                           fake_env(tmp_path, FAKE_USER=user, FAKE_PASSWORD=password))
        fakes.append(fake)
        return fake
    yield start
    for fake in fakes:
        fake.close()


@pytest.fixture
def shell(tmp_path):
    """A console that is a root shell already (as the default guest image's is)."""
    fake = FakeConsole(tmp_path, [BUSYBOX, "sh", "-i"], fake_env(tmp_path, PS1="# "))
    session = ConsoleSession(fake.ours, timeout=20, command_timeout=20)
    session.open()
    yield session
    fake.close()


def test_clean_drops_escapes_and_kernel_lines_and_undoes_crlf():
    assert clean(b"a\x1b[1;31mb\x1b[0m\r\n") == b"ab\n"
    assert clean(b"one\r\n" + KERNEL_LINE + b"two\r\n") == b"one\ntwo\n"
    assert clean(b"ab" + KERNEL_LINE + b"cd\r\n") == b"abcd\n"
    assert clean(b"[x] not a kernel line\r\n") == b"[x] not a kernel line\n"


def test_printf_literal_pieces_stay_short_and_cover_every_byte():
    data = bytes(range(256)) * 9
    pieces = split_lines(data, 200)
    assert b"".join(pieces) == data
    assert all(len(printf_literal(piece)) <= 200 for piece in pieces)
    assert printf_literal(b"a'b%c\\\n") == "'a\\047b\\045c\\134\\012'"


@needs_busybox
def test_logs_in_with_user_and_password_then_runs_commands(getty):
    fake = getty("alice", "s3cret")
    session = ConsoleSession(fake.ours, user="alice", password="s3cret", timeout=30, command_timeout=20)
    session.open()
    assert session.run("echo hello; echo oops >&2; exit 3") == (3, b"hello\n", b"oops\n")
    assert session.run("id -u >/dev/null; printf 'no newline'") == (0, b"no newline", b"")


@needs_busybox
def test_a_wrong_password_is_reported_not_retried_for_ever(getty):
    fake = getty("root", "right")
    session = ConsoleSession(fake.ours, user="root", password="wrong", timeout=20)
    with pytest.raises(ConsoleError, match="Login incorrect"):
        session.open()


@needs_busybox
def test_root_without_password_by_default(getty):
    fake = getty()
    session = ConsoleSession(fake.ours, timeout=30, command_timeout=20)
    session.open()
    assert session.run("echo $((6 * 7))")[:2] == (0, b"42\n")


@needs_busybox
def test_markers_survive_quotes_multiline_scripts_and_stdin(shell):
    script = "x='it''s'\nif [ \"$x\" = its ]; then\n  echo \"quoted: $x\"\nfi\ncat\nexit 0\n"
    assert shell.run(script) == (0, b"quoted: its\n", b"")
    # a command reading stdin gets /dev/null, not the console's next lines
    assert shell.run("read line; echo rc=$?") == (0, b"rc=1\n", b"")
    big = "printf '%s\\n' " + " ".join("w%d" % i for i in range(2000))
    rc, out, _err = shell.run(big)
    assert rc == 0 and out.split() == [b"w%d" % i for i in range(2000)]


@needs_busybox
def test_kernel_messages_and_escapes_in_the_middle_of_output_are_dropped(shell):
    rc, out, err = shell.run(r"printf 'ab\001cd\n'; printf 'l1\n\001l2\n'; printf '\002col\002our\n'; exit 1")
    assert (rc, out, err) == (1, b"abcd\nl1\nl2\ncolour\n", b"")


@needs_busybox
def test_put_and_fetch_round_trip_every_byte(shell, tmp_path):
    data = os.urandom(70000) + bytes(range(256)) + b"\r\n\n\x1b[0m[   1.000000] x\n"
    target = str(tmp_path / "dir with space" / "f'1")
    os.makedirs(os.path.dirname(target))
    shell.put(data, target)
    with open(target, "rb") as handle:
        assert handle.read() == data
    assert shell.fetch(target) == data
    shell.put(b"", target)
    assert shell.fetch(target) == b""


@needs_busybox
def test_a_second_session_finds_the_shell_the_first_left(tmp_path):
    fake = FakeConsole(tmp_path, [BUSYBOX, "sh", "-i"], fake_env(tmp_path, PS1="# "))
    try:
        for _round in range(2):
            session = ConsoleSession(fake.ours, timeout=20, command_timeout=20)
            session.open()
            assert session.run("echo again") == (0, b"again\n", b"")
            session.close()
    finally:
        fake.close()


@needs_busybox
def test_a_half_line_left_behind_and_a_getty_without_icrnl_do_not_confuse_it(tmp_path):
    """A getty that read the login name ending in \\n leaves ICRNL off, and a client cut off mid-line leaves its
    half line in the tty: the next session still finds the shell."""
    fake = FakeConsole(tmp_path, [BUSYBOX, "sh", "-c", "stty -icrnl; exec busybox sh -i"],
                       fake_env(tmp_path, PS1="# "))
    try:
        session = ConsoleSession(fake.ours, timeout=20, command_timeout=20)
        session.open()
        assert session.run("echo one") == (0, b"one\n", b"")
        session.send("stty ech")  # what a client cut off while closing left
        again = ConsoleSession(fake.ours, timeout=20, command_timeout=20)
        again.open()
        assert again.run("echo two") == (0, b"two\n", b"")
        again.close()
    finally:
        fake.close()


def test_a_link_in_place_of_the_socket_is_refused(tmp_path):
    real = str(tmp_path / "real.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(real)
    server.listen(1)
    os.symlink(real, str(tmp_path / "console.sock"))
    try:
        with pytest.raises(ConsoleError, match="not a socket|Too many levels|symbolic"):
            console.open_socket(str(tmp_path / "console.sock"))
        console.open_socket(real).close()
    finally:
        server.close()


def test_a_missing_socket_names_the_path(tmp_path):
    with pytest.raises(ConsoleError, match="console.sock.*is the VM running"):
        console.open_socket(str(tmp_path / "console.sock"))


def test_documentation_parses_and_names_a_variable_per_option():
    import yaml
    doc = yaml.safe_load(console.DOCUMENTATION)
    assert doc["name"] == "console"
    assert all(option["vars"] for option in doc["options"].values())
    assert {"socket", "user", "password", "shell_timeout", "command_timeout"} <= set(doc["options"])
    texts = doc["description"] + doc["notes"] + [line for option in doc["options"].values()
                                                 for line in (option["description"] if isinstance(
                                                     option["description"], list) else [option["description"]])]
    assert all(isinstance(text, str) for text in texts), "a ': ' in a line made it a mapping"
