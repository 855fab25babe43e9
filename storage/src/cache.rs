//! A byte-weighted LRU-ish (CLOCK-Pro, via quick_cache) cache of decoded blocks, keyed by segment and
//! position. Blocks just written are inserted at commit, so tailing consumers never touch the disk.

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<(u64, u64), Bytes> for ByteWeighter {
    fn weight(&self, _key: &(u64, u64), value: &Bytes) -> u64 {
        value.len() as u64 + 64
    }
}

pub struct BlockCache {
    inner: Cache<(u64, u64), Bytes, ByteWeighter>,
}

impl BlockCache {
    pub fn new(capacity_bytes: u64) -> Self {
        // Item estimate: blocks of ~16 KiB on average.
        let items = (capacity_bytes / 16_384).max(16) as usize;
        Self {
            inner: Cache::with_weighter(items, capacity_bytes.max(1), ByteWeighter),
        }
    }

    pub fn get(&self, segment_id: u64, position: u64) -> Option<Bytes> {
        self.inner.get(&(segment_id, position))
    }

    pub fn insert(&self, segment_id: u64, position: u64, block: Bytes) {
        self.inner.insert((segment_id, position), block);
    }

    /// The cached block, or the result of `load` (inserted); concurrent callers for the same block
    /// wait for the one load in flight instead of issuing their own.
    pub async fn get_or_load<E>(
        &self,
        segment_id: u64,
        position: u64,
        load: impl std::future::Future<Output = Result<Bytes, E>>,
    ) -> Result<Bytes, E> {
        self.inner
            .get_or_insert_async(&(segment_id, position), load)
            .await
    }

    pub fn weight(&self) -> u64 {
        self.inner.weight()
    }
}
