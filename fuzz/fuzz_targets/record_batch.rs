//! Record-batch validation as Produce runs it: arbitrary bytes as they come, and the same bytes as the
//! records of a well-formed magic-v2 batch header (any codec, a valid CRC), so inputs reach the record
//! walk and the decompressors instead of stopping at the CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamhouse_protocol::batch::validate_produce_batch;
use streamhouse_protocol::compression::Codec;
use streamhouse_protocol::validator::{validate, Rules, TimestampType};
use streamhouse_test_support::batch::BatchBuilder;

fuzz_target!(|data: &[u8]| {
    let _ = validate_produce_batch(data);
    if data.len() < 3 {
        return;
    }
    let codec = (data[0] % 5) as i16;
    let count = data[1] as i32 % 64 + 1;
    let records = &data[2..];
    let b = BatchBuilder::new()
        .leader_epoch(0)
        .timestamps(1_700_000_000_000, 1_700_000_000_000)
        .claim_count(count)
        .payload(codec, records)
        .build();
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
        target: Codec::from_attributes(((data[0] >> 3) & 0x7) as i16)
            .filter(|_| data[0] & 0x20 != 0),
        max_message_bytes: 1_048_588,
        // 16 MiB: the fuzzer's malloc limit (128 MiB) then flags any allocation the bound misses.
        max_decompressed_bytes: 16 << 20,
    };
    let _ = validate(&b, &rules);
});
