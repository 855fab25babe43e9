//! ApiVersions (key 18), versions 0-4.
//! v1: throttle_time_ms. v2: same as v1. v3: flexible, client software name/version (KIP-511),
//! supported/finalized features. v4: no change (KIP-896 baseline).
//! Features (v3+, KIP-584): `transaction.version`, supported 0-2 and finalized at the broker's
//! `transaction.version` setting (Kafka 4.x finalizes 2 on a new cluster): at 2, Java clients use
//! KIP-890's version 2 protocol (no AddPartitionsToTxn, EndTxn v5 bumping the epoch).
//! A request at a version above 4 gets a v0 response with UNSUPPORTED_VERSION and the list of APIs, so
//! the client can retry with a version both sides know (KIP-511).

use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::StrBytes;
use streamhouse_protocol::codec::{self, RawRequest};

use super::{ApiSpec, SUPPORTED};
use crate::error;

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::ApiVersions,
    min: 0,
    max: 4,
};

/// The highest transaction.version this broker serves.
pub const MAX_TRANSACTION_VERSION: i16 = 2;

/// Returns the version to encode the response at, and the response; `transaction_version` is the
/// finalized level of the `transaction.version` feature.
pub fn handle_raw(raw: &RawRequest, transaction_version: i16) -> (i16, ApiVersionsResponse) {
    let version = raw.header.request_api_version;
    let api_keys: Vec<ApiVersion> = SUPPORTED
        .iter()
        .map(|s| {
            // Kafka 4.x advertises Produce from v0 though it serves v3+ only (KAFKA-18659):
            // librdkafka before 2.x checks Produce v0 to decide whether a broker takes lz4, and sends
            // uncompressed batches otherwise. Requests below v3 are still refused.
            let min = if s.key == ApiKey::Produce { 0 } else { s.min };
            ApiVersion::default()
                .with_api_key(s.key as i16)
                .with_min_version(min)
                .with_max_version(s.max)
        })
        .collect();
    let name = StrBytes::from_static_str("transaction.version");
    let mut resp = ApiVersionsResponse::default()
        .with_api_keys(api_keys)
        .with_supported_features(vec![SupportedFeatureKey::default()
            .with_name(name.clone())
            .with_min_version(0)
            .with_max_version(MAX_TRANSACTION_VERSION)])
        // One broker whose features never change: epoch 1 from the start.
        .with_finalized_features_epoch(1)
        .with_finalized_features(vec![FinalizedFeatureKey::default()
            .with_name(name)
            .with_min_version_level(transaction_version)
            .with_max_version_level(transaction_version)]);
    if !(API.min..=API.max).contains(&version) {
        return (0, resp.with_error_code(error::UNSUPPORTED_VERSION));
    }
    // v3+ carries the client's name and version; an unparsable body is INVALID_REQUEST.
    if codec::decode_body::<ApiVersionsRequest>(raw.body.clone(), version, "ApiVersions").is_err() {
        resp = resp.with_error_code(error::INVALID_REQUEST);
    }
    (version, resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn raw(version: i16) -> RawRequest {
        let mut b = BytesMut::new();
        b.put_i16(18);
        b.put_i16(version);
        b.put_i32(5);
        b.put_i16(-1);
        if version >= 3 {
            b.put_u8(0); // header tags
            b.put_slice(&[1, 1, 0]); // empty compact strings, no tags
        }
        codec::decode_request_header(b.freeze()).unwrap()
    }

    #[test]
    fn lists_every_handler_and_falls_back_to_v0() {
        let (v, resp) = handle_raw(&raw(3), 2);
        assert_eq!((v, resp.error_code), (3, 0));
        let f = &resp.finalized_features[0];
        assert_eq!(
            (f.name.as_str(), f.max_version_level),
            ("transaction.version", 2)
        );
        assert_eq!(resp.api_keys.len(), SUPPORTED.len());
        assert!(resp
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Produce as i16
                && (k.min_version, k.max_version) == (0, 13)));
        let (v, resp) = handle_raw(&raw(99), 2);
        assert_eq!((v, resp.error_code), (0, error::UNSUPPORTED_VERSION));
        assert_eq!(resp.api_keys.len(), SUPPORTED.len());
    }
}
