//! Bounds on what clients, together, can make the broker hold, shared by every connection.
//!
//! - Request bytes (`queued.max.request.bytes`): a request's bytes are reserved once it has arrived
//!   whole, and stay reserved until it is finished, for a produce until its flush is committed (acks=0
//!   included). While the budget is spent, connections stop reading: back-pressure, nothing is dropped.
//!   (Kafka's memory pool reserves when the size prefix arrives, which lets a client pin the pool by
//!   announcing large frames; here a frame being received holds only what arrived.)
//! - Fetch response bytes (`queued.max.response.bytes`): before a fetch reads, an upper bound of what
//!   it can return (from the block index) is reserved; after reading it shrinks to what was read, and
//!   is released once the response is written. A connection has one fetch in flight at a time (as
//!   clients send them), so a reservation never waits on one of the same connection's. Other responses
//!   are built from metadata, are small, and are encoded only when their turn to be written comes;
//!   finished ones waiting behind an earlier one (a long-poll, say) are kept unencoded, and a
//!   connection stops reading new requests while those add up to more than its share
//!   ([`Limits::connection_responses`]).
//! - Connections per client address (`max.connections.per.ip`, `max.connections.per.ip.overrides`).
//!
//! Locking: the per-address map is a short `parking_lot` lock never held across an await; the budgets
//! are tokio semaphores (permits are bytes), waited on by the tasks that need them.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::BrokerConfig;

/// A byte budget. `None` inside: unlimited (a negative setting, as Kafka's -1).
#[derive(Clone)]
pub struct Budget {
    sem: Option<Arc<Semaphore>>,
    total: usize,
}

/// Bytes held from a [`Budget`]; released when dropped.
pub struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    pub fn none() -> Held {
        Held(None)
    }
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.num_permits())
    }
    /// Gives back what is held beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if let Some(p) = &mut self.0 {
            if p.num_permits() > bytes {
                drop(p.split(p.num_permits() - bytes));
            }
        }
    }
}

impl Budget {
    /// `limit` bytes; negative: unlimited. Capped at what a semaphore can count.
    pub fn new(limit: i64) -> Budget {
        if limit < 0 {
            return Budget {
                sem: None,
                total: usize::MAX,
            };
        }
        let total = (limit as usize).clamp(1, Semaphore::MAX_PERMITS);
        Budget {
            sem: Some(Arc::new(Semaphore::new(total))),
            total,
        }
    }

    /// Waits until `bytes` are free and holds them. A request larger than the whole budget takes all of
    /// it (so it can still proceed, alone), as Kafka's memory pool lets one oversized request through.
    pub async fn reserve(&self, bytes: usize) -> Held {
        let Some(sem) = &self.sem else {
            return Held(None);
        };
        let n = bytes.clamp(0, self.total).min(u32::MAX as usize) as u32;
        match sem.clone().acquire_many_owned(n).await {
            Ok(p) => Held(Some(p)),
            Err(_) => Held(None), // never closed
        }
    }

    /// Bytes free now (tests, metrics).
    pub fn available(&self) -> usize {
        self.sem
            .as_ref()
            .map_or(usize::MAX, |s| s.available_permits())
    }
}

/// The broker-wide limits.
pub struct Limits {
    pub requests: Budget,
    pub responses: Budget,
    /// Bytes of finished responses one connection may have waiting to be written before it stops
    /// reading requests: the largest response it can be sent.
    pub connection_responses: usize,
    per_ip_default: usize,
    per_ip_overrides: HashMap<IpAddr, usize>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Connections whose response write has stalled while holding fetch bytes: (since, id) -> the
    /// signal that closes them. Under memory pressure the longest stalled go first.
    stalled: Mutex<std::collections::BTreeMap<(std::time::Instant, u64), Arc<tokio::sync::Notify>>>,
    next_stall_id: std::sync::atomic::AtomicU64,
}

/// How long a fetch waits for response bytes before a stalled reader is shed, and how long a write
/// must have made no progress to count as stalled: clients read their sockets continuously (a network
/// thread), so a second without progress while others wait marks a client that stopped reading.
pub const SHED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl Limits {
    pub fn new(c: &BrokerConfig) -> anyhow::Result<Limits> {
        let mut per_ip_overrides = HashMap::new();
        for entry in c
            .max_connections_per_ip_overrides
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (host, n) = entry.rsplit_once(':').ok_or_else(|| {
                anyhow::anyhow!("max.connections.per.ip.overrides: {entry:?} is not host:count")
            })?;
            let ip: IpAddr = host.trim_matches(['[', ']']).parse().map_err(|_| {
                anyhow::anyhow!("max.connections.per.ip.overrides: {host:?} is not an IP address")
            })?;
            per_ip_overrides.insert(ip, n.trim().parse()?);
        }
        anyhow::ensure!(
            c.max_connections_per_ip >= 0,
            "max.connections.per.ip must not be negative"
        );
        // One connection's share must hold the largest response it can be sent: a full fetch plus the
        // batch KIP-74 lets past the limit, plus framing.
        let largest = c.fetch_max_bytes.max(0) as i64 + c.message_max_bytes.max(0) as i64 + 65_536;
        Ok(Limits {
            requests: Budget::new(c.queued_max_request_bytes),
            responses: Budget::new(c.queued_max_response_bytes),
            connection_responses: largest as usize,
            per_ip_default: c.max_connections_per_ip as usize,
            per_ip_overrides,
            open: Arc::new(Mutex::new(HashMap::new())),
            stalled: Mutex::new(Default::default()),
            next_stall_id: Default::default(),
        })
    }

    /// Fetch response bytes: waits for `bytes` of queued.max.response.bytes; while it waits longer than
    /// [`SHED_AFTER`], the connection whose response write has stalled longest (holding such bytes) is
    /// closed, so clients that stop reading cannot keep the budget from those that read.
    pub async fn reserve_response(&self, bytes: usize) -> Held {
        loop {
            match tokio::time::timeout(SHED_AFTER, self.responses.reserve(bytes)).await {
                Ok(held) => return held,
                Err(_) => {
                    let oldest = {
                        let mut stalled = self.stalled.lock();
                        let due = stalled
                            .keys()
                            .next()
                            .copied()
                            .filter(|(since, _)| since.elapsed() >= SHED_AFTER);
                        due.and_then(|k| stalled.remove(&k))
                    };
                    if let Some(close) = oldest {
                        tracing::info!(
                            "fetch bytes exhausted: closing the connection stalled longest"
                        );
                        close.notify_one();
                    }
                }
            }
        }
    }

    /// Registers a stalled response write; the returned guard unregisters it, and its `closed()`
    /// resolves if the connection is shed.
    pub fn stalled(self: &Arc<Self>) -> Stall {
        let id = self
            .next_stall_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = (std::time::Instant::now(), id);
        let signal = Arc::new(tokio::sync::Notify::new());
        self.stalled.lock().insert(key, signal.clone());
        Stall {
            limits: self.clone(),
            key,
            signal,
        }
    }

    /// Admits a connection from `ip`, or `None` past max.connections.per.ip (Kafka closes it at once).
    pub fn admit(&self, ip: IpAddr) -> Option<IpSlot> {
        let limit = self
            .per_ip_overrides
            .get(&ip)
            .copied()
            .unwrap_or(self.per_ip_default);
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            open: self.open.clone(),
        })
    }
}

/// A response write registered as stalled (see [`Limits::stalled`]).
pub struct Stall {
    limits: Arc<Limits>,
    key: (std::time::Instant, u64),
    signal: Arc<tokio::sync::Notify>,
}

impl Stall {
    /// Resolves when the connection is to be closed to free its bytes.
    pub async fn shed(&self) {
        self.signal.notified().await
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.limits.stalled.lock().remove(&self.key);
    }
}

/// One admitted connection's place in the per-address count.
pub struct IpSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_spent_budget_waits_and_an_oversized_reservation_takes_it_all() {
        let b = Budget::new(100);
        let first = b.reserve(60).await;
        assert_eq!(b.available(), 40);
        let waiting = tokio::time::timeout(Duration::from_millis(30), b.reserve(50)).await;
        assert!(waiting.is_err(), "must wait for bytes");
        drop(first);
        let all = b.reserve(1_000).await;
        assert_eq!(all.bytes(), 100);
        assert_eq!(b.available(), 0);
        drop(all);
        assert_eq!(
            Budget::new(-1).reserve(1 << 40).await.bytes(),
            0,
            "unlimited"
        );
    }

    #[test]
    fn per_address_limits_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let args = BrokerConfig::test_args(dir.path().into())
            .set("max_connections_per_ip", 2)
            .set(
                "max_connections_per_ip_overrides",
                "127.0.0.2:0, 127.0.0.3:3",
            );
        let limits = Limits::new(&BrokerConfig::resolve(args).unwrap()).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = limits.admit(ip("127.0.0.1")).unwrap();
        let _b = limits.admit(ip("127.0.0.1")).unwrap();
        assert!(limits.admit(ip("127.0.0.1")).is_none());
        drop(a);
        assert!(limits.admit(ip("127.0.0.1")).is_some());
        assert!(limits.admit(ip("127.0.0.2")).is_none());
        let three: Vec<_> = (0..3)
            .filter_map(|_| limits.admit(ip("127.0.0.3")))
            .collect();
        assert_eq!(three.len(), 3);
        assert!(limits.admit(ip("127.0.0.3")).is_none());
    }
}
