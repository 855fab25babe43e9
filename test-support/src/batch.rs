//! Magic v2 record batches made by hand, independently of the code under test: records with keys,
//! values, headers and timestamps, compressed with the codec crates the broker reads them with
//! (flate2, snap in xerial framing as the Java client writes it, lz4_flex frames, zstd), producer
//! id/epoch/sequence, signed with CRC-32C. Hostile batches come from the same builder: a claimed
//! record count other than the records', any bytes as the records under any codec id.

use bytes::Bytes;
pub use kafka_protocol::records::Compression;
use std::io::Write;

/// Bytes before the records: base offset .. record count.
pub const HEADER_LEN: usize = 61;

/// One record; its timestamp is absolute (the batch stores it as a delta from the first).
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

impl Record {
    /// A record stamped `timestamp`, without key, value or headers.
    pub fn at(timestamp: i64) -> Record {
        Record {
            timestamp,
            ..Record::default()
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Record {
        self.key = Some(key.into());
        self
    }

    pub fn value(mut self, value: impl Into<Bytes>) -> Record {
        self.value = Some(value.into());
        self
    }

    pub fn header(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Record {
        self.headers.push((key.into(), Some(value.into())));
        self
    }
}

/// A record batch to build: `BatchBuilder::new().compression(..).record(..).build()`.
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    base_offset: i64,
    leader_epoch: i32,
    compression: Compression,
    transactional: bool,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<Record>,
    count: Option<i32>,
    payload: Option<(i16, Vec<u8>)>,
    timestamps: Option<(i64, i64)>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            base_offset: 0,
            leader_epoch: -1,
            compression: Compression::None,
            transactional: false,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
            count: None,
            payload: None,
            timestamps: None,
        }
    }
}

impl BatchBuilder {
    /// No records, uncompressed, base offset 0, leader epoch -1, no producer (id, epoch and
    /// sequence -1).
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    pub fn base_offset(mut self, offset: i64) -> BatchBuilder {
        self.base_offset = offset;
        self
    }

    pub fn leader_epoch(mut self, epoch: i32) -> BatchBuilder {
        self.leader_epoch = epoch;
        self
    }

    pub fn compression(mut self, compression: Compression) -> BatchBuilder {
        self.compression = compression;
        self
    }

    pub fn transactional(mut self, transactional: bool) -> BatchBuilder {
        self.transactional = transactional;
        self
    }

    /// An idempotent producer's batch: record i has sequence `base_sequence + i`.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> BatchBuilder {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn record(mut self, record: Record) -> BatchBuilder {
        self.records.push(record);
        self
    }

    pub fn records(mut self, records: impl IntoIterator<Item = Record>) -> BatchBuilder {
        self.records.extend(records);
        self
    }

    /// The header claims `count` records (and a last offset delta of `count - 1`), whatever the
    /// records are.
    pub fn claim_count(mut self, count: i32) -> BatchBuilder {
        self.count = Some(count);
        self
    }

    /// `payload` as the records section, as given (not compressed), flagged with codec id `codec`.
    /// The records added are ignored but for the default count and timestamps.
    pub fn payload(mut self, codec: i16, payload: &[u8]) -> BatchBuilder {
        self.payload = Some((codec, payload.to_vec()));
        self
    }

    /// The header's first and max timestamps, instead of the records' lowest and highest.
    pub fn timestamps(mut self, first: i64, max: i64) -> BatchBuilder {
        self.timestamps = Some((first, max));
        self
    }

    /// The header's (first, max) timestamps.
    fn stamps(&self) -> (i64, i64) {
        let stamps = self.records.iter().map(|r| r.timestamp);
        self.timestamps
            .unwrap_or((stamps.clone().min().unwrap_or(0), stamps.max().unwrap_or(0)))
    }

    /// The records section before compression (to compress or repeat some other way).
    pub fn raw_records(&self) -> Vec<u8> {
        let first = self.stamps().0;
        let mut raw = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            encode_record(&mut raw, i as i64, r.timestamp - first, r);
        }
        raw
    }

    /// The batch, signed.
    pub fn build(&self) -> Bytes {
        let (first, max) = self.stamps();
        let (codec, section) = match &self.payload {
            Some((codec, p)) => (*codec, p.clone()),
            None => (
                codec_id(self.compression),
                compress(self.compression, &self.raw_records()),
            ),
        };
        let count = self.count.unwrap_or(self.records.len() as i32);
        let attributes = codec | if self.transactional { 0x10 } else { 0 };
        let mut b = Vec::with_capacity(HEADER_LEN + section.len());
        b.extend_from_slice(&self.base_offset.to_be_bytes());
        b.extend_from_slice(&((HEADER_LEN - 12 + section.len()) as i32).to_be_bytes());
        b.extend_from_slice(&self.leader_epoch.to_be_bytes());
        b.push(2); // magic
        b.extend_from_slice(&[0; 4]); // crc, below
        b.extend_from_slice(&attributes.to_be_bytes());
        b.extend_from_slice(&(count - 1).to_be_bytes()); // last offset delta
        b.extend_from_slice(&first.to_be_bytes());
        b.extend_from_slice(&max.to_be_bytes());
        b.extend_from_slice(&self.producer_id.to_be_bytes());
        b.extend_from_slice(&self.producer_epoch.to_be_bytes());
        b.extend_from_slice(&self.base_sequence.to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&section);
        sign(&mut b);
        Bytes::from(b)
    }
}

/// Kafka's codec id (the low three bits of a batch's attributes).
pub fn codec_id(c: Compression) -> i16 {
    match c {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
    }
}

/// Re-signs a batch (its CRC-32C, from the attributes on) after its header or records changed.
pub fn sign(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A batch with the header of `like` (count, timestamps, producer fields), codec id `codec` and
/// `payload` as its records, signed.
pub fn with_payload(like: &[u8], codec: i16, payload: &[u8]) -> Bytes {
    let mut b = like[..HEADER_LEN].to_vec();
    b.extend_from_slice(payload);
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let a = (i16::from_be_bytes([b[21], b[22]]) & !7) | codec;
    b[21..23].copy_from_slice(&a.to_be_bytes());
    sign(&mut b);
    Bytes::from(b)
}

/// `data` compressed as a producer would: gzip, snappy in xerial framing (Java's
/// SnappyOutputStream: a 16-byte header, then 32 KiB blocks each prefixed by its length), lz4
/// frames, zstd.
pub fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Snappy => {
            let mut out = b"\x82SNAPPY\x00".to_vec();
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            for block in data.chunks(32 << 10) {
                let z = snap::raw::Encoder::new().compress_vec(block).unwrap();
                out.extend_from_slice(&(z.len() as i32).to_be_bytes());
                out.extend_from_slice(&z);
            }
            out
        }
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

/// A zstd frame inflating to `zeros` zero bytes after `prefix`, made of RLE blocks (4 bytes per
/// 128 KiB): 32 GiB costs 1 MiB and no CPU to make.
pub fn zstd_rle(prefix: &[u8], zeros: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    // Magic, then a frame header descriptor without content size, checksum or dictionary, and a
    // window descriptor for 2^17 bytes (exponent 7).
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x38];
    let block = |f: &mut Vec<u8>, kind: u32, size: u64, last: bool| {
        let h = (last as u32) | (kind << 1) | ((size as u32) << 3);
        f.extend_from_slice(&h.to_le_bytes()[..3]);
    };
    block(&mut f, 0, prefix.len() as u64, zeros == 0);
    f.extend_from_slice(prefix);
    let mut left = zeros;
    while left > 0 {
        let n = left.min(BLOCK);
        left -= n;
        block(&mut f, 1, n, left == 0);
        f.push(0);
    }
    f
}

/// Zig-zag varint, as record fields are written.
pub fn varint(v: i64, out: &mut Vec<u8>) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push(u as u8 | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

fn bytes_field(v: Option<&Bytes>, out: &mut Vec<u8>) {
    match v {
        Some(b) => {
            varint(b.len() as i64, out);
            out.extend_from_slice(b);
        }
        None => varint(-1, out),
    }
}

fn encode_record(out: &mut Vec<u8>, offset_delta: i64, timestamp_delta: i64, r: &Record) {
    let mut body = vec![0u8]; // attributes
    varint(timestamp_delta, &mut body);
    varint(offset_delta, &mut body);
    bytes_field(r.key.as_ref(), &mut body);
    bytes_field(r.value.as_ref(), &mut body);
    varint(r.headers.len() as i64, &mut body);
    for (k, v) in &r.headers {
        bytes_field(Some(k), &mut body);
        bytes_field(v.as_ref(), &mut body);
    }
    varint(body.len() as i64, out);
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    /// kafka-protocol's decoder, a second opinion, reads back what was built, in every codec.
    #[test]
    fn batches_decode_as_built() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let data = BatchBuilder::new()
                .compression(c)
                .producer(7, 2, 40)
                .base_offset(5)
                .records((0..3).map(|i| {
                    let r = Record::at(1_000 + i)
                        .value(format!("v{i}"))
                        .header("h", "x");
                    if i == 1 {
                        r
                    } else {
                        r.key(format!("k{i}"))
                    }
                }))
                .build();
            let mut buf = data.clone();
            let sets = RecordBatchDecoder::decode_all(&mut buf).unwrap();
            assert_eq!(sets.len(), 1, "{c:?}");
            let recs = &sets[0].records;
            assert_eq!(recs.len(), 3);
            for (i, r) in recs.iter().enumerate() {
                assert_eq!(r.offset, 5 + i as i64);
                assert_eq!(r.timestamp, 1_000 + i as i64);
                assert_eq!(r.sequence, 40 + i as i32);
                assert_eq!((r.producer_id, r.producer_epoch), (7, 2));
                assert_eq!(r.value.as_deref(), Some(format!("v{i}").as_bytes()));
                assert_eq!(r.key.is_none(), i == 1);
                assert_eq!(r.headers.len(), 1);
            }
            assert_eq!(
                i32::from_be_bytes(data[57..61].try_into().unwrap()),
                3,
                "count"
            );
        }
    }

    #[test]
    fn claimed_count_and_payload_are_as_given_and_signed() {
        let b = BatchBuilder::new()
            .timestamps(10, 20)
            .claim_count(9)
            .payload(4, b"junk")
            .build();
        assert_eq!(&b[HEADER_LEN..], b"junk");
        assert_eq!(i32::from_be_bytes(b[23..27].try_into().unwrap()), 8);
        assert_eq!(i32::from_be_bytes(b[57..61].try_into().unwrap()), 9);
        assert_eq!(i16::from_be_bytes([b[21], b[22]]), 4);
        assert_eq!(
            u32::from_be_bytes(b[17..21].try_into().unwrap()),
            crc32c::crc32c(&b[21..])
        );
    }
}
