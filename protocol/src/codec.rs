//! Request header decoding and response encoding.
//!
//! The header's own version depends on the api key and version (flexible versions use header v2 with
//! tagged fields), so the first four bytes are read by hand before the header is decoded.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

/// Why a request could not be decoded. The connection is closed after these, as Kafka does for a
/// request it cannot parse (InvalidRequestException in its RequestContext).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("request too short for a header ({0} bytes)")]
    ShortHeader(usize),
    #[error("unknown api key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: anyhow_like::Error,
    },
    #[error("cannot encode response: {0}")]
    Encode(String),
}

/// `kafka-protocol` reports errors as `anyhow::Error`; keep that dependency out of our public API.
pub mod anyhow_like {
    #[derive(Debug)]
    pub struct Error(pub String);
    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Error {}
}

fn malformed(what: &'static str, e: impl std::fmt::Display) -> CodecError {
    CodecError::Malformed {
        what,
        source: anyhow_like::Error(e.to_string()),
    }
}

/// A request whose header is decoded and whose body is still bytes.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Decodes the header of one request frame.
pub fn decode_request_header(mut frame: Bytes) -> Result<RawRequest, CodecError> {
    if frame.len() < 8 {
        return Err(CodecError::ShortHeader(frame.len()));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(api_key).map_err(|_| CodecError::UnknownApiKey {
        api_key,
        correlation_id,
    })?;
    let header_version = key.request_header_version(api_version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| malformed("request header", e))?;
    Ok(RawRequest {
        api_key: key,
        header,
        body: frame,
    })
}

/// Decodes a request body at the version its header names.
pub fn decode_body<T: Decodable>(
    mut body: Bytes,
    version: i16,
    what: &'static str,
) -> Result<T, CodecError> {
    T::decode(&mut body, version).map_err(|e| malformed(what, e))
}

/// Encodes a response frame: size prefix, response header (v0 or v1 by api and version), body.
pub fn encode_response<T: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    body: &T,
) -> Result<Bytes, CodecError> {
    let header_version = T::header_version(version);
    let body_size = body
        .compute_size(version)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(4 + 4 + 1 + body_size);
    buf.put_i32(0); // patched below
    buf.put_i32(correlation_id);
    if header_version >= 1 {
        buf.put_u8(0); // empty tagged fields
    }
    body.encode(&mut buf, version)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// The size of the frame [`encode_response`] makes, without encoding it.
pub fn response_size<T: Encodable + HeaderVersion>(
    version: i16,
    body: &T,
) -> Result<usize, CodecError> {
    let header = if T::header_version(version) >= 1 {
        5
    } else {
        4
    };
    let body_size = body
        .compute_size(version)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(4 + header + body_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{MetadataRequest, RequestHeader};
    use kafka_protocol::protocol::StrBytes;

    fn request_bytes<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_flexible_and_legacy_headers() {
        for version in [4, 12] {
            let req = request_bytes(ApiKey::Metadata, version, &MetadataRequest::default());
            let raw = decode_request_header(req).unwrap();
            assert_eq!(raw.api_key, ApiKey::Metadata);
            assert_eq!(raw.header.correlation_id, 7);
            let body: MetadataRequest = decode_body(raw.body, version, "metadata").unwrap();
            assert!(body.topics.unwrap_or_default().is_empty());
        }
    }

    #[test]
    fn unknown_api_key_keeps_correlation_id() {
        let frame = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 9, 0xff, 0xff]);
        assert!(matches!(
            decode_request_header(frame),
            Err(CodecError::UnknownApiKey {
                api_key: 0x7f00,
                correlation_id: 9
            })
        ));
    }

    /// Known hole in kafka-protocol 0.18 (vendored and patched): an array count of 2^31-1 must not
    /// reserve memory for 2^31-1 elements.
    #[test]
    fn huge_array_count_does_not_allocate() {
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Metadata as i16);
        frame.put_i16(4);
        frame.put_i32(1);
        frame.put_i16(-1); // null client id
        frame.put_i32(i32::MAX); // topics count
        let raw = decode_request_header(frame.freeze()).unwrap();
        assert!(decode_body::<MetadataRequest>(raw.body, 4, "metadata").is_err());
        // Flexible version: compact array count as an unsigned varint.
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Metadata as i16);
        frame.put_i16(12);
        frame.put_i32(1);
        frame.put_i16(-1);
        frame.put_u8(0); // header tagged fields
        frame.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]);
        let raw = decode_request_header(frame.freeze()).unwrap();
        assert!(decode_body::<MetadataRequest>(raw.body, 12, "metadata").is_err());
    }

    proptest::proptest! {
        /// Any bytes at all as a request header: decoding returns, it never panics or aborts. (Every
        /// served API's body decoder is reached through the broker's own dispatch, with the list of
        /// APIs taken from what it serves: broker/tests/fuzz_handlers.rs and the cargo-fuzz target.)
        #[test]
        fn decoding_arbitrary_headers_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_request_header(Bytes::from(data));
        }
    }
}
