//! The one in-process broker of the tests (feature `broker`): its own data directory, the test
//! configuration plus what a test sets, served over real sockets on 127.0.0.1 until dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use streamhouse_broker::config::{BrokerConfig, ServeArgs};
use streamhouse_broker::server::Server;
use streamhouse_broker::Broker;

/// A served broker; dropping it stops the server and removes its data.
pub struct TestBroker {
    pub addr: SocketAddr,
    /// Kept so a test can reach storage directly (say, plant batches past produce validation).
    pub broker: Arc<Broker>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A broker with the test defaults.
pub async fn start() -> TestBroker {
    start_with_settings(|a| a).await
}

/// A broker with settings added to the test defaults (field name -> value).
pub async fn start_with_settings(settings: impl FnOnce(ServeArgs) -> ServeArgs) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), settings);
    serve(dir, config).await
}

/// A broker whose resolved configuration `tweak` may change.
pub async fn start_with(tweak: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), |a| a);
    tweak(&mut config);
    serve(dir, config).await
}

/// The test configuration for data in `dir`, with `settings` added.
pub fn config(dir: &Path, settings: impl FnOnce(ServeArgs) -> ServeArgs) -> BrokerConfig {
    BrokerConfig::resolve(settings(BrokerConfig::test_args(dir.to_path_buf()))).unwrap()
}

/// A broker opened on `dir` without a server, for tests that call its handlers directly.
pub async fn open(dir: &Path, settings: impl FnOnce(ServeArgs) -> ServeArgs) -> Arc<Broker> {
    Broker::open(config(dir, settings)).await.unwrap()
}

async fn serve(dir: tempfile::TempDir, mut config: BrokerConfig) -> TestBroker {
    let listener = streamhouse_broker::server::listen(&mut config)
        .await
        .unwrap();
    let broker = Broker::open(config).await.unwrap();
    let server = Server::new(listener, broker.clone());
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    TestBroker {
        addr,
        broker,
        _dir: dir,
        _stop: tx,
    }
}
