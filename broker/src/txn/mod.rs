//! The transaction coordinator (Kafka's TransactionCoordinator; KIP-98, KIP-447's group-aware
//! TxnOffsetCommit, KIP-890's server-side verification): InitProducerId with a transactional id,
//! AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn, timeouts and expiry. Every
//! transactional id is coordinated by this broker.
//!
//! A transaction's state (`state.rs`) is persisted in the metadata store (its document per
//! transactional id) before it takes effect, so a kill -9 at any step resumes at restart: a
//! transaction found in PrepareCommit or PrepareAbort has its markers written (again: a second marker
//! for a transaction already ended is harmless, as in Kafka) and, for a commit, its offsets applied,
//! then becomes CompleteCommit or CompleteAbort. An Ongoing one is aborted when its timeout passes.
//!
//! Markers go through the storage writer like produced batches (one append for all of a transaction's
//! partitions: one flush), and the writer asks this coordinator ([`TransactionVerifier`]) before a
//! transactional batch opens a transaction on a partition: only while the producer's transaction, at
//! that epoch, is Ongoing and holds the partition. A batch sequenced after the markers therefore
//! finds the transaction ended and is refused, instead of opening a transaction nobody will end.
//!
//! # State, locks and blocking
//!
//! All transactional ids are in one map behind one `parking_lot::Mutex` (`Shared`), held only to
//! read or swap an entry (no I/O, no await); the writer's verification takes it too. The changes of
//! one transactional id are serialized by an async lock (one of [`STRIPES`], by the id's hash) held
//! from the decision until the new state is stored and applied, so they reach the store one at a time,
//! in order: a producer's AddPartitionsToTxn and AddOffsetsToTxn sent together wait for each other
//! instead of failing. While a change is under way the id is `busy` (the timer and eviction leave it
//! alone). Store calls run on the blocking pool (the metadata store's blocking rule). The timer task
//! aborts timed-out transactions every transaction.abort.timed.out.transaction.cleanup.interval.ms,
//! retries unfinished completions, and removes ids idle for transactional.id.expiration.ms.

mod state;

use parking_lot::Mutex;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;
use streamhouse_protocol::control::marker_batch;
use streamhouse_storage::{AppendBatch, MetadataStore, Storage, StorageError, TransactionVerifier};
use uuid::Uuid;

use crate::error;
use crate::group::{now_ms, GroupCoordinator};
pub use state::{PendingOffset, TxnMeta, TxnPartition, TxnState};

/// Coordinator settings, named after Kafka's.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// transaction.max.timeout.ms: the largest transaction.timeout.ms a producer may ask for.
    pub max_timeout_ms: i32,
    /// transactional.id.expiration.ms: an id with no transaction for this long is forgotten.
    pub id_expiration_ms: i64,
    /// transaction.abort.timed.out.transaction.cleanup.interval.ms
    pub abort_check_interval: Duration,
    /// transaction.remove.expired.transaction.cleanup.interval.ms
    pub remove_expired_interval: Duration,
    /// transactional.id.max (StreamHouse's): transactional ids kept at once.
    pub max_ids: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: 900_000,
            id_expiration_ms: 604_800_000,
            abort_check_interval: Duration::from_secs(10),
            remove_expired_interval: Duration::from_secs(3600),
            max_ids: 100_000,
        }
    }
}

struct Entry {
    meta: TxnMeta,
    /// A change is on its way to the store.
    busy: bool,
    /// The store has a document for this id (a new id's first write may still fail).
    stored: bool,
}

#[derive(Default)]
struct Txns {
    by_id: HashMap<String, Entry>,
    /// The transactional id of each producer id.
    by_producer: HashMap<i64, String>,
}

/// The state the writer's verification shares with the coordinator.
#[derive(Default)]
struct Shared(Mutex<Txns>);

impl TransactionVerifier for Shared {
    fn verify(
        &self,
        producer_id: i64,
        epoch: i16,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<(), StorageError> {
        let txns = self.0.lock();
        let meta = txns
            .by_producer
            .get(&producer_id)
            .and_then(|id| txns.by_id.get(id))
            .map(|e| &e.meta);
        match meta {
            Some(m) if m.epoch > epoch => Err(StorageError::InvalidProducerEpoch),
            Some(m)
                if m.epoch == epoch
                    && m.state == TxnState::Ongoing
                    && m.partitions
                        .iter()
                        .any(|p| p.topic_id == topic_id && p.partition == partition) =>
            {
                Ok(())
            }
            _ => Err(StorageError::InvalidTxnState),
        }
    }
}

/// What a change decided under the lock: nothing to write, or a new state to persist first.
enum Step<T> {
    Done(T),
    Write(TxnMeta, T),
}

/// One partition of a TxnOffsetCommit.
pub struct TxnOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: PendingOffset,
}

/// A transaction as the admin APIs show it.
#[derive(Debug, Clone)]
pub struct TxnListing {
    pub transactional_id: String,
    pub meta: TxnMeta,
}

/// Most groups one transaction may add (AddOffsetsToTxn, TxnOffsetCommit v5+); past it
/// INVALID_REQUEST. Kafka has no such bound (a group adds one of its 50 __consumer_offsets
/// partitions); every group costs a row of the transaction's document, rewritten at each change, and
/// a consume-transform-produce loop needs one.
pub const MAX_GROUPS_PER_TRANSACTION: usize = 1000;

/// Async locks serializing the changes of transactional ids (an id always maps to the same one).
/// 64: ids sharing a lock only wait on each other's store writes, a few milliseconds each.
const STRIPES: usize = 64;

pub struct TransactionCoordinator {
    config: TxnConfig,
    stripes: Vec<tokio::sync::Mutex<()>>,
    storage: Arc<Storage>,
    groups: Arc<GroupCoordinator>,
    meta: Arc<dyn MetadataStore>,
    shared: Arc<Shared>,
}

impl TransactionCoordinator {
    /// Loads every transactional id from the store, installs the writer's verification, resumes
    /// unfinished completions and starts the timer.
    pub async fn open(
        storage: Arc<Storage>,
        groups: Arc<GroupCoordinator>,
        config: TxnConfig,
    ) -> Result<Arc<TransactionCoordinator>, StorageError> {
        let meta = storage.metadata();
        let m = meta.clone();
        let docs = tokio::task::spawn_blocking(move || m.load_transactions())
            .await
            .map_err(|_| StorageError::TaskFailed("loading transactions"))??;
        let mut txns = Txns::default();
        for (id, doc) in docs {
            match serde_json::from_str::<TxnMeta>(&doc) {
                Ok(m) => {
                    txns.by_producer.insert(m.producer_id, id.clone());
                    txns.by_id.insert(
                        id,
                        Entry {
                            meta: m,
                            busy: false,
                            stored: true,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(transactional_id = %id, error = %e, "unreadable transaction state; skipped")
                }
            }
        }
        let unfinished: Vec<String> = txns
            .by_id
            .iter()
            .filter(|(_, e)| e.meta.state.is_preparing())
            .map(|(id, _)| id.clone())
            .collect();
        tracing::info!(
            transactional_ids = txns.by_id.len(),
            unfinished = unfinished.len(),
            "transaction coordinator loaded"
        );
        let shared = Arc::new(Shared(Mutex::new(txns)));
        storage.set_transaction_verifier(shared.clone());
        let c = Arc::new(TransactionCoordinator {
            config,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            storage,
            groups,
            meta,
            shared,
        });
        for id in unfinished {
            let c = c.clone();
            tokio::spawn(async move { c.complete(&id).await });
        }
        spawn_timer(Arc::downgrade(&c));
        Ok(c)
    }

    // ---- the requests ----------------------------------------------------------------------------

    /// InitProducerId with a transactional id (Kafka's handleInitProducerId): a new id gets a new
    /// producer id at epoch 0; a known one its epoch bumped, after the previous producer's ongoing
    /// transaction is aborted (fencing it). `expected` is the producer id and epoch the client sends
    /// from v3 on (KIP-360), -1 for none.
    pub async fn init_producer_id(
        &self,
        id: &str,
        timeout_ms: i32,
        expected: (i64, i16),
    ) -> Result<(i64, i16), i16> {
        if id.is_empty() {
            return Err(error::INVALID_REQUEST);
        }
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(error::INVALID_TRANSACTION_TIMEOUT);
        }
        // An ongoing transaction of the previous producer is aborted first; one whose markers are
        // being written is finished first.
        for _ in 0..2 {
            // Until the markers are written the client is told to retry (Kafka answers
            // CONCURRENT_TRANSACTIONS while a transaction is being ended).
            let retry_later = |_| error::CONCURRENT_TRANSACTIONS;
            match self.get(id) {
                Some((m, _)) if m.state == TxnState::Ongoing => {
                    self.fence_and_abort(id, &m).await.map_err(retry_later)?;
                }
                Some((m, _)) if m.state.is_preparing() => {
                    self.complete(id).await.map_err(retry_later)?
                }
                _ => break,
            }
        }
        let current = self.get(id).map(|(m, _)| m);
        let needs_id = current
            .as_ref()
            .is_none_or(|m| state::epoch_exhausted(m.epoch) || m.state == TxnState::Dead);
        let new_id = self.new_producer_id_if(needs_id).await?;
        let now = now_ms();
        self.update(id, |cur| match cur {
            None => {
                let pid = new_id.ok_or(error::CONCURRENT_TRANSACTIONS)?;
                let m = TxnMeta::new(pid, timeout_ms, now);
                Ok(Step::Write(m, (pid, 0)))
            }
            Some(m) if m.state == TxnState::Ongoing || m.state.is_preparing() => {
                Err(error::CONCURRENT_TRANSACTIONS)
            }
            Some(m) => {
                if expected.0 >= 0 {
                    let (pid, epoch) = expected;
                    if pid == m.producer_id && epoch == m.epoch - 1 && m.state == TxnState::Empty {
                        // A retry of the InitProducerId that made this epoch (its answer was lost).
                        return Ok(Step::Done((m.producer_id, m.epoch)));
                    }
                    if pid != m.producer_id || epoch != m.epoch {
                        return Err(error::PRODUCER_FENCED);
                    }
                }
                let fresh = if state::epoch_exhausted(m.epoch) || m.state == TxnState::Dead {
                    Some(new_id.ok_or(error::CONCURRENT_TRANSACTIONS)?)
                } else {
                    None
                };
                let next = m.reinit(timeout_ms, fresh, now);
                let out = (next.producer_id, next.epoch);
                Ok(Step::Write(next, out))
            }
        })
        .await
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn with `group`): the transaction begins if it has not.
    pub async fn add(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<TxnPartition>,
        group: Option<String>,
    ) -> Result<(), i16> {
        let now = now_ms();
        self.update(id, |cur| {
            let m = cur.ok_or(error::INVALID_PRODUCER_ID_MAPPING)?;
            m.check_producer(producer_id, epoch)?;
            let new_group = group.as_ref().is_some_and(|g| !m.groups.contains(g));
            if new_group && m.groups.len() >= MAX_GROUPS_PER_TRANSACTION {
                return Err(error::INVALID_REQUEST);
            }
            Ok(match m.add(&partitions, group.as_deref(), now)? {
                Some(next) => Step::Write(next, ()),
                None => Step::Done(()),
            })
        })
        .await
    }

    /// AddPartitionsToTxn v4+ with verify_only: whether each partition is in the producer's ongoing
    /// transaction (Kafka's verification for the brokers; answered here for any client that asks).
    pub fn verify_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[TxnPartition],
    ) -> Result<Vec<i16>, i16> {
        let txns = self.shared.0.lock();
        let m = &txns
            .by_id
            .get(id)
            .ok_or(error::INVALID_PRODUCER_ID_MAPPING)?
            .meta;
        m.check_producer(producer_id, epoch)?;
        Ok(partitions
            .iter()
            .map(|p| {
                if m.state == TxnState::Ongoing && m.partitions.contains(p) {
                    error::NONE
                } else {
                    error::INVALID_TXN_STATE
                }
            })
            .collect())
    }

    /// TxnOffsetCommit (Kafka's handleTxnCommitOffsets): the group must be in the producer's ongoing
    /// transaction (AddOffsetsToTxn) and, when the request names a member (KIP-447), that member of
    /// its generation; the offsets are kept with the transaction until it ends. Returns one code per
    /// offset, in order.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_offsets(
        &self,
        id: &str,
        group: &str,
        producer_id: i64,
        epoch: i16,
        member: (&str, Option<&str>, i32),
        offsets: Vec<TxnOffset>,
        metadata_max_bytes: usize,
    ) -> Result<Vec<i16>, i16> {
        if group.is_empty() {
            return Err(error::INVALID_GROUP_ID);
        }
        self.groups
            .validate_txn_offset_commit(group, member.0, member.1, member.2)?;
        let mut codes = Vec::with_capacity(offsets.len());
        let mut accepted: Vec<&TxnOffset> = Vec::new();
        for o in &offsets {
            let known = self
                .storage
                .topic(&o.topic)
                .is_some_and(|t| t.partition(o.partition).is_some());
            codes.push(if !known {
                error::UNKNOWN_TOPIC_OR_PARTITION
            } else if o
                .offset
                .metadata
                .as_ref()
                .is_some_and(|m| m.len() > metadata_max_bytes)
            {
                error::OFFSET_METADATA_TOO_LARGE
            } else {
                accepted.push(o);
                error::NONE
            });
        }
        let now = now_ms();
        self.update(id, |cur| {
            let m = cur.ok_or(error::INVALID_PRODUCER_ID_MAPPING)?;
            // The group coordinator's checks: an older epoch is INVALID_PRODUCER_EPOCH there.
            if m.producer_id != producer_id {
                return Err(error::INVALID_PRODUCER_ID_MAPPING);
            }
            if m.epoch != epoch {
                return Err(error::INVALID_PRODUCER_EPOCH);
            }
            if m.state != TxnState::Ongoing || !m.groups.contains(group) {
                return Err(error::INVALID_TXN_STATE);
            }
            if accepted.is_empty() {
                return Ok(Step::Done(()));
            }
            let mut next = m.clone();
            let by_topic = next.offsets.entry(group.to_string()).or_default();
            for o in &accepted {
                // A partition named twice: the later one wins.
                by_topic
                    .entry(o.topic.clone())
                    .or_default()
                    .insert(o.partition, o.offset.clone());
            }
            next.update_ms = now;
            Ok(Step::Write(next, ()))
        })
        .await?;
        Ok(codes)
    }

    /// EndTxn (Kafka's handleEndTransaction): the decision is persisted (PrepareCommit or
    /// PrepareAbort), then the markers are written and the transaction completed before the answer.
    /// Should writing the markers fail, the decision stands and the timer finishes it. With `v2`
    /// (EndTxn v5+, transaction.version 2) the epoch is bumped by the end and the markers carry the
    /// new one; a retry still carrying the epoch before the bump is answered as the end it repeats.
    /// Returns the producer id and epoch to continue with.
    pub async fn end(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        v2: bool,
    ) -> Result<(i64, i16), i16> {
        // A new producer id is needed only when a version 2 end exhausts the epoch.
        let exhausted = v2
            && self
                .get(id)
                .is_some_and(|(m, _)| state::epoch_exhausted(m.epoch));
        let new_id = self.new_producer_id_if(exhausted).await?;
        let now = now_ms();
        let prepared = self
            .update(id, |cur| {
                let m = cur.ok_or(error::INVALID_PRODUCER_ID_MAPPING)?;
                if v2 && m.prev_producer == Some((producer_id, epoch)) {
                    // The retry of a version 2 end that already bumped the epoch.
                    let repeated = matches!(
                        (m.state, commit),
                        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false)
                    );
                    return if repeated {
                        Ok(Step::Done((false, m.continues_as())))
                    } else if m.state.is_preparing() {
                        Err(error::CONCURRENT_TRANSACTIONS)
                    } else {
                        Err(error::INVALID_TXN_STATE)
                    };
                }
                m.check_producer(producer_id, epoch)?;
                let bump = if v2 {
                    Some(if state::epoch_exhausted(m.epoch) {
                        Some(new_id.ok_or(error::CONCURRENT_TRANSACTIONS)?)
                    } else {
                        None
                    })
                } else {
                    None
                };
                Ok(match m.end(commit, bump, now)? {
                    Some(next) => {
                        let ids = next.continues_as();
                        Step::Write(next, (true, ids))
                    }
                    None => Step::Done((false, m.continues_as())),
                })
            })
            .await?;
        let (written, ids) = prepared;
        if written {
            if let Err(code) = self.complete(id).await {
                tracing::warn!(transactional_id = %id, code, "transaction markers not written yet; retried by the timer");
            }
        }
        Ok(ids)
    }

    // ---- what other parts of the broker ask --------------------------------------------------------

    /// The partitions of `group` with offsets committed in a transaction not ended yet: OffsetFetch
    /// with require_stable answers UNSTABLE_OFFSET_COMMIT for them (KIP-447).
    pub fn unstable_offsets(&self, group: &str) -> HashSet<(String, i32)> {
        let txns = self.shared.0.lock();
        let mut out = HashSet::new();
        for e in txns.by_id.values() {
            if let Some(topics) = e.meta.offsets.get(group) {
                for (topic, parts) in topics {
                    out.extend(parts.keys().map(|p| (topic.clone(), *p)));
                }
            }
        }
        out
    }

    /// Every transactional id and its state (ListTransactions, DescribeTransactions).
    pub fn list(&self) -> Vec<TxnListing> {
        let txns = self.shared.0.lock();
        let mut v: Vec<TxnListing> = txns
            .by_id
            .iter()
            .map(|(id, e)| TxnListing {
                transactional_id: id.clone(),
                meta: e.meta.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        v
    }

    /// One transactional id's state.
    pub fn describe(&self, id: &str) -> Option<TxnMeta> {
        self.get(id).map(|(m, _)| m)
    }

    // ---- the steps -------------------------------------------------------------------------------

    fn get(&self, id: &str) -> Option<(TxnMeta, bool)> {
        self.shared
            .0
            .lock()
            .by_id
            .get(id)
            .map(|e| (e.meta.clone(), e.busy))
    }

    /// A producer id never handed out before, when `needed`: allocated before the change is decided,
    /// because the decision runs under the state lock and cannot wait for the store.
    async fn new_producer_id_if(&self, needed: bool) -> Result<Option<i64>, i16> {
        if !needed {
            return Ok(None);
        }
        self.storage
            .allocate_producer_id()
            .await
            .map(Some)
            .map_err(|e| e.kafka_error_code())
    }

    /// The async lock serializing `id`'s changes.
    fn stripe(&self, id: &str) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        &self.stripes[h.finish() as usize % self.stripes.len()]
    }

    /// Runs `decide` on the id's state (after the id's earlier changes are done); a new state it
    /// returns is persisted, then applied.
    async fn update<T>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<&TxnMeta>) -> Result<Step<T>, i16>,
    ) -> Result<T, i16> {
        let _serial = self.stripe(id).lock().await;
        let next = {
            let mut txns = self.shared.0.lock();
            let entry = txns.by_id.get(id);
            let is_new = entry.is_none();
            match decide(entry.map(|e| &e.meta))? {
                Step::Done(out) => return Ok(out),
                Step::Write(next, out) => {
                    if is_new {
                        if txns.by_id.len() >= self.config.max_ids && !evict_one(&mut txns) {
                            tracing::warn!(
                                max = self.config.max_ids,
                                "transactional.id.max ids with transactions open; refusing a new one"
                            );
                            return Err(error::COORDINATOR_NOT_AVAILABLE);
                        }
                        txns.by_id.insert(
                            id.to_string(),
                            Entry {
                                meta: next.clone(),
                                busy: true,
                                stored: false,
                            },
                        );
                    } else if let Some(e) = txns.by_id.get_mut(id) {
                        e.busy = true;
                    }
                    (next, out)
                }
            }
        };
        let (next, out) = next;
        let written = self.persist(id, Some(&next)).await;
        let mut txns = self.shared.0.lock();
        match written {
            Ok(()) => {
                let old_producer = txns.by_id.get(id).map(|e| e.meta.producer_id);
                if let Some(old) = old_producer.filter(|p| *p != next.producer_id) {
                    txns.by_producer.remove(&old);
                }
                txns.by_producer.insert(next.producer_id, id.to_string());
                txns.by_id.insert(
                    id.to_string(),
                    Entry {
                        meta: next,
                        busy: false,
                        stored: true,
                    },
                );
                Ok(out)
            }
            Err(code) => {
                if txns.by_id.get(id).is_some_and(|e| !e.stored) {
                    txns.by_id.remove(id);
                } else if let Some(e) = txns.by_id.get_mut(id) {
                    e.busy = false;
                }
                Err(code)
            }
        }
    }

    async fn persist(&self, id: &str, meta: Option<&TxnMeta>) -> Result<(), i16> {
        let doc = match meta.map(serde_json::to_string).transpose() {
            Ok(doc) => doc,
            Err(_) => return Err(error::UNKNOWN_SERVER_ERROR),
        };
        let store = self.meta.clone();
        let docs = vec![(id.to_string(), doc)];
        match tokio::task::spawn_blocking(move || store.save_transactions(&docs)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "saving a transaction's state failed");
                Err(error::COORDINATOR_NOT_AVAILABLE)
            }
            Err(_) => Err(error::COORDINATOR_NOT_AVAILABLE),
        }
    }

    /// Aborts the ongoing transaction `seen` with the epoch bumped, fencing its producer.
    async fn fence_and_abort(&self, id: &str, seen: &TxnMeta) -> Result<(), i16> {
        let now = now_ms();
        self.update(id, |cur| match cur {
            Some(m) if m == seen && m.state == TxnState::Ongoing => {
                Ok(Step::Write(m.fence_and_abort(now), ()))
            }
            _ => Err(error::CONCURRENT_TRANSACTIONS),
        })
        .await?;
        self.complete(id).await
    }

    /// Finishes a transaction in PrepareCommit or PrepareAbort: its markers in all its partitions
    /// (one append, so one flush), for a commit its offsets made the group's, then Complete*.
    async fn complete(&self, id: &str) -> Result<(), i16> {
        let _serial = self.stripe(id).lock().await;
        let meta = {
            let mut txns = self.shared.0.lock();
            let Some(e) = txns.by_id.get_mut(id) else {
                return Ok(());
            };
            if !e.meta.state.is_preparing() {
                return Ok(());
            }
            e.busy = true;
            e.meta.clone()
        };
        let result = self.finish(id, &meta).await;
        let mut txns = self.shared.0.lock();
        if let Some(e) = txns.by_id.get_mut(id) {
            e.busy = false;
            if let Ok(done) = &result {
                e.meta = done.clone();
            }
        }
        if let Ok(done) = &result {
            // A version 2 end that exhausted the epoch moves the id to a new producer id.
            if done.producer_id != meta.producer_id {
                txns.by_producer.remove(&meta.producer_id);
                txns.by_producer.insert(done.producer_id, id.to_string());
            }
        }
        result.map(|_| ())
    }

    async fn finish(&self, id: &str, meta: &TxnMeta) -> Result<TxnMeta, i16> {
        let commit = meta.state == TxnState::PrepareCommit;
        let now = now_ms();
        let mut batches = Vec::new();
        for p in &meta.partitions {
            // A topic deleted since is left out: its partitions have no log to end.
            let Some(topic) = self.storage.topic_by_id(p.topic_id) else {
                continue;
            };
            if topic.partition(p.partition).is_none() {
                continue;
            }
            let data =
                bytes::Bytes::from(marker_batch(meta.producer_id, meta.epoch, commit, 0, now));
            let Some(header) = streamhouse_protocol::batch::BatchHeader::parse(&data) else {
                return Err(error::UNKNOWN_SERVER_ERROR);
            };
            batches.push(AppendBatch {
                topic,
                partition: p.partition,
                header,
                data,
            });
        }
        if !batches.is_empty() {
            for r in self.storage.append(batches).await {
                match r {
                    Ok(_)
                    | Err(StorageError::UnknownTopicOrPartition)
                    | Err(StorageError::InvalidProducerEpoch) => {}
                    Err(e) => {
                        tracing::warn!(transactional_id = %id, error = %e, "writing transaction markers failed");
                        return Err(e.kafka_error_code());
                    }
                }
            }
        }
        if commit {
            for (group, topics) in &meta.offsets {
                let offsets: BTreeMap<(String, i32), PendingOffset> = topics
                    .iter()
                    .flat_map(|(t, parts)| {
                        parts.iter().map(move |(p, o)| ((t.clone(), *p), o.clone()))
                    })
                    .collect();
                self.groups
                    .commit_transactional_offsets(group, offsets)
                    .await?;
            }
        }
        let done = meta.completed(now_ms());
        self.persist(id, Some(&done)).await?;
        Ok(done)
    }

    /// The timer's pass: timed-out transactions aborted, unfinished completions retried.
    async fn abort_timed_out(&self) {
        let now = now_ms();
        let (timed_out, unfinished): (Vec<_>, Vec<_>) = {
            let txns = self.shared.0.lock();
            let idle = txns.by_id.iter().filter(|(_, e)| !e.busy);
            let timed_out = idle
                .clone()
                .filter(|(_, e)| e.meta.timed_out(now))
                .map(|(id, e)| (id.clone(), e.meta.clone()))
                .collect();
            let unfinished = idle
                .filter(|(_, e)| e.meta.state.is_preparing())
                .map(|(id, _)| id.clone())
                .collect();
            (timed_out, unfinished)
        };
        for (id, seen) in timed_out {
            tracing::info!(transactional_id = %id, producer_id = seen.producer_id, "aborting a transaction past its timeout");
            let _ = self.fence_and_abort(&id, &seen).await;
        }
        for id in unfinished {
            let _ = self.complete(&id).await;
        }
    }

    /// The timer's other pass: ids with no transaction for transactional.id.expiration.ms are
    /// removed (Kafka's removeExpiredTransactionalIds, which also keeps ids with one in progress).
    async fn remove_expired(&self) {
        let now = now_ms();
        let expired: Vec<(String, TxnMeta)> = {
            let txns = self.shared.0.lock();
            txns.by_id
                .iter()
                .filter(|(_, e)| !e.busy && idle(&e.meta))
                .filter(|(_, e)| now - e.meta.update_ms >= self.config.id_expiration_ms)
                .map(|(id, e)| (id.clone(), e.meta.clone()))
                .collect()
        };
        for (id, seen) in expired {
            if self.persist(&id, None).await.is_ok() {
                let mut txns = self.shared.0.lock();
                if txns
                    .by_id
                    .get(&id)
                    .is_some_and(|e| e.meta == seen && !e.busy)
                {
                    txns.by_id.remove(&id);
                    txns.by_producer.remove(&seen.producer_id);
                }
            }
        }
    }
}

/// No transaction in progress.
fn idle(m: &TxnMeta) -> bool {
    matches!(
        m.state,
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort | TxnState::Dead
    )
}

/// Makes room for a new transactional id past transactional.id.max: the longest idle id with no
/// transaction in progress leaves memory (its document stays in the store until it expires; a
/// restart loads it again). False if every id has a transaction in progress.
fn evict_one(txns: &mut Txns) -> bool {
    let victim = txns
        .by_id
        .iter()
        .filter(|(_, e)| !e.busy && e.stored && idle(&e.meta))
        .min_by_key(|(_, e)| e.meta.update_ms)
        .map(|(id, e)| (id.clone(), e.meta.producer_id));
    match victim {
        Some((id, pid)) => {
            txns.by_id.remove(&id);
            txns.by_producer.remove(&pid);
            true
        }
        None => false,
    }
}

fn spawn_timer(c: Weak<TransactionCoordinator>) {
    let (abort_every, remove_every) = match c.upgrade() {
        Some(c) => (
            c.config.abort_check_interval.max(Duration::from_millis(10)),
            c.config
                .remove_expired_interval
                .max(Duration::from_millis(10)),
        ),
        None => return,
    };
    tokio::spawn(async move {
        let mut abort = tokio::time::interval(abort_every);
        let mut remove = tokio::time::interval(remove_every);
        abort.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        remove.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        abort.tick().await;
        remove.tick().await;
        loop {
            tokio::select! {
                _ = abort.tick() => {
                    let Some(c) = c.upgrade() else { break };
                    c.abort_timed_out().await;
                }
                _ = remove.tick() => {
                    let Some(c) = c.upgrade() else { break };
                    c.remove_expired().await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, Broker};
    use streamhouse_protocol::batch::validate_produce_batch;
    use streamhouse_storage::metadata::testing::TestStore;
    use streamhouse_test_support::batch::{BatchBuilder, Record};

    async fn open(store: &TestStore, data: &std::path::Path, abort_every_ms: u64) -> Arc<Broker> {
        let args = config::BrokerConfig::test_args(data.to_path_buf())
            .set("metadata", store.location().as_setting())
            .set(
                "transaction_abort_timed_out_transaction_cleanup_interval_ms",
                abort_every_ms,
            );
        Broker::open(config::BrokerConfig::resolve(args).unwrap())
            .await
            .unwrap()
    }

    async fn produce(b: &Broker, pid: i64, epoch: i16, seq: i32) -> Result<i64, StorageError> {
        let data = BatchBuilder::new()
            .transactional(true)
            .producer(pid, epoch, seq)
            .record(Record::at(1_000).value("v"))
            .build();
        let batch = AppendBatch {
            topic: b.storage.topic("t").unwrap(),
            partition: 0,
            header: validate_produce_batch(&data).unwrap(),
            data,
        };
        b.storage
            .append(vec![batch])
            .await
            .pop()
            .unwrap()
            .map(|o| o.base_offset)
    }

    async fn wait_for(b: &Broker, state: TxnState) -> TxnMeta {
        for _ in 0..200 {
            if let Some(m) = b.txns.describe("tx").filter(|m| m.state == state) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("never reached {state:?}: {:?}", b.txns.describe("tx"));
    }

    /// A kill -9 after EndTxn(commit) made the decision durable but before the markers were written:
    /// at restart the commit is finished (markers, the group's offsets, CompleteCommit) and the last
    /// stable offset moves past the transaction.
    async fn a_commit_decided_before_a_crash_completes_at_restart(store: TestStore) {
        let dir = tempfile::tempdir().unwrap();
        let b = open(&store, dir.path(), 10_000).await;
        b.storage
            .create_topic("t", 1, Default::default())
            .await
            .unwrap();
        let t = b.storage.topic("t").unwrap();
        let (pid, epoch) = b
            .txns
            .init_producer_id("tx", 60_000, (-1, -1))
            .await
            .unwrap();
        let part = TxnPartition {
            topic: "t".into(),
            partition: 0,
            topic_id: t.id,
        };
        b.txns
            .add("tx", pid, epoch, vec![part], Some("g".into()))
            .await
            .unwrap();
        assert_eq!(produce(&b, pid, epoch, 0).await.unwrap(), 0);
        let offsets = vec![TxnOffset {
            topic: "t".into(),
            partition: 0,
            offset: PendingOffset {
                offset: 1,
                leader_epoch: -1,
                metadata: None,
            },
        }];
        let codes = b
            .txns
            .commit_offsets("tx", "g", pid, epoch, ("", None, -1), offsets, 4096)
            .await
            .unwrap();
        assert_eq!(codes, vec![error::NONE]);
        assert_eq!(
            t.partitions[0].offsets(),
            (1, 0, 0),
            "(hwm, lso, log start)"
        );
        assert_eq!(b.txns.unstable_offsets("g").len(), 1);
        // What EndTxn persists first, and nothing after it.
        let mut decided = b.txns.describe("tx").unwrap();
        decided.state = TxnState::PrepareCommit;
        drop(b);
        let doc = serde_json::to_string(&decided).unwrap();
        store.blocking(dir.path(), |m| {
            m.save_transactions(&[("tx".to_string(), Some(doc))])
                .unwrap()
        });

        let b = open(&store, dir.path(), 10_000).await;
        let done = wait_for(&b, TxnState::CompleteCommit).await;
        assert!(done.partitions.is_empty() && done.offsets.is_empty());
        let p = b.storage.topic("t").unwrap().partitions[0].clone();
        assert_eq!(p.offsets(), (2, 2, 0), "the marker at 1; nothing open");
        assert!(p.aborted_between(0, 2).is_empty(), "committed, not aborted");
        let found = b.groups.fetch_offsets("g", None);
        assert_eq!(
            found.topics[0].partitions[0]
                .committed
                .as_ref()
                .unwrap()
                .offset,
            1
        );
        assert!(b.txns.unstable_offsets("g").is_empty());
        // The next InitProducerId bumps the epoch.
        assert_eq!(
            b.txns.init_producer_id("tx", 60_000, (-1, -1)).await,
            Ok((pid, 1))
        );
    }

    /// A transaction left open by a crash is aborted once its timeout passes: the epoch is bumped,
    /// so the old producer is fenced; the abort is recorded and the last stable offset moves on.
    async fn an_open_transaction_is_aborted_after_its_timeout(store: TestStore) {
        let dir = tempfile::tempdir().unwrap();
        let b = open(&store, dir.path(), 20).await;
        b.storage
            .create_topic("t", 1, Default::default())
            .await
            .unwrap();
        let t = b.storage.topic("t").unwrap();
        let (pid, epoch) = b.txns.init_producer_id("tx", 300, (-1, -1)).await.unwrap();
        let part = TxnPartition {
            topic: "t".into(),
            partition: 0,
            topic_id: t.id,
        };
        b.txns
            .add("tx", pid, epoch, vec![part], None)
            .await
            .unwrap();
        assert_eq!(produce(&b, pid, epoch, 0).await.unwrap(), 0);
        drop(b);

        let b = open(&store, dir.path(), 20).await;
        let p = b.storage.topic("t").unwrap().partitions[0].clone();
        assert_eq!(p.offsets(), (1, 0, 0), "still open after the restart");
        let aborted = wait_for(&b, TxnState::CompleteAbort).await;
        assert_eq!(aborted.epoch, epoch + 1, "fenced");
        assert_eq!(p.offsets(), (2, 2, 0));
        assert_eq!(p.aborted_between(0, 2).len(), 1);
        assert!(matches!(
            produce(&b, pid, epoch, 1).await,
            Err(StorageError::InvalidProducerEpoch)
        ));
        assert_eq!(
            b.txns.end("tx", pid, epoch, true, false).await,
            Err(error::PRODUCER_FENCED)
        );
    }

    macro_rules! on_each_store {
        ($($name:ident),*) => {$(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::TestStore::sqlite()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::TestStore::postgres()).await
                }
            }
        )*};
    }
    on_each_store!(
        a_commit_decided_before_a_crash_completes_at_restart,
        an_open_transaction_is_aborted_after_its_timeout
    );
}
