//! `--metrics-listen`: a plain HTTP endpoint with counters in the Prometheus text format, for
//! benchmarks and operators: object-store requests, block-cache hits and misses, and log sizes.
//!
//! Deliberately tiny: every request on the socket gets the current text, whatever its path.

use std::fmt::Write as _;
use std::sync::Arc;
use streamhouse_storage::engine::CleanableRange;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::Broker;

/// Serves the metrics text until the listener fails or the process ends.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        let (mut socket, _) = crate::server::accept_with_backoff(|| listener.accept()).await;
        let broker = broker.clone();
        tokio::spawn(async move {
            // Read (and ignore) the request head; at most 8 KiB, at most 5 s.
            let mut buf = [0u8; 8192];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf))
                .await;
            let body = render(&broker);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
        });
    }
}

/// The metrics text.
pub fn render(broker: &Broker) -> String {
    let storage = &broker.storage;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    if let Some(c) = storage.object_counters() {
        metric(
            "streamhouse_object_puts_total",
            "counter",
            "Segment objects PUT.",
            c.puts,
        );
        metric(
            "streamhouse_object_gets_total",
            "counter",
            "Ranged GETs of segment objects.",
            c.gets,
        );
        metric(
            "streamhouse_object_get_bytes_total",
            "counter",
            "Bytes fetched by GETs.",
            c.get_bytes,
        );
        metric(
            "streamhouse_object_deletes_total",
            "counter",
            "Segment objects deleted.",
            c.deletes,
        );
    }
    let cache = storage.cache_stats();
    metric(
        "streamhouse_cache_hits_total",
        "counter",
        "Block lookups served from the cache.",
        cache.hits,
    );
    metric(
        "streamhouse_cache_misses_total",
        "counter",
        "Block lookups read from storage.",
        cache.misses,
    );
    metric(
        "streamhouse_cache_bytes",
        "gauge",
        "Bytes held by the block cache.",
        cache.weight,
    );
    let cleaner = storage.cleaner_stats();
    metric(
        "streamhouse_cleaner_passes_total",
        "counter",
        "Log cleaner passes (key compaction of compacted topics).",
        cleaner.passes,
    );
    metric(
        "streamhouse_cleaner_partitions_cleaned_total",
        "counter",
        "Partition cleanings done by the log cleaner.",
        cleaner.totals.partitions as u64,
    );
    metric(
        "streamhouse_cleaner_busy_milliseconds_total",
        "counter",
        "Wall-clock milliseconds the log cleaner spent cleaning partitions.",
        cleaner.totals.millis,
    );
    metric(
        "streamhouse_cleaner_read_bytes_total",
        "counter",
        "Raw bytes the log cleaner read.",
        cleaner.totals.bytes_in,
    );
    metric(
        "streamhouse_cleaner_written_bytes_total",
        "counter",
        "Raw bytes the log cleaner wrote (what it kept).",
        cleaner.totals.bytes_out,
    );
    metric(
        "streamhouse_cleaner_reads_total",
        "counter",
        "Ranged reads (S3: GETs) of the log cleaner.",
        cleaner.totals.reads as u64,
    );
    metric(
        "streamhouse_cleaner_segments_written_total",
        "counter",
        "Segments (S3: objects PUT) the log cleaner wrote.",
        cleaner.totals.segments_out as u64,
    );
    let topics = storage.topics();
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    metric(
        "streamhouse_topics",
        "gauge",
        "Topics.",
        topics.len() as u64,
    );
    metric(
        "streamhouse_partitions",
        "gauge",
        "Partitions.",
        partitions as u64,
    );
    type Gauge = (&'static str, &'static str, fn(&CleanableRange) -> u64);
    let gauges: [Gauge; 2] = [
        (
            "streamhouse_cleaner_dirty_bytes",
            "Cleanable bytes not yet cleaned, per compacted partition, at the last cleaner pass.",
            |r| r.dirty_bytes,
        ),
        (
            "streamhouse_cleaner_clean_bytes",
            "Bytes already cleaned, per compacted partition, at the last cleaner pass.",
            |r| r.clean_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (topic, partition, r) in &cleaner.partitions {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{}\",partition=\"{partition}\"}} {}",
                label(topic),
                value(r)
            );
        }
    }
    out
}

/// A Prometheus label value: backslash, quote and newline escaped (topic names cannot hold them, but
/// the text format must not depend on that).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_endpoint_answers_with_counters() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::BrokerConfig::for_tests(dir.path().to_path_buf());
        config.object_store = Some("memory://".into());
        let broker = Broker::open(config).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, broker));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(
            text.contains("\nstreamhouse_object_puts_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\nstreamhouse_cache_misses_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE streamhouse_cleaner_busy_milliseconds_total counter\n"),
            "{text}"
        );
    }
}
