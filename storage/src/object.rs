//! Segments in an object store (S3, or any `object_store` backend: `memory://` for tests, `file://`).
//!
//! Each flush becomes one object holding the blocks of every partition written in that interval plus
//! the footer index, so the PUT rate depends on the flush rate, not on the number of partitions. The
//! object is PUT (with the client's retries, backoff and jitter) before the metadata commit, after an
//! upload intent for it is recorded in the metadata store; an object whose commit never happened is
//! deleted at the next start because its intent is left behind. Nothing is ever deleted because a
//! listing shows it: other brokers, or other clusters, may share the bucket.

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, RetryConfig};
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
    /// fsyncs of objects written through `file://`.
    pub local_syncs: u64,
}

/// The object store and where under it the segments go.
pub struct ObjectSegments {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// For `file://`: the folder the store writes under. object_store's local backend renames a temp
    /// file into place without fsync; a PUT here must be as durable as one to S3, so it is fsync'd.
    local_root: Option<std::path::PathBuf>,
    pub puts: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub deletes: AtomicU64,
    pub local_syncs: AtomicU64,
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
                let mut segments = Self::with_store(Arc::new(fs), "");
                segments.local_root = Some(std::path::PathBuf::from(parsed.path()));
                return Ok(segments);
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
            local_root: None,
            puts: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            get_bytes: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            local_syncs: AtomicU64::new(0),
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
        let path = self.path(id);
        self.store
            .put(&path, PutPayload::from(object))
            .await
            .map_err(store_error)?;
        self.sync_local(&path).await
    }

    /// `file://` only: fsyncs the object written at `path` and its folder's entry for it.
    async fn sync_local(&self, path: &Path) -> Result<(), StorageError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = path
            .parts()
            .fold(root.clone(), |p, part| p.join(part.as_ref()));
        self.local_syncs.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok::<_, StorageError>(())
        })
        .await
        .map_err(|_| StorageError::TaskFailed("an object fsync"))?
    }

    pub fn counters(&self) -> ObjectCounters {
        ObjectCounters {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            get_bytes: self.get_bytes.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            local_syncs: self.local_syncs.load(Ordering::Relaxed),
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

    /// Whether anything at all is stored under the prefix (one listed key is enough). Used only to
    /// refuse starting over data this broker cannot prove it owns; never to decide what to delete.
    pub async fn holds_data(&self) -> Result<bool, StorageError> {
        let mut listing = self.store.list(Some(&self.prefix));
        match listing.next().await {
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(store_error(e)),
            None => Ok(false),
        }
    }

    /// Whether segment `id`'s object exists.
    pub async fn exists(&self, id: u64) -> Result<bool, StorageError> {
        match self.store.head(&self.path(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    fn marker_path(&self) -> Path {
        self.prefix.child(MARKER)
    }

    /// The cluster id written in the prefix's marker object, if there is one.
    pub async fn read_marker(&self) -> Result<Option<String>, StorageError> {
        let bytes = match self.store.get(&self.marker_path()).await {
            Ok(r) => r.bytes().await.map_err(store_error)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error(e)),
        };
        let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| {
            StorageError::Io(std::io::Error::other(format!(
                "{} is not a StreamHouse cluster marker: {e}",
                self.marker_path()
            )))
        })?;
        Ok(Some(marker.cluster_id))
    }

    /// Writes the marker with `cluster_id` unless one exists; returns the id the marker holds then
    /// (another broker may have written its own first).
    pub async fn write_marker(&self, cluster_id: &str) -> Result<String, StorageError> {
        let body = serde_json::to_vec(&Marker {
            cluster_id: cluster_id.to_string(),
        })
        .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
        let create = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        let path = self.marker_path();
        match self
            .store
            .put_opts(&path, PutPayload::from(body.clone()), create)
            .await
        {
            Ok(_) => self.sync_local(&path).await?,
            Err(object_store::Error::AlreadyExists { .. }) => {}
            // Stores without conditional PUT: a plain one (the marker was absent a moment ago).
            Err(object_store::Error::NotImplemented) => {
                self.store
                    .put(&path, PutPayload::from(body))
                    .await
                    .map_err(store_error)?;
                self.sync_local(&path).await?;
            }
            Err(e) => return Err(store_error(e)),
        }
        self.read_marker().await?.ok_or_else(|| {
            StorageError::Io(std::io::Error::other(format!(
                "{path} vanished after writing it"
            )))
        })
    }
}

/// The object at `<prefix>/cluster.json`: which cluster's segments live under the prefix.
const MARKER: &str = "cluster.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    cluster_id: String,
}
