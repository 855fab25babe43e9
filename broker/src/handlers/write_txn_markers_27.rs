//! WriteTxnMarkers (key 27), version 1.
//! v1: flexible (v0 is gone since Kafka 4.0). Meant for a transaction coordinator to write markers on
//! a partition leader; the admin client uses it for `kafka-transactions abort` of a hanging
//! transaction (one the coordinator no longer knows). Each marker is written into its partitions in
//! one append, checked like the coordinator's own: a marker of an epoch older than the producer's on
//! the partition is INVALID_PRODUCER_EPOCH (Kafka's appendEndTxnMarker), an unknown partition
//! UNKNOWN_TOPIC_OR_PARTITION. The coordinator's state is not touched, as in Kafka.

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    ApiKey, RequestHeader, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use std::sync::Arc;
use streamhouse_protocol::batch::BatchHeader;
use streamhouse_protocol::control::marker_batch;
use streamhouse_storage::AppendBatch;

use super::{ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::WriteTxnMarkers,
    min: 1,
    max: 1,
};

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: WriteTxnMarkersRequest,
) -> Reply<WriteTxnMarkersResponse> {
    let broker = broker.clone();
    Reply::in_order(async move {
        let mut markers = Vec::with_capacity(req.markers.len());
        for m in &req.markers {
            let now = crate::group::now_ms();
            let data = bytes::Bytes::from(marker_batch(
                m.producer_id.0,
                m.producer_epoch,
                m.transaction_result,
                m.coordinator_epoch,
                now,
            ));
            let header = BatchHeader::parse(&data);
            // (topic index, partition, index of its batch in the append or the error).
            let mut slots: Vec<Vec<(i32, Result<usize, i16>)>> = Vec::new();
            let mut batches = Vec::new();
            for t in &m.topics {
                let topic = broker.storage.topic(&t.name);
                let mut per = Vec::with_capacity(t.partition_indexes.len());
                for &index in &t.partition_indexes {
                    let slot = match (
                        topic.as_ref().filter(|tp| tp.partition(index).is_some()),
                        header,
                    ) {
                        (Some(tp), Some(h)) => {
                            batches.push(AppendBatch {
                                topic: tp.clone(),
                                partition: index,
                                header: h,
                                data: data.clone(),
                            });
                            Ok(batches.len() - 1)
                        }
                        (None, _) => Err(error::UNKNOWN_TOPIC_OR_PARTITION),
                        (_, None) => Err(error::UNKNOWN_SERVER_ERROR),
                    };
                    per.push((index, slot));
                }
                slots.push(per);
            }
            let results = if batches.is_empty() {
                Vec::new()
            } else {
                broker.storage.append(batches).await
            };
            let topics = m
                .topics
                .iter()
                .zip(slots)
                .map(|(t, per)| {
                    let partitions = per
                        .into_iter()
                        .map(|(index, slot)| {
                            let code = match slot {
                                Ok(i) => match results.get(i) {
                                    Some(Ok(_)) => error::NONE,
                                    Some(Err(e)) => e.kafka_error_code(),
                                    None => error::UNKNOWN_SERVER_ERROR,
                                },
                                Err(code) => code,
                            };
                            WritableTxnMarkerPartitionResult::default()
                                .with_partition_index(index)
                                .with_error_code(code)
                        })
                        .collect();
                    WritableTxnMarkerTopicResult::default()
                        .with_name(t.name.clone())
                        .with_partitions(partitions)
                })
                .collect();
            markers.push(
                WritableTxnMarkerResult::default()
                    .with_producer_id(m.producer_id)
                    .with_topics(topics),
            );
        }
        Reply::Now(WriteTxnMarkersResponse::default().with_markers(markers))
    })
}
