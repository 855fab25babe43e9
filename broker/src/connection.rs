//! One client connection: owns the framing, decodes each request, and writes responses in request
//! order. Requests are pipelined: the next one is read while earlier ones are still waiting (a produce
//! for its flush, a fetch for data), and their in-order part (submitting to the writer) happens in read
//! order so a producer's batches keep their sequence.

use futures_util::stream::{FuturesOrdered, StreamExt};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use streamhouse_protocol::frame::FrameReader;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::handlers::{self, Outcome, Pending};
use crate::Broker;

/// Requests of one connection being worked on at once; more wait in the socket. librdkafka pipelines
/// up to 1,000,000 (and sends one ProduceRequest per partition), so a low cap here would split what
/// could be one flush into several.
const MAX_IN_FLIGHT: usize = 1024;
/// ...and the request bytes they may hold, so pipelining cannot pin unbounded memory.
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

pub struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
}

impl Connection {
    pub fn new(
        socket: TcpStream,
        peer: SocketAddr,
        broker: Arc<Broker>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            socket,
            peer,
            broker,
            stop,
        }
    }

    pub async fn run(mut self) {
        let peer = self.peer;
        let (read, mut write) = self.socket.into_split();
        let mut frames = FrameReader::new(read, self.broker.config.socket_request_max_bytes);
        let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut sizes: VecDeque<usize> = VecDeque::new();
        let mut held_bytes = 0usize;
        let mut reading = true;
        loop {
            tokio::select! {
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                    held_bytes -= sizes.pop_front().unwrap_or(0);
                    match outcome {
                        Outcome::Respond(bytes) => {
                            if let Err(e) = write.write_all(&bytes).await {
                                tracing::debug!(%peer, error = %e, "write failed");
                                return;
                            }
                        }
                        Outcome::Silent => {}
                        Outcome::Close => return,
                    }
                }
                frame = frames.read_frame(), if reading && in_flight.len() < MAX_IN_FLIGHT && held_bytes < MAX_IN_FLIGHT_BYTES => {
                    match frame {
                        Ok(Some(frame)) => {
                            let size = frame.len();
                            match handlers::dispatch(&self.broker, frame, peer).await {
                                Ok(pending) => {
                                    in_flight.push_back(pending);
                                    sizes.push_back(size);
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
