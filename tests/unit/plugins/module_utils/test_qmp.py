"""_qmp against a fake QMP server on a real unix socket: greeting, capabilities, events skipped, errors raised."""
import json
import os
import socket
import threading

import pytest

from ansible_collections.qemulab.network.plugins.module_utils._qmp import QMPClient, QMPError, query_status

pytestmark = pytest.mark.unit


def fake_qmp(path, replies):
    """Serve one client: greeting, then for each command the next scripted reply lines."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    received = []

    def serve():
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
            stream.flush()
            for lines in replies:
                received.append(json.loads(stream.readline()))
                for line in lines:
                    stream.write(json.dumps(line).encode() + b"\r\n")
                stream.flush()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, received


def test_query_status_skips_events(tmp_path):
    path = str(tmp_path / "qmp.sock")
    thread, received = fake_qmp(path, [[{"return": {}}],
                                       [{"event": "RESUME", "timestamp": {}}, {"return": {"status": "running"}}]])
    assert query_status(path) == "running"
    thread.join(5)
    assert [m["execute"] for m in received] == ["qmp_capabilities", "query-status"]


def test_error_reply_is_raised_with_its_class(tmp_path):
    path = str(tmp_path / "qmp.sock")
    thread, _ = fake_qmp(path, [[{"return": {}}], [{"error": {"class": "CommandNotFound", "desc": "nope"}}]])
    with QMPClient(path) as qmp:
        with pytest.raises(QMPError, match="QMP bogus failed: CommandNotFound: nope"):
            qmp.command("bogus")
    thread.join(5)


def test_no_socket_means_no_status(tmp_path):
    assert query_status(str(tmp_path / "missing.sock")) is None
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # a socket file nobody listens on, as a SIGKILLed QEMU leaves behind
    assert os.path.exists(str(stale)) and query_status(str(stale)) is None
