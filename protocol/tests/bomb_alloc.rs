//! Compression bombs and mangled compressed batches against produce validation, with every heap
//! allocation counted: validation refuses them and the bytes it holds at once stay under the stated
//! bound. The bound, from the structure of the reader (see `compression` and `records`):
//! one record buffer (<= the inflated-size limit) + the decoder's own state, which its format caps:
//! gzip ~100 KiB; snappy one block (<= the limit); lz4 at most three 4 MiB blocks (linked mode) +
//! 64 KiB; zstd its window, at most max(8 MiB, limit), plus ~1 MiB of context.
//!
//! This file is its own test binary, so the counting allocator sees nothing but these tests; they take
//! a lock so that one measures at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use streamhouse_protocol::batch::{BatchError, BATCH_HEADER_LEN};
use streamhouse_protocol::compression::{self, Codec};
use streamhouse_protocol::validator::{validate, Rules, TimestampType};
use streamhouse_test_support::batch::{zstd_rle, BatchBuilder, Record};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `f` and returns its result with the most bytes it held at once beyond what was live before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

const MIB: usize = 1 << 20;

/// The bound stated at the top of this file.
fn bound(codec: Codec, limit: usize) -> usize {
    limit
        + match codec {
            Codec::None => 0,
            Codec::Gzip => 256 << 10,
            Codec::Snappy => limit,
            Codec::Lz4 => 12 * MIB + (256 << 10),
            Codec::Zstd => (8 * MIB).max(limit) + 2 * MIB,
        }
}

fn rules(limit: usize) -> Rules {
    Rules {
        topic_partition: "t-0".into(),
        now_ms: NOW,
        timestamp_type: TimestampType::CreateTime,
        timestamp_before_max_ms: i64::MAX,
        timestamp_after_max_ms: i64::MAX,
        compacted: false,
        target: None,
        max_message_bytes: 64 * MIB as i32,
        max_decompressed_bytes: limit as u64,
    }
}

const NOW: i64 = 1_700_000_000_000;

/// `n` small valid records (uncompressed bytes of a batch's payload).
fn records(n: usize) -> Vec<u8> {
    BatchBuilder::new()
        .records((0..n).map(|_| Record::at(NOW).key("key").value("value")))
        .raw_records()
}

/// A signed magic v2 batch claiming `count` records, with `payload` as its (compressed) records.
fn batch(codec: Codec, count: i32, payload: &[u8]) -> Vec<u8> {
    BatchBuilder::new()
        .timestamps(NOW, NOW)
        .claim_count(count)
        .payload(codec.id(), payload)
        .build()
        .to_vec()
}

#[test]
fn a_32_gib_zstd_bomb_is_refused_holding_at_most_the_bound() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // One record claiming 2^31-1 bytes, then zeros: 32 GiB from a 1 MiB payload.
    let payload = zstd_rle(&[0xfe, 0xff, 0xff, 0xff, 0x0f], 32 << 30);
    assert!(payload.len() < 1_100_000, "{}", payload.len());
    let b = batch(Codec::Zstd, 1, &payload);
    for limit in [MIB, 64 * MIB] {
        let (r, peak) = peak_of(|| validate(&b, &rules(limit)));
        assert_eq!(r, Err(BatchError::DecompressedTooLarge(limit as u64)));
        println!("zstd 32 GiB bomb, limit {limit}: peak {peak} bytes");
        assert!(peak <= bound(Codec::Zstd, limit), "peak {peak}");
        // The record buffer grew to the limit: the bound is tight, not a guess.
        assert!(peak >= limit);
    }
    // Many valid small records, 256 MiB of them (zstd of a repeating pattern).
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    let chunk = records(10_000);
    let mut written = 0;
    while written < 256 * MIB {
        std::io::Write::write_all(&mut z, &chunk).unwrap();
        written += chunk.len();
    }
    let many = batch(Codec::Zstd, i32::MAX, &z.finish().unwrap());
    let (r, peak) = peak_of(|| validate(&many, &rules(4 * MIB)));
    println!("zstd 256 MiB of small records, limit 4 MiB: peak {peak} bytes");
    // (Its offset deltas restart every 10,000 records, so the second pass rebuilds; the bound
    // stops that one too.)
    assert_eq!(r, Err(BatchError::DecompressedTooLarge(4 * MIB as u64)));
    assert!(peak <= bound(Codec::Zstd, 4 * MIB), "peak {peak}");
}

#[test]
fn bombs_of_every_codec_are_refused_within_the_bound() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let limit = 2 * MIB;
    // 64 MiB of zeros after a record claiming 2^31-1 bytes, in each codec's own encoder.
    let mut inflated = vec![0xfe, 0xff, 0xff, 0xff, 0x0f];
    inflated.resize(64 * MIB, 0);
    for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        let payload = compression::compress(codec, &inflated).unwrap();
        let b = batch(codec, 1, &payload);
        let (r, peak) = peak_of(|| validate(&b, &rules(limit)));
        println!(
            "{codec:?}: {} bytes inflating to 64 MiB, limit {limit}: peak {peak} bytes",
            payload.len()
        );
        assert_eq!(
            r,
            Err(BatchError::DecompressedTooLarge(limit as u64)),
            "{codec:?}"
        );
        assert!(peak <= bound(codec, limit), "{codec:?}: peak {peak}");
    }
    // Raw snappy declaring 4 GiB in its header: refused before anything is allocated for it.
    let b = batch(Codec::Snappy, 1, b"\xff\xff\xff\xff\x0f\x00\x00");
    let (r, peak) = peak_of(|| validate(&b, &rules(limit)));
    assert_eq!(r, Err(BatchError::DecompressedTooLarge(limit as u64)));
    assert!(peak < 64 << 10, "peak {peak}");
}

fn valid_batches() -> &'static [(Codec, Vec<u8>)] {
    static BATCHES: std::sync::OnceLock<Vec<(Codec, Vec<u8>)>> = std::sync::OnceLock::new();
    BATCHES.get_or_init(|| {
        let plain = records(300);
        [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd]
            .into_iter()
            .map(|c| (c, batch(c, 300, &compression::compress(c, &plain).unwrap())))
            .collect()
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
        ..Default::default()
    })]

    /// Valid compressed batches with bytes of their payload replaced, inserted or cut (CRC re-signed,
    /// so validation reaches the decompressor), and random payloads under every codec id: validation
    /// never panics and never holds more than the bound.
    #[test]
    fn mangled_compressed_batches_never_panic_or_exceed_the_bound(
        which in 0usize..4,
        edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY, 0u8..3), 1..8),
        random in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        count in 1i32..1000,
        use_random in proptest::bool::ANY,
    ) {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let batches = valid_batches();
        let (codec, b) = &batches[which];
        let mut payload = if use_random { random } else { b[BATCH_HEADER_LEN..].to_vec() };
        for (at, byte, op) in edits {
            let at = at % (payload.len() + 1);
            match op {
                0 if at < payload.len() => payload[at] = byte,
                1 => payload.insert(at, byte),
                _ if at < payload.len() => { payload.remove(at); }
                _ => {}
            }
        }
        let mangled = batch(*codec, count, &payload);
        let limit = 256 << 10;
        let (r, peak) = peak_of(|| validate(&mangled, &rules(limit)));
        // Anything but a panic is fine: an error, or (rarely) a batch that still reads.
        let _ = r;
        proptest::prop_assert!(peak <= bound(*codec, limit) + mangled.len(), "{codec:?}: peak {peak}");
    }
}
