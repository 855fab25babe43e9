//! The PostgreSQL metadata store: the same trait, rows and transactions as the SQLite store, in a
//! database that several brokers can share later (`--metadata postgres://user:password@host:port/db`).
//!
//! - Client: the `postgres` crate, the synchronous face of tokio-postgres. The trait is synchronous and
//!   the engine calls it on blocking threads, so a blocking client fits without a runtime of ours to
//!   drive it; sqlx would need one (it is async only) and brings compile-time query machinery we do not
//!   use. Each connection runs a small current-thread runtime of its own inside its calls: see the
//!   blocking rule in the module notes of `metadata` (never call from a runtime thread).
//! - Pool: [`POOL_SIZE`] connections opened on demand behind a mutex, each with its prepared statements;
//!   a caller waits (up to [`POOL_WAIT`]) for a free one. SQLite has one connection behind a mutex;
//!   here a group-coordinator batch, a flush commit and an upload intent can run at once.
//! - Transactions: what reads one table to decide what to write in another (a flush's rows only for
//!   live topics, merged blocks only above the log start offset, segments retired only when no block
//!   refers to them) runs SERIALIZABLE, as SQLite's single writer is, and is run again on a
//!   serialization failure or deadlock; plain upserts run READ COMMITTED; `load` reads one snapshot.
//!   Rows of many keys are written with one statement over arrays (`UNNEST`), not one per row: a flush
//!   commit is a handful of round trips whatever its partition count.
//! - Durability: a commit returns once PostgreSQL has made it durable (`synchronous_commit = on`, its
//!   default); with sync.metadata off, connections set `synchronous_commit = off`, which survives a
//!   broker crash but may lose the last commits if the database server crashes.
//! - Types: topic ids are UUID, offsets and ids BIGINT; what clients name (group ids, topic names in
//!   commits, metadata strings, group documents) is BYTEA, since TEXT cannot hold a NUL character and
//!   Kafka strings can.
//! - Schema: versioned steps in [`MIGRATIONS`], applied at open under an advisory lock so brokers
//!   starting at once migrate one at a time.

use parking_lot::{Condvar, Mutex};
use postgres::error::SqlState;
use postgres::types::{FromSql, ToSql, Type};
use postgres::{Client, IsolationLevel, NoTls, Row, Statement, Transaction};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

use super::{
    configs_from_json, configs_json, now_ms, pending_steps, producer_entry, recent_json,
    BlockSwitch, Commit, DocTable, GroupWrite, MetadataStore, OffsetRecord, PartitionRecord,
    SegmentRecord, Snapshot, TopicConfigs, TopicRecord,
};
use crate::producer::{AbortedTxn, ProducerEntry};
use crate::segment::BlockMeta;
use crate::StorageError;

/// Connections per broker. Callers at once are few: the flush commit (one at a time, flushes commit in
/// order), the group writer's batch, upload intents of flushes in flight, and now and then retention,
/// compaction, an admin request or a producer id; four lets those overlap without holding many
/// server processes (each PostgreSQL connection is one, a few MB).
pub const POOL_SIZE: usize = 4;
/// How long a call waits for a free connection before failing (KAFKA_STORAGE_ERROR, retriable): far
/// above any healthy call, so only a stuck server makes callers give up.
pub const POOL_WAIT: Duration = Duration::from_secs(30);
/// Connecting gives up after this long (unless the URL sets `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Runs of a transaction that meets serialization failures or deadlocks. Conflicts come from the
/// broker's own background work (compaction, retention) meeting a flush, so a second run nearly
/// always succeeds; ten bounds a pathological case.
const MAX_ATTEMPTS: u32 = 10;
/// Key of the advisory lock migrations take (any constant; "SHmeta" in ASCII).
const MIGRATION_LOCK: i64 = 0x5348_6d65_7461;

/// Version 1: the schema the SQLite store has at its version 1, in PostgreSQL's types.
const SCHEMA_V1: &str = "
CREATE TABLE topics (
  topic_id UUID PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL,
  configs TEXT NOT NULL, created_ms BIGINT NOT NULL);
CREATE TABLE partitions (
  topic_id UUID NOT NULL, partition INTEGER NOT NULL, log_start_offset BIGINT NOT NULL,
  high_watermark BIGINT NOT NULL, PRIMARY KEY (topic_id, partition));
CREATE TABLE segments (
  segment_id BIGINT PRIMARY KEY, created_ms BIGINT NOT NULL, sealed BOOLEAN NOT NULL,
  level SMALLINT NOT NULL);
CREATE TABLE retired_segments (segment_id BIGINT PRIMARY KEY, retired_ms BIGINT NOT NULL);
CREATE TABLE blocks (
  topic_id UUID NOT NULL, partition INTEGER NOT NULL, base_offset BIGINT NOT NULL,
  last_offset BIGINT NOT NULL, max_timestamp BIGINT NOT NULL, segment_id BIGINT NOT NULL,
  position BIGINT NOT NULL, stored_len BIGINT NOT NULL, raw_len BIGINT NOT NULL,
  codec SMALLINT NOT NULL, crc BIGINT NOT NULL, PRIMARY KEY (topic_id, partition, base_offset));
CREATE INDEX blocks_by_segment ON blocks (segment_id);
CREATE TABLE producer_state (
  producer_id BIGINT NOT NULL, topic_id UUID NOT NULL, partition INTEGER NOT NULL,
  epoch SMALLINT NOT NULL, recent TEXT NOT NULL, last_ms BIGINT NOT NULL,
  PRIMARY KEY (producer_id, topic_id, partition));
CREATE INDEX producer_state_by_topic ON producer_state (topic_id);
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE SEQUENCE producer_ids START WITH 1000;
CREATE TABLE group_offsets (
  group_id BYTEA NOT NULL, topic BYTEA NOT NULL, partition INTEGER NOT NULL,
  committed_offset BIGINT NOT NULL, leader_epoch INTEGER NOT NULL, metadata BYTEA,
  commit_ms BIGINT NOT NULL, PRIMARY KEY (group_id, topic, partition));
CREATE INDEX group_offsets_by_topic ON group_offsets (topic);
CREATE TABLE groups (group_id BYTEA PRIMARY KEY, state BYTEA NOT NULL);
CREATE TABLE upload_intents (segment_id BIGINT PRIMARY KEY, created_ms BIGINT NOT NULL);
CREATE TABLE cluster (name TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The schema steps, in order: step `n` brings a database from version `n` to `n + 1` (the same
/// numbering as the SQLite store's). Append only.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

/// Version 2: transactions, as the SQLite store's version 2.
const SCHEMA_V2: &str = "
ALTER TABLE producer_state ADD COLUMN txn_first_offset BIGINT;
CREATE TABLE aborted_txns (
  topic_id UUID NOT NULL, partition INTEGER NOT NULL, last_offset BIGINT NOT NULL,
  producer_id BIGINT NOT NULL, first_offset BIGINT NOT NULL,
  PRIMARY KEY (topic_id, partition, last_offset));
CREATE TABLE transactions (transactional_id BYTEA PRIMARY KEY, state BYTEA NOT NULL);
";

pub struct PostgresMetadata {
    pool: Pool,
    /// Transactions run again after a serialization failure or deadlock (since open).
    retries: std::sync::atomic::AtomicU64,
}

impl PostgresMetadata {
    /// Connects to the database `url` names and brings its schema to the newest version.
    /// `synchronous_commit`: every commit durable on the server before it returns (sync.metadata).
    pub fn open(url: &str, synchronous_commit: bool) -> Result<Self, StorageError> {
        let mut config: postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("streamhouse");
        }
        let pool = Pool {
            config,
            synchronous_commit,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        };
        {
            let mut lease = pool.get()?;
            migrate(&mut lease.conn().client)?;
        }
        Ok(Self {
            pool,
            retries: Default::default(),
        })
    }

    /// Runs `f` in a transaction at `level`, again (from the start) after a serialization failure or
    /// deadlock, up to [`MAX_ATTEMPTS`] runs.
    fn transaction<T>(
        &self,
        level: IsolationLevel,
        read_only: bool,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut lease = self.pool.get()?;
        let mut attempt = 1;
        loop {
            let conn = lease.conn();
            let result = (|| {
                let tx = conn
                    .client
                    .build_transaction()
                    .isolation_level(level)
                    .read_only(read_only)
                    .start()?;
                let mut tx = Tx {
                    tx,
                    statements: &mut conn.statements,
                };
                let value = f(&mut tx)?;
                tx.tx.commit()?;
                Ok(value)
            })();
            match result {
                Err(StorageError::Postgres(e)) if retriable(&e) && attempt < MAX_ATTEMPTS => {
                    self.retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // A few ms, growing: the conflicting transaction is usually done by then.
                    std::thread::sleep(Duration::from_millis(1 << attempt.min(6)));
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Reads or writes across tables that must see each other as if alone (see the module notes).
    fn serializable<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.transaction(IsolationLevel::Serializable, false, f)
    }

    /// Upserts and deletes by key, whose outcome no concurrent transaction can change.
    fn read_committed<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.transaction(IsolationLevel::ReadCommitted, false, f)
    }

    /// Runs `delete`, a DELETE whose `$1` is an array of segment ids.
    fn delete_segment_ids(&self, delete: &'static str, ids: &[u64]) -> Result<(), StorageError> {
        let ids: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
        self.read_committed(|tx| {
            tx.execute(delete, &[&ids])?;
            Ok(())
        })
    }

    /// Reads of one snapshot.
    fn snapshot<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.transaction(IsolationLevel::RepeatableRead, true, f)
    }
}

fn retriable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Brings the schema to the newest version, all steps in one transaction, one broker at a time.
fn migrate(client: &mut Client) -> Result<(), StorageError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
           id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
    )?;
    let current: i32 = match tx.query_opt("SELECT version FROM schema_version WHERE id = 1", &[])? {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    let steps = pending_steps(current.into(), MIGRATIONS.len())?;
    if steps.is_empty() {
        return Ok(());
    }
    for step in steps {
        tx.batch_execute(MIGRATIONS[step])?;
    }
    let version = MIGRATIONS.len() as i32;
    tx.execute(
        "INSERT INTO schema_version (id, version) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
        &[&version],
    )?;
    tx.commit()?;
    Ok(())
}

/// A connection with its prepared statements (by SQL text; they live as long as the connection).
struct PgConn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

struct PoolState {
    idle: Vec<PgConn>,
    /// Connections open, idle or lent.
    open: usize,
}

struct Pool {
    config: postgres::Config,
    synchronous_commit: bool,
    state: Mutex<PoolState>,
    freed: Condvar,
}

impl Pool {
    /// A connection: an idle one, a new one while fewer than [`POOL_SIZE`] are open, or the next one
    /// given back.
    fn get(&self) -> Result<Lease<'_>, StorageError> {
        let deadline = std::time::Instant::now() + POOL_WAIT;
        let mut st = self.state.lock();
        loop {
            if let Some(conn) = st.idle.pop() {
                if conn.client.is_closed() {
                    st.open -= 1;
                    continue;
                }
                return Ok(Lease {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if st.open < POOL_SIZE {
                st.open += 1;
                drop(st);
                return match self.connect() {
                    Ok(conn) => Ok(Lease {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.state.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            if self.freed.wait_until(&mut st, deadline).timed_out() {
                return Err(StorageError::MetadataBusy(format!(
                    "no PostgreSQL connection free within {} s",
                    POOL_WAIT.as_secs()
                )));
            }
        }
    }

    fn connect(&self) -> Result<PgConn, StorageError> {
        let mut client = self.config.connect(NoTls)?;
        if !self.synchronous_commit {
            client.batch_execute("SET synchronous_commit = off")?;
        }
        Ok(PgConn {
            client,
            statements: HashMap::new(),
        })
    }
}

impl Drop for Pool {
    /// Closing a connection blocks on its runtime, and the last handle on the store may go on any
    /// thread, a runtime's too (a failed `Storage::open`, the last task of a dropped `Storage`): the
    /// idle connections are closed on a thread of their own. (Lent ones cannot exist: a lease
    /// borrows the pool.)
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.state.get_mut().idle);
        if !idle.is_empty() {
            let closing = std::thread::Builder::new()
                .name("metadata-close".into())
                .spawn(move || drop(idle));
            if let Err(e) = closing {
                tracing::warn!(error = %e, "cannot close metadata connections on a thread of their own");
            }
        }
    }
}

/// A connection lent from the pool; given back when dropped (or closed, if it broke).
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<PgConn>,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut PgConn {
        // Taken only by drop.
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock();
        match self.conn.take() {
            Some(conn) if !conn.client.is_closed() => st.idle.push(conn),
            _ => st.open -= 1,
        }
        drop(st);
        self.pool.freed.notify_one();
    }
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// A transaction whose statements are prepared once per connection.
struct Tx<'a> {
    tx: Transaction<'a>,
    statements: &'a mut HashMap<&'static str, Statement>,
}

impl Tx<'_> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, StorageError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    fn execute(&mut self, sql: &'static str, params: &Params<'_>) -> Result<u64, StorageError> {
        let s = self.statement(sql)?;
        Ok(self.tx.execute(&s, params)?)
    }

    fn query(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Vec<Row>, StorageError> {
        let s = self.statement(sql)?;
        Ok(self.tx.query(&s, params)?)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StorageError> {
        let s = self.statement(sql)?;
        Ok(self.tx.query_opt(&s, params)?)
    }

    fn query_one(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Row, StorageError> {
        let s = self.statement(sql)?;
        Ok(self.tx.query_one(&s, params)?)
    }
}

/// A string a client chose, kept as BYTEA and read back as the UTF-8 it was written as.
struct ClientString(String);

impl<'a> FromSql<'a> for ClientString {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(ClientString(String::from_utf8(raw.to_vec())?))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::BYTEA
    }
}

fn client_string(row: &Row, i: usize) -> Result<String, StorageError> {
    Ok(row.try_get::<_, ClientString>(i)?.0)
}

/// The last of items with the same key, in their order: one statement must not write a row twice
/// (ON CONFLICT DO UPDATE refuses to), where SQLite's row-by-row statements let the last one win.
fn last_per_key<'a, T, K: Eq + std::hash::Hash>(
    items: impl DoubleEndedIterator<Item = &'a T>,
    key: impl Fn(&T) -> K,
) -> Vec<&'a T> {
    let mut seen = HashSet::new();
    let mut out: Vec<&T> = items.rev().filter(|i| seen.insert(key(i))).collect();
    out.reverse();
    out
}

/// The `blocks` columns of some blocks, as arrays in table order (the parameters $1-$11 of
/// [`INSERT_BLOCKS`] and [`INSERT_MERGED_BLOCKS`]).
struct BlockColumns {
    topic_id: Vec<Uuid>,
    partition: Vec<i32>,
    base_offset: Vec<i64>,
    last_offset: Vec<i64>,
    max_timestamp: Vec<i64>,
    segment_id: Vec<i64>,
    position: Vec<i64>,
    stored_len: Vec<i64>,
    raw_len: Vec<i64>,
    codec: Vec<i16>,
    crc: Vec<i64>,
}

impl BlockColumns {
    fn of(blocks: &[&BlockMeta]) -> Self {
        BlockColumns {
            topic_id: blocks.iter().map(|b| b.topic_id).collect(),
            partition: blocks.iter().map(|b| b.partition).collect(),
            base_offset: blocks.iter().map(|b| b.base_offset).collect(),
            last_offset: blocks.iter().map(|b| b.last_offset).collect(),
            max_timestamp: blocks.iter().map(|b| b.max_timestamp).collect(),
            segment_id: blocks.iter().map(|b| b.segment_id as i64).collect(),
            position: blocks.iter().map(|b| b.position as i64).collect(),
            stored_len: blocks.iter().map(|b| b.stored_len as i64).collect(),
            raw_len: blocks.iter().map(|b| b.raw_len as i64).collect(),
            codec: blocks.iter().map(|b| b.codec as i16).collect(),
            crc: blocks.iter().map(|b| b.crc as i64).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.topic_id,
            &self.partition,
            &self.base_offset,
            &self.last_offset,
            &self.max_timestamp,
            &self.segment_id,
            &self.position,
            &self.stored_len,
            &self.raw_len,
            &self.codec,
            &self.crc,
        ]
    }
}

/// The rows of [`BlockColumns`] as `b`, to insert into `blocks`: the start of both inserts below.
macro_rules! insert_blocks_from_columns {
    () => {
        "INSERT INTO blocks (topic_id, partition, base_offset, last_offset, max_timestamp, segment_id,
                    position, stored_len, raw_len, codec, crc)
SELECT b.* FROM UNNEST($1::uuid[], $2::integer[], $3::bigint[], $4::bigint[], $5::bigint[],
                       $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::smallint[],
                       $11::bigint[])
  AS b(topic_id, partition, base_offset, last_offset, max_timestamp, segment_id, position,
       stored_len, raw_len, codec, crc)
"
    };
}

/// A flush's blocks, replacing a row of the same key, for topics that still exist.
const INSERT_BLOCKS: &str = concat!(
    insert_blocks_from_columns!(),
    "WHERE EXISTS (SELECT 1 FROM topics t WHERE t.topic_id = b.topic_id)
ON CONFLICT (topic_id, partition, base_offset) DO UPDATE SET
  last_offset = EXCLUDED.last_offset, max_timestamp = EXCLUDED.max_timestamp,
  segment_id = EXCLUDED.segment_id, position = EXCLUDED.position,
  stored_len = EXCLUDED.stored_len, raw_len = EXCLUDED.raw_len, codec = EXCLUDED.codec,
  crc = EXCLUDED.crc"
);

/// Compaction's merged blocks, only where the partition exists and the block ends at or after its
/// log start offset, never over a row of the same key; returns the keys added.
const INSERT_MERGED_BLOCKS: &str = concat!(
    insert_blocks_from_columns!(),
    "JOIN partitions p ON p.topic_id = b.topic_id AND p.partition = b.partition
                 AND p.log_start_offset <= b.last_offset
ON CONFLICT (topic_id, partition, base_offset) DO NOTHING
RETURNING topic_id, partition, base_offset"
);

/// Adds a live segment: its row, and the end of its upload intent (if it had one) in the same
/// transaction, so an object is always either referenced or covered by an intent.
fn insert_segment(tx: &mut Tx<'_>, s: &SegmentRecord) -> Result<(), StorageError> {
    tx.execute(
        "WITH intent AS (DELETE FROM upload_intents WHERE segment_id = $1)
         INSERT INTO segments (segment_id, created_ms, sealed, level) VALUES ($1, $2, $3, $4)",
        &[&(s.id as i64), &s.created_ms, &s.sealed, &(s.level as i16)],
    )?;
    Ok(())
}

/// Adds a topic's partitions `from..to`, empty.
fn insert_partitions(
    tx: &mut Tx<'_>,
    topic_id: Uuid,
    from: i32,
    to: i32,
) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO partitions (topic_id, partition, log_start_offset, high_watermark)
         SELECT $1, p, 0, 0 FROM generate_series($2::integer, $3::integer - 1) AS p",
        &[&topic_id, &from, &to],
    )?;
    Ok(())
}

/// Moves sealed segments that no block refers to any more from `segments` to `retired_segments`; their
/// files or objects are deleted after file.delete.delay.ms. (The active local segment is not sealed.)
fn retire_if_unreferenced(tx: &mut Tx<'_>, ids: &[u64]) -> Result<(), StorageError> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
    tx.execute(
        "INSERT INTO retired_segments (segment_id, retired_ms)
         SELECT s.segment_id, $2 FROM segments s
         WHERE s.segment_id = ANY($1) AND s.sealed
           AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.segment_id = s.segment_id)
         ON CONFLICT (segment_id) DO NOTHING",
        &[&ids, &now_ms()],
    )?;
    tx.execute(
        "DELETE FROM segments s WHERE s.segment_id = ANY($1)
           AND EXISTS (SELECT 1 FROM retired_segments r WHERE r.segment_id = s.segment_id)",
        &[&ids],
    )?;
    Ok(())
}

/// The distinct segment ids in the first column of `rows`.
fn segment_ids(rows: &[Row]) -> Result<Vec<u64>, StorageError> {
    let mut ids = Vec::with_capacity(rows.len());
    for r in rows {
        ids.push(r.try_get::<_, i64>(0)? as u64);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn segments(tx: &mut Tx<'_>) -> Result<Vec<SegmentRecord>, StorageError> {
    tx.query(
        "SELECT segment_id, created_ms, sealed, level FROM segments ORDER BY segment_id",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(SegmentRecord {
            id: r.try_get::<_, i64>(0)? as u64,
            created_ms: r.try_get(1)?,
            sealed: r.try_get(2)?,
            level: r.try_get::<_, i16>(3)? as u8,
        })
    })
    .collect()
}

fn retired(tx: &mut Tx<'_>) -> Result<Vec<(u64, i64)>, StorageError> {
    tx.query(
        "SELECT segment_id, retired_ms FROM retired_segments ORDER BY segment_id",
        &[],
    )?
    .iter()
    .map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?)))
    .collect()
}

fn intents(tx: &mut Tx<'_>) -> Result<Vec<u64>, StorageError> {
    let rows = tx.query(
        "SELECT segment_id FROM upload_intents ORDER BY segment_id",
        &[],
    )?;
    rows.iter()
        .map(|r| Ok(r.try_get::<_, i64>(0)? as u64))
        .collect()
}

fn cluster_id(tx: &mut Tx<'_>) -> Result<Option<String>, StorageError> {
    match tx.query_opt("SELECT value FROM cluster WHERE name = 'cluster_id'", &[])? {
        Some(r) => Ok(Some(r.try_get(0)?)),
        None => Ok(None),
    }
}

/// Commits, replacing earlier commits of the same partitions.
fn upsert_offsets(tx: &mut Tx<'_>, offsets: &[OffsetRecord]) -> Result<(), StorageError> {
    let rows = last_per_key(offsets.iter(), |o| {
        (o.group_id.clone(), o.topic.clone(), o.partition)
    });
    if rows.is_empty() {
        return Ok(());
    }
    let group: Vec<&[u8]> = rows.iter().map(|o| o.group_id.as_bytes()).collect();
    let topic: Vec<&[u8]> = rows.iter().map(|o| o.topic.as_bytes()).collect();
    let partition: Vec<i32> = rows.iter().map(|o| o.partition).collect();
    let offset: Vec<i64> = rows.iter().map(|o| o.offset).collect();
    let epoch: Vec<i32> = rows.iter().map(|o| o.leader_epoch).collect();
    let metadata: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|o| o.metadata.as_deref().map(str::as_bytes))
        .collect();
    let commit_ms: Vec<i64> = rows.iter().map(|o| o.commit_ms).collect();
    tx.execute(
        "INSERT INTO group_offsets (group_id, topic, partition, committed_offset, leader_epoch,
                                    metadata, commit_ms)
         SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::integer[], $4::bigint[], $5::integer[],
                              $6::bytea[], $7::bigint[])
         ON CONFLICT (group_id, topic, partition) DO UPDATE SET
           committed_offset = EXCLUDED.committed_offset, leader_epoch = EXCLUDED.leader_epoch,
           metadata = EXCLUDED.metadata, commit_ms = EXCLUDED.commit_ms",
        &[
            &group, &topic, &partition, &offset, &epoch, &metadata, &commit_ms,
        ],
    )?;
    Ok(())
}

/// A group's committed offsets of the given partitions.
fn delete_offsets(
    tx: &mut Tx<'_>,
    group_id: &str,
    partitions: &[(String, i32)],
) -> Result<(), StorageError> {
    let topic: Vec<&[u8]> = partitions.iter().map(|p| p.0.as_bytes()).collect();
    let partition: Vec<i32> = partitions.iter().map(|p| p.1).collect();
    tx.execute(
        "DELETE FROM group_offsets o USING UNNEST($2::bytea[], $3::integer[]) AS d(topic, partition)
         WHERE o.group_id = $1 AND o.topic = d.topic AND o.partition = d.partition",
        &[&group_id.as_bytes(), &topic, &partition],
    )?;
    Ok(())
}

/// Saves a group's or a transactional id's document, or removes it with `None`.
fn save_doc(
    tx: &mut Tx<'_>,
    table: DocTable,
    id: &str,
    doc: Option<&str>,
) -> Result<(), StorageError> {
    let (upsert, delete) = match table {
        DocTable::Groups => (
            "INSERT INTO groups (group_id, state) VALUES ($1, $2)
             ON CONFLICT (group_id) DO UPDATE SET state = EXCLUDED.state",
            "DELETE FROM groups WHERE group_id = $1",
        ),
        DocTable::Transactions => (
            "INSERT INTO transactions (transactional_id, state) VALUES ($1, $2)
             ON CONFLICT (transactional_id) DO UPDATE SET state = EXCLUDED.state",
            "DELETE FROM transactions WHERE transactional_id = $1",
        ),
    };
    match doc {
        Some(doc) => tx.execute(upsert, &[&id.as_bytes(), &doc.as_bytes()])?,
        None => tx.execute(delete, &[&id.as_bytes()])?,
    };
    Ok(())
}

impl MetadataStore for PostgresMetadata {
    fn load(&self) -> Result<Snapshot, StorageError> {
        let now = now_ms();
        self.snapshot(|tx| {
            let mut snap = Snapshot::default();
            for r in tx.query(
                "SELECT topic_id, name, partitions, configs, created_ms FROM topics",
                &[],
            )? {
                snap.topics.push(TopicRecord {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    partitions: r.try_get(2)?,
                    configs: configs_from_json(r.try_get(3)?),
                    created_ms: r.try_get(4)?,
                });
            }
            for r in tx.query(
                "SELECT topic_id, partition, log_start_offset, high_watermark FROM partitions",
                &[],
            )? {
                snap.partitions.push(PartitionRecord {
                    topic_id: r.try_get(0)?,
                    partition: r.try_get(1)?,
                    log_start_offset: r.try_get(2)?,
                    high_watermark: r.try_get(3)?,
                });
            }
            snap.segments = segments(tx)?;
            snap.retired = retired(tx)?;
            for r in tx.query(
                "SELECT topic_id, partition, base_offset, last_offset, max_timestamp, segment_id,
                        position, stored_len, raw_len, codec, crc
                 FROM blocks ORDER BY topic_id, partition, base_offset",
                &[],
            )? {
                snap.blocks.push(BlockMeta {
                    topic_id: r.try_get(0)?,
                    partition: r.try_get(1)?,
                    base_offset: r.try_get(2)?,
                    last_offset: r.try_get(3)?,
                    max_timestamp: r.try_get(4)?,
                    segment_id: r.try_get::<_, i64>(5)? as u64,
                    position: r.try_get::<_, i64>(6)? as u64,
                    stored_len: r.try_get::<_, i64>(7)? as u32,
                    raw_len: r.try_get::<_, i64>(8)? as u32,
                    codec: r.try_get::<_, i16>(9)? as u8,
                    crc: r.try_get::<_, i64>(10)? as u32,
                });
            }
            for r in tx.query(
                "SELECT producer_id, topic_id, partition, epoch, recent, last_ms, txn_first_offset
                 FROM producer_state ORDER BY producer_id, topic_id, partition",
                &[],
            )? {
                snap.producers.push((
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                    producer_entry(
                        r.try_get(3)?,
                        r.try_get(4)?,
                        r.try_get(5)?,
                        r.try_get(6)?,
                        now,
                    ),
                ));
            }
            for r in tx.query(
                "SELECT topic_id, partition, producer_id, first_offset, last_offset FROM aborted_txns
                 ORDER BY topic_id, partition, last_offset",
                &[],
            )? {
                snap.aborted.push((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    AbortedTxn {
                        producer_id: r.try_get(2)?,
                        first_offset: r.try_get(3)?,
                        last_offset: r.try_get(4)?,
                    },
                ));
            }
            snap.intents = intents(tx)?;
            snap.max_segment_id =
                match tx.query_opt("SELECT value FROM counters WHERE name = 'segment_id'", &[])? {
                    Some(r) => r.try_get::<_, i64>(0)? as u64,
                    None => 0,
                };
            Ok(snap)
        })
    }

    fn create_topic(&self, t: &TopicRecord) -> Result<(), StorageError> {
        let configs = configs_json(&t.configs);
        let result = self.serializable(|tx| {
            if tx
                .query_opt("SELECT 1 FROM topics WHERE name = $1", &[&t.name])?
                .is_some()
            {
                return Err(StorageError::TopicExists(t.name.clone()));
            }
            tx.execute(
                "INSERT INTO topics (topic_id, name, partitions, configs, created_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&t.id, &t.name, &t.partitions, &configs, &t.created_ms],
            )?;
            insert_partitions(tx, t.id, 0, t.partitions)
        });
        match result {
            // Another broker created the name between our check and insert.
            Err(StorageError::Postgres(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(StorageError::TopicExists(t.name.clone()))
            }
            r => r,
        }
    }

    fn delete_topic(&self, topic_id: Uuid) -> Result<(), StorageError> {
        self.serializable(|tx| {
            // One statement: the CTEs' deletes run whether or not the outer statement reads them.
            let rows = tx.query(
                "WITH t AS (DELETE FROM topics WHERE topic_id = $1),
                      p AS (DELETE FROM partitions WHERE topic_id = $1),
                      s AS (DELETE FROM producer_state WHERE topic_id = $1),
                      a AS (DELETE FROM aborted_txns WHERE topic_id = $1)
                 DELETE FROM blocks WHERE topic_id = $1 RETURNING segment_id",
                &[&topic_id],
            )?;
            retire_if_unreferenced(tx, &segment_ids(&rows)?)
        })
    }

    fn add_partitions(&self, topic_id: Uuid, partitions: i32) -> Result<(), StorageError> {
        self.serializable(|tx| {
            let current: i32 = tx
                .query_one(
                    "SELECT partitions FROM topics WHERE topic_id = $1",
                    &[&topic_id],
                )?
                .try_get(0)?;
            insert_partitions(tx, topic_id, current, partitions)?;
            tx.execute(
                "UPDATE topics SET partitions = $2 WHERE topic_id = $1",
                &[&topic_id, &partitions],
            )?;
            Ok(())
        })
    }

    fn truncate_head(
        &self,
        topic_id: Uuid,
        partition: i32,
        log_start_offset: i64,
    ) -> Result<(), StorageError> {
        self.serializable(|tx| {
            tx.execute(
                "UPDATE partitions SET log_start_offset = GREATEST(log_start_offset, $3)
                 WHERE topic_id = $1 AND partition = $2",
                &[&topic_id, &partition, &log_start_offset],
            )?;
            tx.execute(
                "DELETE FROM aborted_txns WHERE topic_id = $1 AND partition = $2 AND last_offset < $3",
                &[&topic_id, &partition, &log_start_offset],
            )?;
            let rows = tx.query(
                "DELETE FROM blocks WHERE topic_id = $1 AND partition = $2 AND last_offset < $3
                 RETURNING segment_id",
                &[&topic_id, &partition, &log_start_offset],
            )?;
            retire_if_unreferenced(tx, &segment_ids(&rows)?)
        })
    }

    fn set_topic_configs(
        &self,
        topic_id: Uuid,
        configs: &TopicConfigs,
    ) -> Result<(), StorageError> {
        let json = configs_json(configs);
        self.read_committed(|tx| {
            tx.execute(
                "UPDATE topics SET configs = $2 WHERE topic_id = $1",
                &[&topic_id, &json],
            )?;
            Ok(())
        })
    }

    fn commit(&self, c: &Commit) -> Result<(), StorageError> {
        let blocks = last_per_key(c.blocks.iter(), |b| {
            (b.topic_id, b.partition, b.base_offset)
        });
        let blocks = BlockColumns::of(&blocks);
        let hwms = last_per_key(c.high_watermarks.iter(), |h| (h.0, h.1));
        let hw_topic: Vec<Uuid> = hwms.iter().map(|h| h.0).collect();
        let hw_partition: Vec<i32> = hwms.iter().map(|h| h.1).collect();
        let hw_value: Vec<i64> = hwms.iter().map(|h| h.2).collect();
        let expired_pid: Vec<i64> = c.expired_producers.iter().map(|e| e.0).collect();
        let expired_topic: Vec<Uuid> = c.expired_producers.iter().map(|e| e.1).collect();
        let expired_partition: Vec<i32> = c.expired_producers.iter().map(|e| e.2).collect();
        let producers: Vec<&((i64, Uuid, i32), ProducerEntry)> =
            last_per_key(c.producers.iter(), |p| p.0);
        let p_pid: Vec<i64> = producers.iter().map(|p| p.0 .0).collect();
        let p_topic: Vec<Uuid> = producers.iter().map(|p| p.0 .1).collect();
        let p_partition: Vec<i32> = producers.iter().map(|p| p.0 .2).collect();
        let p_epoch: Vec<i16> = producers.iter().map(|p| p.1.epoch).collect();
        let p_recent: Vec<String> = producers.iter().map(|p| recent_json(&p.1)).collect();
        let p_last_ms: Vec<i64> = producers.iter().map(|p| p.1.last_append_ms).collect();
        let p_txn: Vec<Option<i64>> = producers.iter().map(|p| p.1.txn_first_offset).collect();
        let a_topic: Vec<Uuid> = c.aborted.iter().map(|a| a.0).collect();
        let a_partition: Vec<i32> = c.aborted.iter().map(|a| a.1).collect();
        let a_last: Vec<i64> = c.aborted.iter().map(|a| a.2.last_offset).collect();
        let a_pid: Vec<i64> = c.aborted.iter().map(|a| a.2.producer_id).collect();
        let a_first: Vec<i64> = c.aborted.iter().map(|a| a.2.first_offset).collect();
        self.serializable(|tx| {
            if let Some(id) = c.sealed_segment {
                tx.execute(
                    "UPDATE segments SET sealed = TRUE WHERE segment_id = $1",
                    &[&(id as i64)],
                )?;
            }
            if let Some(s) = &c.new_segment {
                insert_segment(tx, s)?;
            }
            if !blocks.topic_id.is_empty() {
                tx.execute(INSERT_BLOCKS, &blocks.params())?;
            }
            if !hw_topic.is_empty() {
                tx.execute(
                    "UPDATE partitions p SET high_watermark = u.hw
                     FROM UNNEST($1::uuid[], $2::integer[], $3::bigint[]) AS u(topic_id, partition, hw)
                     WHERE p.topic_id = u.topic_id AND p.partition = u.partition",
                    &[&hw_topic, &hw_partition, &hw_value],
                )?;
            }
            if !expired_pid.is_empty() {
                tx.execute(
                    "DELETE FROM producer_state s
                     USING UNNEST($1::bigint[], $2::uuid[], $3::integer[]) AS e(producer_id, topic_id, partition)
                     WHERE s.producer_id = e.producer_id AND s.topic_id = e.topic_id
                       AND s.partition = e.partition",
                    &[&expired_pid, &expired_topic, &expired_partition],
                )?;
            }
            if !p_pid.is_empty() {
                tx.execute(
                    "INSERT INTO producer_state
                       (producer_id, topic_id, partition, epoch, recent, last_ms, txn_first_offset)
                     SELECT u.* FROM UNNEST($1::bigint[], $2::uuid[], $3::integer[], $4::smallint[],
                                            $5::text[], $6::bigint[], $7::bigint[])
                       AS u(producer_id, topic_id, partition, epoch, recent, last_ms, txn_first_offset)
                     WHERE EXISTS (SELECT 1 FROM topics t WHERE t.topic_id = u.topic_id)
                     ON CONFLICT (producer_id, topic_id, partition) DO UPDATE SET
                       epoch = EXCLUDED.epoch, recent = EXCLUDED.recent, last_ms = EXCLUDED.last_ms,
                       txn_first_offset = EXCLUDED.txn_first_offset",
                    &[
                        &p_pid,
                        &p_topic,
                        &p_partition,
                        &p_epoch,
                        &p_recent,
                        &p_last_ms,
                        &p_txn,
                    ],
                )?;
            }
            if !a_topic.is_empty() {
                tx.execute(
                    "INSERT INTO aborted_txns (topic_id, partition, last_offset, producer_id, first_offset)
                     SELECT u.* FROM UNNEST($1::uuid[], $2::integer[], $3::bigint[], $4::bigint[],
                                            $5::bigint[])
                       AS u(topic_id, partition, last_offset, producer_id, first_offset)
                     WHERE EXISTS (SELECT 1 FROM topics t WHERE t.topic_id = u.topic_id)
                     ON CONFLICT (topic_id, partition, last_offset) DO NOTHING",
                    &[&a_topic, &a_partition, &a_last, &a_pid, &a_first],
                )?;
            }
            if let Some(id) = c.sealed_segment {
                // Retention may have dropped every block of the segment while it was active.
                retire_if_unreferenced(tx, &[id])?;
            }
            Ok(())
        })
    }

    fn switch_blocks(&self, sw: &BlockSwitch) -> Result<Vec<BlockMeta>, StorageError> {
        let removed_topic: Vec<Uuid> = sw.removed.iter().map(|r| r.0).collect();
        let removed_partition: Vec<i32> = sw.removed.iter().map(|r| r.1).collect();
        let removed_base: Vec<i64> = sw.removed.iter().map(|r| r.2).collect();
        let removed_segment: Vec<i64> = sw.removed.iter().map(|r| r.3 as i64).collect();
        // The first of merged blocks with the same key is the one added (SQLite: INSERT OR IGNORE).
        let mut seen = HashSet::new();
        let candidates: Vec<&BlockMeta> = sw
            .added
            .iter()
            .filter(|b| seen.insert((b.topic_id, b.partition, b.base_offset)))
            .collect();
        let merged = BlockColumns::of(&candidates);
        let touched = sw.touched_segments();
        self.serializable(|tx| {
            for s in &sw.segments {
                insert_segment(tx, s)?;
            }
            if !removed_topic.is_empty() {
                tx.execute(
                    "DELETE FROM blocks b
                     USING UNNEST($1::uuid[], $2::integer[], $3::bigint[], $4::bigint[])
                       AS r(topic_id, partition, base_offset, segment_id)
                     WHERE b.topic_id = r.topic_id AND b.partition = r.partition
                       AND b.base_offset = r.base_offset AND b.segment_id = r.segment_id",
                    &[
                        &removed_topic,
                        &removed_partition,
                        &removed_base,
                        &removed_segment,
                    ],
                )?;
            }
            let mut added = Vec::new();
            if !candidates.is_empty() {
                let mut keys = HashSet::new();
                for r in tx.query(INSERT_MERGED_BLOCKS, &merged.params())? {
                    keys.insert((
                        r.try_get::<_, Uuid>(0)?,
                        r.try_get::<_, i32>(1)?,
                        r.try_get::<_, i64>(2)?,
                    ));
                }
                added = candidates
                    .iter()
                    .filter(|b| keys.contains(&(b.topic_id, b.partition, b.base_offset)))
                    .map(|b| **b)
                    .collect();
            }
            retire_if_unreferenced(tx, &touched)?;
            Ok(added)
        })
    }

    fn segments(&self) -> Result<Vec<SegmentRecord>, StorageError> {
        self.snapshot(segments)
    }

    fn retired_segments(&self) -> Result<Vec<(u64, i64)>, StorageError> {
        self.snapshot(retired)
    }

    fn forget_retired_segments(&self, ids: &[u64]) -> Result<(), StorageError> {
        self.delete_segment_ids(
            "DELETE FROM retired_segments WHERE segment_id = ANY($1)",
            ids,
        )
    }

    fn allocate_producer_id(&self) -> Result<i64, StorageError> {
        // A sequence: never hands out a value twice, whichever broker asks, and never waits on
        // another transaction (a value taken by a transaction that rolls back is skipped, not reused).
        self.read_committed(|tx| {
            Ok(tx
                .query_one("SELECT nextval('producer_ids')", &[])?
                .try_get(0)?)
        })
    }

    fn load_offsets(&self) -> Result<Vec<OffsetRecord>, StorageError> {
        self.snapshot(|tx| {
            tx.query(
                "SELECT group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms
                 FROM group_offsets",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(OffsetRecord {
                    group_id: client_string(r, 0)?,
                    topic: client_string(r, 1)?,
                    partition: r.try_get(2)?,
                    offset: r.try_get(3)?,
                    leader_epoch: r.try_get(4)?,
                    metadata: r.try_get::<_, Option<ClientString>>(5)?.map(|m| m.0),
                    commit_ms: r.try_get(6)?,
                })
            })
            .collect()
        })
    }

    fn load_groups(&self) -> Result<Vec<(String, String)>, StorageError> {
        self.snapshot(|tx| {
            tx.query("SELECT group_id, state FROM groups ORDER BY group_id", &[])?
                .iter()
                .map(|r| Ok((client_string(r, 0)?, client_string(r, 1)?)))
                .collect()
        })
    }

    fn cluster_id(&self) -> Result<Option<String>, StorageError> {
        self.snapshot(cluster_id)
    }

    fn init_cluster_id(&self, id: &str) -> Result<String, StorageError> {
        self.read_committed(|tx| {
            tx.execute(
                "INSERT INTO cluster (name, value) VALUES ('cluster_id', $1)
                 ON CONFLICT (name) DO NOTHING",
                &[&id],
            )?;
            // READ COMMITTED: this statement sees another broker's id if it won the insert.
            Ok(tx
                .query_one("SELECT value FROM cluster WHERE name = 'cluster_id'", &[])?
                .try_get(0)?)
        })
    }

    fn record_uploads(&self, segment_ids: &[u64]) -> Result<(), StorageError> {
        let Some(max) = segment_ids.iter().max() else {
            return Ok(());
        };
        let max = *max as i64;
        let ids: Vec<i64> = segment_ids.iter().map(|id| *id as i64).collect();
        let now = now_ms();
        self.read_committed(|tx| {
            tx.execute(
                "INSERT INTO upload_intents (segment_id, created_ms)
                 SELECT id, $2 FROM UNNEST($1::bigint[]) AS id
                 ON CONFLICT (segment_id) DO NOTHING",
                &[&ids, &now],
            )?;
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ('segment_id', $1)
                 ON CONFLICT (name) DO UPDATE SET value = GREATEST(counters.value, EXCLUDED.value)",
                &[&max],
            )?;
            Ok(())
        })
    }

    fn upload_intents(&self) -> Result<Vec<u64>, StorageError> {
        self.snapshot(intents)
    }

    fn forget_uploads(&self, segment_ids: &[u64]) -> Result<(), StorageError> {
        self.delete_segment_ids(
            "DELETE FROM upload_intents WHERE segment_id = ANY($1)",
            segment_ids,
        )
    }

    fn producers_of(
        &self,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Vec<(i64, ProducerEntry)>, StorageError> {
        let now = now_ms();
        self.snapshot(|tx| {
            tx.query(
                "SELECT producer_id, epoch, recent, last_ms, txn_first_offset FROM producer_state
                 WHERE topic_id = $1 AND partition = $2 ORDER BY producer_id",
                &[&topic_id, &partition],
            )?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    producer_entry(
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                        now,
                    ),
                ))
            })
            .collect()
        })
    }

    fn load_transactions(&self) -> Result<Vec<(String, String)>, StorageError> {
        self.snapshot(|tx| {
            tx.query(
                "SELECT transactional_id, state FROM transactions ORDER BY transactional_id",
                &[],
            )?
            .iter()
            .map(|r| Ok((client_string(r, 0)?, client_string(r, 1)?)))
            .collect()
        })
    }

    fn save_transactions(&self, docs: &[(String, Option<String>)]) -> Result<(), StorageError> {
        self.read_committed(|tx| {
            for (id, doc) in docs {
                save_doc(tx, DocTable::Transactions, id, doc.as_deref())?;
            }
            Ok(())
        })
    }

    fn group_writes(&self, writes: &[GroupWrite]) -> Result<(), StorageError> {
        self.read_committed(|tx| {
            for w in writes {
                match w {
                    GroupWrite::Offsets(offsets) => upsert_offsets(tx, offsets)?,
                    GroupWrite::DeleteOffsets {
                        group_id,
                        partitions: None,
                    } => {
                        tx.execute(
                            "DELETE FROM group_offsets WHERE group_id = $1",
                            &[&group_id.as_bytes()],
                        )?;
                    }
                    GroupWrite::DeleteOffsets {
                        group_id,
                        partitions: Some(list),
                    } => delete_offsets(tx, group_id, list)?,
                    GroupWrite::ExpireOffsets {
                        group_id,
                        partitions,
                    } => {
                        let topic: Vec<&[u8]> = partitions.iter().map(|p| p.0.as_bytes()).collect();
                        let partition: Vec<i32> = partitions.iter().map(|p| p.1).collect();
                        let commit_ms: Vec<i64> = partitions.iter().map(|p| p.2).collect();
                        tx.execute(
                            "DELETE FROM group_offsets o
                             USING UNNEST($2::bytea[], $3::integer[], $4::bigint[])
                               AS e(topic, partition, commit_ms)
                             WHERE o.group_id = $1 AND o.topic = e.topic
                               AND o.partition = e.partition AND o.commit_ms = e.commit_ms",
                            &[&group_id.as_bytes(), &topic, &partition, &commit_ms],
                        )?;
                    }
                    GroupWrite::DeleteTopicOffsets { topic } => {
                        tx.execute(
                            "DELETE FROM group_offsets WHERE topic = $1",
                            &[&topic.as_bytes()],
                        )?;
                    }
                    GroupWrite::SaveGroup { group_id, state } => {
                        save_doc(tx, DocTable::Groups, group_id, state.as_deref())?
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::testing::TestStore;

    fn url(store: &TestStore) -> String {
        store.location().as_setting().to_string()
    }

    fn setting(m: &PostgresMetadata, name: &'static str) -> String {
        m.read_committed(|tx| Ok(tx.query_one(name, &[])?.try_get::<_, String>(0)?))
            .unwrap()
    }

    /// sync.metadata off is not a no-op here: the connections stop waiting for the server's WAL flush.
    #[test]
    fn sync_metadata_sets_synchronous_commit() {
        let store = TestStore::postgres();
        let on = PostgresMetadata::open(&url(&store), true).unwrap();
        assert_eq!(setting(&on, "SHOW synchronous_commit"), "on");
        let off = PostgresMetadata::open(&url(&store), false).unwrap();
        assert_eq!(setting(&off, "SHOW synchronous_commit"), "off");
    }

    /// More callers than connections: each waits its turn, at most POOL_SIZE connections open, and
    /// producer ids stay unique (the sequence) however the calls interleave.
    #[test]
    fn many_callers_share_the_pool_and_ids_stay_unique() {
        let store = TestStore::postgres();
        let m = PostgresMetadata::open(&url(&store), true).unwrap();
        let ids = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let id = m.allocate_producer_id().unwrap();
                        ids.lock().unwrap().push(id);
                        assert!(m.pool.state.lock().open <= POOL_SIZE);
                    }
                });
            }
        });
        let mut ids = ids.into_inner().unwrap();
        ids.sort();
        assert_eq!(ids, (1000..1320).collect::<Vec<i64>>());
        assert!(m.pool.state.lock().open <= POOL_SIZE);
    }

    /// Flush commits and retention on the same partition at once: serializable transactions that
    /// conflict are run again, so every call succeeds, and no block below the final log start
    /// offset is left in the index.
    #[test]
    fn conflicting_transactions_are_retried() {
        let store = TestStore::postgres();
        let m = PostgresMetadata::open(&url(&store), true).unwrap();
        let t = TopicRecord {
            id: Uuid::new_v4(),
            name: "t".into(),
            partitions: 1,
            configs: Default::default(),
            created_ms: 0,
        };
        m.create_topic(&t).unwrap();
        let block = |i: i64| BlockMeta {
            topic_id: t.id,
            partition: 0,
            base_offset: i,
            last_offset: i,
            max_timestamp: 0,
            segment_id: i as u64 + 1,
            position: 0,
            stored_len: 1,
            raw_len: 1,
            codec: 0,
            crc: 0,
        };
        // Retention moves the log start only below what is committed, as the engine does.
        let committed = std::sync::atomic::AtomicI64::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..100 {
                    m.commit(&Commit {
                        new_segment: Some(SegmentRecord {
                            id: i as u64 + 1,
                            created_ms: 0,
                            sealed: true,
                            level: 0,
                        }),
                        blocks: vec![block(i)],
                        high_watermarks: vec![(t.id, 0, i + 1)],
                        ..Default::default()
                    })
                    .unwrap();
                    committed.store(i + 1, std::sync::atomic::Ordering::SeqCst);
                }
            });
            s.spawn(|| {
                for lso in 0..50 {
                    while committed.load(std::sync::atomic::Ordering::SeqCst) <= lso {
                        std::thread::yield_now();
                    }
                    m.truncate_head(t.id, 0, lso).unwrap();
                }
            });
        });
        eprintln!(
            "conflicting transactions run again: {}",
            m.retries.load(std::sync::atomic::Ordering::Relaxed)
        );
        let snap = m.load().unwrap();
        assert_eq!(snap.partitions[0].log_start_offset, 49);
        assert!(snap.blocks.iter().all(|b| b.last_offset >= 49));
        assert_eq!(snap.blocks.len(), 51);
        // Each truncation retired the segments it emptied.
        assert_eq!(snap.segments.len(), 51);
        assert_eq!(snap.retired.len(), 49);
    }
}
