//! The metadata store: topics, partitions, the segment and block index, high watermarks, producer
//! state, aborted transactions, committed offsets, group and transaction documents, upload intents
//! and the cluster id. One trait
//! ([`MetadataStore`]) and two implementations, chosen once, by [`open`]:
//! - [`sqlite`]: SQLite (WAL mode) in `<data dir>/metadata.db`, the embedded default;
//! - [`postgres`]: a PostgreSQL database (`postgres://...`), which several brokers can share later.
//!
//! Everything a second broker would need lives in the store, not in local files. Both implementations
//! make the same changes in the same transactions: a flush's block rows, high watermarks and producer
//! state commit together, or not at all.
//!
//! **Blocking rule.** Every call is synchronous and blocks on disk or network I/O: call the store only
//! from a blocking thread (tokio's `spawn_blocking`, or a plain `std::thread`), never from a thread that
//! runs async tasks. For PostgreSQL the rule is hard: the `postgres` client drives each connection on a
//! small runtime of its own, and starting it on a runtime thread panics ("Cannot start a runtime from
//! within a runtime"). The engine calls through `Storage::with_meta` and `spawn_blocking` (writer commit,
//! recovery, identity); the group coordinator only through its writer thread, which also loads the
//! groups at open. Dropping a store is allowed anywhere (PostgreSQL closes its connections on a
//! thread of its own). The storage tests run on both stores, so a call site that breaks the rule
//! fails there.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

use crate::producer::{AbortedTxn, ProducerEntry, RecentBatch};
use crate::segment::BlockMeta;
use crate::StorageError;

pub mod postgres;
pub mod sqlite;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use self::postgres::PostgresMetadata;
pub use self::sqlite::SqliteMetadata;

/// Topic-level configuration overrides (name -> value), as given at creation.
pub type TopicConfigs = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub id: Uuid,
    pub name: String,
    pub partitions: i32,
    pub configs: TopicConfigs,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRecord {
    pub topic_id: Uuid,
    pub partition: i32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRecord {
    pub id: u64,
    pub created_ms: i64,
    pub sealed: bool,
    /// 0: written by a flush (blocks of many partitions); 1: written by compaction (one partition);
    /// 2: written by the log cleaner (one partition's key-compacted log).
    pub level: u8,
}

/// Compaction's index switch: blocks replaced by merged blocks in new segments, in one transaction.
#[derive(Debug, Default)]
pub struct BlockSwitch {
    pub segments: Vec<SegmentRecord>,
    /// (topic, partition, base offset, segment) of the blocks replaced.
    pub removed: Vec<(Uuid, i32, i64, u64)>,
    pub added: Vec<BlockMeta>,
    /// Further segments to retire if no block refers to them (e.g. every block's topic was deleted).
    pub retire_if_empty: Vec<u64>,
}

impl BlockSwitch {
    /// The segments a switch may leave without blocks (those it removed blocks from, its new ones and
    /// `retire_if_empty`), sorted, once each.
    pub fn touched_segments(&self) -> Vec<u64> {
        let mut touched: Vec<u64> = self.removed.iter().map(|r| r.3).collect();
        touched.extend(self.segments.iter().map(|s| s.id));
        touched.extend_from_slice(&self.retire_if_empty);
        touched.sort_unstable();
        touched.dedup();
        touched
    }
}

/// Everything a flush makes visible, committed atomically.
#[derive(Debug, Default)]
pub struct Commit {
    pub new_segment: Option<SegmentRecord>,
    pub sealed_segment: Option<u64>,
    pub blocks: Vec<BlockMeta>,
    pub high_watermarks: Vec<(Uuid, i32, i64)>,
    pub producers: Vec<((i64, Uuid, i32), ProducerEntry)>,
    /// Producer state expired (producer.id.expiration.ms), removed in order with the flushes.
    pub expired_producers: Vec<(i64, Uuid, i32)>,
    /// Transactions aborted by a marker in this flush, per partition.
    pub aborted: Vec<(Uuid, i32, AbortedTxn)>,
}

impl Commit {
    /// Nothing to write (a flush whose batches were all duplicates or errors).
    pub fn is_empty(&self) -> bool {
        self.new_segment.is_none()
            && self.sealed_segment.is_none()
            && self.blocks.is_empty()
            && self.producers.is_empty()
            && self.expired_producers.is_empty()
            && self.aborted.is_empty()
    }
}

/// What the engine loads on start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub topics: Vec<TopicRecord>,
    pub partitions: Vec<PartitionRecord>,
    pub segments: Vec<SegmentRecord>,
    pub blocks: Vec<BlockMeta>,
    pub producers: Vec<((i64, Uuid, i32), ProducerEntry)>,
    /// The aborted transactions of every partition, in marker order per partition.
    pub aborted: Vec<(Uuid, i32, AbortedTxn)>,
    /// Segments no block refers to any more, with when they were dropped: deleted after a delay.
    pub retired: Vec<(u64, i64)>,
    /// Upload intents not yet removed (see [`MetadataStore::record_uploads`]).
    pub intents: Vec<u64>,
    /// The highest segment id ever handed out (ids are never reused).
    pub max_segment_id: u64,
}

/// The store's calls. Synchronous: see the blocking rule in the module notes.
pub trait MetadataStore: Send + Sync + 'static {
    fn load(&self) -> Result<Snapshot, StorageError>;
    /// Creates a topic and its partitions; `TopicExists` if the name is taken.
    fn create_topic(&self, topic: &TopicRecord) -> Result<(), StorageError>;
    /// Removes a topic, its partitions, blocks and producer state.
    fn delete_topic(&self, topic_id: Uuid) -> Result<(), StorageError>;
    /// Grows a topic to `partitions` partitions (the new ones start empty).
    fn add_partitions(&self, topic_id: Uuid, partitions: i32) -> Result<(), StorageError>;
    /// Moves a partition's log start offset forward (DeleteRecords, retention) and drops the index rows
    /// of blocks, and the aborted transactions, that end before it. Sealed segments left without blocks are retired.
    fn truncate_head(
        &self,
        topic_id: Uuid,
        partition: i32,
        log_start_offset: i64,
    ) -> Result<(), StorageError>;
    /// Replaces a topic's configuration overrides.
    fn set_topic_configs(&self, topic_id: Uuid, configs: &TopicConfigs)
        -> Result<(), StorageError>;
    /// A flush: its new or sealed segment, block rows, high watermarks, producer state and expired
    /// producers, and the end of its upload intent, in one transaction.
    fn commit(&self, commit: &Commit) -> Result<(), StorageError>;
    /// Replaces blocks by merged ones (compaction). A merged block is only added while its partition
    /// still exists and it ends at or after the log start offset; segments left without blocks are
    /// retired. Returns the blocks actually added.
    fn switch_blocks(&self, switch: &BlockSwitch) -> Result<Vec<BlockMeta>, StorageError>;
    /// The live segments, by id.
    fn segments(&self) -> Result<Vec<SegmentRecord>, StorageError>;
    /// Retired segments: (id, when retired).
    fn retired_segments(&self) -> Result<Vec<(u64, i64)>, StorageError>;
    /// Forgets retired segments whose files or objects are deleted.
    fn forget_retired_segments(&self, ids: &[u64]) -> Result<(), StorageError>;
    /// A producer id never handed out before, even across restarts (the first is 1000).
    fn allocate_producer_id(&self) -> Result<i64, StorageError>;
    fn load_offsets(&self) -> Result<Vec<OffsetRecord>, StorageError>;
    /// Every group's coordinator document: (group id, document).
    fn load_groups(&self) -> Result<Vec<(String, String)>, StorageError>;
    /// The cluster id kept in this store, if one was set.
    fn cluster_id(&self) -> Result<Option<String>, StorageError>;
    /// Sets the cluster id unless one is set already; returns the one the store keeps.
    fn init_cluster_id(&self, id: &str) -> Result<String, StorageError>;
    /// Records, durably and before the objects are written, the segment ids about to be uploaded (an
    /// upload intent each). A flush's commit or compaction's switch removes the intent of the segment it
    /// makes live, in the same transaction; an intent left behind marks an object this store's owner may
    /// have written and never committed, the only objects it may delete without a reference.
    fn record_uploads(&self, segment_ids: &[u64]) -> Result<(), StorageError>;
    /// Upload intents left behind (ids of uploads whose commit did not happen, or not yet).
    fn upload_intents(&self) -> Result<Vec<u64>, StorageError>;
    /// Forgets upload intents whose objects are deleted (or committed).
    fn forget_uploads(&self, segment_ids: &[u64]) -> Result<(), StorageError>;
    /// The group coordinator's writes, in order, as one transaction (one fsync for a whole batch).
    fn group_writes(&self, writes: &[GroupWrite]) -> Result<(), StorageError>;
    /// The committed producer state of one partition, by producer id (DescribeProducers).
    fn producers_of(
        &self,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Vec<(i64, ProducerEntry)>, StorageError>;
    /// Every transactional id's coordinator document: (transactional id, document).
    fn load_transactions(&self) -> Result<Vec<(String, String)>, StorageError>;
    /// The transaction coordinator's writes, in order, as one transaction: a transactional id's
    /// document, or its removal with `None`.
    fn save_transactions(&self, docs: &[(String, Option<String>)]) -> Result<(), StorageError>;
}

/// One change to committed offsets or group state, for [`MetadataStore::group_writes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupWrite {
    /// Commits, replacing earlier ones of the same partitions.
    Offsets(Vec<OffsetRecord>),
    /// A group's offsets: the given (topic, partition) pairs, or all with `None`.
    DeleteOffsets {
        group_id: String,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// Expired offsets: (topic, partition, commit_ms) deleted only while still that commit, so a
    /// newer commit written first is kept.
    ExpireOffsets {
        group_id: String,
        partitions: Vec<(String, i32, i64)>,
    },
    /// Every group's offsets of a deleted topic.
    DeleteTopicOffsets { topic: String },
    /// A group's coordinator document, or its removal with `None`.
    SaveGroup {
        group_id: String,
        state: Option<String>,
    },
}

/// The tables of documents kept by id: the group coordinator's and the transaction coordinator's.
#[derive(Debug, Clone, Copy)]
enum DocTable {
    Groups,
    Transactions,
}

/// A committed offset of a consumer group (OffsetCommit), as Kafka keys it: by topic name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRecord {
    pub group_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    /// The client's metadata string, returned by OffsetFetch exactly as committed (null stays null).
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

/// Which metadata store a broker uses (its `metadata` setting).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum MetadataLocation {
    /// SQLite in `<data dir>/metadata.db` (`sqlite`).
    #[default]
    Sqlite,
    /// A PostgreSQL database: `postgres://user:password@host:port/database` (or `postgresql://`).
    Postgres(String),
}

impl MetadataLocation {
    /// The value as given, password included: to pass on (a flag, a child's environment), never to
    /// show (`Display` hides the password).
    pub fn as_setting(&self) -> &str {
        match self {
            MetadataLocation::Sqlite => "sqlite",
            MetadataLocation::Postgres(url) => url,
        }
    }
}

impl std::str::FromStr for MetadataLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "sqlite" {
            return Ok(MetadataLocation::Sqlite);
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            // Checked now, so a typo stops the broker at start and not at its first connection.
            s.parse::<::postgres::Config>()
                .map_err(|e| format!("bad PostgreSQL URL: {e}"))?;
            return Ok(MetadataLocation::Postgres(s.to_string()));
        }
        Err("expected `sqlite` or a `postgres://user:password@host:port/database` URL".to_string())
    }
}

impl std::fmt::Display for MetadataLocation {
    /// The location without its password (it is shown in logs and DescribeConfigs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetadataLocation::Sqlite => f.write_str("sqlite"),
            MetadataLocation::Postgres(url) => match url::Url::parse(url) {
                Ok(mut u) if u.password().is_some() => {
                    let _ = u.set_password(Some("****"));
                    f.write_str(u.as_str())
                }
                Ok(u) => f.write_str(u.as_str()),
                Err(_) => f.write_str("postgres://(unparsable)"),
            },
        }
    }
}

impl std::fmt::Debug for MetadataLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The SQLite database's file name in the data folder.
pub const SQLITE_FILE: &str = "metadata.db";

/// Opens (creating or migrating its schema if needed) the store `location` names: the one place the
/// choice between the implementations is made. `sync`: every commit is durable on disk before it
/// returns (sync.metadata). Blocks: call on a blocking thread.
pub fn open(
    location: &MetadataLocation,
    data_dir: &Path,
    sync: bool,
) -> Result<Arc<dyn MetadataStore>, StorageError> {
    Ok(match location {
        MetadataLocation::Sqlite => {
            Arc::new(SqliteMetadata::open(&data_dir.join(SQLITE_FILE), sync)?)
        }
        MetadataLocation::Postgres(url) => Arc::new(PostgresMetadata::open(url, sync)?),
    })
}

/// The schema steps still to run on a store at schema version `current`, of `known` steps (version
/// `n` is the schema after step `n`). A store newer than this build is refused rather than guessed at.
fn pending_steps(current: i64, known: usize) -> Result<std::ops::Range<usize>, StorageError> {
    match usize::try_from(current) {
        Ok(v) if v <= known => Ok(v..known),
        _ => Err(StorageError::Refused(format!(
            "the metadata store's schema is version {current}, newer than this broker knows \
             ({known}); run a newer broker"
        ))),
    }
}

/// Topic configs and producer batches are kept as JSON text in both stores.
fn configs_json(configs: &TopicConfigs) -> String {
    serde_json::to_string(configs).unwrap_or_else(|_| "{}".into())
}

fn configs_from_json(text: &str) -> TopicConfigs {
    serde_json::from_str(text).unwrap_or_default()
}

fn recent_json(entry: &ProducerEntry) -> String {
    serde_json::to_string(&entry.recent).unwrap_or_else(|_| "[]".into())
}

/// A producer state row back as an entry. Rows written before producer expiry existed have no append
/// time (0): they count from this start (`now`).
fn producer_entry(
    epoch: i16,
    recent: &str,
    last_ms: i64,
    txn_first_offset: Option<i64>,
    now: i64,
) -> ProducerEntry {
    let recent: Vec<RecentBatch> = serde_json::from_str(recent).unwrap_or_default();
    ProducerEntry {
        epoch,
        recent: recent.into(),
        last_append_ms: if last_ms == 0 { now } else { last_ms },
        txn_first_offset,
    }
}

fn now_ms() -> i64 {
    crate::engine::now_ms()
}

#[cfg(test)]
mod tests {
    use super::testing::TestStore;
    use super::*;

    /// Runs a test against each store: `<name>::sqlite` and `<name>::postgres` (the latter needs
    /// STREAMHOUSE_TEST_POSTGRES, see [`testing`]). Calls happen on plain test threads, as the blocking
    /// rule asks.
    macro_rules! on_each_store {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(super::TestStore::sqlite());
                }
                #[test]
                fn postgres() {
                    super::$name(super::TestStore::postgres());
                }
            }
        )*};
    }

    on_each_store!(
        offsets_and_groups_survive_reopen,
        group_writes_apply_in_order,
        client_strings_round_trip_exactly,
        topics_blocks_and_producers_survive_reopen,
        a_flush_commit_is_one_transaction,
        switch_blocks_adds_only_live_blocks_and_retires_empty_segments,
        uploads_intents_and_cluster_id,
        schema_newer_than_known_is_refused,
        reopening_keeps_the_schema_version,
        a_store_may_be_dropped_on_a_runtime_thread,
        flush_commit_latency,
        transaction_state_survives_reopen,
    );

    /// Transactions' rows: a producer's open transaction with its state, aborted transactions (kept
    /// per partition, gone with the log start or the topic), the coordinator's documents (client
    /// strings exactly), and one partition's producers.
    fn transaction_state_survives_reopen(store: TestStore) {
        let t = topic("t", 2);
        let aborted = AbortedTxn {
            producer_id: 7,
            first_offset: 3,
            last_offset: 9,
        };
        let mut open = entry(4, 7);
        open.txn_first_offset = Some(12);
        {
            let m = store.open();
            m.create_topic(&t).unwrap();
            m.commit(&Commit {
                producers: vec![((7, t.id, 0), open.clone()), ((8, t.id, 1), entry(1, 7))],
                aborted: vec![(t.id, 0, aborted)],
                ..Default::default()
            })
            .unwrap();
            m.save_transactions(&[
                ("tx-é ☃".to_string(), Some("{\"a\":1}".to_string())),
                ("gone".to_string(), Some("{}".to_string())),
            ])
            .unwrap();
            m.save_transactions(&[("gone".to_string(), None)]).unwrap();
        }
        let m = store.open();
        let snap = m.load().unwrap();
        assert_eq!(snap.aborted, vec![(t.id, 0, aborted)]);
        assert!(snap.producers.contains(&((7, t.id, 0), open.clone())));
        assert_eq!(m.producers_of(t.id, 0).unwrap(), vec![(7, open)]);
        assert_eq!(m.producers_of(t.id, 1).unwrap().len(), 1);
        assert_eq!(
            m.load_transactions().unwrap(),
            vec![("tx-é ☃".to_string(), "{\"a\":1}".to_string())]
        );
        m.truncate_head(t.id, 0, 9).unwrap();
        assert_eq!(
            m.load().unwrap().aborted.len(),
            1,
            "ends at 9: still needed"
        );
        m.truncate_head(t.id, 0, 10).unwrap();
        assert!(m.load().unwrap().aborted.is_empty());
        m.commit(&Commit {
            aborted: vec![(t.id, 1, aborted)],
            ..Default::default()
        })
        .unwrap();
        m.delete_topic(t.id).unwrap();
        assert!(m.load().unwrap().aborted.is_empty());
    }

    fn rec(group: &str, topic: &str, p: i32, o: i64, m: Option<&str>, ms: i64) -> OffsetRecord {
        OffsetRecord {
            group_id: group.into(),
            topic: topic.into(),
            partition: p,
            offset: o,
            leader_epoch: 0,
            metadata: m.map(String::from),
            commit_ms: ms,
        }
    }

    fn offsets(m: &dyn MetadataStore) -> Vec<OffsetRecord> {
        let mut got = m.load_offsets().unwrap();
        got.sort_by(|a, b| {
            (&a.group_id, &a.topic, a.partition).cmp(&(&b.group_id, &b.topic, b.partition))
        });
        got
    }

    fn offsets_and_groups_survive_reopen(store: TestStore) {
        {
            let m = store.open();
            m.group_writes(&[GroupWrite::Offsets(vec![
                rec("g", "t", 0, 5, Some("meta"), 1),
                rec("g", "t", 1, 7, None, 1),
            ])])
            .unwrap();
            m.group_writes(&[
                GroupWrite::Offsets(vec![rec("g", "t", 0, 6, Some(""), 1)]),
                GroupWrite::SaveGroup {
                    group_id: "g".into(),
                    state: Some("{\"generation\":3}".into()),
                },
                GroupWrite::SaveGroup {
                    group_id: "gone".into(),
                    state: Some("{}".into()),
                },
            ])
            .unwrap();
            m.group_writes(&[GroupWrite::SaveGroup {
                group_id: "gone".into(),
                state: None,
            }])
            .unwrap();
        }
        let m = store.open();
        assert_eq!(
            offsets(m.as_ref()),
            vec![
                rec("g", "t", 0, 6, Some(""), 1),
                rec("g", "t", 1, 7, None, 1)
            ]
        );
        assert_eq!(
            m.load_groups().unwrap(),
            vec![("g".to_string(), "{\"generation\":3}".to_string())]
        );
        m.group_writes(&[GroupWrite::DeleteOffsets {
            group_id: "g".into(),
            partitions: Some(vec![("t".to_string(), 1)]),
        }])
        .unwrap();
        assert_eq!(m.load_offsets().unwrap().len(), 1);
        m.group_writes(&[GroupWrite::DeleteOffsets {
            group_id: "g".into(),
            partitions: None,
        }])
        .unwrap();
        assert!(m.load_offsets().unwrap().is_empty());
    }

    /// The coordinator's batch: one transaction, in order; an expiry deletes only the commit it saw,
    /// a deleted topic takes every group's offsets of it; a batch that fails writes nothing.
    fn group_writes_apply_in_order(store: TestStore) {
        let m = store.open();
        m.group_writes(&[
            GroupWrite::Offsets(vec![
                rec("a", "t", 0, 1, None, 10),
                rec("a", "u", 0, 1, None, 10),
            ]),
            GroupWrite::Offsets(vec![
                rec("b", "t", 0, 2, None, 10),
                rec("a", "t", 0, 3, None, 20),
            ]),
            GroupWrite::SaveGroup {
                group_id: "a".into(),
                state: Some("{}".into()),
            },
            // Saw the commit of ms 10, but ms 20 replaced it first: kept.
            GroupWrite::ExpireOffsets {
                group_id: "a".into(),
                partitions: vec![("t".into(), 0, 10), ("u".into(), 0, 10)],
            },
        ])
        .unwrap();
        let got: Vec<_> = offsets(m.as_ref())
            .into_iter()
            .map(|r| (r.group_id, r.topic, r.offset))
            .collect();
        assert_eq!(
            got,
            vec![("a".into(), "t".into(), 3), ("b".into(), "t".into(), 2)]
        );
        m.group_writes(&[
            GroupWrite::DeleteTopicOffsets { topic: "t".into() },
            GroupWrite::SaveGroup {
                group_id: "a".into(),
                state: None,
            },
        ])
        .unwrap();
        assert!(m.load_offsets().unwrap().is_empty());
        assert!(m.load_groups().unwrap().is_empty());
    }

    /// Group ids, topic names in commits and metadata strings come from clients: any UTF-8, a NUL
    /// included (PostgreSQL's TEXT refuses NUL, so they are kept as bytes there), comes back as it was;
    /// one client's odd string must not fail the batch it shares with others.
    fn client_strings_round_trip_exactly(store: TestStore) {
        let m = store.open();
        let odd = "g\0\u{1F600}\u{0}'\"\\";
        m.group_writes(&[
            GroupWrite::Offsets(vec![
                rec(odd, "t\0", 0, 1, Some("m\0eta"), 1),
                rec("plain", "t", 0, 2, None, 1),
            ]),
            GroupWrite::SaveGroup {
                group_id: odd.into(),
                state: Some("{\"member\":\"\\u0000\"}".into()),
            },
        ])
        .unwrap();
        let m = store.open();
        assert_eq!(
            offsets(m.as_ref()),
            vec![
                rec(odd, "t\0", 0, 1, Some("m\0eta"), 1),
                rec("plain", "t", 0, 2, None, 1)
            ]
        );
        assert_eq!(
            m.load_groups().unwrap(),
            vec![(odd.to_string(), "{\"member\":\"\\u0000\"}".to_string())]
        );
        m.group_writes(&[GroupWrite::DeleteTopicOffsets {
            topic: "t\0".into(),
        }])
        .unwrap();
        assert_eq!(m.load_offsets().unwrap().len(), 1);
    }

    fn topic(name: &str, partitions: i32) -> TopicRecord {
        TopicRecord {
            id: Uuid::new_v4(),
            name: name.into(),
            partitions,
            configs: [("retention.ms".to_string(), "1000".to_string())].into(),
            created_ms: 5,
        }
    }

    fn block(topic_id: Uuid, partition: i32, base: i64, last: i64, segment_id: u64) -> BlockMeta {
        BlockMeta {
            topic_id,
            partition,
            base_offset: base,
            last_offset: last,
            max_timestamp: 9,
            segment_id,
            position: 32,
            stored_len: 10,
            raw_len: u32::MAX, // the full range of the u32 columns survives
            codec: 1,
            crc: 0xdead_beef,
        }
    }

    fn segment(id: u64, sealed: bool, level: u8) -> SegmentRecord {
        SegmentRecord {
            id,
            created_ms: 3,
            sealed,
            level,
        }
    }

    fn entry(last_seq: i32, last_append_ms: i64) -> ProducerEntry {
        ProducerEntry {
            epoch: 2,
            recent: [RecentBatch {
                first_seq: 0,
                last_seq,
                base_offset: 0,
            }]
            .into(),
            last_append_ms,
            txn_first_offset: None,
        }
    }

    fn topics_blocks_and_producers_survive_reopen(store: TestStore) {
        let t = topic("t", 2);
        {
            let m = store.open();
            m.create_topic(&t).unwrap();
            assert!(matches!(
                m.create_topic(&TopicRecord {
                    id: Uuid::new_v4(),
                    ..t.clone()
                }),
                Err(StorageError::TopicExists(_))
            ));
            m.commit(&Commit {
                new_segment: Some(segment(1, false, 0)),
                blocks: vec![block(t.id, 1, 0, 4, 1)],
                high_watermarks: vec![(t.id, 1, 5)],
                producers: vec![((1000, t.id, 1), entry(4, 7))],
                ..Default::default()
            })
            .unwrap();
            assert_eq!(m.allocate_producer_id().unwrap(), 1000);
            assert_eq!(m.allocate_producer_id().unwrap(), 1001);
            m.add_partitions(t.id, 3).unwrap();
            m.set_topic_configs(t.id, &[("a".to_string(), "b".to_string())].into())
                .unwrap();
        }
        let m = store.open();
        let snap = m.load().unwrap();
        assert_eq!(
            snap.topics,
            vec![TopicRecord {
                partitions: 3,
                configs: [("a".to_string(), "b".to_string())].into(),
                ..t.clone()
            }]
        );
        assert_eq!(snap.blocks, vec![block(t.id, 1, 0, 4, 1)]);
        assert_eq!(snap.segments, vec![segment(1, false, 0)]);
        let mut parts: Vec<_> = snap
            .partitions
            .iter()
            .map(|p| (p.partition, p.log_start_offset, p.high_watermark))
            .collect();
        parts.sort();
        assert_eq!(parts, vec![(0, 0, 0), (1, 0, 5), (2, 0, 0)]);
        assert_eq!(snap.producers, vec![((1000, t.id, 1), entry(4, 7))]);
        assert_eq!(m.allocate_producer_id().unwrap(), 1002);

        // Retention: the block ends before the new log start; the segment is still active (not sealed).
        m.truncate_head(t.id, 1, 5).unwrap();
        m.truncate_head(t.id, 1, 2).unwrap(); // never moves back
        let snap = m.load().unwrap();
        assert!(snap.blocks.is_empty());
        assert_eq!(
            snap.partitions
                .iter()
                .find(|p| p.partition == 1)
                .map(|p| p.log_start_offset),
            Some(5)
        );
        assert_eq!(snap.segments.len(), 1, "the active segment stays");
        // Sealing it with no blocks left retires it.
        m.commit(&Commit {
            sealed_segment: Some(1),
            new_segment: Some(segment(2, false, 0)),
            blocks: vec![block(t.id, 0, 0, 0, 2)],
            high_watermarks: vec![(t.id, 0, 1)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(m.segments().unwrap(), vec![segment(2, false, 0)]);
        let retired = m.retired_segments().unwrap();
        assert_eq!(retired.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1]);
        m.forget_retired_segments(&[1]).unwrap();
        assert!(m.retired_segments().unwrap().is_empty());

        m.delete_topic(t.id).unwrap();
        let snap = m.load().unwrap();
        assert!(snap.topics.is_empty() && snap.partitions.is_empty());
        assert!(snap.blocks.is_empty() && snap.producers.is_empty());
        // The name is free again.
        m.create_topic(&topic("t", 1)).unwrap();
    }

    /// A flush's rows land together; a commit that fails part-way (here: a block row against a
    /// segment id taken twice) leaves nothing of it, not even its high watermarks. Rows of a topic
    /// deleted meanwhile are not written; expired producers go in the same transaction.
    fn a_flush_commit_is_one_transaction(store: TestStore) {
        let m = store.open();
        let t = topic("t", 1);
        m.create_topic(&t).unwrap();
        m.record_uploads(&[1, 2]).unwrap();
        m.commit(&Commit {
            new_segment: Some(segment(1, true, 0)),
            blocks: vec![block(t.id, 0, 0, 1, 1)],
            high_watermarks: vec![(t.id, 0, 2)],
            producers: vec![((7, t.id, 0), entry(1, 5)), ((8, t.id, 0), entry(1, 5))],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            m.upload_intents().unwrap(),
            vec![2],
            "the commit ended segment 1's intent"
        );
        let failed = m.commit(&Commit {
            new_segment: Some(segment(1, true, 0)), // taken: the insert fails
            blocks: vec![block(t.id, 0, 2, 3, 1)],
            high_watermarks: vec![(t.id, 0, 4)],
            expired_producers: vec![(7, t.id, 0)],
            ..Default::default()
        });
        assert!(failed.is_err());
        let snap = m.load().unwrap();
        assert_eq!(snap.partitions[0].high_watermark, 2);
        assert_eq!(snap.blocks.len(), 1);
        assert_eq!(snap.producers.len(), 2);

        let gone = Uuid::new_v4();
        m.commit(&Commit {
            new_segment: Some(segment(2, true, 0)),
            blocks: vec![block(t.id, 0, 2, 3, 2), block(gone, 0, 0, 0, 2)],
            high_watermarks: vec![(t.id, 0, 4), (gone, 0, 1)],
            producers: vec![((9, gone, 0), entry(0, 5)), ((8, t.id, 0), entry(3, 6))],
            expired_producers: vec![(7, t.id, 0)],
            ..Default::default()
        })
        .unwrap();
        let snap = m.load().unwrap();
        assert_eq!(snap.partitions[0].high_watermark, 4);
        assert_eq!(
            snap.blocks,
            vec![block(t.id, 0, 0, 1, 1), block(t.id, 0, 2, 3, 2)]
        );
        assert_eq!(snap.producers, vec![((8, t.id, 0), entry(3, 6))]);
        assert!(snap.intents.is_empty());
        assert_eq!(snap.max_segment_id, 2);
    }

    fn switch_blocks_adds_only_live_blocks_and_retires_empty_segments(store: TestStore) {
        let m = store.open();
        let t = topic("t", 1);
        m.create_topic(&t).unwrap();
        for (seg, base) in [(1, 0), (2, 2)] {
            m.commit(&Commit {
                new_segment: Some(segment(seg, true, 0)),
                blocks: vec![block(t.id, 0, base, base + 1, seg)],
                high_watermarks: vec![(t.id, 0, base + 2)],
                ..Default::default()
            })
            .unwrap();
        }
        m.truncate_head(t.id, 0, 2).unwrap(); // block 0-1 goes, segment 1 retires
        assert_eq!(m.segments().unwrap(), vec![segment(2, true, 0)]);
        m.record_uploads(&[3]).unwrap();
        let added = m
            .switch_blocks(&BlockSwitch {
                segments: vec![segment(3, true, 1)],
                removed: vec![(t.id, 0, 2, 2)],
                added: vec![
                    block(t.id, 0, 0, 1, 3), // ends before the log start: not added
                    block(t.id, 0, 2, 3, 3),
                    block(Uuid::new_v4(), 0, 0, 1, 3), // no such partition: not added
                ],
                retire_if_empty: vec![],
            })
            .unwrap();
        assert_eq!(added, vec![block(t.id, 0, 2, 3, 3)]);
        let snap = m.load().unwrap();
        assert_eq!(snap.blocks, added);
        assert_eq!(snap.segments, vec![segment(3, true, 1)]);
        let mut retired: Vec<u64> = snap.retired.iter().map(|r| r.0).collect();
        retired.sort();
        assert_eq!(retired, vec![1, 2]);
        assert!(snap.intents.is_empty());

        m.delete_topic(t.id).unwrap();
        assert!(
            m.segments().unwrap().is_empty(),
            "deleting the topic retired segment 3"
        );
        // A sealed segment whose every block was refused (its topic is gone) stays live until a
        // switch names it in retire_if_empty.
        m.commit(&Commit {
            new_segment: Some(segment(4, true, 0)),
            blocks: vec![block(t.id, 0, 4, 5, 4)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(m.segments().unwrap(), vec![segment(4, true, 0)]);
        m.switch_blocks(&BlockSwitch {
            retire_if_empty: vec![4],
            ..Default::default()
        })
        .unwrap();
        assert!(m.segments().unwrap().is_empty());
        assert_eq!(m.retired_segments().unwrap().len(), 4);
    }

    fn uploads_intents_and_cluster_id(store: TestStore) {
        let m = store.open();
        m.record_uploads(&[5, 3]).unwrap();
        m.record_uploads(&[4]).unwrap();
        assert_eq!(m.upload_intents().unwrap(), vec![3, 4, 5]);
        m.forget_uploads(&[3, 5]).unwrap();
        assert_eq!(m.upload_intents().unwrap(), vec![4]);
        m.forget_uploads(&[4]).unwrap();
        // Ids are never reused: the highest ever recorded stays known.
        assert_eq!(m.load().unwrap().max_segment_id, 5);

        assert_eq!(m.cluster_id().unwrap(), None);
        assert_eq!(m.init_cluster_id("first").unwrap(), "first");
        assert_eq!(m.init_cluster_id("second").unwrap(), "first", "set once");
        assert_eq!(store.open().cluster_id().unwrap().as_deref(), Some("first"));
    }

    fn schema_newer_than_known_is_refused(store: TestStore) {
        drop(store.open());
        store.set_schema_version(99);
        let err = store
            .try_open()
            .err()
            .expect("a newer schema must be refused");
        assert!(
            matches!(&err, StorageError::Refused(m) if m.contains("version 99")),
            "{err}"
        );
    }

    fn reopening_keeps_the_schema_version(store: TestStore) {
        drop(store.open());
        let v = store.schema_version();
        assert!(v >= 1);
        drop(store.open());
        assert_eq!(store.schema_version(), v);
    }

    /// The last handle on a store may go on a runtime thread (a `Storage` that failed to open, or
    /// whose last task ended): that must not block on the runtime, nor panic.
    fn a_store_may_be_dropped_on_a_runtime_thread(store: TestStore) {
        let m = store.open();
        m.allocate_producer_id().unwrap(); // a connection is open and idle
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move { drop(m) });
    }

    /// Measures (prints, with --nocapture) what one flush commit costs: 16 partitions' blocks, high
    /// watermarks and producer states, durable (sync on), 200 in a row as the writer issues them. No
    /// timed assertion; it checks every row landed.
    fn flush_commit_latency(store: TestStore) {
        const PARTITIONS: i32 = 16;
        const COMMITS: usize = 200;
        let m = store.open();
        let t = topic("latency", PARTITIONS);
        m.create_topic(&t).unwrap();
        let mut took = Vec::with_capacity(COMMITS);
        for i in 0..COMMITS as i64 {
            let seg = i as u64 + 1;
            let commit = Commit {
                new_segment: Some(segment(seg, true, 0)),
                blocks: (0..PARTITIONS).map(|p| block(t.id, p, i, i, seg)).collect(),
                high_watermarks: (0..PARTITIONS).map(|p| (t.id, p, i + 1)).collect(),
                producers: (0..PARTITIONS)
                    .map(|p| ((1000 + p as i64, t.id, p), entry(i as i32, 5)))
                    .collect(),
                ..Default::default()
            };
            let start = std::time::Instant::now();
            m.commit(&commit).unwrap();
            took.push(start.elapsed());
        }
        took.sort();
        let us = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_micros();
        eprintln!(
            "flush commit, {PARTITIONS} partitions, {:?}: p50 {} us, p90 {} us, p99 {} us, max {} us",
            store.backend(),
            us(0.5),
            us(0.9),
            us(0.99),
            us(1.0)
        );
        let snap = m.load().unwrap();
        assert_eq!(snap.blocks.len(), PARTITIONS as usize * COMMITS);
        assert!(snap
            .partitions
            .iter()
            .all(|p| p.high_watermark == COMMITS as i64));
        assert_eq!(snap.producers.len(), PARTITIONS as usize);
    }

    #[test]
    fn locations_parse_and_hide_passwords() {
        assert_eq!("sqlite".parse(), Ok(MetadataLocation::Sqlite));
        let pg: MetadataLocation = "postgres://u:secret@127.0.0.1:5432/db".parse().unwrap();
        assert_eq!(pg.to_string(), "postgres://u:****@127.0.0.1:5432/db");
        assert!(!format!("{pg:?}").contains("secret"));
        assert_eq!(pg.as_setting(), "postgres://u:secret@127.0.0.1:5432/db");
        assert_eq!(pg.as_setting().parse(), Ok(pg));
        assert!("mysql://x".parse::<MetadataLocation>().is_err());
        assert!("postgres://u@host:notaport/db"
            .parse::<MetadataLocation>()
            .is_err());
    }
}
