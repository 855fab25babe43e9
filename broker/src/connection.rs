//! One client connection: owns the framing, decodes each request, and writes responses in request
//! order. Requests are pipelined: the next one is read while earlier ones are still waiting (a produce
//! for its flush, a fetch for data), and their in-order part (submitting to the writer, changing group
//! state) happens in read order so effects keep the order the client sent them in.
//!
//! What one connection may hold is bounded (see `limits` for the broker-wide budgets):
//! - requests in flight: [`MAX_IN_FLIGHT`], their bytes [`MAX_IN_FLIGHT_BYTES`], each also reserved from
//!   queued.max.request.bytes once its body is read and until it is done; a request being received
//!   holds only the bytes that arrived (the reader grows as they come);
//! - finished responses waiting behind an earlier one: `Limits::connection_responses` bytes, then the
//!   connection stops reading; a response is encoded only when its turn comes, after its bytes are
//!   reserved from queued.max.response.bytes;
//! - time: connections.max.idle.ms without a request; request.read.timeout.ms for a request whose size
//!   has arrived to arrive whole, and for each MiB of a response to be taken by a client that reads.

use futures_util::stream::{FuturesOrdered, StreamExt};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use streamhouse_protocol::frame::{FrameError, FrameReader};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::handlers::{self, Outcome, QueuedReply};
use crate::limits::{Held, IpSlot, Limits, SHED_AFTER};
use crate::Broker;

/// Requests of one connection being worked on at once; more wait in the socket. librdkafka pipelines
/// up to 1,000,000 (and sends one ProduceRequest per partition), so a low cap here would split what
/// could be one flush into several.
pub const MAX_IN_FLIGHT: usize = 1024;
/// ...and the request bytes they may hold, so pipelining cannot pin unbounded memory.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

pub struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
    _slot: Option<IpSlot>,
}

/// Where the reading of the next request stands; kept across `select!` rounds so a round that ends
/// elsewhere loses nothing (the frame reader keeps the bytes).
enum ReadState {
    /// Waiting for a size prefix.
    Size,
    /// The size is known; the body must arrive by the deadline.
    Body { size: usize, deadline: Instant },
    /// The body is here; waiting for its bytes in queued.max.request.bytes.
    Reserving { body: bytes::Bytes },
}

/// A request in flight, in order: its bytes and what it holds.
struct InFlight {
    size: usize,
    fetch: bool,
    _held: Held,
}

/// Whether a request frame is a Fetch (api key 1), from its first two bytes.
fn is_fetch(frame: &[u8]) -> bool {
    frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == 1
}

impl Connection {
    pub fn new(
        socket: TcpStream,
        peer: SocketAddr,
        broker: Arc<Broker>,
        stop: watch::Receiver<bool>,
        slot: Option<IpSlot>,
    ) -> Self {
        Self {
            socket,
            peer,
            broker,
            stop,
            _slot: slot,
        }
    }

    pub async fn run(mut self) {
        let peer = self.peer;
        let broker = self.broker.clone();
        let limits = &broker.limits;
        let idle = millis(broker.config.connections_max_idle_ms);
        // Requests must arrive, and responses leave, within this (see write_making_progress).
        let read_timeout = millis(broker.config.request_read_timeout_ms);
        let (read, mut write) = self.socket.into_split();
        let mut frames = FrameReader::new(read, broker.config.socket_request_max_bytes);
        let mut state = ReadState::Size;
        let mut in_flight: FuturesOrdered<QueuedReply> = FuturesOrdered::new();
        let mut held: VecDeque<InFlight> = VecDeque::new();
        let mut held_bytes = 0usize;
        // Bytes of responses finished (unencoded) but not written yet.
        let finished = Arc::new(AtomicUsize::new(0));
        let mut reading = true;
        let mut last_active = Instant::now();
        let mut fetch_in_flight = false;
        // A fetch read while another was in flight, with its reserved bytes.
        let mut deferred: Option<(bytes::Bytes, Held)> = None;
        loop {
            if !fetch_in_flight {
                if let Some((frame, reserved)) = deferred.take() {
                    let size = frame.len();
                    match handlers::dispatch(&broker, frame, peer).await {
                        Ok(queued) => {
                            fetch_in_flight = true;
                            in_flight.push_back(counted(queued, &finished));
                            held.push_back(InFlight {
                                size,
                                fetch: true,
                                _held: reserved,
                            });
                            held_bytes += size;
                        }
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "closing connection: bad request");
                            reading = false;
                        }
                    }
                }
            }
            let can_read = reading
                && deferred.is_none()
                && in_flight.len() < MAX_IN_FLIGHT
                && (held_bytes < MAX_IN_FLIGHT_BYTES || in_flight.is_empty())
                && finished.load(Ordering::Acquire) < limits.connection_responses;
            // Idle: nothing in flight and no request begun.
            let idle_at = (in_flight.is_empty() && !frames.partial()).then_some(last_active + idle);
            let frame_due = match &state {
                ReadState::Body { deadline, .. } => Some(*deadline),
                ReadState::Size | ReadState::Reserving { .. } => None,
            };
            tokio::select! {
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(done) = held.pop_front() {
                        held_bytes -= done.size;
                        fetch_in_flight &= !done.fetch;
                    }
                    match outcome {
                        Outcome::Respond(mut response) => {
                            let size = response.size;
                            finished.fetch_sub(size, Ordering::AcqRel);
                            // Encoded only now; a fetch's bytes stay held until written.
                            let held = std::mem::replace(&mut response.held, Held::none());
                            let holding = held.bytes() > 0;
                            let Some(frame) = response.encode() else { break };
                            if let Err(e) = write_making_progress(&mut write, &frame, read_timeout, limits, holding).await {
                                tracing::info!(%peer, error = %e, "closing connection: response not written");
                                return;
                            }
                        }
                        Outcome::Silent => {}
                        Outcome::Close => break,
                    }
                    last_active = Instant::now();
                }
                read = next_request(&mut frames, &mut state, limits, read_timeout), if can_read => {
                    match read {
                        Ok(Some((frame, reserved))) => {
                            last_active = Instant::now();
                            if is_fetch(&frame) && fetch_in_flight {
                                // One fetch at a time per connection (as clients send them): the
                                // next waits, and reading stops, until the one in flight is written.
                                deferred = Some((frame, reserved));
                                continue;
                            }
                            let size = frame.len();
                            fetch_in_flight |= is_fetch(&frame);
                            let fetch = is_fetch(&frame);
                            match handlers::dispatch(&broker, frame, peer).await {
                                Ok(queued) => {
                                    in_flight.push_back(counted(queued, &finished));
                                    held.push_back(InFlight { size, fetch, _held: reserved });
                                    held_bytes += size;
                                }
                                Err(e) => {
                                    // Kafka closes the connection on a request it cannot parse.
                                    tracing::warn!(%peer, error = %e, "closing connection: bad request");
                                    reading = false;
                                }
                            }
                        }
                        Ok(None) => reading = false,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                            reading = false;
                        }
                    }
                }
                _ = sleep_until(idle_at), if idle_at.is_some() && reading => {
                    tracing::debug!(%peer, "closing idle connection (connections.max.idle.ms)");
                    break;
                }
                _ = sleep_until(frame_due), if frame_due.is_some() && reading => {
                    tracing::info!(%peer, "closing connection: request not received in time (request.read.timeout.ms)");
                    break;
                }
                _ = self.stop.changed(), if reading => reading = false,
                else => break,
            }
            if !reading && in_flight.is_empty() && deferred.is_none() {
                break;
            }
        }
        let _ = write.shutdown().await;
    }
}

/// A response is written in pieces of this size, each of which must leave within the timeout.
const WRITE_CHUNK: usize = 1 << 20;

/// Writes `frame`, failing when the client stops reading: no piece accepted by the socket within
/// `stall` (request.read.timeout.ms). A slow reader that keeps reading is fine; one that stopped would
/// otherwise hold its response's bytes until connections.max.idle.ms. A write `holding` fetch bytes
/// that has stalled for [`SHED_AFTER`] is registered, and fails at once if fetches that need those
/// bytes are waiting (the connection is shed).
async fn write_making_progress(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    frame: &[u8],
    stall: Duration,
    limits: &Arc<Limits>,
    holding: bool,
) -> std::io::Result<()> {
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client stopped reading (request.read.timeout.ms)",
        )
    };
    for piece in frame.chunks(WRITE_CHUNK) {
        let mut w = std::pin::pin!(write.write_all(piece));
        if let Ok(r) = tokio::time::timeout(SHED_AFTER.min(stall), &mut w).await {
            r?;
            continue;
        }
        let stalled = holding.then(|| limits.stalled());
        let shed = async {
            match &stalled {
                Some(s) => s.shed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut w => r?,
            _ = tokio::time::sleep(stall.saturating_sub(SHED_AFTER)) => return Err(timed_out()),
            _ = shed => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "shed: fetches wait for the response bytes this stalled client holds",
                ))
            }
        }
    }
    Ok(())
}

/// `queued`, adding its response's size to `finished` when it is done (it may then wait behind
/// earlier ones to be written).
fn counted(queued: QueuedReply, finished: &Arc<AtomicUsize>) -> QueuedReply {
    let finished = finished.clone();
    Box::pin(async move {
        let out = queued.await;
        if let Outcome::Respond(r) = &out {
            finished.fetch_add(r.size, Ordering::AcqRel);
        }
        out
    })
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(ms.max(1) as u64)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads the next request: its size, its body, then its bytes reserved from queued.max.request.bytes.
/// Reserved once the body is here, not when its size is announced: a client announcing large frames and
/// sending nothing more then holds only what it sent (and for request.read.timeout.ms at most), never
/// the budget. While the budget is spent the connection waits with one request in hand: back-pressure,
/// the client's further bytes stay in its socket. Cancel-safe: progress stays in `state` and the reader.
async fn next_request<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
    state: &mut ReadState,
    limits: &Limits,
    read_timeout: Duration,
) -> Result<Option<(bytes::Bytes, Held)>, FrameError> {
    loop {
        match state {
            ReadState::Size => {
                let Some(size) = frames.read_size().await? else {
                    return Ok(None);
                };
                *state = ReadState::Body {
                    size,
                    deadline: Instant::now() + read_timeout,
                };
            }
            ReadState::Body { size, .. } => {
                let body = frames.read_body(*size).await?;
                *state = ReadState::Reserving { body };
            }
            ReadState::Reserving { body } => {
                let held = limits.requests.reserve(body.len()).await;
                let ReadState::Reserving { body } = std::mem::replace(state, ReadState::Size)
                else {
                    unreachable!("matched above")
                };
                return Ok(Some((body, held)));
            }
        }
    }
}
