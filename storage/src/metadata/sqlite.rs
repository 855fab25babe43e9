//! The SQLite metadata store (WAL mode): one file in the data folder, the embedded default. One
//! connection behind a mutex: SQLite has one writer at a time anyway, and every call is short.

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use uuid::Uuid;

use super::{
    configs_from_json, configs_json, now_ms, pending_steps, producer_entry, recent_json,
    BlockSwitch, Commit, DocTable, GroupWrite, MetadataStore, OffsetRecord, PartitionRecord,
    SegmentRecord, Snapshot, TopicConfigs, TopicRecord,
};
use crate::producer::AbortedTxn;
use crate::segment::BlockMeta;
use crate::StorageError;

pub struct SqliteMetadata {
    conn: Mutex<Connection>,
}

/// Version 1: the schema as of versioned migrations. `IF NOT EXISTS` throughout, so a database from
/// before versioning is adopted as it is (see [`adopt_unversioned`] for its older columns).
const SCHEMA_V1: &str = "
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

/// The schema steps, in order: step `n` brings a database from version `n` to `n + 1`. Append only;
/// the PostgreSQL store keeps the same numbering.
const MIGRATIONS: &[fn(&rusqlite::Transaction) -> rusqlite::Result<()>] = &[
    |tx| {
        tx.execute_batch(SCHEMA_V1)?;
        adopt_unversioned(tx)
    },
    |tx| tx.execute_batch(SCHEMA_V2),
];

/// Version 2: transactions. A producer's open transaction per partition, each partition's aborted
/// transactions (Kafka's transaction index), and the transaction coordinator's documents.
const SCHEMA_V2: &str = "
ALTER TABLE producer_state ADD COLUMN txn_first_offset INTEGER;
CREATE TABLE aborted_txns (
  topic_id BLOB NOT NULL, partition INTEGER NOT NULL, last_offset INTEGER NOT NULL,
  producer_id INTEGER NOT NULL, first_offset INTEGER NOT NULL,
  PRIMARY KEY (topic_id, partition, last_offset));
CREATE TABLE transactions (transactional_id TEXT PRIMARY KEY, state TEXT NOT NULL);
";

/// Databases from before versioning may predate columns added then with ad-hoc ALTERs: segments
/// from before compaction have no level, producer state from before producer expiry no append time
/// (0: loaded as now).
fn adopt_unversioned(tx: &rusqlite::Transaction) -> rusqlite::Result<()> {
    for (table, column, add) in [
        (
            "segments",
            "level",
            "ALTER TABLE segments ADD COLUMN level INTEGER NOT NULL DEFAULT 0",
        ),
        (
            "producer_state",
            "last_ms",
            "ALTER TABLE producer_state ADD COLUMN last_ms INTEGER NOT NULL DEFAULT 0",
        ),
    ] {
        let has = tx
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])?;
        if !has {
            tx.execute_batch(add)?;
        }
    }
    Ok(())
}

/// Brings the schema to the newest version, all steps in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
           id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
    )?;
    let current: i64 = tx
        .query_row("SELECT version FROM schema_version WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0);
    let steps = pending_steps(current, MIGRATIONS.len())?;
    if steps.is_empty() {
        return Ok(());
    }
    for step in steps {
        MIGRATIONS[step](&tx)?;
    }
    tx.execute(
        "INSERT INTO schema_version (id, version) VALUES (1, ?1)
         ON CONFLICT(id) DO UPDATE SET version = excluded.version",
        [MIGRATIONS.len() as i64],
    )?;
    tx.commit()?;
    Ok(())
}

impl SqliteMetadata {
    /// Opens (creating, or migrating, if needed) the database, made readable by its owner only.
    /// `synchronous_full` makes each commit fsync the WAL, which the acks=all promise needs; NORMAL
    /// survives a process kill but not a power loss.
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Self, StorageError> {
        private_file(path)?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

/// Creates `path` if needed with mode 0600 and makes an existing one 0600 (SQLite gives its -wal and
/// -shm files the database file's mode).
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
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
    let now = now_ms();
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

/// Commits, replacing earlier commits of the same partitions.
fn upsert_offsets(
    tx: &rusqlite::Transaction,
    offsets: &[OffsetRecord],
) -> Result<(), StorageError> {
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
    Ok(())
}

/// A group's committed offsets of the given partitions.
fn delete_offsets(
    tx: &rusqlite::Transaction,
    group_id: &str,
    partitions: &[(String, i32)],
) -> Result<(), StorageError> {
    let mut st = tx.prepare_cached(
        "DELETE FROM group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
    )?;
    for (topic, partition) in partitions {
        st.execute(params![group_id, topic, partition])?;
    }
    Ok(())
}

/// Saves a group's document, or removes it with `None`.
/// Saves a group's or a transactional id's document, or removes it with `None`.
fn save_doc(
    tx: &rusqlite::Transaction,
    table: DocTable,
    id: &str,
    doc: Option<&str>,
) -> Result<(), StorageError> {
    let (upsert, delete) = match table {
        DocTable::Groups => (
            "INSERT OR REPLACE INTO groups (group_id, state) VALUES (?1, ?2)",
            "DELETE FROM groups WHERE group_id = ?1",
        ),
        DocTable::Transactions => (
            "INSERT OR REPLACE INTO transactions (transactional_id, state) VALUES (?1, ?2)",
            "DELETE FROM transactions WHERE transactional_id = ?1",
        ),
    };
    match doc {
        Some(doc) => tx.prepare_cached(upsert)?.execute(params![id, doc])?,
        None => tx.prepare_cached(delete)?.execute([id])?,
    };
    Ok(())
}

/// Adds a topic's partitions `from..to`, empty.
fn insert_partitions(
    tx: &rusqlite::Transaction,
    topic_id: Uuid,
    from: i32,
    to: i32,
) -> Result<(), StorageError> {
    let mut st = tx.prepare_cached(
        "INSERT INTO partitions (topic_id, partition, log_start_offset, high_watermark) VALUES (?1, ?2, 0, 0)",
    )?;
    for p in from..to {
        st.execute(params![topic_id.as_bytes().as_slice(), p])?;
    }
    Ok(())
}

fn cluster_id(conn: &Connection) -> Result<Option<String>, StorageError> {
    Ok(conn
        .query_row(
            "SELECT value FROM cluster WHERE name = 'cluster_id'",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

impl MetadataStore for SqliteMetadata {
    fn load(&self) -> Result<Snapshot, StorageError> {
        let conn = self.conn.lock();
        let now = now_ms();
        let mut snap = Snapshot::default();
        let mut stmt =
            conn.prepare("SELECT topic_id, name, partitions, configs, created_ms FROM topics")?;
        let rows = stmt.query_map([], |r| {
            Ok(TopicRecord {
                id: uuid_from(r.get(0)?),
                name: r.get(1)?,
                partitions: r.get(2)?,
                configs: configs_from_json(&r.get::<_, String>(3)?),
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
            "SELECT producer_id, topic_id, partition, epoch, recent, last_ms, txn_first_offset
             FROM producer_state ORDER BY producer_id, topic_id, partition",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                (r.get(0)?, uuid_from(r.get(1)?), r.get(2)?),
                producer_entry(
                    r.get(3)?,
                    &r.get::<_, String>(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    now,
                ),
            ))
        })?;
        snap.producers = rows.collect::<Result<_, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT topic_id, partition, producer_id, first_offset, last_offset FROM aborted_txns
             ORDER BY topic_id, partition, last_offset",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                uuid_from(r.get(0)?),
                r.get(1)?,
                AbortedTxn {
                    producer_id: r.get(2)?,
                    first_offset: r.get(3)?,
                    last_offset: r.get(4)?,
                },
            ))
        })?;
        snap.aborted = rows.collect::<Result<_, _>>()?;
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
        tx.execute(
            "INSERT INTO topics (topic_id, name, partitions, configs, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t.id.as_bytes().as_slice(), t.name, t.partitions, configs_json(&t.configs), t.created_ms],
        )?;
        insert_partitions(&tx, t.id, 0, t.partitions)?;
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
        for table in [
            "topics",
            "partitions",
            "blocks",
            "producer_state",
            "aborted_txns",
        ] {
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
        insert_partitions(&tx, topic_id, current, partitions)?;
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
        for table in ["blocks", "aborted_txns"] {
            tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE topic_id = ?1 AND partition = ?2 AND last_offset < ?3"
                ),
                params![id, partition, log_start_offset],
            )?;
        }
        retire_if_unreferenced(&tx, &segments)?;
        tx.commit()?;
        Ok(())
    }

    fn set_topic_configs(
        &self,
        topic_id: Uuid,
        configs: &TopicConfigs,
    ) -> Result<(), StorageError> {
        self.conn.lock().execute(
            "UPDATE topics SET configs = ?2 WHERE topic_id = ?1",
            params![topic_id.as_bytes().as_slice(), configs_json(configs)],
        )?;
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
                "INSERT OR REPLACE INTO producer_state
                   (producer_id, topic_id, partition, epoch, recent, last_ms, txn_first_offset)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM topics WHERE topic_id = ?2)",
            )?;
            let mut expired = tx.prepare_cached(
                "DELETE FROM producer_state WHERE producer_id = ?1 AND topic_id = ?2 AND partition = ?3",
            )?;
            for (pid, topic_id, partition) in &c.expired_producers {
                expired.execute(params![pid, topic_id.as_bytes().as_slice(), partition])?;
            }
            for ((pid, topic_id, partition), entry) in &c.producers {
                ps.execute(params![
                    pid,
                    topic_id.as_bytes().as_slice(),
                    partition,
                    entry.epoch,
                    recent_json(entry),
                    entry.last_append_ms,
                    entry.txn_first_offset
                ])?;
            }
            let mut ab = tx.prepare_cached(
                "INSERT OR REPLACE INTO aborted_txns (topic_id, partition, last_offset, producer_id, first_offset)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM topics WHERE topic_id = ?1)",
            )?;
            for (topic_id, partition, a) in &c.aborted {
                ab.execute(params![
                    topic_id.as_bytes().as_slice(),
                    partition,
                    a.last_offset,
                    a.producer_id,
                    a.first_offset
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
        retire_if_unreferenced(&tx, &sw.touched_segments())?;
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
        {
            let mut del =
                tx.prepare_cached("DELETE FROM retired_segments WHERE segment_id = ?1")?;
            for id in ids {
                del.execute([*id as i64])?;
            }
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

    fn load_groups(&self) -> Result<Vec<(String, String)>, StorageError> {
        let conn = self.conn.lock();
        let mut st = conn.prepare("SELECT group_id, state FROM groups ORDER BY group_id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn cluster_id(&self) -> Result<Option<String>, StorageError> {
        cluster_id(&self.conn.lock())
    }

    fn init_cluster_id(&self, id: &str) -> Result<String, StorageError> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT OR IGNORE INTO cluster (name, value) VALUES ('cluster_id', ?1)",
            [id],
        )?;
        cluster_id(&conn)?
            .ok_or_else(|| StorageError::Metadata(rusqlite::Error::QueryReturnedNoRows))
    }

    fn record_uploads(&self, segment_ids: &[u64]) -> Result<(), StorageError> {
        let now = now_ms();
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

    fn producers_of(
        &self,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Vec<(i64, crate::producer::ProducerEntry)>, StorageError> {
        let conn = self.conn.lock();
        let now = now_ms();
        let mut st = conn.prepare_cached(
            "SELECT producer_id, epoch, recent, last_ms, txn_first_offset FROM producer_state
             WHERE topic_id = ?1 AND partition = ?2 ORDER BY producer_id",
        )?;
        let rows = st.query_map(params![topic_id.as_bytes().as_slice(), partition], |r| {
            Ok((
                r.get(0)?,
                producer_entry(
                    r.get(1)?,
                    &r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    now,
                ),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn load_transactions(&self) -> Result<Vec<(String, String)>, StorageError> {
        let conn = self.conn.lock();
        let mut st = conn.prepare(
            "SELECT transactional_id, state FROM transactions ORDER BY transactional_id",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn save_transactions(&self, docs: &[(String, Option<String>)]) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for (id, doc) in docs {
            save_doc(&tx, DocTable::Transactions, id, doc.as_deref())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn group_writes(&self, writes: &[GroupWrite]) -> Result<(), StorageError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for w in writes {
            match w {
                GroupWrite::Offsets(offsets) => upsert_offsets(&tx, offsets)?,
                GroupWrite::DeleteOffsets {
                    group_id,
                    partitions: None,
                } => {
                    tx.prepare_cached("DELETE FROM group_offsets WHERE group_id = ?1")?
                        .execute([group_id])?;
                }
                GroupWrite::DeleteOffsets {
                    group_id,
                    partitions: Some(list),
                } => delete_offsets(&tx, group_id, list)?,
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
                    tx.prepare_cached("DELETE FROM group_offsets WHERE topic = ?1")?
                        .execute([topic])?;
                }
                GroupWrite::SaveGroup { group_id, state } => {
                    save_doc(&tx, DocTable::Groups, group_id, state.as_deref())?
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database from before versioned migrations, as old as before compaction and producer expiry
    /// (no segments.level, no producer_state.last_ms), is adopted: columns added, rows kept, version set.
    #[test]
    fn an_unversioned_old_database_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        let topic = Uuid::new_v4();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE segments (segment_id INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL,
                   sealed INTEGER NOT NULL);
                 CREATE TABLE producer_state (producer_id INTEGER NOT NULL, topic_id BLOB NOT NULL,
                   partition INTEGER NOT NULL, epoch INTEGER NOT NULL, recent TEXT NOT NULL,
                   PRIMARY KEY (producer_id, topic_id, partition));
                 INSERT INTO segments VALUES (7, 1, 1);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO producer_state VALUES (5, ?1, 0, 1, '[]')",
                [topic.as_bytes().as_slice()],
            )
            .unwrap();
        }
        let m = SqliteMetadata::open(&path, true).unwrap();
        let before = now_ms();
        let snap = m.load().unwrap();
        assert_eq!(
            snap.segments,
            vec![SegmentRecord {
                id: 7,
                created_ms: 1,
                sealed: true,
                level: 0
            }]
        );
        assert_eq!(snap.producers.len(), 1);
        assert!(
            snap.producers[0].1.last_append_ms >= before - 1000,
            "counted from now"
        );
        let version: i64 = m
            .conn
            .lock()
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
