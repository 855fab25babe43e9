//! Segments in an object store (S3, or any `object_store` backend: `memory://` for tests, `file://`).
//!
//! Each flush becomes one object holding the blocks of every partition written in that interval plus
//! the footer index, so the PUT rate depends on the flush rate, not on the number of partitions. The
//! object is PUT (with the client's retries, backoff and jitter) before the metadata commit; an object
//! whose commit never happened is garbage-collected at the next start.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, RetryConfig};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::StorageError;

/// Requests made so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectCounters {
    pub puts: u64,
    pub gets: u64,
    pub get_bytes: u64,
    pub deletes: u64,
}

/// The object store and where under it the segments go.
pub struct ObjectSegments {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    pub puts: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub deletes: AtomicU64,
}

fn store_error(e: object_store::Error) -> StorageError {
    StorageError::Io(std::io::Error::other(e.to_string()))
}

/// How long the client keeps retrying one request before the flush fails (and producers get a
/// retriable error instead of waiting forever).
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);

impl ObjectSegments {
    /// `s3://bucket/prefix` (endpoint, region and credentials from the standard AWS_* variables),
    /// `memory://`, or `file:///path`.
    pub fn open(url: &str) -> Result<ObjectSegments, StorageError> {
        let bad = |m: String| StorageError::Io(std::io::Error::other(m));
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("storage url {url}: {e}")))?;
        let retry = RetryConfig {
            max_retries: 10,
            retry_timeout: RETRY_TIMEOUT,
            ..Default::default()
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match parsed.scheme() {
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .ok_or_else(|| bad(format!("{url}: no bucket")))?;
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry);
                // AWS_ENDPOINT_URL is what the AWS SDKs read; accept it (and http:// endpoints) here too.
                if let Ok(endpoint) =
                    std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"))
                {
                    b = b
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_endpoint(endpoint);
                }
                if let Ok(region) =
                    std::env::var("AWS_REGION").or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                {
                    b = b.with_region(region);
                }
                (
                    Arc::new(b.build().map_err(store_error)?),
                    parsed.path().to_string(),
                )
            }
            "memory" => (
                Arc::new(object_store::memory::InMemory::new()),
                String::new(),
            ),
            "file" => {
                std::fs::create_dir_all(parsed.path())?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(parsed.path())
                    .map_err(store_error)?;
                (Arc::new(fs), String::new())
            }
            other => {
                return Err(bad(format!(
                    "unsupported storage scheme {other}:// (use s3://, memory:// or file://)"
                )))
            }
        };
        Ok(Self::with_store(store, &prefix))
    }

    /// Segments under `prefix` of an already built store (embedding, tests with fault injection).
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str) -> ObjectSegments {
        ObjectSegments {
            store,
            prefix: Path::from(prefix.trim_matches('/')),
            puts: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            get_bytes: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
        }
    }

    fn dir(&self) -> Path {
        self.prefix.child("segments")
    }

    fn path(&self, id: u64) -> Path {
        self.dir().child(format!("{id:020}.seg"))
    }

    pub async fn put(&self, id: u64, object: Vec<u8>) -> Result<(), StorageError> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.store
            .put(&self.path(id), PutPayload::from(object))
            .await
            .map_err(store_error)?;
        Ok(())
    }

    pub fn counters(&self) -> ObjectCounters {
        ObjectCounters {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            get_bytes: self.get_bytes.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
        }
    }

    /// Deletes a segment object (one already gone is fine).
    pub async fn delete(&self, id: u64) -> Result<(), StorageError> {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        match self.store.delete(&self.path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// A ranged GET of only the bytes one block needs.
    pub async fn read_range(
        &self,
        id: u64,
        position: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.get_bytes.fetch_add(len, Ordering::Relaxed);
        self.store
            .get_range(&self.path(id), position..position + len)
            .await
            .map_err(store_error)
    }

    /// Deletes segment objects the metadata store does not know: uploads whose commit never happened.
    pub async fn collect_garbage(&self, known: &HashSet<u64>) -> Result<usize, StorageError> {
        let mut listing = self.store.list(Some(&self.dir()));
        let mut orphans = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(store_error)?;
            let id = meta
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if !id.is_some_and(|id| known.contains(&id)) {
                orphans.push(meta.location);
            }
        }
        tracing::info!(
            objects = orphans.len(),
            "deleting segment objects the metadata does not reference (never committed, or retired)"
        );
        let n = orphans.len();
        futures_util::stream::iter(orphans)
            .map(|path| async move {
                match self.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(store_error(e)),
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(n)
    }

    /// The highest segment id present in the store (ids must never be reused, even for orphans).
    pub async fn max_id(&self) -> Result<u64, StorageError> {
        let mut listing = self.store.list(Some(&self.dir()));
        let mut max = 0;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(store_error)?;
            if let Some(id) = meta
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                max = max.max(id);
            }
        }
        Ok(max)
    }
}
