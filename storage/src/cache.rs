//! The block cache: decoded blocks keyed by segment and position, weighted by bytes, in two parts.
//!
//! - The *written* part holds blocks inserted at commit, so tailing consumers never touch the disk or
//!   the object store.
//! - The *loaded* part holds blocks read back from storage (lagging consumers, read-ahead, restarts).
//!
//! A lagging consumer scanning old data only churns the loaded part, so it cannot evict the hot tail
//! that every up-to-date consumer is reading (cold-read isolation). Each part is CLOCK-Pro-like
//! (quick_cache); concurrent misses on one block share a single load.

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<(u64, u64), Bytes> for ByteWeighter {
    fn weight(&self, _key: &(u64, u64), value: &Bytes) -> u64 {
        value.len() as u64 + 64
    }
}

type Part = Cache<(u64, u64), Bytes, ByteWeighter>;

/// A log is read in write order, mostly once per consumer group: recency matters more than frequency.
/// quick_cache's default keeps 97% for items read more than once, so blocks not read yet (written
/// ahead of a lagging consumer, or fetched ahead by read-ahead) would be evicted before their first
/// read; a small hot share keeps them.
const HOT_ALLOCATION: f64 = 0.1;

fn part(capacity_bytes: u64) -> Part {
    // Item estimate: blocks of ~16 KiB on average.
    let items = (capacity_bytes / 16_384).max(16) as usize;
    // Each shard has its own share of the capacity: keep shards large enough for 64 merged blocks of
    // 1 MiB (compaction's largest), or a run fetched ahead evicts itself before it is read.
    let shards = (capacity_bytes / (64 << 20))
        .clamp(1, 16)
        .next_power_of_two() as usize;
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(items)
        .weight_capacity(capacity_bytes.max(1))
        .hot_allocation(HOT_ALLOCATION)
        .shards(shards)
        .build();
    match options {
        Ok(o) => Cache::with_options(o, ByteWeighter, Default::default(), Default::default()),
        Err(_) => Cache::with_weighter(items, capacity_bytes.max(1), ByteWeighter),
    }
}

pub struct BlockCache {
    written: Part,
    loaded: Part,
    loaded_capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Hits and misses of block lookups since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub weight: u64,
}

impl BlockCache {
    /// Three quarters of the capacity for blocks just written, one quarter for blocks read back.
    pub fn new(capacity_bytes: u64) -> Self {
        let loaded = capacity_bytes / 4;
        Self {
            written: part(capacity_bytes - loaded),
            loaded: part(loaded),
            loaded_capacity: loaded,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, segment_id: u64, position: u64) -> Option<Bytes> {
        let key = (segment_id, position);
        self.written.get(&key).or_else(|| self.loaded.get(&key))
    }

    /// A block just committed.
    pub fn insert_written(&self, segment_id: u64, position: u64, block: Bytes) {
        self.written.insert((segment_id, position), block);
    }

    /// A block read from storage ahead of need (read-ahead, neighbours fetched by the same GET).
    pub fn insert_loaded(&self, segment_id: u64, position: u64, block: Bytes) {
        let key = (segment_id, position);
        if self.written.get(&key).is_none() {
            self.loaded.insert(key, block);
        }
    }

    /// The cached block, or the result of `load` (kept in the loaded part); concurrent callers for the
    /// same block wait for the one load in flight instead of issuing their own.
    pub async fn get_or_load<E>(
        &self,
        segment_id: u64,
        position: u64,
        load: impl std::future::Future<Output = Result<Bytes, E>>,
    ) -> Result<Bytes, E> {
        let key = (segment_id, position);
        if let Some(b) = self.written.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let mut loaded = false;
        let r = self
            .loaded
            .get_or_insert_async(&key, async {
                loaded = true;
                load.await
            })
            .await;
        let counter = if loaded { &self.misses } else { &self.hits };
        counter.fetch_add(1, Ordering::Relaxed);
        r
    }

    pub fn contains(&self, segment_id: u64, position: u64) -> bool {
        let key = (segment_id, position);
        self.written.contains_key(&key) || self.loaded.contains_key(&key)
    }

    /// Bytes the part holding blocks read back can hold.
    pub fn loaded_capacity(&self) -> u64 {
        self.loaded_capacity
    }

    pub fn weight(&self) -> u64 {
        self.written.weight() + self.loaded.weight()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            weight: self.weight(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cold_scan_does_not_evict_written_blocks() {
        let cache = BlockCache::new(4 << 20);
        let block = Bytes::from(vec![7u8; 16 << 10]);
        // The hot tail: 64 blocks (1 MiB) just written.
        for pos in 0..64 {
            cache.insert_written(1, pos, block.clone());
        }
        // A lagging consumer reads 64 MiB of old data, 16 times the cache.
        for pos in 0..4096u64 {
            let b = block.clone();
            let got = cache
                .get_or_load(2, pos, async move { Ok::<_, ()>(b) })
                .await;
            assert!(got.is_ok());
        }
        for pos in 0..64 {
            assert!(cache.get(1, pos).is_some(), "hot block {pos} was evicted");
        }
        let stats = cache.stats();
        assert_eq!(stats.misses, 4096);
        assert!(stats.weight <= 4 << 20);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_load() {
        let cache = std::sync::Arc::new(BlockCache::new(1 << 20));
        let loads = std::sync::Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (cache, loads) = (cache.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(9, 0, async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok::<_, ()>(Bytes::from_static(b"block"))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Bytes::from_static(b"block"));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (15, 1));
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use super::*;

    /// Block i is read while block i + window is inserted ahead of it: with the window at half of the
    /// part it goes to, every read must hit.
    fn reads_behind_inserts(insert: impl Fn(&BlockCache, u64, Bytes), part_bytes: u64) -> usize {
        let cache = BlockCache::new(64 << 20);
        let block = Bytes::from(vec![1u8; 32 << 10]);
        let window = part_bytes / 2 / (32 << 10);
        for i in 0..window {
            insert(&cache, i, block.clone());
        }
        (0..6000u64)
            .filter(|&i| {
                insert(&cache, i + window, block.clone());
                cache.get(1, i).is_none()
            })
            .count()
    }

    #[test]
    fn runs_of_large_merged_blocks_fetched_ahead_stay_until_read() {
        // The default cache (256 MiB, 64 MiB for blocks read back) and 1 MiB blocks, 4 MiB ahead.
        let cache = BlockCache::new(256 << 20);
        let block = Bytes::from(vec![1u8; 1 << 20]);
        for i in 0..4 {
            cache.insert_loaded(1, i, block.clone());
        }
        let misses = (0..500u64)
            .filter(|&i| {
                cache.insert_loaded(1, i + 4, block.clone());
                cache.get(1, i).is_none()
            })
            .count();
        assert_eq!(misses, 0);
    }

    #[test]
    fn blocks_fetched_ahead_stay_until_read() {
        let misses = reads_behind_inserts(|c, i, b| c.insert_loaded(1, i, b), 16 << 20);
        assert_eq!(misses, 0);
    }

    #[test]
    fn a_consumer_lagging_behind_the_writes_still_reads_from_memory() {
        let misses = reads_behind_inserts(|c, i, b| c.insert_written(1, i, b), 48 << 20);
        assert_eq!(misses, 0);
    }
}
