"""_pcapng: a pcap stream rewritten as pcapng, checked field by field against the pcapng layout (hand-built input)."""
import struct

import pytest

from ansible_collections.qemulab.network.plugins.module_utils._pcapng import PcapError, convert

pytestmark = pytest.mark.unit

FRAME = bytes(range(60))


def pcap(packets, magic=0xA1B2C3D4):
    out = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, 1)
    for seconds, fraction, data in packets:
        out += struct.pack("<IIII", seconds, fraction, len(data), len(data)) + data
    return out


def blocks(data):
    offset = 0
    while offset < len(data):
        kind, length = struct.unpack("<II", data[offset:offset + 8])
        assert struct.unpack("<I", data[offset + length - 4:offset + length])[0] == length
        yield kind, data[offset + 8:offset + length - 4]
        offset += length


def test_packets_become_enhanced_packet_blocks_on_one_named_interface():
    data, count = convert(pcap([(1700000000, 250000, FRAME), (1700000001, 5, FRAME[:42])]), "br2", "why")
    assert count == 2
    found = list(blocks(data))
    assert [kind for kind, _ in found] == [0x0A0D0D0A, 1, 6, 6]
    assert struct.unpack("<IHHq", found[0][1][:16]) == (0x1A2B3C4D, 1, 0, -1)
    assert b"why" in found[0][1]
    idb = found[1][1]
    assert struct.unpack("<HHI", idb[:8]) == (1, 0, 262144)
    assert idb[8:16] == struct.pack("<HH", 2, 3) + b"br2\0"  # if_name, padded to 4
    assert idb[16:21] == struct.pack("<HH", 9, 1) + b"\x06"  # if_tsresol: microseconds
    iface, high, low, captured, original = struct.unpack("<IIIII", found[2][1][:20])
    assert (iface, (high << 32) | low, captured, original) == (0, 1700000000 * 10 ** 6 + 250000, 60, 60)
    assert found[2][1][20:80] == FRAME
    assert struct.unpack("<IIIII", found[3][1][:20])[3] == 42 and len(found[3][1]) == 20 + 44  # padded


def test_nanosecond_and_big_endian_streams():
    ns = convert(pcap([(1, 7, FRAME)], magic=0xA1B23C4D), "tap0")[0]
    assert b"\x09\x00\x01\x00\x09" in ns  # if_tsresol 9
    big = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack(">IIII", 2, 3, 60, 60) + FRAME
    assert convert(big, "tap0")[1] == 1


def test_a_stream_cut_in_a_packet_keeps_the_whole_ones_and_garbage_is_refused():
    stream = pcap([(1, 0, FRAME), (2, 0, FRAME)])
    assert convert(stream[:-10], "br2")[1] == 1
    with pytest.raises(PcapError, match="no pcap header"):
        convert(b"", "br2")
    with pytest.raises(PcapError, match="magic"):
        convert(b"x" * 24, "br2")
