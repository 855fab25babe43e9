"""Hand-made record batches, a raw Produce v8 and a raw Fetch v4 over a plain socket, for scenarios
whose input no client library would send (a forged record count, a producer-set LogAppendTime flag)
or whose answer clients do not expose field by field (record_errors, error_message; the codec and
timestamp type a broker stored a batch with). Produce v8 is the first version with record_errors
(KIP-467) and the last one before flexible encoding, so both are simple to write by hand."""
import gzip
import socket
import struct

from kafka.record.default_records import calc_crc32c  # CRC-32C, as record batches use

GZIP = 1


def _varint(v):
    v = (v << 1) ^ (v >> 63)  # zig-zag
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _nullable(b):
    return _varint(-1) if b is None else _varint(len(b)) + b


def record(offset_delta, ts_delta, key, value):
    body = b"\x00" + _varint(ts_delta) + _varint(offset_delta) + _nullable(key) + _nullable(value) \
        + _varint(0)
    return _varint(len(body)) + body


def batch(records, base_ts, codec=0, count=None, payload=None, max_ts=None, attributes_extra=0):
    """A magic v2 batch of records ((key, value) or (key, value, ts_delta)), its CRC right.
    codec 1 gzips the records; `payload` replaces the (compressed) records bytes as sent;
    `count` forges the header's record count (and last offset delta)."""
    recs = b"".join(record(i, r[2] if len(r) > 2 else 0, r[0], r[1]) for i, r in enumerate(records))
    if payload is None:
        payload = gzip.compress(recs) if codec == GZIP else recs
    n = len(records) if count is None else count
    deltas = [r[2] if len(r) > 2 else 0 for r in records] or [0]
    max_ts = base_ts + max(deltas) if max_ts is None else max_ts
    after_crc = struct.pack(">hiqqqhii", codec | attributes_extra, n - 1, base_ts, max_ts,
                            -1, -1, -1, n) + payload
    crc = calc_crc32c(after_crc)
    after_len = struct.pack(">ibI", -1, 2, crc) + after_crc  # leader epoch, magic, crc
    return struct.pack(">qi", 0, len(after_len)) + after_len


def _str(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _call(host, port, body, timeout):
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        return _read_frame(s)


def produce_v8(host, port, topic, partition, data, acks=-1, timeout=15):
    """Sends one Produce v8 request; returns the partition's answer as a dict."""
    body = struct.pack(">hhi", 0, 8, 1) + _str("raw-wire")  # api key, version, correlation, client
    body += struct.pack(">hhi", -1, acks, 10000)  # null transactional id, acks, timeout_ms
    body += struct.pack(">i", 1) + _str(topic) + struct.pack(">i", 1)
    body += struct.pack(">ii", partition, len(data)) + data
    r = _Reader(_call(host, port, body, timeout))
    r.i32()  # correlation id
    assert r.i32() == 1  # topics
    r.string()
    assert r.i32() == 1  # partitions
    out = {"index": r.i32(), "error_code": r.i16(), "base_offset": r.i64(),
           "log_append_time_ms": r.i64(), "log_start_offset": r.i64()}
    out["record_errors"] = [(r.i32(), r.string()) for _ in range(r.i32())]
    out["error_message"] = r.string()
    return out


def fetch_batches_v4(host, port, topic, partition=0, offset=0, timeout=15):
    """The record batch headers a broker returns from `offset` (Fetch v4, no waiting): dicts with
    base_offset, attributes, codec, log_append_time (the timestamp-type bit), max_timestamp, count."""
    body = struct.pack(">hhi", 1, 4, 1) + _str("raw-wire")
    body += struct.pack(">iiiib", -1, 0, 1, 1 << 20, 0)  # replica, max wait, min bytes, max bytes, isolation
    body += struct.pack(">i", 1) + _str(topic) + struct.pack(">i", 1)
    body += struct.pack(">iqi", partition, offset, 1 << 20)
    r = _Reader(_call(host, port, body, timeout))
    r.i32()  # correlation id
    r.i32()  # throttle
    assert r.i32() == 1
    r.string()
    assert r.i32() == 1
    r.i32()  # partition
    err = r.i16()
    assert err == 0, f"fetch error {err}"
    r.i64()
    r.i64()
    aborted = r.i32()
    for _ in range(max(aborted, 0)):
        r.i64()
        r.i64()
    n = r.i32()
    data = r.b[r.at:r.at + max(n, 0)]
    out, at = [], 0
    while at + 61 <= len(data):
        base, length = struct.unpack_from(">qi", data, at)
        if at + 12 + length > len(data):
            break  # a partial batch at the end of the response
        attributes, = struct.unpack_from(">h", data, at + 21)
        max_ts, = struct.unpack_from(">q", data, at + 35)
        count, = struct.unpack_from(">i", data, at + 57)
        out.append({"base_offset": base, "attributes": attributes, "codec": attributes & 7,
                    "log_append_time": bool(attributes & 8), "max_timestamp": max_ts,
                    "count": count})
        at += 12 + length
    return out


def _read_frame(s):
    head = _read_exact(s, 4)
    return _read_exact(s, struct.unpack(">i", head)[0])


def _read_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class _Reader:
    def __init__(self, b):
        self.b, self.at = b, 0

    def _take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.at)[0]
        self.at += struct.calcsize(fmt)
        return v

    def i16(self):
        return self._take(">h")

    def i32(self):
        return self._take(">i")

    def i64(self):
        return self._take(">q")

    def string(self):
        n = self.i16()
        if n < 0:
            return None
        s = self.b[self.at:self.at + n].decode()
        self.at += n
        return s
