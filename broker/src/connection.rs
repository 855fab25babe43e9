//! One client connection: owns the framing, decodes each request, and writes responses in request
//! order. Requests are pipelined: the next one is read while earlier ones are still waiting (a produce
//! for its flush, a fetch for data), and their in-order part (submitting to the writer, changing group
//! state) happens in read order so effects keep the order the client sent them in.
//!
//! What one connection may hold is bounded (see `limits` for the broker-wide budgets):
//! - requests in flight: [`MAX_IN_FLIGHT`], their bytes [`MAX_IN_FLIGHT_BYTES`], each also reserved from
//!   queued.max.request.bytes before its body is read and until it is done;
//! - finished responses waiting behind an earlier one: `Limits::connection_responses` bytes, then the
//!   connection stops reading; a response is encoded only when its turn comes, after its bytes are
//!   reserved from queued.max.response.bytes;
//! - time: connections.max.idle.ms without a request (or with a response the client does not read),
//!   request.read.timeout.ms for a request whose size has arrived to arrive whole.

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

use crate::handlers::{self, Outcome, Pending};
use crate::limits::{Held, IpSlot, Limits};
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
    /// The size is known and its bytes reserved; the body must arrive by the deadline.
    Body {
        size: usize,
        held: Held,
        deadline: Instant,
    },
}

/// A request in flight, in order: its bytes and what it holds.
struct InFlight {
    size: usize,
    _held: Held,
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
        let read_timeout = millis(broker.config.request_read_timeout_ms);
        let (read, mut write) = self.socket.into_split();
        let mut frames = FrameReader::new(read, broker.config.socket_request_max_bytes);
        let mut state = ReadState::Size;
        let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut held: VecDeque<InFlight> = VecDeque::new();
        let mut held_bytes = 0usize;
        // Bytes of responses finished (unencoded) but not written yet.
        let finished = Arc::new(AtomicUsize::new(0));
        let mut reading = true;
        let mut last_active = Instant::now();
        loop {
            let can_read = reading
                && in_flight.len() < MAX_IN_FLIGHT
                && (held_bytes < MAX_IN_FLIGHT_BYTES || in_flight.is_empty())
                && finished.load(Ordering::Acquire) < limits.connection_responses;
            // Idle: nothing in flight and no request begun.
            let idle_at = (in_flight.is_empty() && !frames.partial()).then_some(last_active + idle);
            let frame_due = match &state {
                ReadState::Body { deadline, .. } => Some(*deadline),
                ReadState::Size => None,
            };
            tokio::select! {
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(done) = held.pop_front() {
                        held_bytes -= done.size;
                    }
                    match outcome {
                        Outcome::Respond(response) => {
                            let size = response.size;
                            finished.fetch_sub(size, Ordering::AcqRel);
                            // Encoded only now, with its bytes reserved until written.
                            let _bytes = limits.responses.reserve(size).await;
                            let Some(frame) = response.encode() else { break };
                            match tokio::time::timeout(idle, write.write_all(&frame)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "write failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::info!(%peer, "closing connection: the client does not read its responses");
                                    return;
                                }
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
                            let size = frame.len();
                            match handlers::dispatch(&broker, frame, peer).await {
                                Ok(pending) => {
                                    let finished = finished.clone();
                                    in_flight.push_back(Box::pin(async move {
                                        let out = pending.await;
                                        if let Outcome::Respond(r) = &out {
                                            finished.fetch_add(r.size, Ordering::AcqRel);
                                        }
                                        out
                                    }));
                                    held.push_back(InFlight { size, _held: reserved });
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
            if !reading && in_flight.is_empty() {
                break;
            }
        }
        let _ = write.shutdown().await;
    }
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

/// Reads the next request: its size, then (once its bytes are reserved from queued.max.request.bytes)
/// its body. Cancel-safe: progress stays in `state` and the reader.
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
                // Waiting here is the back-pressure: the client's bytes stay in its socket.
                let held = limits.requests.reserve(size).await;
                *state = ReadState::Body {
                    size,
                    held,
                    deadline: Instant::now() + read_timeout,
                };
            }
            ReadState::Body { size, .. } => {
                let body = frames.read_body(*size).await?;
                let ReadState::Body { held, .. } = std::mem::replace(state, ReadState::Size) else {
                    unreachable!("matched above")
                };
                return Ok(Some((body, held)));
            }
        }
    }
}
