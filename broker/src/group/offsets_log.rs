//! `__consumer_offsets` as Kafka's tools read it: every committed offset is also written, once it is
//! durable in the metadata store, as a record of Kafka's own schemas into partition
//! `abs(groupId.hashCode) % partitions` (Kafka's GroupCoordinator.partitionFor), and every offset
//! removed (OffsetDelete, expiry, DeleteGroups, a deleted topic) as a tombstone. The topic is
//! compacted, so it keeps the latest commit per (group, topic, partition), as Kafka's does. Lag
//! monitors that consume it and `kafka-console-consumer --formatter
//! org.apache.kafka.tools.consumer.OffsetsMessageFormatter` work unchanged.
//!
//! The metadata store stays the source of truth (OffsetFetch and restarts read it): the log is
//! written after each commit is durable there, so a crash between the two can leave the log
//! without the last commits, never the group. Records are Kafka's (coordinator-common's
//! OffsetCommitKey version 1, OffsetCommitValue version 3, the newest non-flexible one, which
//! every reader of the topic decodes). A classic group's membership is written too, as Kafka
//! writes it after each rebalance: GroupMetadataKey version 2, GroupMetadataValue version 3, and a
//! tombstone when the group goes. KIP-848 groups' records (key versions 3-8) are not written.

use std::sync::Arc;
use streamhouse_protocol::batch::BatchHeader;
use streamhouse_protocol::control::plain_batch;
use streamhouse_storage::{AppendBatch, Storage};

use super::classic::ClassicGroup;
use super::view::{CommittedOffset, TopicPartition};

pub const TOPIC: &str = "__consumer_offsets";

/// Java's String.hashCode (over UTF-16 code units, wrapping).
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// The partition of `__consumer_offsets` holding `group` (Kafka: Utils.abs(hashCode) % count,
/// where Utils.abs is `n & 0x7fffffff`).
pub fn partition_for(group: &str, partitions: usize) -> i32 {
    ((java_hash(group) & 0x7fff_ffff) as usize % partitions.max(1)) as i32
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Kafka's schema strings are at most i16::MAX bytes; topic names and group ids are checked
    // shorter, metadata is bounded by offset.metadata.max.bytes (4096).
    let b = &s.as_bytes()[..s.len().min(i16::MAX as usize)];
    out.extend_from_slice(&(b.len() as i16).to_be_bytes());
    out.extend_from_slice(b);
}

/// OffsetCommitKey version 1: group, topic, partition.
pub fn commit_key(group: &str, at: &TopicPartition) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + group.len() + at.topic.len());
    k.extend_from_slice(&1i16.to_be_bytes());
    put_str(&mut k, group);
    put_str(&mut k, &at.topic);
    k.extend_from_slice(&at.partition.to_be_bytes());
    k
}

/// OffsetCommitValue version 3: offset, leader epoch, metadata (null as ""), commit timestamp.
pub fn commit_value(o: &CommittedOffset) -> Vec<u8> {
    let metadata = o.metadata.as_deref().unwrap_or("");
    let mut v = Vec::with_capacity(24 + metadata.len());
    v.extend_from_slice(&3i16.to_be_bytes());
    v.extend_from_slice(&o.offset.to_be_bytes());
    v.extend_from_slice(&o.leader_epoch.to_be_bytes());
    put_str(&mut v, metadata);
    v.extend_from_slice(&o.commit_ms.to_be_bytes());
    v
}

/// GroupMetadataKey version 2: the group.
pub fn group_key(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + group.len());
    k.extend_from_slice(&2i16.to_be_bytes());
    put_str(&mut k, group);
    k
}

fn put_nullable_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
    out.extend_from_slice(b);
}

/// GroupMetadataValue version 3 of a classic group (Kafka's GroupMetadataManager.groupMetadataValue):
/// protocol type, generation, protocol, leader, current state timestamp, and each member with its
/// subscription (its metadata for the chosen protocol) and assignment.
pub fn group_value(g: &ClassicGroup, now_ms: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&3i16.to_be_bytes());
    put_str(&mut v, g.protocol_type.as_deref().unwrap_or(""));
    v.extend_from_slice(&g.generation.to_be_bytes());
    put_nullable_str(&mut v, g.protocol_name.as_deref());
    put_nullable_str(&mut v, g.leader.as_deref());
    v.extend_from_slice(&g.empty_since_ms.unwrap_or(now_ms).to_be_bytes());
    let mut members: Vec<_> = g.members.values().collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    v.extend_from_slice(&(members.len() as i32).to_be_bytes());
    for m in members {
        put_str(&mut v, &m.id);
        put_nullable_str(&mut v, m.instance_id.as_deref());
        put_str(&mut v, &m.client_id);
        put_str(&mut v, &m.client_host);
        v.extend_from_slice(
            &(m.rebalance_timeout.as_millis().min(i32::MAX as u128) as i32).to_be_bytes(),
        );
        v.extend_from_slice(
            &(m.session_timeout.as_millis().min(i32::MAX as u128) as i32).to_be_bytes(),
        );
        let subscription = g
            .protocol_name
            .as_deref()
            .map(|p| m.metadata_for(p))
            .unwrap_or_default();
        put_bytes(&mut v, &subscription);
        put_bytes(&mut v, &m.assignment);
    }
    v
}

/// Records for the log: (group, key, value or None for a tombstone).
pub type LogRecord = (String, Vec<u8>, Option<Vec<u8>>);

/// Appends `records` to `__consumer_offsets` (one batch per partition, one flush), if the topic
/// exists; the outcome is not awaited (the commit is already durable in the metadata store). Runs
/// on the group writer's thread, in its order, so a partition's records are in commit order.
pub fn append(storage: &Arc<Storage>, records: Vec<LogRecord>, now_ms: i64) {
    if records.is_empty() {
        return;
    }
    let Some(topic) = storage.topic(TOPIC) else {
        return;
    };
    let n = topic.partitions.len();
    // Records by partition: (key, value).
    type Owned = (Vec<u8>, Option<Vec<u8>>);
    let mut by_partition: std::collections::BTreeMap<i32, Vec<Owned>> = Default::default();
    for (group, key, value) in records {
        by_partition
            .entry(partition_for(&group, n))
            .or_default()
            .push((key, value));
    }
    let batches: Vec<AppendBatch> = by_partition
        .into_iter()
        .filter_map(|(partition, records)| {
            let kv: Vec<streamhouse_protocol::control::KeyValue<'_>> = records
                .iter()
                .map(|(k, v)| (Some(k.as_slice()), v.as_deref()))
                .collect();
            let data = bytes::Bytes::from(plain_batch(&kv, now_ms));
            Some(AppendBatch {
                topic: topic.clone(),
                partition,
                header: BatchHeader::parse(&data)?,
                data,
            })
        })
        .collect();
    // The ticket is dropped: the result arrives with nobody waiting, which the writer allows.
    drop(storage.submit_blocking(batches));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_java_string_hash_code() {
        // Kafka 4.4 put group "probe" in partition 36 of 50 (seen with a real broker).
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("probe"), 106_940_336);
        assert_eq!(partition_for("probe", 50), 36);
        // Negative hashes are masked, not negated (Utils.abs).
        let h = java_hash("polygenelubricants");
        assert_eq!(h, i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
    }

    #[test]
    fn keys_and_values_are_kafkas_schemas() {
        let at = TopicPartition::new("probe-t", 0);
        let k = commit_key("probe", &at);
        // Seen in Kafka 4.4's __consumer_offsets: version 1, "probe", "probe-t", 0.
        assert_eq!(
            k,
            [
                &[0u8, 1, 0, 5][..],
                b"probe",
                &[0, 7],
                b"probe-t",
                &[0, 0, 0, 0]
            ]
            .concat()
        );
        let v = commit_value(&CommittedOffset {
            offset: 1,
            leader_epoch: 0,
            metadata: None,
            commit_ms: 0x01a2_3332_6008,
        });
        assert_eq!(
            v,
            [
                &[0u8, 3][..],
                &1i64.to_be_bytes(),
                &0i32.to_be_bytes(),
                &[0, 0],
                &0x01a2_3332_6008i64.to_be_bytes()
            ]
            .concat()
        );
    }
}
