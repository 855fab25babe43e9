//! Broker configuration: command-line flags, `STREAMHOUSE_*` environment variables and an optional
//! TOML file (flags and environment win over the file).

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "streamhouse",
    version,
    about = "A Kafka-compatible broker that keeps its log in segment objects"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker.
    Serve(ServeArgs),
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Address to accept Kafka clients on [default: 127.0.0.1:9092]
    #[arg(long, env = "STREAMHOUSE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// host:port given to clients in Metadata, if it differs from --listen (e.g. behind NAT or in Docker)
    #[arg(long, env = "STREAMHOUSE_ADVERTISED_LISTENER")]
    pub advertised_listener: Option<String>,
    /// Where segments live: `local` (files under --data-dir, the default) or an object store URL,
    /// `s3://bucket/prefix` (endpoint, region and credentials from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), `file:///path` or `memory://` (tests) [default: local]
    #[arg(long, env = "STREAMHOUSE_STORAGE")]
    pub storage: Option<String>,
    /// Folder for segments and the SQLite metadata database [default: ./data]
    #[arg(long, env = "STREAMHOUSE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML file with any of the settings below (keys as in the README's table)
    #[arg(long, env = "STREAMHOUSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Extra time to gather produce requests into one flush, in ms. Requests that arrive while a flush
    /// is being made durable always form the next one; this waits longer on top [default: 0 on local
    /// disk, 20 with an object store, where fewer and larger PUTs matter more]
    #[arg(long, env = "STREAMHOUSE_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Flush early once this many bytes are pending [default: 8388608]
    #[arg(long, env = "STREAMHOUSE_FLUSH_MAX_BYTES")]
    pub flush_max_bytes: Option<usize>,
    /// Roll the active segment past this size [default: 268435456]
    #[arg(long, env = "STREAMHOUSE_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Roll the active segment past this age in ms [default: 600000]
    #[arg(long, env = "STREAMHOUSE_SEGMENT_MS")]
    pub segment_ms: Option<i64>,
    /// Size of the in-memory block cache in bytes [default: 268435456]
    #[arg(long, env = "STREAMHOUSE_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    /// Largest record batch a producer may send (Kafka's message.max.bytes) [default: 1048588]
    #[arg(long, env = "STREAMHOUSE_MESSAGE_MAX_BYTES")]
    pub message_max_bytes: Option<i32>,
    /// Largest request frame accepted (Kafka's socket.request.max.bytes) [default: 104857600]
    #[arg(long, env = "STREAMHOUSE_SOCKET_REQUEST_MAX_BYTES")]
    pub socket_request_max_bytes: Option<usize>,
    /// Create unknown topics when a client's Metadata request asks to [default: true]
    #[arg(long, env = "STREAMHOUSE_AUTO_CREATE_TOPICS_ENABLE")]
    pub auto_create_topics_enable: Option<bool>,
    /// Partitions of auto-created topics and of CreateTopics with -1 [default: 1]
    #[arg(long, env = "STREAMHOUSE_NUM_PARTITIONS")]
    pub num_partitions: Option<i32>,
    /// Most client connections at once; more wait to be accepted [default: 10000]
    #[arg(long, env = "STREAMHOUSE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// This broker's node id [default: 1]
    #[arg(long, env = "STREAMHOUSE_NODE_ID")]
    pub node_id: Option<i32>,
    /// fsync the metadata database at every commit (false: survives a process crash, not a power loss) [default: true]
    #[arg(long, env = "STREAMHOUSE_SYNC_METADATA")]
    pub sync_metadata: Option<bool>,
    /// How often retention.ms / retention.bytes are applied (Kafka's log.retention.check.interval.ms) [default: 300000]
    #[arg(long, env = "STREAMHOUSE_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// host:port of a plain HTTP endpoint with counters in the Prometheus text format (off unless set)
    #[arg(long, env = "STREAMHOUSE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Flushes being made durable at once; they commit in order (object PUTs overlap) [default: 4]
    #[arg(long, env = "STREAMHOUSE_MAX_INFLIGHT_FLUSHES")]
    pub max_inflight_flushes: Option<usize>,
    /// How long a segment nothing refers to any more is kept before its file or object is deleted (Kafka's file.delete.delay.ms) [default: 60000]
    #[arg(long, env = "STREAMHOUSE_FILE_DELETE_DELAY_MS")]
    pub file_delete_delay_ms: Option<u64>,
    /// How often small flush objects are merged into per-partition objects, object stores only; 0 turns compaction off [default: 60000]
    #[arg(long, env = "STREAMHOUSE_COMPACTION_INTERVAL_MS")]
    pub compaction_interval_ms: Option<u64>,
    /// Flush objects younger than this are not compacted yet [default: 30000]
    #[arg(long, env = "STREAMHOUSE_COMPACTION_MIN_AGE_MS")]
    pub compaction_min_age_ms: Option<u64>,
    /// Bytes fetched ahead of a consumer reading from the object store [default: 4194304]
    #[arg(long, env = "STREAMHOUSE_READ_AHEAD_BYTES")]
    pub read_ahead_bytes: Option<usize>,
    /// Retention time of topics without a retention.ms of their own, in ms; -1 keeps everything (Kafka's log.retention.ms) [default: 604800000]
    #[arg(long, env = "STREAMHOUSE_LOG_RETENTION_MS", allow_hyphen_values = true)]
    pub log_retention_ms: Option<i64>,
    /// The same in minutes, used when --log-retention-ms is not given (Kafka's log.retention.minutes)
    #[arg(
        long,
        env = "STREAMHOUSE_LOG_RETENTION_MINUTES",
        allow_hyphen_values = true
    )]
    pub log_retention_minutes: Option<i64>,
    /// The same in hours, used when neither of the above is given (Kafka's log.retention.hours) [default: 168]
    #[arg(
        long,
        env = "STREAMHOUSE_LOG_RETENTION_HOURS",
        allow_hyphen_values = true
    )]
    pub log_retention_hours: Option<i64>,
    /// Retained bytes per partition of topics without a retention.bytes of their own; -1: no limit (Kafka's log.retention.bytes) [default: -1]
    #[arg(
        long,
        env = "STREAMHOUSE_LOG_RETENTION_BYTES",
        allow_hyphen_values = true
    )]
    pub log_retention_bytes: Option<i64>,
    /// How long a new consumer group waits for more members before its first rebalance (Kafka's group.initial.rebalance.delay.ms) [default: 3000]
    #[arg(long, env = "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Heartbeat interval given to KIP-848 consumers (group.consumer.heartbeat.interval.ms) [default: 5000]
    #[arg(long, env = "STREAMHOUSE_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS")]
    pub group_consumer_heartbeat_interval_ms: Option<u64>,
}

/// The same settings as a TOML file spells them (dotted Kafka-style names are accepted too).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    #[serde(alias = "advertised.listener")]
    advertised_listener: Option<String>,
    #[serde(alias = "data.dir")]
    data_dir: Option<PathBuf>,
    storage: Option<String>,
    #[serde(alias = "flush.interval.ms")]
    flush_interval_ms: Option<u64>,
    #[serde(alias = "flush.max.bytes")]
    flush_max_bytes: Option<usize>,
    #[serde(alias = "segment.bytes")]
    segment_bytes: Option<u64>,
    #[serde(alias = "segment.ms")]
    segment_ms: Option<i64>,
    #[serde(alias = "cache.bytes")]
    cache_bytes: Option<u64>,
    #[serde(alias = "message.max.bytes")]
    message_max_bytes: Option<i32>,
    #[serde(alias = "socket.request.max.bytes")]
    socket_request_max_bytes: Option<usize>,
    #[serde(alias = "auto.create.topics.enable")]
    auto_create_topics_enable: Option<bool>,
    #[serde(alias = "num.partitions")]
    num_partitions: Option<i32>,
    #[serde(alias = "max.connections")]
    max_connections: Option<usize>,
    #[serde(alias = "node.id")]
    node_id: Option<i32>,
    #[serde(alias = "sync.metadata")]
    sync_metadata: Option<bool>,
    #[serde(alias = "log.retention.check.interval.ms")]
    retention_check_interval_ms: Option<u64>,
    #[serde(alias = "metrics.listen")]
    metrics_listen: Option<SocketAddr>,
    #[serde(alias = "max.inflight.flushes")]
    max_inflight_flushes: Option<usize>,
    #[serde(alias = "file.delete.delay.ms")]
    file_delete_delay_ms: Option<u64>,
    #[serde(alias = "compaction.interval.ms")]
    compaction_interval_ms: Option<u64>,
    #[serde(alias = "compaction.min.age.ms")]
    compaction_min_age_ms: Option<u64>,
    #[serde(alias = "read.ahead.bytes")]
    read_ahead_bytes: Option<usize>,
    #[serde(alias = "log.retention.ms")]
    log_retention_ms: Option<i64>,
    #[serde(alias = "log.retention.minutes")]
    log_retention_minutes: Option<i64>,
    #[serde(alias = "log.retention.hours")]
    log_retention_hours: Option<i64>,
    #[serde(alias = "log.retention.bytes")]
    log_retention_bytes: Option<i64>,
    #[serde(alias = "group.initial.rebalance.delay.ms")]
    group_initial_rebalance_delay_ms: Option<u64>,
    #[serde(alias = "group.consumer.heartbeat.interval.ms")]
    group_consumer_heartbeat_interval_ms: Option<u64>,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub data_dir: PathBuf,
    /// `None` for local segment files, else an object store URL.
    pub object_store: Option<String>,
    pub flush_interval: Duration,
    pub flush_max_bytes: usize,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub cache_bytes: u64,
    pub message_max_bytes: i32,
    pub socket_request_max_bytes: usize,
    pub auto_create_topics_enable: bool,
    pub num_partitions: i32,
    pub max_connections: usize,
    pub node_id: i32,
    pub sync_metadata: bool,
    pub group_initial_rebalance_delay: Duration,
    pub group_consumer_heartbeat_interval: Duration,
    pub retention_check_interval: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub log_retention_ms: i64,
    pub log_retention_bytes: i64,
    pub max_inflight_flushes: usize,
    pub file_delete_delay: Duration,
    pub compaction_interval: Duration,
    pub compaction_min_age: Duration,
    pub read_ahead_bytes: usize,
}

impl BrokerConfig {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => toml::from_str(&std::fs::read_to_string(path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            None => FileConfig::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092)));
        let advertised = args.advertised_listener.or(file.advertised_listener);
        let (advertised_host, advertised_port) = match advertised {
            Some(a) => {
                let (h, p) = a
                    .rsplit_once(':')
                    .ok_or_else(|| anyhow::anyhow!("advertised listener must be host:port"))?;
                (h.trim_start_matches("PLAINTEXT://").to_string(), p.parse()?)
            }
            None => (listen.ip().to_string(), listen.port() as i32),
        };
        let object_store = args.storage.or(file.storage).filter(|s| s != "local");
        let c = BrokerConfig {
            listen,
            advertised_host,
            advertised_port,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            flush_interval: Duration::from_millis(
                args.flush_interval_ms
                    .or(file.flush_interval_ms)
                    .unwrap_or(if object_store.is_some() { 20 } else { 0 }),
            ),
            object_store,
            flush_max_bytes: args
                .flush_max_bytes
                .or(file.flush_max_bytes)
                .unwrap_or(8 << 20),
            segment_bytes: args
                .segment_bytes
                .or(file.segment_bytes)
                .unwrap_or(256 << 20),
            segment_ms: args.segment_ms.or(file.segment_ms).unwrap_or(600_000),
            cache_bytes: args.cache_bytes.or(file.cache_bytes).unwrap_or(256 << 20),
            message_max_bytes: args
                .message_max_bytes
                .or(file.message_max_bytes)
                .unwrap_or(1_048_588),
            socket_request_max_bytes: args
                .socket_request_max_bytes
                .or(file.socket_request_max_bytes)
                .unwrap_or(100 << 20),
            auto_create_topics_enable: args
                .auto_create_topics_enable
                .or(file.auto_create_topics_enable)
                .unwrap_or(true),
            num_partitions: args.num_partitions.or(file.num_partitions).unwrap_or(1),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(10_000),
            node_id: args.node_id.or(file.node_id).unwrap_or(1),
            sync_metadata: args.sync_metadata.or(file.sync_metadata).unwrap_or(true),
            retention_check_interval: Duration::from_millis(
                args.retention_check_interval_ms
                    .or(file.retention_check_interval_ms)
                    .unwrap_or(300_000)
                    .max(100),
            ),
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            // Kafka's precedence: log.retention.ms, then .minutes, then .hours; -1 stays -1.
            log_retention_ms: args
                .log_retention_ms
                .or(file.log_retention_ms)
                .or(args
                    .log_retention_minutes
                    .or(file.log_retention_minutes)
                    .map(|m| if m < 0 { -1 } else { m.saturating_mul(60_000) }))
                .or(args
                    .log_retention_hours
                    .or(file.log_retention_hours)
                    .map(|h| {
                        if h < 0 {
                            -1
                        } else {
                            h.saturating_mul(3_600_000)
                        }
                    }))
                .unwrap_or(604_800_000),
            log_retention_bytes: args
                .log_retention_bytes
                .or(file.log_retention_bytes)
                .unwrap_or(-1),
            max_inflight_flushes: args
                .max_inflight_flushes
                .or(file.max_inflight_flushes)
                .unwrap_or(4)
                .max(1),
            file_delete_delay: Duration::from_millis(
                args.file_delete_delay_ms
                    .or(file.file_delete_delay_ms)
                    .unwrap_or(60_000),
            ),
            compaction_interval: Duration::from_millis(
                args.compaction_interval_ms
                    .or(file.compaction_interval_ms)
                    .unwrap_or(60_000),
            ),
            compaction_min_age: Duration::from_millis(
                args.compaction_min_age_ms
                    .or(file.compaction_min_age_ms)
                    .unwrap_or(30_000),
            ),
            read_ahead_bytes: args
                .read_ahead_bytes
                .or(file.read_ahead_bytes)
                .unwrap_or(4 << 20),
            group_initial_rebalance_delay: Duration::from_millis(
                args.group_initial_rebalance_delay_ms
                    .or(file.group_initial_rebalance_delay_ms)
                    .unwrap_or(3000),
            ),
            group_consumer_heartbeat_interval: Duration::from_millis(
                args.group_consumer_heartbeat_interval_ms
                    .or(file.group_consumer_heartbeat_interval_ms)
                    .unwrap_or(5000),
            ),
        };
        anyhow::ensure!(c.num_partitions >= 1, "num.partitions must be at least 1");
        anyhow::ensure!(
            c.message_max_bytes >= 1,
            "message.max.bytes must be positive"
        );
        Ok(c)
    }

    pub fn storage(&self) -> streamhouse_storage::StorageConfig {
        let mut s = streamhouse_storage::StorageConfig::new(&self.data_dir);
        s.flush_interval = self.flush_interval;
        s.flush_max_bytes = self.flush_max_bytes;
        s.segment_bytes = self.segment_bytes;
        s.segment_ms = self.segment_ms;
        s.cache_bytes = self.cache_bytes;
        s.sync_metadata = self.sync_metadata;
        s.object_store = self.object_store.clone();
        s.retention_check_interval = self.retention_check_interval;
        s.max_inflight_flushes = self.max_inflight_flushes;
        s.file_delete_delay = self.file_delete_delay;
        s.compaction_interval = self.compaction_interval;
        s.compaction_min_age = self.compaction_min_age;
        s.read_ahead_bytes = self.read_ahead_bytes;
        s.retention_ms = self.log_retention_ms;
        s.retention_bytes = self.log_retention_bytes;
        s
    }

    pub fn groups(&self) -> crate::group::GroupConfig {
        crate::group::GroupConfig {
            initial_rebalance_delay: self.group_initial_rebalance_delay,
            consumer_heartbeat_interval: self.group_consumer_heartbeat_interval,
            ..Default::default()
        }
    }

    /// Defaults for tests: a loopback port chosen by the OS and the given data folder.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let args = ServeArgs {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            data_dir: Some(data_dir),
            ..Default::default()
        };
        Self::resolve(args).expect("static test config")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "\"num.partitions\" = 3\nmessage_max_bytes = 5000\nlisten = \"127.0.0.1:9999\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            num_partitions: Some(6),
            ..Default::default()
        };
        let c = BrokerConfig::resolve(args).unwrap();
        assert_eq!(c.num_partitions, 6);
        assert_eq!(c.message_max_bytes, 5000);
        assert_eq!(c.advertised_port, 9999);
        assert_eq!(c.advertised_host, "127.0.0.1");
    }

    #[test]
    fn log_retention_ms_then_minutes_then_hours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "\"log.retention.hours\" = 2\n").unwrap();
        let args = |ms, minutes| ServeArgs {
            config: Some(path.clone()),
            log_retention_ms: ms,
            log_retention_minutes: minutes,
            ..Default::default()
        };
        let resolve = |a| BrokerConfig::resolve(a).unwrap().log_retention_ms;
        assert_eq!(resolve(args(None, None)), 7_200_000);
        assert_eq!(resolve(args(None, Some(3))), 180_000);
        assert_eq!(resolve(args(Some(-1), Some(3))), -1);
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        assert!(BrokerConfig::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .is_err());
    }
}
