//! The StreamHouse broker: a TCP server speaking the Kafka protocol on top of `streamhouse-storage`.

pub mod config;
pub mod connection;
pub mod error;
pub mod group;
pub mod handlers;
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
}

impl Broker {
    /// Opens storage under the configured data folder; the cluster id is created once and kept there.
    pub async fn open(config: config::BrokerConfig) -> anyhow::Result<Arc<Broker>> {
        let storage = Storage::open(config.storage()).await?;
        let id_path = config.data_dir.join("cluster_id");
        let cluster_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                // Kafka cluster ids are 22-character base64 UUIDs; any stable string works for clients.
                let id = uuid::Uuid::new_v4().simple().to_string()[..22].to_string();
                std::fs::write(&id_path, &id)?;
                id
            }
        };
        let groups = group::GroupCoordinator::open(storage.clone(), config.groups())?;
        Ok(Arc::new(Broker {
            config,
            storage,
            groups,
            cluster_id,
        }))
    }
}
