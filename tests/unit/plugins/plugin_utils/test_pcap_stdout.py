"""Unit tests: once the pcap callback has taken stdout, what the process prints (Ansible's output) reaches stderr
and only what is written to the kept descriptor reaches stdout; a second take keeps the first."""
import subprocess
import sys

import pytest

from conftest import COLLECTIONS

pytestmark = pytest.mark.unit

# run in a process of its own: take() rewires descriptor 1 of the process it runs in
SCRIPT = r"""
import os, sys
sys.path.insert(0, %r)
from ansible_collections.qemulab.network.plugins.plugin_utils import _pcap_stdout
print("printed before", flush=True)
assert _pcap_stdout.fd() is None
kept = _pcap_stdout.take()
assert _pcap_stdout.take() == kept == _pcap_stdout.fd()
print("PLAY [printed after]")
sys.stdout.flush()
os.write(1, b"fd 1 after\n")
os.write(kept, b"\xd4\xc3\xb2\xa1packets")
"""


def test_after_take_only_the_kept_descriptor_reaches_stdout():
    out = subprocess.run([sys.executable, "-c", SCRIPT % COLLECTIONS], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"printed before\n\xd4\xc3\xb2\xa1packets"
    assert out.stderr == b"PLAY [printed after]\nfd 1 after\n"
