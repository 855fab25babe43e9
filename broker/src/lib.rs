//! The StreamHouse broker: a TCP server speaking the Kafka protocol on top of `streamhouse-storage`.

pub mod config;
pub mod connection;
pub mod error;
pub mod group;
pub mod handlers;
pub mod internal_topics;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod topic_config;
pub mod txn;

use std::sync::Arc;
use streamhouse_storage::Storage;

/// What every handler needs: configuration, storage and the cluster identity.
pub struct Broker {
    pub config: config::BrokerConfig,
    pub storage: Arc<Storage>,
    pub groups: Arc<group::GroupCoordinator>,
    pub txns: Arc<txn::TransactionCoordinator>,
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
        let txns = txn::TransactionCoordinator::open(
            storage.clone(),
            groups.clone(),
            config.transactions(),
        )
        .await?;
        let inflater = streamhouse_protocol::compression::Inflater::new(
            config.message_max_decompressed_bytes,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        );
        Ok(Arc::new(Broker {
            inflater,
            config,
            storage,
            groups,
            txns,
            cluster_id,
            limits,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhouse_storage::metadata::testing::TestStore;
    use streamhouse_storage::{GroupWrite, OffsetRecord};

    /// The broker opens on each metadata store, and its group coordinator loads what the store keeps
    /// (on PostgreSQL the load must run off the runtime threads: the blocking rule of the store).
    async fn opens_and_loads_groups(store: TestStore) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let args = config::BrokerConfig::test_args(data.clone())
            .set("metadata", store.location().as_setting());
        let config = config::BrokerConfig::resolve(args).unwrap();
        drop(Broker::open(config.clone()).await.unwrap());
        store.blocking(&data, |m| {
            m.group_writes(&[GroupWrite::Offsets(vec![OffsetRecord {
                group_id: "kept".into(),
                topic: "t".into(),
                partition: 0,
                offset: 5,
                leader_epoch: -1,
                metadata: None,
                commit_ms: group::now_ms(),
            }])])
            .unwrap()
        });
        let broker = Broker::open(config).await.unwrap();
        let groups: Vec<String> = broker
            .groups
            .list()
            .into_iter()
            .map(|g| g.group_id)
            .collect();
        assert_eq!(groups, vec!["kept".to_string()]);
    }

    #[tokio::test]
    async fn opens_and_loads_groups_sqlite() {
        opens_and_loads_groups(TestStore::sqlite()).await
    }

    #[tokio::test]
    async fn opens_and_loads_groups_postgres() {
        opens_and_loads_groups(TestStore::postgres()).await
    }
}
