//! The block index of one partition, as pure functions: which blocks a read needs, which of those one
//! ranged GET can fetch together, and where retention cuts. No locks, no I/O: the catalog holds the
//! index (`BTreeMap` of committed blocks by base offset) and calls these under its lock; they are
//! tested here on plain maps.

use std::collections::BTreeMap;

use crate::segment::BlockMeta;

/// Committed blocks of a partition, by base offset.
pub type BlockIndex = BTreeMap<i64, BlockMeta>;

/// The blocks a read from `offset` takes batches from: the one holding `offset`, then the following
/// ones until `max_bytes` of raw data are covered (at least one).
pub fn blocks_from(index: &BlockIndex, offset: i64, max_bytes: usize) -> Vec<BlockMeta> {
    let start = index
        .range(..=offset)
        .next_back()
        .map(|(k, _)| *k)
        .unwrap_or(offset);
    let mut out = Vec::new();
    let mut covered = 0usize;
    for b in index.range(start..).map(|(_, b)| b) {
        if b.last_offset < offset {
            continue;
        }
        out.push(*b);
        covered += b.raw_len as usize;
        if covered >= max_bytes {
            break;
        }
    }
    out
}

/// `first` and the partition's blocks stored right after it in the same segment, up to `max_bytes`
/// stored: what one ranged GET can fetch together.
pub fn run_from(index: &BlockIndex, first: &BlockMeta, max_bytes: u64) -> Vec<BlockMeta> {
    let mut run = vec![*first];
    let mut end = first.position + first.total_len();
    let mut bytes = first.total_len();
    for b in index.range(first.base_offset + 1..).map(|(_, b)| b) {
        if b.segment_id != first.segment_id
            || b.position != end
            || bytes + b.total_len() > max_bytes
        {
            break;
        }
        run.push(*b);
        end += b.total_len();
        bytes += b.total_len();
    }
    run
}

/// The reads that fetch `wanted` blocks (in offset order): the first block of each run one ranged GET
/// covers (blocks stored back to back in one segment, up to `max_run` bytes); loading those loads all.
pub fn run_starts(index: &BlockIndex, wanted: &[BlockMeta], max_run: u64) -> Vec<BlockMeta> {
    let mut starts: Vec<BlockMeta> = Vec::new();
    let mut covered: Option<(u64, u64)> = None; // (segment, end of the last run)
    for b in wanted {
        if covered.is_some_and(|(seg, end)| seg == b.segment_id && b.position < end) {
            continue;
        }
        let run = run_from(index, b, max_run);
        let end = run.last().map(|r| r.position + r.total_len()).unwrap_or(0);
        covered = Some((b.segment_id, end));
        starts.push(*b);
    }
    starts
}

/// A read planned against the index: the blocks it takes batches from, and the first block of each
/// run of them that is not cached (one ranged GET each).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadPlan {
    pub blocks: Vec<BlockMeta>,
    pub loads: Vec<BlockMeta>,
}

/// Plans a read of `max_bytes` from `offset`: the one place the blocks needed, and the loads for those
/// missing from the cache, are worked out (for a read, a prefetch and a read-ahead alike).
pub fn plan_read(
    index: &BlockIndex,
    offset: i64,
    max_bytes: usize,
    max_run: u64,
    cached: impl Fn(&BlockMeta) -> bool,
) -> ReadPlan {
    let blocks = blocks_from(index, offset, max_bytes.max(1));
    let missing: Vec<BlockMeta> = blocks.iter().filter(|b| !cached(b)).copied().collect();
    let loads = run_starts(index, &missing, max_run);
    ReadPlan { blocks, loads }
}

/// Where retention moves the log start offset: past whole blocks whose newest record is older than
/// `retention_ms` (negative: no time limit), and past the oldest blocks while what remains is still at
/// least `retention_bytes` (Kafka's rule; negative: no size limit). Never past the high watermark.
pub fn retention_cutoff(
    index: &BlockIndex,
    log_start: i64,
    high_watermark: i64,
    now_ms: i64,
    retention_ms: i64,
    retention_bytes: i64,
) -> i64 {
    let mut cutoff = log_start;
    if retention_ms >= 0 {
        for b in index.values() {
            if b.max_timestamp >= now_ms - retention_ms {
                break;
            }
            cutoff = cutoff.max(b.last_offset + 1);
        }
    }
    if retention_bytes >= 0 {
        let mut excess = index.values().map(|b| b.raw_len as i64).sum::<i64>() - retention_bytes;
        for b in index.values() {
            if excess - (b.raw_len as i64) < 0 {
                break;
            }
            excess -= b.raw_len as i64;
            cutoff = cutoff.max(b.last_offset + 1);
        }
    }
    cutoff.min(high_watermark)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// Blocks of 10 offsets and `raw` bytes each, stored back to back in `segment` (1 KiB stored).
    fn index(spec: &[(u64, i64)]) -> BlockIndex {
        let mut idx = BlockIndex::new();
        let mut position = 32;
        for &(segment, base) in spec {
            let b = BlockMeta {
                topic_id: Uuid::nil(),
                partition: 0,
                base_offset: base,
                last_offset: base + 9,
                max_timestamp: base * 100,
                segment_id: segment,
                position,
                stored_len: 1000,
                raw_len: 2000,
                codec: 0,
                crc: 0,
            };
            position += b.total_len();
            idx.insert(base, b);
        }
        idx
    }

    fn bases(blocks: &[BlockMeta]) -> Vec<i64> {
        blocks.iter().map(|b| b.base_offset).collect()
    }

    #[test]
    fn a_read_takes_the_block_holding_the_offset_then_enough_for_max_bytes() {
        let idx = index(&[(1, 0), (1, 10), (1, 20), (1, 30)]);
        assert_eq!(bases(&blocks_from(&idx, 15, 1)), vec![10]);
        assert_eq!(bases(&blocks_from(&idx, 15, 2001)), vec![10, 20]);
        assert_eq!(bases(&blocks_from(&idx, 0, 1 << 20)), vec![0, 10, 20, 30]);
        assert!(blocks_from(&idx, 40, 100).is_empty());
    }

    #[test]
    fn runs_stop_at_a_segment_change_or_the_byte_limit() {
        let idx = index(&[(1, 0), (1, 10), (2, 20), (2, 30), (2, 40)]);
        let first = idx[&0];
        assert_eq!(bases(&run_from(&idx, &first, 1 << 20)), vec![0, 10]);
        let third = idx[&20];
        let one_block = third.total_len();
        assert_eq!(bases(&run_from(&idx, &third, one_block * 2)), vec![20, 30]);
        let all: Vec<BlockMeta> = idx.values().copied().collect();
        assert_eq!(bases(&run_starts(&idx, &all, 1 << 20)), vec![0, 20]);
        assert_eq!(
            bases(&run_starts(&idx, &all, one_block)),
            vec![0, 10, 20, 30, 40]
        );
    }

    #[test]
    fn a_plan_loads_only_the_runs_of_missing_blocks() {
        let idx = index(&[(1, 0), (1, 10), (1, 20), (1, 30)]);
        let plan = plan_read(&idx, 0, 1 << 20, 1 << 20, |b| b.base_offset == 10);
        assert_eq!(bases(&plan.blocks), vec![0, 10, 20, 30]);
        // 0 is missing; 10 is cached, so 20 starts a run of its own (a GET from 0 would cover it
        // too, but runs are planned over the missing blocks only, and 0's run covers 10-30).
        assert_eq!(bases(&plan.loads), vec![0]);
        let cached_all = plan_read(&idx, 0, 1 << 20, 1 << 20, |_| true);
        assert!(cached_all.loads.is_empty());
    }

    #[test]
    fn retention_cuts_whole_blocks_by_age_and_by_size() {
        let idx = index(&[(1, 0), (1, 10), (1, 20), (1, 30)]);
        // Timestamps are base * 100: at now 2,500 with 1,000 ms retention, blocks ending before
        // 1,500 go (0 and 10).
        assert_eq!(retention_cutoff(&idx, 0, 40, 2_500, 1_000, -1), 20);
        // 8,000 bytes in all; keep at least 4,000: the first two go.
        assert_eq!(retention_cutoff(&idx, 0, 40, 0, -1, 4_000), 20);
        assert_eq!(
            retention_cutoff(&idx, 0, 40, 0, -1, 3_999),
            20,
            "4,000 left is still at least 3,999"
        );
        assert_eq!(retention_cutoff(&idx, 0, 40, 0, -1, 1_999), 30);
        assert_eq!(retention_cutoff(&idx, 5, 40, 0, -1, -1), 5, "no limits");
        assert_eq!(
            retention_cutoff(&idx, 0, 25, 1 << 40, 0, -1),
            25,
            "never past the hwm"
        );
    }
}
