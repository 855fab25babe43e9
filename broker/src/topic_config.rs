//! The topic configurations StreamHouse knows, their defaults and the broker settings behind them, for
//! CreateTopics validation and DescribeConfigs (kafka-topics --describe shows these), and typed
//! accessors for the ones the broker acts on: the topic's own value, else the broker setting, else
//! Kafka's default (Kafka's LogConfig resolution).

use crate::config::BrokerConfig;
use streamhouse_protocol::compression::Codec;
use streamhouse_protocol::validator::TimestampType;
use streamhouse_storage::TopicConfigs;

/// ConfigSource values from Kafka's DescribeConfigs (KIP-226).
pub const SOURCE_DYNAMIC_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

/// ConfigType values (KIP-569).
pub const TYPE_BOOLEAN: i8 = 1;
pub const TYPE_STRING: i8 = 2;
pub const TYPE_INT: i8 = 3;
pub const TYPE_LONG: i8 = 5;
pub const TYPE_DOUBLE: i8 = 6;
pub const TYPE_LIST: i8 = 7;

pub struct ConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub config_type: i8,
    /// The broker setting that supplies the default (a synonym in DescribeConfigs).
    pub broker_synonym: Option<&'static str>,
}

const fn def(
    name: &'static str,
    default: &'static str,
    config_type: i8,
    broker_synonym: Option<&'static str>,
) -> ConfigDef {
    ConfigDef {
        name,
        default,
        config_type,
        broker_synonym,
    }
}

/// Topic configurations, as Kafka 4.x names and defaults them.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    def(
        "cleanup.policy",
        "delete",
        TYPE_LIST,
        Some("log.cleanup.policy"),
    ),
    def(
        "compression.type",
        "producer",
        TYPE_STRING,
        Some("compression.type"),
    ),
    def(
        "delete.retention.ms",
        "86400000",
        TYPE_LONG,
        Some("log.cleaner.delete.retention.ms"),
    ),
    def(
        "file.delete.delay.ms",
        "60000",
        TYPE_LONG,
        Some("log.segment.delete.delay.ms"),
    ),
    def(
        "flush.messages",
        "9223372036854775807",
        TYPE_LONG,
        Some("log.flush.interval.messages"),
    ),
    def("flush.ms", "9223372036854775807", TYPE_LONG, None),
    def(
        "index.interval.bytes",
        "4096",
        TYPE_INT,
        Some("log.index.interval.bytes"),
    ),
    def(
        "max.compaction.lag.ms",
        "9223372036854775807",
        TYPE_LONG,
        Some("log.cleaner.max.compaction.lag.ms"),
    ),
    def(
        "max.message.bytes",
        "1048588",
        TYPE_INT,
        Some("message.max.bytes"),
    ),
    def(
        "message.timestamp.after.max.ms",
        "3600000",
        TYPE_LONG,
        Some("log.message.timestamp.after.max.ms"),
    ),
    def(
        "message.timestamp.before.max.ms",
        "9223372036854775807",
        TYPE_LONG,
        Some("log.message.timestamp.before.max.ms"),
    ),
    def(
        "message.timestamp.type",
        "CreateTime",
        TYPE_STRING,
        Some("log.message.timestamp.type"),
    ),
    def(
        "min.cleanable.dirty.ratio",
        "0.5",
        TYPE_DOUBLE,
        Some("log.cleaner.min.cleanable.ratio"),
    ),
    def(
        "min.compaction.lag.ms",
        "0",
        TYPE_LONG,
        Some("log.cleaner.min.compaction.lag.ms"),
    ),
    def(
        "min.insync.replicas",
        "1",
        TYPE_INT,
        Some("min.insync.replicas"),
    ),
    def(
        "preallocate",
        "false",
        TYPE_BOOLEAN,
        Some("log.preallocate"),
    ),
    def(
        "retention.bytes",
        "-1",
        TYPE_LONG,
        Some("log.retention.bytes"),
    ),
    def(
        "retention.ms",
        "604800000",
        TYPE_LONG,
        Some("log.retention.ms"),
    ),
    def(
        "segment.bytes",
        "1073741824",
        TYPE_INT,
        Some("log.segment.bytes"),
    ),
    def(
        "segment.index.bytes",
        "10485760",
        TYPE_INT,
        Some("log.index.size.max.bytes"),
    ),
    def(
        "segment.jitter.ms",
        "0",
        TYPE_LONG,
        Some("log.roll.jitter.ms"),
    ),
    def("segment.ms", "604800000", TYPE_LONG, Some("log.roll.ms")),
    def(
        "unclean.leader.election.enable",
        "false",
        TYPE_BOOLEAN,
        Some("unclean.leader.election.enable"),
    ),
];

pub fn topic_config(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|c| c.name == name)
}

/// Topic configurations StreamHouse accepts (clients and tools set them) but does not act on, and why.
/// DescribeConfigs says so in each one's documentation.
pub fn not_applied(name: &str) -> Option<&'static str> {
    Some(match name {
        "segment.jitter.ms" => {
            "segments hold all partitions' data and roll on the broker's segment.bytes and segment.ms"
        }
        "segment.index.bytes" | "index.interval.bytes" => {
            "there are no index files: the block index lives in the metadata store"
        }
        "flush.messages" | "flush.ms" => "every flush is made durable before it is acknowledged",
        "preallocate" => "segments are not preallocated",
        "file.delete.delay.ms" => "the broker's file.delete.delay.ms applies to all segments",
        "min.insync.replicas" | "unclean.leader.election.enable" => {
            "one broker holds the only replica"
        }
        _ => return None,
    })
}

/// The default of a topic config on this broker (broker settings override Kafka's defaults).
pub fn topic_default(def: &ConfigDef, broker: &BrokerConfig) -> (String, i8) {
    match def.name {
        "message.timestamp.type" if broker.log_message_timestamp_type != def.default => (
            broker.log_message_timestamp_type.clone(),
            SOURCE_STATIC_BROKER,
        ),
        "message.timestamp.before.max.ms"
            if broker.log_message_timestamp_before_max_ms != i64::MAX =>
        {
            (
                broker.log_message_timestamp_before_max_ms.to_string(),
                SOURCE_STATIC_BROKER,
            )
        }
        "message.timestamp.after.max.ms"
            if broker.log_message_timestamp_after_max_ms != 3_600_000 =>
        {
            (
                broker.log_message_timestamp_after_max_ms.to_string(),
                SOURCE_STATIC_BROKER,
            )
        }
        "compression.type" if broker.compression_type != def.default => {
            (broker.compression_type.clone(), SOURCE_STATIC_BROKER)
        }
        "max.message.bytes" if broker.message_max_bytes != 1_048_588 => {
            (broker.message_max_bytes.to_string(), SOURCE_STATIC_BROKER)
        }
        "retention.ms" if broker.log_retention_ms != 604_800_000 => {
            (broker.log_retention_ms.to_string(), SOURCE_STATIC_BROKER)
        }
        "cleanup.policy" if broker.log_cleanup_policy != "delete" => {
            (broker.log_cleanup_policy.clone(), SOURCE_STATIC_BROKER)
        }
        // What the broker rolls local segments at. A topic's own value bounds its head for the log
        // cleaner (segments hold all partitions' data, so they do not roll per topic).
        "segment.bytes" => (broker.segment_bytes.to_string(), SOURCE_STATIC_BROKER),
        "segment.ms" => (broker.segment_ms.to_string(), SOURCE_STATIC_BROKER),
        "delete.retention.ms" if broker.log_cleaner_delete_retention_ms != 86_400_000 => (
            broker.log_cleaner_delete_retention_ms.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        "min.compaction.lag.ms" if broker.log_cleaner_min_compaction_lag_ms != 0 => (
            broker.log_cleaner_min_compaction_lag_ms.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        "max.compaction.lag.ms" if broker.log_cleaner_max_compaction_lag_ms != i64::MAX => (
            broker.log_cleaner_max_compaction_lag_ms.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        "min.cleanable.dirty.ratio" if broker.log_cleaner_min_cleanable_ratio != 0.5 => (
            broker.log_cleaner_min_cleanable_ratio.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        "file.delete.delay.ms" if broker.file_delete_delay_ms != 60_000 => (
            broker.file_delete_delay_ms.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        "retention.bytes" if broker.log_retention_bytes != -1 => {
            (broker.log_retention_bytes.to_string(), SOURCE_STATIC_BROKER)
        }
        _ => (def.default.to_string(), SOURCE_DEFAULT),
    }
}

/// `max.message.bytes`: the largest batch a producer may send to the topic (and store after rewriting).
pub fn max_message_bytes(configs: &TopicConfigs, broker: &BrokerConfig) -> i32 {
    configs
        .get("max.message.bytes")
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(broker.message_max_bytes)
}

/// `message.timestamp.type` (broker: `log.message.timestamp.type`; Kafka: CreateTime).
pub fn message_timestamp_type(configs: &TopicConfigs, broker: &BrokerConfig) -> TimestampType {
    configs
        .get("message.timestamp.type")
        .and_then(|v| TimestampType::from_config(v))
        .or_else(|| TimestampType::from_config(&broker.log_message_timestamp_type))
        .unwrap_or(TimestampType::CreateTime)
}

/// `message.timestamp.before.max.ms` (broker: `log.message.timestamp.before.max.ms`; Kafka: Long.MAX).
pub fn message_timestamp_before_max_ms(configs: &TopicConfigs, broker: &BrokerConfig) -> i64 {
    configs
        .get("message.timestamp.before.max.ms")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(broker.log_message_timestamp_before_max_ms)
}

/// `message.timestamp.after.max.ms` (broker: `log.message.timestamp.after.max.ms`; Kafka 4.x: 1 hour).
pub fn message_timestamp_after_max_ms(configs: &TopicConfigs, broker: &BrokerConfig) -> i64 {
    configs
        .get("message.timestamp.after.max.ms")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(broker.log_message_timestamp_after_max_ms)
}

/// `compression.type` (broker: `compression.type`; Kafka: producer) as the codec batches are stored
/// in; `None` for `producer` (each batch keeps its own).
pub fn compression_type(configs: &TopicConfigs, broker: &BrokerConfig) -> Option<Codec> {
    let v = configs
        .get("compression.type")
        .map(String::as_str)
        .unwrap_or(&broker.compression_type);
    Codec::from_config(v)
}

/// `cleanup.policy` (broker: `log.cleanup.policy`; Kafka: delete) contains `compact`.
pub fn is_compacted(configs: &TopicConfigs, broker: &BrokerConfig) -> bool {
    configs
        .get("cleanup.policy")
        .unwrap_or(&broker.log_cleanup_policy)
        .split(',')
        .any(|p| p.trim() == "compact")
}

/// Checks a topic config value; `Err` holds the message for INVALID_CONFIG.
pub fn validate(name: &str, value: Option<&str>) -> Result<(), String> {
    let def = topic_config(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
    let value =
        value.ok_or_else(|| format!("Null value not supported for topic configs: {name}"))?;
    let ok = match def.config_type {
        TYPE_BOOLEAN => matches!(value, "true" | "false"),
        // Kafka's validators (TopicConfig / LogConfig): sizes and counts are at least 0 (or 1).
        TYPE_INT if name == "max.message.bytes" || name == "index.interval.bytes" => {
            value.parse::<i32>().is_ok_and(|v| v >= 0)
        }
        TYPE_INT if name == "segment.bytes" || name == "segment.index.bytes" => {
            value.parse::<i32>().is_ok_and(|v| v >= 1)
        }
        TYPE_INT if name == "min.insync.replicas" => value.parse::<i32>().is_ok_and(|v| v >= 1),
        TYPE_INT => value.parse::<i32>().is_ok(),
        // Kafka: atLeast(0) for the KIP-937 bounds.
        TYPE_LONG if name.starts_with("message.timestamp.") => {
            value.parse::<i64>().is_ok_and(|v| v >= 0)
        }
        // Kafka's LogConfig: min.compaction.lag.ms and delete.retention.ms atLeast(0),
        // max.compaction.lag.ms and segment.ms atLeast(1), min.cleanable.dirty.ratio between(0, 1).
        TYPE_LONG if name == "min.compaction.lag.ms" || name == "delete.retention.ms" => {
            value.parse::<i64>().is_ok_and(|v| v >= 0)
        }
        TYPE_LONG if name == "max.compaction.lag.ms" || name == "segment.ms" => {
            value.parse::<i64>().is_ok_and(|v| v >= 1)
        }
        TYPE_LONG => value.parse::<i64>().is_ok(),
        TYPE_DOUBLE if name == "min.cleanable.dirty.ratio" => {
            value.parse::<f64>().is_ok_and(|v| (0.0..=1.0).contains(&v))
        }
        TYPE_DOUBLE => value.parse::<f64>().is_ok(),
        _ => match name {
            "cleanup.policy" => value
                .split(',')
                .all(|p| matches!(p.trim(), "delete" | "compact")),
            "compression.type" => matches!(
                value,
                "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd"
            ),
            "message.timestamp.type" => matches!(value, "CreateTime" | "LogAppendTime"),
            _ => true,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid value {value} for configuration {name}"))
    }
}

/// Broker configurations shown by DescribeConfigs for the broker resource: (name, value, type).
pub fn broker_configs(c: &BrokerConfig) -> Vec<(&'static str, String, i8)> {
    c.described()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_retention_settings_are_the_topic_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = BrokerConfig::for_tests(dir.path().to_path_buf());
        let retention = topic_config("retention.ms").unwrap();
        assert_eq!(
            topic_default(retention, &c),
            ("604800000".to_string(), SOURCE_DEFAULT)
        );
        c.log_retention_ms = 3_600_000;
        assert_eq!(
            topic_default(retention, &c),
            ("3600000".to_string(), SOURCE_STATIC_BROKER)
        );
        assert!(broker_configs(&c)
            .iter()
            .any(|(n, v, _)| *n == "log.retention.ms" && v == "3600000"));
    }

    #[test]
    fn accessors_take_the_topic_value_then_the_broker_setting_then_kafkas_default() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = BrokerConfig::for_tests(dir.path().to_path_buf());
        let mut t = TopicConfigs::new();
        assert_eq!(message_timestamp_type(&t, &c), TimestampType::CreateTime);
        assert_eq!(message_timestamp_before_max_ms(&t, &c), i64::MAX);
        assert_eq!(message_timestamp_after_max_ms(&t, &c), 3_600_000);
        assert_eq!(compression_type(&t, &c), None);
        assert!(!is_compacted(&t, &c));
        c.log_cleanup_policy = "compact".into();
        assert!(is_compacted(&t, &c));
        c.log_message_timestamp_type = "LogAppendTime".into();
        c.log_message_timestamp_before_max_ms = 5;
        c.log_message_timestamp_after_max_ms = 6;
        c.compression_type = "zstd".into();
        assert_eq!(message_timestamp_type(&t, &c), TimestampType::LogAppendTime);
        assert_eq!(message_timestamp_before_max_ms(&t, &c), 5);
        assert_eq!(message_timestamp_after_max_ms(&t, &c), 6);
        assert_eq!(compression_type(&t, &c), Some(Codec::Zstd));
        for (k, v) in [
            ("message.timestamp.type", "CreateTime"),
            ("message.timestamp.before.max.ms", "7"),
            ("message.timestamp.after.max.ms", "8"),
            ("compression.type", "uncompressed"),
            ("cleanup.policy", "delete,compact"),
            ("max.message.bytes", "99"),
        ] {
            t.insert(k.into(), v.into());
        }
        assert_eq!(message_timestamp_type(&t, &c), TimestampType::CreateTime);
        assert_eq!(message_timestamp_before_max_ms(&t, &c), 7);
        assert_eq!(message_timestamp_after_max_ms(&t, &c), 8);
        assert_eq!(compression_type(&t, &c), Some(Codec::None));
        assert!(is_compacted(&t, &c));
        t.insert("cleanup.policy".into(), "delete".into());
        assert!(!is_compacted(&t, &c));
        assert_eq!(max_message_bytes(&t, &c), 99);
        t.insert("compression.type".into(), "producer".into());
        assert_eq!(compression_type(&t, &c), None);
    }

    #[test]
    fn broker_settings_are_the_defaults_describe_configs_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = BrokerConfig::for_tests(dir.path().to_path_buf());
        let d = |n| topic_default(topic_config(n).unwrap(), &c);
        assert_eq!(d("compression.type"), ("producer".into(), SOURCE_DEFAULT));
        assert_eq!(
            d("message.timestamp.type"),
            ("CreateTime".into(), SOURCE_DEFAULT)
        );
        c.log_message_timestamp_type = "LogAppendTime".into();
        c.compression_type = "gzip".into();
        c.log_message_timestamp_after_max_ms = 10;
        c.log_message_timestamp_before_max_ms = 20;
        let d = |n| topic_default(topic_config(n).unwrap(), &c);
        assert_eq!(d("compression.type"), ("gzip".into(), SOURCE_STATIC_BROKER));
        assert_eq!(
            d("message.timestamp.type"),
            ("LogAppendTime".into(), SOURCE_STATIC_BROKER)
        );
        assert_eq!(
            d("message.timestamp.after.max.ms"),
            ("10".into(), SOURCE_STATIC_BROKER)
        );
        assert_eq!(
            d("message.timestamp.before.max.ms"),
            ("20".into(), SOURCE_STATIC_BROKER)
        );
        let shown = broker_configs(&c);
        for (n, v) in [
            ("compression.type", "gzip"),
            ("log.message.timestamp.type", "LogAppendTime"),
            ("log.message.timestamp.after.max.ms", "10"),
            ("message.max.decompressed.bytes", "67108864"),
        ] {
            assert!(shown.iter().any(|(k, x, _)| *k == n && x == v), "{n}");
        }
        assert!(validate("message.timestamp.after.max.ms", Some("-1")).is_err());
    }

    #[test]
    fn defaults_are_what_the_broker_applies_and_unapplied_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let c = BrokerConfig::for_tests(dir.path().to_path_buf());
        let seg = topic_config("segment.bytes").unwrap();
        assert_eq!(
            topic_default(seg, &c),
            (c.segment_bytes.to_string(), SOURCE_STATIC_BROKER)
        );
        assert!(not_applied("segment.jitter.ms").is_some());
        assert!(
            not_applied("segment.bytes").is_none(),
            "bounds a compacted topic's head"
        );
        assert!(not_applied("min.cleanable.dirty.ratio").is_none());
        assert!(not_applied("retention.ms").is_none());
        assert!(not_applied("cleanup.policy").is_none());
    }

    #[test]
    fn validates_names_and_values() {
        assert!(validate("retention.ms", Some("1000")).is_ok());
        assert!(validate("retention.ms", Some("soon")).is_err());
        assert!(validate("cleanup.policy", Some("compact,delete")).is_ok());
        assert!(validate("no.such.config", Some("1")).is_err());
        assert!(validate("retention.ms", None).is_err());
        // Kafka rejects a negative max.message.bytes (it used to disable the size check here).
        assert!(validate("max.message.bytes", Some("-1")).is_err());
        assert!(validate("max.message.bytes", Some("0")).is_ok());
        assert!(validate("segment.bytes", Some("0")).is_err());
        assert!(validate("min.cleanable.dirty.ratio", Some("0.01")).is_ok());
        assert!(validate("min.cleanable.dirty.ratio", Some("1.5")).is_err());
        assert!(validate("max.compaction.lag.ms", Some("0")).is_err());
        assert!(validate("delete.retention.ms", Some("-1")).is_err());
    }
}
