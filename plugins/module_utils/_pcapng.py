# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A libpcap stream (what `tcpdump -w -` writes) rewritten as pcapng: one section, one interface named after the
captured one, one Enhanced Packet Block per packet. tcpdump reads pcapng but cannot write it, and pcapng carries the
interface's name, so a capture file says where it was taken.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

PCAP_MAGIC = {0xA1B2C3D4: 6, 0xA1B23C4D: 9}  # microsecond or nanosecond timestamps (if_tsresol)
SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END, OPT_COMMENT, IF_NAME, IF_TSRESOL = 0, 1, 2, 9


class PcapError(ValueError):
    pass


def _pad(data):
    return data + b"\0" * (-len(data) % 4)


def _option(code, value):
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(kind, body):
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def _header(data):
    if len(data) < 24:
        raise PcapError("the capture has no pcap header (%d bytes); tcpdump wrote nothing" % len(data))
    for order in ("<", ">"):
        magic = struct.unpack(order + "I", data[:4])[0]
        if magic in PCAP_MAGIC:
            _major, _minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(order + "HHiIII", data[4:24])
            return order, PCAP_MAGIC[magic], snaplen, linktype & 0xFFFF
    raise PcapError("the capture does not start with a pcap magic number")


def convert(data, interface, comment=""):
    """(pcapng bytes, packet count) for a whole pcap stream; a stream cut in a packet (tcpdump killed) keeps the
    complete packets before it."""
    order, resolution, snaplen, linktype = _header(data)
    shb_options = (_option(OPT_COMMENT, comment.encode("utf-8")) if comment else b"") + _option(OPT_END, b"")
    out = [_block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + shb_options)]
    idb_options = (_option(IF_NAME, interface.encode("utf-8")) + _option(IF_TSRESOL, bytes([resolution]))
                   + _option(OPT_END, b""))
    out.append(_block(IDB, struct.pack("<HHI", linktype, 0, snaplen) + idb_options))
    scale = 10 ** resolution
    count = 0
    for record in records(data, order):
        seconds, fraction, captured, original = struct.unpack(order + "IIII", record[:16])
        stamp = seconds * scale + fraction
        out.append(_block(EPB, struct.pack("<IIIII", 0, stamp >> 32, stamp & 0xFFFFFFFF, captured, original)
                          + _pad(record[16:])))
        count += 1
    return b"".join(out), count


def records(data, order):
    """The complete packet records (16-byte header and packet) of a pcap stream after its 24-byte header, in order;
    a stream cut in a record (a tcpdump killed or still writing) ends before it."""
    offset = 24
    while offset + 16 <= len(data):
        captured = struct.unpack(order + "I", data[offset + 8:offset + 12])[0]
        end = offset + 16 + captured
        if end > len(data):
            return
        yield data[offset:end]
        offset = end
