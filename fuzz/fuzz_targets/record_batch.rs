//! Record-batch validation as Produce runs it: arbitrary bytes as they come, and the same bytes as the
//! records of a well-formed magic-v2 batch header (any codec, a valid CRC), so inputs reach the record
//! walk and the decompressors instead of stopping at the CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamhouse_protocol::batch::validate_produce_batch;

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
