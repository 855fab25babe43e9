//! Record-batch validation as Produce runs it: arbitrary bytes as they come, and the same bytes as the
//! records of a well-formed magic-v2 batch header (any codec, a valid CRC), so inputs reach the record
//! walk and the decompressors instead of stopping at the CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamhouse_protocol::batch::validate_produce_batch;
use streamhouse_protocol::compression::Codec;
use streamhouse_protocol::validator::{validate, Rules, TimestampType};

fuzz_target!(|data: &[u8]| {
    let _ = validate_produce_batch(data);
    if data.len() < 3 {
        return;
    }
    let codec = (data[0] % 5) as i16;
    let count = data[1] as i32 % 64 + 1;
    let records = &data[2..];
    let mut b = Vec::with_capacity(61 + records.len());
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    b.extend_from_slice(&((49 + records.len()) as i32).to_be_bytes()); // batch length
    b.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
    b.push(2); // magic
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, below
    b.extend_from_slice(&codec.to_be_bytes()); // attributes
    b.extend_from_slice(&(count - 1).to_be_bytes()); // last offset delta
    b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes()); // base timestamp
    b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes()); // max timestamp
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&count.to_be_bytes()); // record count
    b.extend_from_slice(records);
    let crc = crc32c_of(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    let _ = validate_produce_batch(&b);
    // And with a topic's rules, chosen by the first byte's high bits: recompression to any codec,
    // compacted (keys required), LogAppendTime, a narrow timestamp range.
    let rules = Rules {
        topic_partition: "fuzz-0".to_string(),
        now_ms: 1_700_000_000_000,
        timestamp_type: if data[0] & 0x80 != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        },
        timestamp_before_max_ms: 1_000,
        timestamp_after_max_ms: 1_000,
        compacted: data[0] & 0x40 != 0,
        target: Codec::from_attributes(((data[0] >> 3) & 0x7) as i16).filter(|_| data[0] & 0x20 != 0),
        max_message_bytes: 1_048_588,
        // 16 MiB: the fuzzer's malloc limit (128 MiB) then flags any allocation the bound misses.
        max_decompressed_bytes: 16 << 20,
    };
    let _ = validate(&b, &rules);
});

/// CRC-32C (Castagnoli), bitwise: the fuzz crate keeps its dependencies few.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}
