//! The listener: accepts connections up to a limit and hands each to a [`Connection`] task;
//! on shutdown it stops accepting and lets open connections finish their current request.

use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::BrokerConfig;
use crate::connection::Connection;
use crate::Broker;

pub struct Server {
    listener: TcpListener,
    broker: Arc<Broker>,
}

/// Binds the configured address. When the port was 0 (any free port) and no advertised listener was
/// given, the advertised port becomes the one the OS chose, so Metadata points clients at it.
pub async fn listen(config: &mut BrokerConfig) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(config.listen).await?;
    if config.advertised_port == 0 {
        config.advertised_port = listener.local_addr()?.port() as i32;
    }
    Ok(listener)
}

impl Server {
    pub fn new(listener: TcpListener, broker: Arc<Broker>) -> Server {
        Server { listener, broker }
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        // A permit per connection: past the limit, new clients wait in the accept backlog.
        let limit = Arc::new(Semaphore::new(self.broker.config.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (socket, peer) = tokio::select! {
                _ = &mut shutdown => break,
                s = accept_with_backoff(|| self.listener.accept()) => s,
            };
            // Kafka closes a connection past max.connections.per.ip as soon as it is accepted.
            let Some(slot) = self.broker.limits.admit(peer.ip()) else {
                tracing::info!(%peer, "closing connection: max.connections.per.ip reached");
                drop(socket);
                continue;
            };
            let _ = socket.set_nodelay(true);
            let conn = Connection::new(
                socket,
                peer,
                self.broker.clone(),
                stop_rx.clone(),
                Some(slot),
            );
            tokio::spawn(async move {
                conn.run().await;
                drop(permit);
            });
        }
        tracing::info!("shutting down: no new connections");
        let _ = stop_tx.send(true);
        // Wait (bounded) for open connections to finish what they were doing.
        let all = self.broker.config.max_connections as u32;
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), limit.acquire_many(all)).await;
    }
}

/// Accepts the next connection; a failed accept (EMFILE when out of file descriptors, ENOBUFS, ...) is
/// retried after a pause instead of at once, which would spin a core at 100% while the condition lasts.
pub async fn accept_with_backoff<T, F, Fut>(mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    // Long enough to be idle, short enough that a freed descriptor is used soon.
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
    loop {
        match accept().await {
            Ok(t) => return t,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying shortly");
                tokio::time::sleep(PAUSE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_accept_is_retried_after_a_pause_not_in_a_spin() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let attempt = || {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Err::<(), _>(std::io::Error::from_raw_os_error(24)) } // EMFILE
        };
        let r = tokio::time::timeout(
            std::time::Duration::from_millis(350),
            accept_with_backoff(attempt),
        )
        .await;
        assert!(r.is_err(), "never accepts");
        let n = calls.load(std::sync::atomic::Ordering::Relaxed);
        assert!((2..=5).contains(&n), "{n} attempts in 350 ms");
    }
}
