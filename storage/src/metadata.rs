//! The metadata store: topics, partitions, the segment and block index, high watermarks and producer
//! state. One trait, SQLite (WAL mode) now; a PostgreSQL implementation can follow for stateless brokers.
//!
//! Calls are synchronous; the engine runs them on blocking threads.

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::Path;
use uuid::Uuid;

use crate::producer::{ProducerEntry, RecentBatch};
use crate::segment::BlockMeta;
use crate::StorageError;

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
    /// 0: written by a flush (blocks of many partitions); 1: written by compaction (one partition).
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
}

impl Commit {
    /// Nothing to write (a flush whose batches were all duplicates or errors).
    pub fn is_empty(&self) -> bool {
        self.new_segment.is_none()
            && self.sealed_segment.is_none()
            && self.blocks.is_empty()
            && self.producers.is_empty()
            && self.expired_producers.is_empty()
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
    /// Segments no block refers to any more, with when they were dropped: deleted after a delay.
    pub retired: Vec<(u64, i64)>,
    /// Upload intents not yet removed (see [`MetadataStore::record_uploads`]).
    pub intents: Vec<u64>,
    /// The highest segment id ever handed out (ids are never reused).
    pub max_segment_id: u64,
}

pub trait MetadataStore: Send + Sync + 'static {
    fn load(&self) -> Result<Snapshot, StorageError>;
    /// Creates a topic and its partitions; `TopicExists` if the name is taken.
    fn create_topic(&self, topic: &TopicRecord) -> Result<(), StorageError>;
    /// Removes a topic, its partitions, blocks and producer state.
    fn delete_topic(&self, topic_id: Uuid) -> Result<(), StorageError>;
    /// Grows a topic to `partitions` partitions (the new ones start empty).
    fn add_partitions(&self, topic_id: Uuid, partitions: i32) -> Result<(), StorageError>;
    /// Moves a partition's log start offset forward (DeleteRecords, retention) and drops the index rows
    /// of blocks that end before it. Sealed segments left without blocks are retired.
    fn truncate_head(
        &self,
        topic_id: Uuid,
        partition: i32,
        log_start_offset: i64,
    ) -> Result<(), StorageError>;
    /// Replaces a topic's configuration overrides.
    fn set_topic_configs(&self, topic_id: Uuid, configs: &TopicConfigs)
        -> Result<(), StorageError>;
    fn add_segment(&self, segment: &SegmentRecord) -> Result<(), StorageError>;
    fn delete_segment(&self, segment_id: u64) -> Result<(), StorageError>;
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
    /// A producer id never handed out before, even across restarts.
    fn allocate_producer_id(&self) -> Result<i64, StorageError>;
    /// Stores committed offsets (one transaction), replacing earlier commits of the same partitions.
    fn commit_offsets(&self, offsets: &[OffsetRecord]) -> Result<(), StorageError>;
    /// Removes committed offsets of a group: the given (topic, partition) pairs, or all with `None`.
    fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Result<(), StorageError>;
    fn load_offsets(&self) -> Result<Vec<OffsetRecord>, StorageError>;
    /// Saves a group coordinator's state for a group (an opaque document), or removes it with `None`.
    fn save_group(&self, group_id: &str, state: Option<&str>) -> Result<(), StorageError>;
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

pub struct SqliteMetadata {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
  topic_id BLOB PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL,
  configs TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
  topic_id BLOB NOT NULL, partition INTEGER NOT NULL, log_start_offset INTEGER NOT NULL,
  high_watermark INTEGER NOT NULL, PRIMARY KEY (topic_id, partition));
CREATE TABLE IF NOT EXISTS segments (
  segment_id INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, sealed INTEGER NOT NULL,
  level INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS retired_segments (
  segment_id INTEGER PRIMARY KEY, retired_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
  topic_id BLOB NOT NULL, partition INTEGER NOT NULL, base_offset INTEGER NOT NULL,
  last_offset INTEGER NOT NULL, max_timestamp INTEGER NOT NULL, segment_id INTEGER NOT NULL,
  position INTEGER NOT NULL, stored_len INTEGER NOT NULL, raw_len INTEGER NOT NULL,
  codec INTEGER NOT NULL, crc INTEGER NOT NULL, PRIMARY KEY (topic_id, partition, base_offset));
CREATE INDEX IF NOT EXISTS blocks_by_segment ON blocks (segment_id);
CREATE TABLE IF NOT EXISTS producer_state (
  producer_id INTEGER NOT NULL, topic_id BLOB NOT NULL, partition INTEGER NOT NULL,
  epoch INTEGER NOT NULL, recent TEXT NOT NULL, last_ms INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (producer_id, topic_id, partition));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS group_offsets (
  group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, committed_offset INTEGER NOT NULL,
  leader_epoch INTEGER NOT NULL, metadata TEXT, commit_ms INTEGER NOT NULL,
  PRIMARY KEY (group_id, topic, partition));
CREATE TABLE IF NOT EXISTS groups (group_id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS upload_intents (segment_id INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cluster (name TEXT PRIMARY KEY, value TEXT NOT NULL);
";

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

impl SqliteMetadata {
    /// Opens (creating if needed) the database. `synchronous_full` makes each commit fsync the WAL,
    /// which the acks=all promise needs; NORMAL survives a process kill but not a power loss.
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Self, StorageError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        conn.execute_batch(SCHEMA)?;
        // Databases from before compaction have no segment level column.
        let has_level = conn
            .prepare("SELECT 1 FROM pragma_table_info('segments') WHERE name = 'level'")?
            .exists([])?;
        if !has_level {
            conn.execute_batch("ALTER TABLE segments ADD COLUMN level INTEGER NOT NULL DEFAULT 0")?;
        }
        // ...and producer state from before producer expiry has no append time (0: loaded as now).
        let has_last_ms = conn
            .prepare("SELECT 1 FROM pragma_table_info('producer_state') WHERE name = 'last_ms'")?
            .exists([])?;
        if !has_last_ms {
            conn.execute_batch(
                "ALTER TABLE producer_state ADD COLUMN last_ms INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

/// Runs an insert of one block row whose parameters ?1-?11 are the `blocks` columns in table order.
fn insert_block(
    stmt: &mut rusqlite::CachedStatement<'_>,
    b: &BlockMeta,
) -> rusqlite::Result<usize> {
    stmt.execute(params![
        b.topic_id.as_bytes().as_slice(),
        b.partition,
        b.base_offset,
        b.last_offset,
        b.max_timestamp,
        b.segment_id as i64,
        b.position as i64,
        b.stored_len as i64,
        b.raw_len as i64,
        b.codec as i64,
        b.crc as i64
    ])
}

fn segments(conn: &Connection) -> Result<Vec<SegmentRecord>, StorageError> {
    let mut stmt = conn.prepare(
        "SELECT segment_id, created_ms, sealed, level FROM segments ORDER BY segment_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SegmentRecord {
            id: r.get::<_, i64>(0)? as u64,
            created_ms: r.get(1)?,
            sealed: r.get(2)?,
            level: r.get::<_, i64>(3)? as u8,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Adds a live segment: its row, and the end of its upload intent (if it had one) in the same
/// transaction, so an object is always either referenced or covered by an intent.
fn insert_segment(tx: &rusqlite::Transaction, s: &SegmentRecord) -> Result<(), StorageError> {
    tx.prepare_cached(
        "INSERT INTO segments (segment_id, created_ms, sealed, level) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![s.id as i64, s.created_ms, s.sealed, s.level])?;
    tx.prepare_cached("DELETE FROM upload_intents WHERE segment_id = ?1")?
        .execute([s.id as i64])?;
    Ok(())
}

fn intents(conn: &Connection) -> Result<Vec<u64>, StorageError> {
    let mut stmt = conn.prepare("SELECT segment_id FROM upload_intents ORDER BY segment_id")?;
    let rows = stmt.query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn retired(conn: &Connection) -> Result<Vec<(u64, i64)>, StorageError> {
    let mut stmt =
        conn.prepare("SELECT segment_id, retired_ms FROM retired_segments ORDER BY segment_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn segments_of(
    tx: &rusqlite::Transaction,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<u64>, StorageError> {
    let mut stmt = tx.prepare(sql)?;
    let rows = stmt.query_map(params, |r| Ok(r.get::<_, i64>(0)? as u64))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Moves sealed segments that no block refers to any more from `segments` to `retired_segments`; their
/// files or objects are deleted after file.delete.delay.ms. (The active local segment is not sealed.)
fn retire_if_unreferenced(tx: &rusqlite::Transaction, ids: &[u64]) -> Result<(), StorageError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut retire = tx.prepare_cached(
        "INSERT OR IGNORE INTO retired_segments (segment_id, retired_ms)
         SELECT segment_id, ?2 FROM segments WHERE segment_id = ?1 AND sealed = 1
           AND NOT EXISTS (SELECT 1 FROM blocks WHERE segment_id = ?1)",
    )?;
    let mut drop_row = tx.prepare_cached(
        "DELETE FROM segments WHERE segment_id = ?1
           AND EXISTS (SELECT 1 FROM retired_segments WHERE segment_id = ?1)",
    )?;
    for id in ids {
        retire.execute(params![*id as i64, now])?;
        drop_row.execute([*id as i64])?;
    }
    Ok(())
}

fn uuid_from(blob: Vec<u8>) -> Uuid {
    Uuid::from_slice(&blob).unwrap_or_default()
}

impl MetadataStore for SqliteMetadata {
    fn load(&self) -> Result<Snapshot, StorageError> {
        let conn = self.conn.lock();
        let now = crate::engine::now_ms();
        let mut snap = Snapshot::default();
        let mut stmt =
            conn.prepare("SELECT topic_id, name, partitions, configs, created_ms FROM topics")?;
        let rows = stmt.query_map([], |r| {
            let configs: String = r.get(3)?;
            Ok(TopicRecord {
                id: uuid_from(r.get(0)?),
                name: r.get(1)?,
                partitions: r.get(2)?,
                configs: serde_json::from_str(&configs).unwrap_or_default(),
                created_ms: r.get(4)?,
            })
        })?;
        snap.topics = rows.collect::<Result<_, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT topic_id, partition, log_start_offset, high_watermark FROM partitions",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PartitionRecord {
                topic_id: uuid_from(r.get(0)?),
                partition: r.get(1)?,
                log_start_offset: r.get(2)?,
                high_watermark: r.get(3)?,
            })
        })?;
        snap.partitions = rows.collect::<Result<_, _>>()?;
        snap.segments = segments(&conn)?;
        snap.retired = retired(&conn)?;
        let mut stmt = conn.prepare(
            "SELECT topic_id, partition, base_offset, last_offset, max_timestamp, segment_id, position,
                    stored_len, raw_len, codec, crc FROM blocks ORDER BY topic_id, partition, base_offset",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(BlockMeta {
                topic_id: uuid_from(r.get(0)?),
                partition: r.get(1)?,
                base_offset: r.get(2)?,
                last_offset: r.get(3)?,
                max_timestamp: r.get(4)?,
                segment_id: r.get::<_, i64>(5)? as u64,
                position: r.get::<_, i64>(6)? as u64,
                stored_len: r.get::<_, i64>(7)? as u32,
                raw_len: r.get::<_, i64>(8)? as u32,
                codec: r.get::<_, i64>(9)? as u8,
                crc: r.get::<_, i64>(10)? as u32,
            })
        })?;
        snap.blocks = rows.collect::<Result<_, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT producer_id, topic_id, partition, epoch, recent, last_ms FROM producer_state",
        )?;
        let rows = stmt.query_map([], |r| {
            let recent: String = r.get(4)?;
            let recent: Vec<RecentBatch> = serde_json::from_str(&recent).unwrap_or_default();
            Ok((
                (r.get(0)?, uuid_from(r.get(1)?), r.get(2)?),
                ProducerEntry {
                    epoch: r.get(3)?,
                    recent: recent.into(),
                    // Rows from before expiry existed count from this start.
                    last_append_ms: match r.get::<_, i64>(5)? {
                        0 => now,
                        ms => ms,
                    },
                },
            ))
        })?;
        snap.producers = rows.collect::<Result<_, _>>()?;
        snap.intents = intents(&conn)?;
        snap.max_segment_id = conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'segment_id'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0) as u64;
        Ok(snap)
    }

    fn create_topic(&self, t: &TopicRecord) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM topics WHERE name = ?1", [&t.name], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_some() {
            return Err(StorageError::TopicExists(t.name.clone()));
        }
        let configs = serde_json::to_string(&t.configs).unwrap_or_else(|_| "{}".into());
        tx.execute(
            "INSERT INTO topics (topic_id, name, partitions, configs, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t.id.as_bytes().as_slice(), t.name, t.partitions, configs, t.created_ms],
        )?;
        for p in 0..t.partitions {
            tx.execute(
                "INSERT INTO partitions (topic_id, partition, log_start_offset, high_watermark) VALUES (?1, ?2, 0, 0)",
                params![t.id.as_bytes().as_slice(), p],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_topic(&self, topic_id: Uuid) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let id = topic_id.as_bytes().as_slice();
        let segments = segments_of(
            &tx,
            "SELECT DISTINCT segment_id FROM blocks WHERE topic_id = ?1",
            params![id],
        )?;
        for table in ["topics", "partitions", "blocks", "producer_state"] {
            tx.execute(&format!("DELETE FROM {table} WHERE topic_id = ?1"), [id])?;
        }
        retire_if_unreferenced(&tx, &segments)?;
        tx.commit()?;
        Ok(())
    }

    fn add_partitions(&self, topic_id: Uuid, partitions: i32) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let id = topic_id.as_bytes().as_slice();
        let current: i32 = tx.query_row(
            "SELECT partitions FROM topics WHERE topic_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        for p in current..partitions {
            tx.execute(
                "INSERT INTO partitions (topic_id, partition, log_start_offset, high_watermark) VALUES (?1, ?2, 0, 0)",
                params![id, p],
            )?;
        }
        tx.execute(
            "UPDATE topics SET partitions = ?2 WHERE topic_id = ?1",
            params![id, partitions],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn truncate_head(
        &self,
        topic_id: Uuid,
        partition: i32,
        log_start_offset: i64,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let id = topic_id.as_bytes().as_slice();
        tx.execute(
            "UPDATE partitions SET log_start_offset = MAX(log_start_offset, ?3) WHERE topic_id = ?1 AND partition = ?2",
            params![id, partition, log_start_offset],
        )?;
        let segments = segments_of(
            &tx,
            "SELECT DISTINCT segment_id FROM blocks WHERE topic_id = ?1 AND partition = ?2 AND last_offset < ?3",
            params![id, partition, log_start_offset],
        )?;
        tx.execute(
            "DELETE FROM blocks WHERE topic_id = ?1 AND partition = ?2 AND last_offset < ?3",
            params![id, partition, log_start_offset],
        )?;
        retire_if_unreferenced(&tx, &segments)?;
        tx.commit()?;
        Ok(())
    }

    fn set_topic_configs(
        &self,
        topic_id: Uuid,
        configs: &TopicConfigs,
    ) -> Result<(), StorageError> {
        let json = serde_json::to_string(configs).unwrap_or_else(|_| "{}".into());
        self.conn.lock().execute(
            "UPDATE topics SET configs = ?2 WHERE topic_id = ?1",
            params![topic_id.as_bytes().as_slice(), json],
        )?;
        Ok(())
    }

    fn add_segment(&self, s: &SegmentRecord) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        insert_segment(&tx, s)?;
        tx.commit()?;
        Ok(())
    }

    fn delete_segment(&self, segment_id: u64) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM blocks WHERE segment_id = ?1",
            [segment_id as i64],
        )?;
        tx.execute(
            "DELETE FROM segments WHERE segment_id = ?1",
            [segment_id as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn commit(&self, c: &Commit) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        if let Some(id) = c.sealed_segment {
            tx.execute(
                "UPDATE segments SET sealed = 1 WHERE segment_id = ?1",
                [id as i64],
            )?;
        }
        if let Some(s) = &c.new_segment {
            insert_segment(&tx, s)?;
        }
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR REPLACE INTO blocks (topic_id, partition, base_offset, last_offset, max_timestamp,
                   segment_id, position, stored_len, raw_len, codec, crc)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11
                 WHERE EXISTS (SELECT 1 FROM topics WHERE topic_id = ?1)",
            )?;
            for b in &c.blocks {
                insert_block(&mut ins, b)?;
            }
            let mut hw = tx.prepare_cached(
                "UPDATE partitions SET high_watermark = ?3 WHERE topic_id = ?1 AND partition = ?2",
            )?;
            for (topic_id, partition, hwm) in &c.high_watermarks {
                hw.execute(params![topic_id.as_bytes().as_slice(), partition, hwm])?;
            }
            let mut ps = tx.prepare_cached(
                "INSERT OR REPLACE INTO producer_state (producer_id, topic_id, partition, epoch, recent, last_ms)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM topics WHERE topic_id = ?2)",
            )?;
            let mut expired = tx.prepare_cached(
                "DELETE FROM producer_state WHERE producer_id = ?1 AND topic_id = ?2 AND partition = ?3",
            )?;
            for (pid, topic_id, partition) in &c.expired_producers {
                expired.execute(params![pid, topic_id.as_bytes().as_slice(), partition])?;
            }
            for ((pid, topic_id, partition), entry) in &c.producers {
                let recent = serde_json::to_string(&entry.recent).unwrap_or_else(|_| "[]".into());
                ps.execute(params![
                    pid,
                    topic_id.as_bytes().as_slice(),
                    partition,
                    entry.epoch,
                    recent,
                    entry.last_append_ms
                ])?;
            }
        }
        if let Some(id) = c.sealed_segment {
            // Retention may have dropped every block of the segment while it was active.
            retire_if_unreferenced(&tx, &[id])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn switch_blocks(&self, sw: &BlockSwitch) -> Result<Vec<BlockMeta>, StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for s in &sw.segments {
            insert_segment(&tx, s)?;
        }
        {
            let mut del = tx.prepare_cached(
                "DELETE FROM blocks WHERE topic_id = ?1 AND partition = ?2 AND base_offset = ?3 AND segment_id = ?4",
            )?;
            for (topic_id, partition, base_offset, segment_id) in &sw.removed {
                del.execute(params![
                    topic_id.as_bytes().as_slice(),
                    partition,
                    base_offset,
                    *segment_id as i64
                ])?;
            }
        }
        let mut added = Vec::with_capacity(sw.added.len());
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO blocks (topic_id, partition, base_offset, last_offset, max_timestamp,
                   segment_id, position, stored_len, raw_len, codec, crc)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11 FROM partitions
                 WHERE topic_id = ?1 AND partition = ?2 AND log_start_offset <= ?4",
            )?;
            for b in &sw.added {
                let n = insert_block(&mut ins, b)?;
                if n > 0 {
                    added.push(*b);
                }
            }
        }
        let mut touched: Vec<u64> = sw.removed.iter().map(|r| r.3).collect();
        touched.extend(sw.segments.iter().map(|s| s.id));
        touched.extend_from_slice(&sw.retire_if_empty);
        touched.sort_unstable();
        touched.dedup();
        retire_if_unreferenced(&tx, &touched)?;
        tx.commit()?;
        Ok(added)
    }

    fn segments(&self) -> Result<Vec<SegmentRecord>, StorageError> {
        segments(&self.conn.lock())
    }

    fn retired_segments(&self) -> Result<Vec<(u64, i64)>, StorageError> {
        retired(&self.conn.lock())
    }

    fn forget_retired_segments(&self, ids: &[u64]) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for id in ids {
            tx.execute(
                "DELETE FROM retired_segments WHERE segment_id = ?1",
                [*id as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn allocate_producer_id(&self) -> Result<i64, StorageError> {
        let conn = self.conn.lock();
        let id: i64 = conn.query_row(
            "INSERT INTO counters (name, value) VALUES ('producer_id', 1000)
             ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
            [],
            |r| r.get(0),
        )?;
        Ok(id)
    }

    fn commit_offsets(&self, offsets: &[OffsetRecord]) -> Result<(), StorageError> {
        self.offsets_impl(offsets)
    }

    fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        match partitions {
            None => {
                tx.execute("DELETE FROM group_offsets WHERE group_id = ?1", [group_id])?;
            }
            Some(list) => {
                let mut st =
                    tx.prepare_cached("DELETE FROM group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3")?;
                for (topic, partition) in list {
                    st.execute(params![group_id, topic, partition])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn load_offsets(&self) -> Result<Vec<OffsetRecord>, StorageError> {
        let conn = self.conn.lock();
        let mut st = conn.prepare(
            "SELECT group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms FROM group_offsets",
        )?;
        let rows = st.query_map([], |r| {
            Ok(OffsetRecord {
                group_id: r.get(0)?,
                topic: r.get(1)?,
                partition: r.get(2)?,
                offset: r.get(3)?,
                leader_epoch: r.get(4)?,
                metadata: r.get(5)?,
                commit_ms: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn save_group(&self, group_id: &str, state: Option<&str>) -> Result<(), StorageError> {
        let conn = self.conn.lock();
        match state {
            Some(s) => conn.execute(
                "INSERT OR REPLACE INTO groups (group_id, state) VALUES (?1, ?2)",
                params![group_id, s],
            )?,
            None => conn.execute("DELETE FROM groups WHERE group_id = ?1", [group_id])?,
        };
        Ok(())
    }

    fn load_groups(&self) -> Result<Vec<(String, String)>, StorageError> {
        let conn = self.conn.lock();
        let mut st = conn.prepare("SELECT group_id, state FROM groups")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn cluster_id(&self) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT value FROM cluster WHERE name = 'cluster_id'",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn init_cluster_id(&self, id: &str) -> Result<String, StorageError> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT OR IGNORE INTO cluster (name, value) VALUES ('cluster_id', ?1)",
            [id],
        )?;
        Ok(conn.query_row(
            "SELECT value FROM cluster WHERE name = 'cluster_id'",
            [],
            |r| r.get(0),
        )?)
    }

    fn record_uploads(&self, segment_ids: &[u64]) -> Result<(), StorageError> {
        let now = crate::engine::now_ms();
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO upload_intents (segment_id, created_ms) VALUES (?1, ?2)",
            )?;
            let mut max = tx.prepare_cached(
                "INSERT INTO counters (name, value) VALUES ('segment_id', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = MAX(value, ?1)",
            )?;
            for id in segment_ids {
                ins.execute(params![*id as i64, now])?;
                max.execute([*id as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn upload_intents(&self) -> Result<Vec<u64>, StorageError> {
        intents(&self.conn.lock())
    }

    fn forget_uploads(&self, segment_ids: &[u64]) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM upload_intents WHERE segment_id = ?1")?;
            for id in segment_ids {
                del.execute([*id as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn group_writes(&self, writes: &[GroupWrite]) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for w in writes {
            match w {
                GroupWrite::Offsets(offsets) => {
                    let mut st = tx.prepare_cached(
                        "INSERT OR REPLACE INTO group_offsets (group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    for o in offsets {
                        st.execute(params![
                            o.group_id,
                            o.topic,
                            o.partition,
                            o.offset,
                            o.leader_epoch,
                            o.metadata,
                            o.commit_ms
                        ])?;
                    }
                }
                GroupWrite::DeleteOffsets {
                    group_id,
                    partitions: None,
                } => {
                    tx.execute("DELETE FROM group_offsets WHERE group_id = ?1", [group_id])?;
                }
                GroupWrite::DeleteOffsets {
                    group_id,
                    partitions: Some(list),
                } => {
                    let mut st = tx.prepare_cached(
                        "DELETE FROM group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
                    )?;
                    for (topic, partition) in list {
                        st.execute(params![group_id, topic, partition])?;
                    }
                }
                GroupWrite::ExpireOffsets {
                    group_id,
                    partitions,
                } => {
                    let mut st = tx.prepare_cached(
                        "DELETE FROM group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3 AND commit_ms = ?4",
                    )?;
                    for (topic, partition, commit_ms) in partitions {
                        st.execute(params![group_id, topic, partition, commit_ms])?;
                    }
                }
                GroupWrite::DeleteTopicOffsets { topic } => {
                    tx.execute("DELETE FROM group_offsets WHERE topic = ?1", [topic])?;
                }
                GroupWrite::SaveGroup {
                    group_id,
                    state: Some(doc),
                } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO groups (group_id, state) VALUES (?1, ?2)",
                        params![group_id, doc],
                    )?;
                }
                GroupWrite::SaveGroup {
                    group_id,
                    state: None,
                } => {
                    tx.execute("DELETE FROM groups WHERE group_id = ?1", [group_id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl SqliteMetadata {
    fn offsets_impl(&self, offsets: &[OffsetRecord]) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO group_offsets (group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for o in offsets {
                st.execute(params![
                    o.group_id,
                    o.topic,
                    o.partition,
                    o.offset,
                    o.leader_epoch,
                    o.metadata,
                    o.commit_ms
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_groups_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let rec = |p, o, m: Option<&str>| OffsetRecord {
            group_id: "g".into(),
            topic: "t".into(),
            partition: p,
            offset: o,
            leader_epoch: 0,
            metadata: m.map(String::from),
            commit_ms: 1,
        };
        {
            let m = SqliteMetadata::open(&path, true).unwrap();
            m.commit_offsets(&[rec(0, 5, Some("meta")), rec(1, 7, None)])
                .unwrap();
            m.commit_offsets(&[rec(0, 6, Some(""))]).unwrap();
            m.save_group("g", Some("{\"generation\":3}")).unwrap();
            m.save_group("gone", Some("{}")).unwrap();
            m.save_group("gone", None).unwrap();
        }
        let m = SqliteMetadata::open(&path, true).unwrap();
        let mut got = m.load_offsets().unwrap();
        got.sort_by_key(|r| r.partition);
        assert_eq!(got, vec![rec(0, 6, Some("")), rec(1, 7, None)]);
        assert_eq!(
            m.load_groups().unwrap(),
            vec![("g".to_string(), "{\"generation\":3}".to_string())]
        );
        m.delete_offsets("g", Some(&[("t".to_string(), 1)]))
            .unwrap();
        assert_eq!(m.load_offsets().unwrap().len(), 1);
        m.delete_offsets("g", None).unwrap();
        assert!(m.load_offsets().unwrap().is_empty());
    }

    /// The coordinator's batch: one transaction, in order; an expiry deletes only the commit it saw,
    /// a deleted topic takes every group's offsets of it.
    #[test]
    fn group_writes_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let m = SqliteMetadata::open(&dir.path().join("meta.db"), true).unwrap();
        let rec = |g: &str, t: &str, o, ms| OffsetRecord {
            group_id: g.into(),
            topic: t.into(),
            partition: 0,
            offset: o,
            leader_epoch: -1,
            metadata: None,
            commit_ms: ms,
        };
        m.group_writes(&[
            GroupWrite::Offsets(vec![rec("a", "t", 1, 10), rec("a", "u", 1, 10)]),
            GroupWrite::Offsets(vec![rec("b", "t", 2, 10), rec("a", "t", 3, 20)]),
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
        let mut got: Vec<_> = m
            .load_offsets()
            .unwrap()
            .into_iter()
            .map(|r| (r.group_id, r.topic, r.offset))
            .collect();
        got.sort();
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

    #[test]
    fn topics_blocks_and_producers_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let topic = TopicRecord {
            id: Uuid::new_v4(),
            name: "t".into(),
            partitions: 2,
            configs: [("retention.ms".to_string(), "1000".to_string())].into(),
            created_ms: 5,
        };
        {
            let m = SqliteMetadata::open(&path, true).unwrap();
            m.create_topic(&topic).unwrap();
            assert!(matches!(
                m.create_topic(&topic),
                Err(StorageError::TopicExists(_))
            ));
            m.add_segment(&SegmentRecord {
                id: 1,
                created_ms: 0,
                sealed: false,
                level: 0,
            })
            .unwrap();
            let block = BlockMeta {
                topic_id: topic.id,
                partition: 1,
                base_offset: 0,
                last_offset: 4,
                max_timestamp: 9,
                segment_id: 1,
                position: 32,
                stored_len: 10,
                raw_len: 20,
                codec: 1,
                crc: 0xdead_beef,
            };
            let entry = ProducerEntry {
                epoch: 0,
                recent: [RecentBatch {
                    first_seq: 0,
                    last_seq: 4,
                    base_offset: 0,
                }]
                .into(),
                last_append_ms: 7,
            };
            m.commit(&Commit {
                blocks: vec![block],
                high_watermarks: vec![(topic.id, 1, 5)],
                producers: vec![((1000, topic.id, 1), entry)],
                ..Default::default()
            })
            .unwrap();
            assert_eq!(m.allocate_producer_id().unwrap(), 1000);
            assert_eq!(m.allocate_producer_id().unwrap(), 1001);
        }
        let m = SqliteMetadata::open(&path, true).unwrap();
        let snap = m.load().unwrap();
        assert_eq!(snap.topics, vec![topic.clone()]);
        assert_eq!(snap.blocks.len(), 1);
        assert_eq!(snap.blocks[0].crc, 0xdead_beef);
        assert_eq!(
            snap.partitions
                .iter()
                .find(|p| p.partition == 1)
                .unwrap()
                .high_watermark,
            5
        );
        assert_eq!(snap.producers[0].1.recent[0].last_seq, 4);
        assert_eq!(snap.producers[0].1.last_append_ms, 7);
        assert_eq!(m.allocate_producer_id().unwrap(), 1002);
        m.delete_topic(topic.id).unwrap();
        let snap = m.load().unwrap();
        assert!(snap.topics.is_empty() && snap.blocks.is_empty() && snap.producers.is_empty());
    }
}
