//! Broker configuration: every setting is declared once, in the [`settings!`] table below, with its
//! type, its default and what a value costs. From that one row come the command-line flag
//! (`--field-name`), the environment variable (`STREAMHOUSE_FIELD_NAME`), the TOML file keys (the field
//! name, and the Kafka-style dotted name), `--help`, the README's configuration table (a test keeps the
//! README equal to [`markdown_table`]) and the broker resource of DescribeConfigs.
//!
//! Layers, lowest first: the default, the file given with `--config`, the environment, the flag.

use clap::{Arg, ArgMatches, Args, Command as ClapCommand, FromArgMatches, Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::topic_config::{TYPE_BOOLEAN, TYPE_DOUBLE, TYPE_INT, TYPE_LONG, TYPE_STRING};

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

/// A value a setting can hold: parsed from a flag, the environment or the file (all as text).
pub trait SettingValue: Sized {
    /// DescribeConfigs' ConfigType of the setting.
    const KIND: i8;
    fn parse_setting(s: &str) -> Result<Self, String>;
    /// The value as DescribeConfigs shows it ("" for none).
    fn show(&self) -> String;
}

macro_rules! from_str_setting {
    ($($t:ty => $kind:expr),*) => {$(
        impl SettingValue for $t {
            const KIND: i8 = $kind;
            fn parse_setting(s: &str) -> Result<Self, String> {
                s.trim().parse::<$t>().map_err(|e| e.to_string())
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
from_str_setting!(bool => TYPE_BOOLEAN, i32 => TYPE_INT, i64 => TYPE_LONG, u64 => TYPE_LONG,
    usize => TYPE_LONG, f64 => TYPE_DOUBLE, String => TYPE_STRING, SocketAddr => TYPE_STRING);

impl SettingValue for PathBuf {
    const KIND: i8 = TYPE_STRING;
    fn parse_setting(s: &str) -> Result<Self, String> {
        Ok(PathBuf::from(s))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

/// The metadata store: `sqlite` or a `postgres://` URL, shown without its password (DescribeConfigs
/// hands every setting to any client that asks).
impl SettingValue for streamhouse_storage::MetadataLocation {
    const KIND: i8 = TYPE_STRING;
    fn parse_setting(s: &str) -> Result<Self, String> {
        s.parse()
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// A setting without a default of its own ("" in the table): derived from others when not given.
impl<T: SettingValue> SettingValue for Option<T> {
    const KIND: i8 = T::KIND;
    fn parse_setting(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            Ok(None)
        } else {
            T::parse_setting(s).map(Some)
        }
    }
    fn show(&self) -> String {
        self.as_ref().map(|v| v.show()).unwrap_or_default()
    }
}

/// What the table says about one setting.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    /// The field name; the flag is it with dashes, the environment variable STREAMHOUSE_ + it uppercased.
    pub field: &'static str,
    /// The Kafka-style dotted name: a file key, and the name DescribeConfigs shows.
    pub key: &'static str,
    /// The default as text ("" for none: derived, see the doc).
    pub default: &'static str,
    /// How the README shows the default, when the text alone would mislead.
    pub shown_default: &'static str,
    pub doc: &'static str,
    pub kind: i8,
}

impl SettingInfo {
    pub fn flag(&self) -> String {
        self.field.replace('_', "-")
    }
    pub fn env(&self) -> String {
        format!("STREAMHOUSE_{}", self.field.to_uppercase())
    }
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident : $ty:ty = $default:literal, key $key:literal $(, shown $shown:literal)? ;
    )*) => {
        /// The settings as given (each layer applied); see the table in the README.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        /// Every setting, in table order.
        pub const SETTINGS: &[SettingInfo] = &[$(
            SettingInfo {
                field: stringify!($field),
                key: $key,
                default: $default,
                shown_default: settings!(@shown $default $(, $shown)?),
                doc: concat!($($doc, "\n"),*),
                kind: <$ty as SettingValue>::KIND,
            },
        )*];

        impl Settings {
            fn from_layers(layers: &Layers) -> anyhow::Result<Settings> {
                Ok(Settings { $( $field: layers.get::<$ty>(stringify!($field), $key, $default)?, )* })
            }

            /// (dotted name, value as text) of every setting, in table order.
            pub fn values(&self) -> Vec<(&'static str, String, i8)> {
                vec![$( ($key, SettingValue::show(&self.$field), <$ty as SettingValue>::KIND), )*]
            }
        }
    };
    (@shown $default:literal) => { $default };
    (@shown $default:literal, $shown:literal) => { $shown };
}

settings! {
    /// Address to accept Kafka clients on.
    listen: SocketAddr = "127.0.0.1:9092", key "listen";
    /// host:port returned to clients in Metadata, if it differs from the listen address (behind NAT, in
    /// Docker); a `PLAINTEXT://` prefix is accepted.
    advertised_listener: Option<String> = "", key "advertised.listener", shown "the listen address";
    /// Where segments live: `local` (files under the data dir), or an object store URL:
    /// `s3://bucket/prefix` (endpoint, region and credentials from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), `file:///path`, `memory://` (tests).
    storage: String = "local", key "storage";
    /// Folder for local segments, `metadata.db` and the cluster id (created 0700).
    data_dir: PathBuf = "./data", key "data.dir";
    /// Metadata store (topics, the segment index, high watermarks, producer state, committed offsets,
    /// groups): `sqlite` (`metadata.db` in the data dir, embedded) or a PostgreSQL database,
    /// `postgres://user:password@host:port/database` (its tables are created at the first start).
    /// Each flush commits there in one transaction, a few round trips to the server on every produce's
    /// path; the broker holds up to 4 connections. The password is never shown.
    metadata: streamhouse_storage::MetadataLocation = "sqlite", key "metadata";
    /// Extra time to gather the produce requests of all partitions into one flush; requests that arrive
    /// while a flush is made durable always form the next one. Each ms adds up to that much latency;
    /// on an object store it saves PUTs.
    flush_interval_ms: Option<u64> = "", key "flush.interval.ms", shown "`0` local, `20` S3";
    /// Flush early past this many pending bytes.
    flush_max_bytes: usize = "8388608", key "flush.max.bytes";
    /// Roll the active local segment past this size.
    segment_bytes: u64 = "268435456", key "segment.bytes";
    /// Roll the active local segment past this age.
    segment_ms: i64 = "600000", key "segment.ms";
    /// Block cache size: memory held for recently written and read blocks.
    cache_bytes: u64 = "268435456", key "cache.bytes";
    /// Largest record batch accepted (MESSAGE_TOO_LARGE past it); topics may override it with
    /// `max.message.bytes`.
    message_max_bytes: i32 = "1048588", key "message.max.bytes";
    /// StreamHouse's own bound (Kafka has none): most bytes a compressed record batch may inflate to, at
    /// produce (MESSAGE_TOO_LARGE past it) and wherever stored batches are decompressed (ListOffsets by
    /// timestamp). 64 MiB is 64 times message.max.bytes: clients bound a batch before compressing it
    /// (Java: batch.size 16 KiB, a record up to max.request.size 1 MiB; librdkafka: batch.size 1 MB),
    /// so real batches stay far below, while a bomb costs at most this much inflating (a fraction of a
    /// second) on one of the blocking threads that decompress, one per CPU at once. Each holds at most
    /// this much (one record, or a rebuilt batch) plus its codec's state (zstd window up to 8 MiB, lz4
    /// blocks up to 12 MiB).
    message_max_decompressed_bytes: u64 = "67108864", key "message.max.decompressed.bytes";
    /// Timestamp type of topics without their own `message.timestamp.type`: `CreateTime` (the
    /// producer's), or `LogAppendTime` (each batch stamped with the broker's time).
    log_message_timestamp_type: String = "CreateTime", key "log.message.timestamp.type";
    /// CreateTime records older than now minus this are refused (INVALID_TIMESTAMP, per record), for
    /// topics without their own `message.timestamp.before.max.ms`.
    log_message_timestamp_before_max_ms: i64 = "9223372036854775807", key "log.message.timestamp.before.max.ms";
    /// The same for timestamps ahead of now (one hour: Kafka 4.x's default, KIP-1030), for topics
    /// without their own `message.timestamp.after.max.ms`.
    log_message_timestamp_after_max_ms: i64 = "3600000", key "log.message.timestamp.after.max.ms";
    /// Codec batches are stored in, for topics without their own `compression.type`: `producer` keeps
    /// each batch as sent; `uncompressed`, `gzip`, `snappy`, `lz4`, `zstd` recompress batches sent in
    /// another codec (CPU for every such batch), as Kafka does.
    compression_type: String = "producer", key "compression.type";
    /// Largest request frame; checked before anything is allocated.
    socket_request_max_bytes: usize = "104857600", key "socket.request.max.bytes";
    /// Create unknown topics when a client's Metadata request allows it.
    auto_create_topics_enable: bool = "true", key "auto.create.topics.enable";
    /// Partitions of auto-created topics and of CreateTopics with -1.
    num_partitions: i32 = "1", key "num.partitions";
    /// Connections served at once; more wait in the accept backlog.
    max_connections: usize = "10000", key "max.connections";
    /// Most connections at once from one client address (Kafka's setting and default); past it a new
    /// connection is closed at once.
    max_connections_per_ip: i32 = "2147483647", key "max.connections.per.ip";
    /// Per-address exceptions to max.connections.per.ip: `ip:count,ip:count` (IP addresses only).
    max_connections_per_ip_overrides: String = "", key "max.connections.per.ip.overrides", shown "none";
    /// Close a connection that has sent no request, and has none in flight, for this long.
    connections_max_idle_ms: i64 = "600000", key "connections.max.idle.ms";
    /// Close a connection whose request, once its size has arrived, is not complete within this time,
    /// or that takes no part (1 MiB) of a response within it: half-sent requests and unread responses
    /// cannot pin memory or a connection slot (StreamHouse's; Kafka has none).
    request_read_timeout_ms: i64 = "30000", key "request.read.timeout.ms";
    /// Bytes of requests received whole and not yet finished, over all connections (a produce's until
    /// its flush is committed, acks=0 included); past it connections stop reading. Kafka's default is -1 (no limit,
    /// only queued.max.requests); StreamHouse bounds it so acks=0 floods cannot exhaust memory. -1:
    /// no limit.
    queued_max_request_bytes: i64 = "268435456", key "queued.max.request.bytes";
    /// Bytes of fetch responses being read or written, over all connections: a fetch waits for an upper
    /// bound of its bytes before it reads (StreamHouse's; Kafka has no bound). -1: no limit.
    queued_max_response_bytes: i64 = "268435456", key "queued.max.response.bytes";
    /// Most record bytes one Fetch response carries, whatever the client asks (Kafka's fetch.max.bytes,
    /// 55 MiB); the first batch is still returned whole when larger (KIP-74).
    fetch_max_bytes: i32 = "57671680", key "fetch.max.bytes";
    /// This broker's id.
    node_id: i32 = "1", key "node.id";
    /// Most partitions one CreateTopics or CreatePartitions request may add (INVALID_PARTITIONS past
    /// it). Each partition costs a few hundred bytes of memory and a metadata row.
    max_partitions_per_request: i32 = "100000", key "max.partitions.per.request";
    /// Most partitions on this broker, all topics together (the name KIP-578 proposed; Kafka has no
    /// such limit). Chosen at twice the 100,000 partitions one broker is meant to serve.
    max_broker_partitions: i32 = "200000", key "max.broker.partitions";
    /// Idempotent-producer state not written to for this long is dropped (Kafka's setting and default,
    /// 1 day); the producer's next batch is then accepted as a new producer's.
    producer_id_expiration_ms: i64 = "86400000", key "producer.id.expiration.ms";
    /// How often producer state is checked for expiry (Kafka's setting and default).
    producer_id_expiration_check_interval_ms: u64 = "600000", key "producer.id.expiration.check.interval.ms";
    /// Most (producer, partition) states kept at once; past it the longest idle are dropped early
    /// (StreamHouse's: Kafka has no bound). About 200 bytes each.
    max_producer_states: usize = "500000", key "max.producer.states";
    /// The finalized level of the `transaction.version` feature ApiVersions reports (0-2; what
    /// `kafka-features` sets on Kafka, whose new clusters finalize 2). At 2 Java 4.x producers use
    /// KIP-890's version 2 protocol: no AddPartitionsToTxn round trip, and every EndTxn bumps the
    /// epoch so a late batch cannot join the next transaction; below 2 they use version 1.
    transaction_version: i32 = "2", key "transaction.version";
    /// The largest transaction.timeout.ms a transactional producer may ask for (Kafka's setting and
    /// default, 15 minutes): InitProducerId asking for more is INVALID_TRANSACTION_TIMEOUT. An open
    /// transaction holds its partitions' last stable offset, so read_committed consumers wait that long
    /// at most for an abandoned one.
    transaction_max_timeout_ms: i32 = "900000", key "transaction.max.timeout.ms";
    /// A transactional id with no transaction for this long is forgotten (Kafka's setting and default,
    /// 7 days); its producer then starts again with a new producer id.
    transactional_id_expiration_ms: i64 = "604800000", key "transactional.id.expiration.ms";
    /// How often transactions past their timeout are aborted, fencing their producer (Kafka's setting
    /// and default).
    transaction_abort_timed_out_transaction_cleanup_interval_ms: u64 = "10000", key "transaction.abort.timed.out.transaction.cleanup.interval.ms";
    /// How often expired transactional ids are removed (Kafka's setting and default).
    transaction_remove_expired_transaction_cleanup_interval_ms: u64 = "3600000", key "transaction.remove.expired.transaction.cleanup.interval.ms";
    /// Most transactional ids kept at once (StreamHouse's: Kafka has no bound); past it the longest
    /// idle one without a transaction in progress is dropped from memory, and a new id is refused
    /// (COORDINATOR_NOT_AVAILABLE, retriable) while every one has a transaction in progress. About
    /// 1 KiB each, plus its partitions.
    transactional_id_max: usize = "100000", key "transactional.id.max";
    /// Every metadata commit durable before it is acknowledged: SQLite fsyncs its WAL, PostgreSQL waits
    /// for its own (`synchronous_commit`). false survives a broker crash but not a power loss (nor,
    /// on PostgreSQL, a crash of its server).
    sync_metadata: bool = "true", key "sync.metadata";
    /// How often topics' `retention.ms` and `retention.bytes` (defaults: the log.retention settings)
    /// move log start offsets forward.
    retention_check_interval_ms: u64 = "300000", key "log.retention.check.interval.ms";
    /// host:port of a plain HTTP endpoint with counters in the Prometheus text format (object-store
    /// PUTs/GETs/bytes/deletes, cache hits/misses/bytes); off unless set.
    metrics_listen: Option<SocketAddr> = "", key "metrics.listen", shown "off";
    /// Flushes being made durable at once; they commit in order (S3 PUTs overlap; locally the data fsync
    /// of one flush overlaps the metadata commit of the previous). Each holds its flush in memory.
    max_inflight_flushes: usize = "4", key "max.inflight.flushes";
    /// How long a segment file or object nothing refers to any more (retention, DeleteRecords, deleted
    /// topics, compaction) is kept before it is deleted, so reads under way can finish.
    file_delete_delay_ms: u64 = "60000", key "file.delete.delay.ms";
    /// S3 mode: how often small flush objects are merged into one object per partition (`0`: never).
    compaction_interval_ms: u64 = "60000", key "compaction.interval.ms";
    /// S3 mode: flush objects younger than this wait for the next compaction pass.
    compaction_min_age_ms: u64 = "30000", key "compaction.min.age.ms";
    /// S3 mode: bytes fetched ahead of a consumer reading from the store.
    read_ahead_bytes: usize = "4194304", key "read.ahead.bytes";
    /// Retention time of topics without their own `retention.ms` (`-1`: keep everything).
    log_retention_ms: Option<i64> = "", key "log.retention.ms", shown "`604800000`";
    /// The same in minutes, used when log.retention.ms is not given.
    log_retention_minutes: Option<i64> = "", key "log.retention.minutes", shown "none";
    /// The same in hours, used when neither of the above is given.
    log_retention_hours: i64 = "168", key "log.retention.hours";
    /// Retained bytes per partition of topics without their own `retention.bytes` (`-1`: no limit).
    log_retention_bytes: i64 = "-1", key "log.retention.bytes";
    /// cleanup.policy of topics without their own: `delete` (retention applies), `compact` (key
    /// compaction keeps the latest record per key), or `compact,delete` (both).
    log_cleanup_policy: String = "delete", key "log.cleanup.policy";
    /// Key compaction of compacted topics runs. Off, a compacted topic keeps every record.
    log_cleaner_enable: bool = "true", key "log.cleaner.enable";
    /// How often the log cleaner looks for partitions to clean. A pass over a partition reads its log
    /// from the start once and writes it again (one object per 64 MiB in S3 mode).
    log_cleaner_backoff_ms: u64 = "15000", key "log.cleaner.backoff.ms";
    /// Memory of the cleaner's offset map (25-byte buckets, 7/8 full, a power of two of them): 128 MiB
    /// takes 3.67 million distinct keys per pass; a partition with more is cleaned over several
    /// passes.
    log_cleaner_dedupe_buffer_size: u64 = "134217728", key "log.cleaner.dedupe.buffer.size";
    /// min.cleanable.dirty.ratio of topics without their own: the dirty share of a partition's
    /// cleanable bytes that starts a cleaning. Lower cleans more often (each pass rewrites the log).
    log_cleaner_min_cleanable_ratio: f64 = "0.5", key "log.cleaner.min.cleanable.ratio";
    /// min.compaction.lag.ms of topics without their own: records younger than this stay uncleaned.
    log_cleaner_min_compaction_lag_ms: i64 = "0", key "log.cleaner.min.compaction.lag.ms";
    /// max.compaction.lag.ms of topics without their own: a partition dirty for longer is cleaned
    /// whatever its dirty ratio.
    log_cleaner_max_compaction_lag_ms: i64 = "9223372036854775807", key "log.cleaner.max.compaction.lag.ms";
    /// delete.retention.ms of topics without their own: tombstones (and transaction markers whose data
    /// is gone) stay this long after the first cleaning that kept them, for consumers to see them.
    log_cleaner_delete_retention_ms: i64 = "86400000", key "log.cleaner.delete.retention.ms";
    /// How long a new classic group waits for more members before its first rebalance, as in Kafka.
    group_initial_rebalance_delay_ms: u64 = "3000", key "group.initial.rebalance.delay.ms";
    /// Heartbeat interval given to KIP-848 consumers.
    group_consumer_heartbeat_interval_ms: u64 = "5000", key "group.consumer.heartbeat.interval.ms";
    /// Committed offsets of a group are kept this long after it became empty (a standalone
    /// consumer's, and those of topics a group no longer subscribes to: after their commit), then
    /// deleted, and the empty group with them, as in Kafka. Each group with offsets is a few rows.
    offsets_retention_minutes: i32 = "10080", key "offsets.retention.minutes";
    /// How often expired offsets are looked for.
    offsets_retention_check_interval_ms: u64 = "600000", key "offsets.retention.check.interval.ms";
    /// Most members of a classic group; more get GROUP_MAX_SIZE_REACHED. Each member holds its
    /// subscription and assignment.
    group_max_size: i32 = "2147483647", key "group.max.size";
    /// Most members of a KIP-848 group; more get GROUP_MAX_SIZE_REACHED.
    group_consumer_max_size: i32 = "2147483647", key "group.consumer.max.size";
    /// Partitions of `__consumer_offsets`, created at the first group lookup. Each is a partition
    /// like any other (no file handles); a group's commits go to one of them.
    offsets_topic_num_partitions: i32 = "50", key "offsets.topic.num.partitions";
    /// segment.bytes of `__consumer_offsets` (bounds its uncleaned head).
    offsets_topic_segment_bytes: i32 = "104857600", key "offsets.topic.segment.bytes";
    /// Partitions of `__transaction_state`, created at the first transactional id (it stays empty:
    /// the transaction state is in the metadata store).
    transaction_state_log_num_partitions: i32 = "50", key "transaction.state.log.num.partitions";
    /// segment.bytes of `__transaction_state`.
    transaction_state_log_segment_bytes: i32 = "104857600", key "transaction.state.log.segment.bytes";
}

/// The layers a value can come from, lowest first: default < file < environment < flag.
struct Layers {
    /// From flags and environment (clap reads both, flags winning).
    given: BTreeMap<String, String>,
    /// From the TOML file, by field name or dotted key.
    file: BTreeMap<String, String>,
}

impl Layers {
    fn get<T: SettingValue>(&self, field: &str, key: &str, default: &str) -> anyhow::Result<T> {
        let (text, from) = match (
            self.given.get(field),
            self.file.get(field).or(self.file.get(key)),
        ) {
            (Some(v), _) => (v.as_str(), "flag or environment"),
            (None, Some(v)) => (v.as_str(), "config file"),
            (None, None) => (default, "default"),
        };
        T::parse_setting(text).map_err(|e| anyhow::anyhow!("{key} = {text:?} ({from}): {e}"))
    }
}

/// `streamhouse serve`'s arguments: the values given by flag or environment, and the file to read.
#[derive(Debug, Default, Clone)]
pub struct ServeArgs {
    pub config: Option<PathBuf>,
    /// field name -> value as text.
    pub values: BTreeMap<String, String>,
}

impl ServeArgs {
    /// Sets a value as if it had been given as a flag (tests, embedding).
    pub fn set(mut self, field: &str, value: impl ToString) -> Self {
        self.values.insert(field.to_string(), value.to_string());
        self
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: ClapCommand) -> ClapCommand {
        let cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .env("STREAMHOUSE_CONFIG")
                .value_name("FILE")
                .help("TOML file with any of the settings below (keys as in the README's table)"),
        );
        SETTINGS.iter().fold(cmd, |cmd, s| {
            let short = s.doc.lines().next().unwrap_or("").trim().to_string();
            let long = format!(
                "{} [default: {}] [file key: {}]",
                s.doc.split_whitespace().collect::<Vec<_>>().join(" "),
                if s.default.is_empty() {
                    s.shown_default
                } else {
                    s.default
                },
                s.key
            );
            cmd.arg(
                Arg::new(s.field)
                    .long(leak(s.flag()))
                    .env(leak(s.env()))
                    .value_name("VALUE")
                    .allow_hyphen_values(true)
                    .help(short)
                    .long_help(long),
            )
        })
    }
    fn augment_args_for_update(cmd: ClapCommand) -> ClapCommand {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs {
            config: m.get_one::<String>("config").map(PathBuf::from),
            values: BTreeMap::new(),
        };
        for s in SETTINGS {
            if let Some(v) = m.get_one::<String>(s.field) {
                args.values.insert(s.field.to_string(), v.clone());
            }
        }
        Ok(args)
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// clap keeps names as `&'static str`; the few built from the table live as long as the process.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Reads the TOML file into (key -> value as text); unknown keys are refused.
fn read_file(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (k, v) in table {
        if !SETTINGS.iter().any(|s| s.field == k || s.key == k) {
            anyhow::bail!("{}: unknown setting {k}", path.display());
        }
        let text = match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        };
        out.insert(k, text);
    }
    Ok(out)
}

/// The resolved configuration: the settings plus what is derived from them.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub settings: Settings,
    pub advertised_host: String,
    pub advertised_port: i32,
    /// `None` for local segment files, else an object store URL.
    pub object_store: Option<String>,
    /// log.retention.ms after Kafka's precedence (ms, then minutes, then hours).
    pub log_retention_ms: i64,
}

impl std::ops::Deref for BrokerConfig {
    type Target = Settings;
    fn deref(&self) -> &Settings {
        &self.settings
    }
}

impl std::ops::DerefMut for BrokerConfig {
    fn deref_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }
}

impl BrokerConfig {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        let s = Settings::from_layers(&Layers {
            given: args.values,
            file,
        })?;
        let (advertised_host, advertised_port) = match &s.advertised_listener {
            Some(a) => {
                let (h, p) = a
                    .rsplit_once(':')
                    .ok_or_else(|| anyhow::anyhow!("advertised listener must be host:port"))?;
                (h.trim_start_matches("PLAINTEXT://").to_string(), p.parse()?)
            }
            None => (s.listen.ip().to_string(), s.listen.port() as i32),
        };
        let object_store = Some(s.storage.clone()).filter(|s| s != "local");
        // Kafka's precedence: log.retention.ms, then .minutes, then .hours; a negative value is -1.
        let log_retention_ms = s
            .log_retention_ms
            .or(s.log_retention_minutes.map(|m| m.saturating_mul(60_000)))
            .unwrap_or(s.log_retention_hours.saturating_mul(3_600_000));
        let log_retention_ms = if log_retention_ms < 0 {
            -1
        } else {
            log_retention_ms
        };
        anyhow::ensure!(
            crate::topic_config::validate("cleanup.policy", Some(&s.log_cleanup_policy)).is_ok(),
            "log.cleanup.policy must be delete, compact or both"
        );
        // Kafka's bounds for the log cleaner's settings.
        anyhow::ensure!(
            (0.0..=1.0).contains(&s.log_cleaner_min_cleanable_ratio),
            "log.cleaner.min.cleanable.ratio must be between 0 and 1"
        );
        anyhow::ensure!(
            s.log_cleaner_min_compaction_lag_ms >= 0
                && s.log_cleaner_max_compaction_lag_ms >= 1
                && s.log_cleaner_delete_retention_ms >= 0,
            "log.cleaner.min.compaction.lag.ms and .delete.retention.ms must be at least 0, \
             log.cleaner.max.compaction.lag.ms at least 1"
        );
        anyhow::ensure!(
            s.log_cleaner_dedupe_buffer_size >= 32,
            "log.cleaner.dedupe.buffer.size must hold at least one key (32 bytes)"
        );
        anyhow::ensure!(
            s.fetch_max_bytes >= 0,
            "fetch.max.bytes must not be negative"
        );
        for (name, value) in [
            ("message.timestamp.type", &s.log_message_timestamp_type),
            ("compression.type", &s.compression_type),
        ] {
            crate::topic_config::validate(name, Some(value)).map_err(anyhow::Error::msg)?;
        }
        anyhow::ensure!(
            s.log_message_timestamp_before_max_ms >= 0 && s.log_message_timestamp_after_max_ms >= 0,
            "log.message.timestamp.before.max.ms and .after.max.ms must be at least 0"
        );
        anyhow::ensure!(
            s.message_max_decompressed_bytes >= 1,
            "message.max.decompressed.bytes must be positive"
        );
        anyhow::ensure!(s.num_partitions >= 1, "num.partitions must be at least 1");
        // Kafka's lower bounds for these.
        anyhow::ensure!(
            s.offsets_retention_minutes >= 1,
            "offsets.retention.minutes must be at least 1"
        );
        anyhow::ensure!(
            s.offsets_retention_check_interval_ms >= 1,
            "offsets.retention.check.interval.ms must be at least 1"
        );
        anyhow::ensure!(
            s.offsets_topic_num_partitions >= 1
                && s.transaction_state_log_num_partitions >= 1
                && s.offsets_topic_segment_bytes >= 1
                && s.transaction_state_log_segment_bytes >= 1,
            "offsets.topic.* and transaction.state.log.* partition counts and segment bytes must be \
             at least 1"
        );
        anyhow::ensure!(
            s.group_max_size >= 1 && s.group_consumer_max_size >= 1,
            "group.max.size and group.consumer.max.size must be at least 1"
        );
        anyhow::ensure!(
            s.message_max_bytes >= 1,
            "message.max.bytes must be positive"
        );
        anyhow::ensure!(
            (0..=crate::handlers::api_versions_18::MAX_TRANSACTION_VERSION as i32)
                .contains(&s.transaction_version),
            "transaction.version must be 0, 1 or 2"
        );
        anyhow::ensure!(
            s.transaction_max_timeout_ms >= 1,
            "transaction.max.timeout.ms must be at least 1"
        );
        Ok(BrokerConfig {
            settings: s,
            advertised_host,
            advertised_port,
            object_store,
            log_retention_ms,
        })
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    pub fn flush_interval(&self) -> Duration {
        let default = if self.object_store.is_some() { 20 } else { 0 };
        Self::ms(self.flush_interval_ms.unwrap_or(default))
    }

    /// The settings as DescribeConfigs shows them: (name, value, type), with the derived ones.
    pub fn described(&self) -> Vec<(&'static str, String, i8)> {
        let mut v: Vec<_> = self
            .settings
            .values()
            .into_iter()
            .map(|(k, value, kind)| match k {
                "log.retention.ms" => (k, self.log_retention_ms.to_string(), kind),
                "flush.interval.ms" => (k, self.flush_interval().as_millis().to_string(), kind),
                _ => (k, value, kind),
            })
            .filter(|(_, value, _)| !value.is_empty())
            .collect();
        v.extend([
            (
                "advertised.listeners",
                format!(
                    "PLAINTEXT://{}:{}",
                    self.advertised_host, self.advertised_port
                ),
                TYPE_STRING,
            ),
            ("broker.id", self.node_id.to_string(), TYPE_INT),
            ("default.replication.factor", "1".into(), TYPE_INT),
            (
                "listeners",
                format!("PLAINTEXT://{}", self.listen),
                TYPE_STRING,
            ),
            ("log.dirs", self.data_dir.display().to_string(), TYPE_STRING),
            (
                "log.segment.bytes",
                self.segment_bytes.to_string(),
                TYPE_INT,
            ),
        ]);
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    pub fn storage(&self) -> streamhouse_storage::StorageConfig {
        let mut s = streamhouse_storage::StorageConfig::new(&self.data_dir);
        s.flush_interval = self.flush_interval();
        s.flush_max_bytes = self.flush_max_bytes;
        s.segment_bytes = self.segment_bytes;
        s.segment_ms = self.segment_ms;
        s.cache_bytes = self.cache_bytes;
        s.metadata = self.metadata.clone();
        s.sync_metadata = self.sync_metadata;
        s.object_store = self.object_store.clone();
        // At least 100 ms: a smaller value would only spin.
        s.retention_check_interval = Self::ms(self.retention_check_interval_ms.max(100));
        s.max_inflight_flushes = self.max_inflight_flushes.max(1);
        s.file_delete_delay = Self::ms(self.file_delete_delay_ms);
        s.compaction_interval = Self::ms(self.compaction_interval_ms);
        s.compaction_min_age = Self::ms(self.compaction_min_age_ms);
        s.read_ahead_bytes = self.read_ahead_bytes;
        s.retention_ms = self.log_retention_ms;
        s.retention_bytes = self.log_retention_bytes;
        s.cleanup_policy = self.log_cleanup_policy.clone();
        s.max_decompressed_bytes = self.message_max_decompressed_bytes;
        s.log_cleaner_enable = self.log_cleaner_enable;
        // At least 100 ms: a smaller value would only spin.
        s.cleaner_backoff = Self::ms(self.log_cleaner_backoff_ms.max(100));
        s.dedupe_buffer_bytes = self.log_cleaner_dedupe_buffer_size;
        s.min_cleanable_ratio = self.log_cleaner_min_cleanable_ratio;
        s.min_compaction_lag_ms = self.log_cleaner_min_compaction_lag_ms;
        s.max_compaction_lag_ms = self.log_cleaner_max_compaction_lag_ms;
        s.delete_retention_ms = self.log_cleaner_delete_retention_ms;
        s.producer_id_expiration_ms = self.producer_id_expiration_ms;
        s.producer_id_expiration_check_interval =
            Self::ms(self.producer_id_expiration_check_interval_ms.max(10));
        s.max_producer_states = self.max_producer_states;
        s
    }

    pub fn groups(&self) -> crate::group::GroupConfig {
        crate::group::GroupConfig {
            initial_rebalance_delay: Self::ms(self.group_initial_rebalance_delay_ms),
            consumer_heartbeat_interval: Self::ms(self.group_consumer_heartbeat_interval_ms),
            offsets_retention: Duration::from_secs(
                self.offsets_retention_minutes.max(1) as u64 * 60,
            ),
            offsets_retention_check_interval: Self::ms(
                self.offsets_retention_check_interval_ms.max(1),
            ),
            classic_max_size: self.group_max_size.max(1) as usize,
            consumer_max_size: self.group_consumer_max_size.max(1) as usize,
            ..Default::default()
        }
    }

    pub fn transactions(&self) -> crate::txn::TxnConfig {
        crate::txn::TxnConfig {
            max_timeout_ms: self.transaction_max_timeout_ms,
            id_expiration_ms: self.transactional_id_expiration_ms,
            abort_check_interval: Self::ms(
                self.transaction_abort_timed_out_transaction_cleanup_interval_ms
                    .max(1),
            ),
            remove_expired_interval: Self::ms(
                self.transaction_remove_expired_transaction_cleanup_interval_ms
                    .max(1),
            ),
            max_ids: self.transactional_id_max.max(1),
        }
    }

    /// Defaults for tests: a loopback port chosen by the OS and the given data folder.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        Self::resolve(Self::test_args(data_dir)).expect("static test config")
    }

    /// The arguments [`for_tests`](Self::for_tests) resolves, to add settings to.
    pub fn test_args(data_dir: PathBuf) -> ServeArgs {
        ServeArgs::default()
            .set("listen", "127.0.0.1:0")
            .set("data_dir", data_dir.display())
    }
}

/// The README's configuration table, generated from [`SETTINGS`].
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| flag | environment | file key | default | what it does |\n|---|---|---|---|---|\n",
    );
    let config = SettingInfo {
        field: "config",
        key: "",
        default: "",
        shown_default: "none",
        doc: "",
        kind: TYPE_STRING,
    };
    out.push_str(&format!(
        "| `--{}` | `{}` | | {} | TOML file with any of these settings, by file key (or field name) |\n",
        config.flag(),
        config.env(),
        config.shown_default
    ));
    for s in SETTINGS {
        let default = if s.shown_default == s.default {
            format!("`{}`", s.default)
        } else {
            s.shown_default.to_string()
        };
        let doc = s.doc.split_whitespace().collect::<Vec<_>>().join(" ");
        out.push_str(&format!(
            "| `--{}` | `{}` | `{}` | {} | {} |\n",
            s.flag(),
            s.env(),
            s.key,
            default,
            doc
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> (tempfile::TempDir, ServeArgs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        (dir, args)
    }

    #[test]
    fn every_default_parses() {
        let c = BrokerConfig::resolve(ServeArgs::default()).unwrap();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 9092)));
        assert_eq!(c.log_retention_ms, 604_800_000);
        assert_eq!(c.flush_interval(), Duration::ZERO);
        assert_eq!(c.message_max_bytes, 1_048_588);
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let (_dir, args) = with_file(
            "\"num.partitions\" = 3\nmessage_max_bytes = 5000\nlisten = \"127.0.0.1:9999\"\n",
        );
        let c = BrokerConfig::resolve(args.set("num_partitions", 6)).unwrap();
        assert_eq!(c.num_partitions, 6);
        assert_eq!(c.message_max_bytes, 5000);
        assert_eq!(c.advertised_port, 9999);
        assert_eq!(c.advertised_host, "127.0.0.1");
    }

    #[test]
    fn log_retention_ms_then_minutes_then_hours() {
        let (_dir, args) = with_file("\"log.retention.hours\" = 2\n");
        let resolve = |a: ServeArgs| BrokerConfig::resolve(a).unwrap().log_retention_ms;
        assert_eq!(resolve(args.clone()), 7_200_000);
        assert_eq!(
            resolve(args.clone().set("log_retention_minutes", 3)),
            180_000
        );
        assert_eq!(
            resolve(
                args.set("log_retention_minutes", 3)
                    .set("log_retention_ms", -1)
            ),
            -1
        );
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_refused() {
        let (_dir, args) = with_file("no_such_setting = 1\n");
        assert!(BrokerConfig::resolve(args).is_err());
        let err = BrokerConfig::resolve(ServeArgs::default().set("num_partitions", "many"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("num.partitions"), "{err}");
    }

    #[test]
    fn flags_and_environment_reach_the_settings() {
        let cmd = ServeArgs::augment_args(ClapCommand::new("serve"));
        let m = cmd
            .try_get_matches_from(["serve", "--num-partitions", "4", "--log-retention-ms", "-1"])
            .unwrap();
        let c = BrokerConfig::resolve(ServeArgs::from_arg_matches(&m).unwrap()).unwrap();
        assert_eq!(c.num_partitions, 4);
        assert_eq!(c.log_retention_ms, -1);
    }

    /// `--metadata` picks the store the storage config opens; a bad value stops the start; the password
    /// never reaches DescribeConfigs.
    #[test]
    fn metadata_selects_the_store_and_hides_its_password() {
        let c = BrokerConfig::resolve(ServeArgs::default()).unwrap();
        assert_eq!(
            c.storage().metadata,
            streamhouse_storage::MetadataLocation::Sqlite
        );
        let url = "postgres://sh:s3cret@127.0.0.1:5432/meta";
        let c = BrokerConfig::resolve(ServeArgs::default().set("metadata", url)).unwrap();
        assert_eq!(
            c.storage().metadata,
            streamhouse_storage::MetadataLocation::Postgres(url.to_string())
        );
        let shown = c.described();
        let (_, value, _) = shown.iter().find(|(k, _, _)| *k == "metadata").unwrap();
        assert_eq!(value, "postgres://sh:****@127.0.0.1:5432/meta");
        assert!(!format!("{c:?}").contains("s3cret"));
        let err = BrokerConfig::resolve(ServeArgs::default().set("metadata", "mysql://x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata"), "{err}");
    }

    /// The README's table is the generated one, so it cannot drift from the code.
    /// `UPDATE_README=1 cargo test -p streamhouse-broker --lib readme` rewrites it.
    #[test]
    fn readme_table_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let table = markdown_table();
        if std::env::var_os("UPDATE_README").is_some() {
            let start = readme.find("| flag | environment |").unwrap();
            let len = readme[start..]
                .find("\n\n")
                .map(|n| n + 1)
                .unwrap_or(readme.len() - start);
            let updated = format!("{}{table}{}", &readme[..start], &readme[start + len..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        assert!(
            readme.contains(&table),
            "README.md's configuration table is out of date (UPDATE_README=1 rewrites it):\n\n{table}"
        );
    }
}
