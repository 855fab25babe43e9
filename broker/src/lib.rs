//! The StreamHouse broker: a TCP server speaking the Kafka protocol on top of `streamhouse-storage`.

pub mod config;
pub mod connection;
pub mod error;
pub mod group;
pub mod handlers;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod topic_config;

use std::sync::Arc;
use streamhouse_storage::Storage;

/// What every handler needs: configuration, storage and the cluster identity.
pub struct Broker {
    pub config: config::BrokerConfig,
    pub storage: Arc<Storage>,
    pub groups: Arc<group::GroupCoordinator>,
    pub cluster_id: String,
    /// Broker-wide bounds on what clients can make it hold.
    pub limits: Arc<limits::Limits>,
    /// Decompression of record batches (produce validation, ListOffsets by timestamp): bounded by
    /// message.max.decompressed.bytes, on blocking threads, one per CPU at most (it is CPU-bound, so
    /// more at once gains nothing and multiplies the memory bound).
    pub inflater: streamhouse_protocol::compression::Inflater,
}

impl Broker {
    /// Opens storage under the configured data folder (which also keeps the cluster id).
    pub async fn open(config: config::BrokerConfig) -> anyhow::Result<Arc<Broker>> {
        let limits = Arc::new(limits::Limits::new(&config)?);
        let storage = Storage::open(config.storage()).await?;
        let cluster_id = storage.cluster_id().to_string();
        let groups = group::GroupCoordinator::open(storage.clone(), config.groups()).await?;
        let inflater = streamhouse_protocol::compression::Inflater::new(
            config.message_max_decompressed_bytes,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        );
        Ok(Arc::new(Broker {
            inflater,
            config,
            storage,
            groups,
            cluster_id,
            limits,
        }))
    }
}
