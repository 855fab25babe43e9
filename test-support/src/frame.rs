//! Kafka request framing with the vendored kafka-protocol crate (a size-prefixed header + body),
//! response decoding, and a socket client built on them that pipelines requests and reads answers.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request's header and body, without the size prefix (what a broker's decoder gets), from
/// client `client_id` (None: a null client id).
pub fn request_bytes<Req: Encodable>(
    client_id: Option<&'static str>,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    req: &Req,
) -> BytesMut {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(client_id.map(StrBytes::from_static_str));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, key.request_header_version(version))
        .unwrap();
    req.encode(&mut body, version).unwrap();
    body
}

/// One request frame, size prefix included, from client id "test".
pub fn frame<Req: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    req: &Req,
) -> BytesMut {
    frame_as(Some("test"), key, version, correlation_id, req)
}

/// [`frame`] from another client id (None: a null one).
pub fn frame_as<Req: Encodable>(
    client_id: Option<&'static str>,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    req: &Req,
) -> BytesMut {
    let body = request_bytes(client_id, key, version, correlation_id, req);
    let mut frame = BytesMut::with_capacity(4 + body.len());
    frame.put_i32(body.len() as i32);
    frame.put_slice(&body);
    frame
}

/// A response frame's body (size prefix stripped) decoded as `key`'s response at `version`:
/// (correlation id, response).
pub fn decode_response<Resp: Decodable>(key: ApiKey, version: i16, mut body: Bytes) -> (i32, Resp) {
    let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
        .unwrap_or_else(|e| panic!("{key:?} v{version} response header: {e}"));
    let resp =
        Resp::decode(&mut body, version).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
    assert!(
        !body.has_remaining(),
        "{key:?} v{version}: {} bytes after the response",
        body.remaining()
    );
    (header.correlation_id, resp)
}

/// A connection to a broker that frames requests with increasing correlation ids.
pub struct Client {
    stream: TcpStream,
    next_id: i32,
    timeout: Duration,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            next_id: 1,
            timeout: Duration::from_secs(30),
        }
    }

    /// How long a read waits for an answer (30 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Encodes a request frame with the next correlation id (to pipeline: `send` several, then
    /// `recv` each answer in order).
    pub fn frame<Req: Encodable>(&mut self, key: ApiKey, version: i16, req: &Req) -> BytesMut {
        let id = self.next_id;
        self.next_id += 1;
        frame(key, version, id, req)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next answer, decoded as `key`'s response (answers come in request order; wire.rs checks
    /// that, so the correlation id is not).
    pub async fn recv<Resp: Decodable>(&mut self, key: ApiKey, version: i16) -> Resp {
        let body = self.read_frame().await.expect("an answer in time");
        decode_response(key, version, body).1
    }

    /// Sends a request and returns the answer (its correlation id checked), or None if the broker
    /// closed the connection.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Option<Resp> {
        let id = self.next_id;
        let f = self.frame(key, version, req);
        self.stream.write_all(&f).await.ok()?;
        let body = self.read_frame().await?;
        let (got, resp) = decode_response(key, version, body);
        assert_eq!(got, id, "correlation id");
        Some(resp)
    }

    /// [`call`](Self::call), for a broker that must answer.
    pub async fn must<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Resp {
        self.call(key, version, req).await.expect("an answer")
    }

    /// The next frame's body, or None on a closed connection or after the timeout.
    pub async fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        tokio::time::timeout(self.timeout, self.stream.read_exact(&mut len))
            .await
            .ok()?
            .ok()?;
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).await.ok()?;
        Some(Bytes::from(buf))
    }

    /// True if the broker closed the connection (read returns EOF or reset) within a few seconds.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
