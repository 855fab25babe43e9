//! `streamhouse serve`: run the broker on local disk + SQLite (the embedded default).

use clap::Parser;
use streamhouse_broker::config::{BrokerConfig, Cli, Command};
use streamhouse_broker::server::{self, Server};
use streamhouse_broker::Broker;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let Command::Serve(args) = Cli::parse().command;
    let mut config = BrokerConfig::resolve(args)?;
    // The metrics endpoint is bound first, so it answers as soon as the Kafka port accepts.
    let metrics = match config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let listener = server::listen(&mut config).await?;
    let broker = Broker::open(config).await?;
    if let Some(metrics) = metrics {
        tracing::info!(addr = %metrics.local_addr()?, "metrics endpoint");
        tokio::spawn(streamhouse_broker::metrics::serve(metrics, broker.clone()));
    }
    let server = Server::new(listener, broker.clone());
    tracing::info!(
        listen = %server.local_addr()?,
        advertised = %format!("{}:{}", broker.config.advertised_host, broker.config.advertised_port),
        data_dir = %broker.config.data_dir.display(),
        cluster_id = %broker.cluster_id,
        "StreamHouse broker started"
    );
    server.run(shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
