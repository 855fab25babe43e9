//! Which cluster a metadata store and an object-store prefix belong to, checked before anything in the
//! store is touched.
//!
//! The cluster id lives in the metadata store, and in S3 mode also in a marker object at the prefix
//! (`<prefix>/cluster.json`), written at the first start. A broker starts only when the two agree, so an
//! empty or wrong `--data-dir` (a fresh SQLite database) pointed at a prefix that holds another
//! cluster's segments refuses to start instead of treating those segments as its own garbage. Objects
//! are deleted only when the metadata store proves they are ours: retired segments and upload intents.

use std::path::Path;
use std::sync::Arc;

use crate::metadata::MetadataStore;
use crate::object::ObjectSegments;
use crate::StorageError;

/// A new cluster id. Kafka's are 22-character base64 UUIDs; any stable string works for clients.
fn new_cluster_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..22].to_string()
}

/// Returns the cluster id, creating it (and the marker) on the first start; `Refused` when the metadata
/// store and the object-store prefix do not belong together. Brokers before the id moved into the
/// metadata store kept it in `<data dir>/cluster_id`: that value is adopted.
pub(super) async fn cluster_id(
    meta: &Arc<dyn MetadataStore>,
    objects: Option<&ObjectSegments>,
    data_dir: &Path,
) -> Result<String, StorageError> {
    let m = meta.clone();
    let legacy = std::fs::read_to_string(data_dir.join("cluster_id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let (stored, live_segments) = tokio::task::spawn_blocking(move || {
        let stored = match (m.cluster_id()?, legacy) {
            (None, Some(old)) => Some(m.init_cluster_id(&old)?),
            (id, _) => id,
        };
        let live: Vec<u64> = m.segments()?.iter().map(|s| s.id).collect();
        Ok::<_, StorageError>((stored, live))
    })
    .await
    .map_err(|_| StorageError::TaskFailed("reading the cluster id"))??;

    let Some(objects) = objects else {
        return init(meta, stored.unwrap_or_else(new_cluster_id)).await;
    };
    match (stored, objects.read_marker().await?) {
        (Some(mine), Some(theirs)) if mine == theirs => Ok(mine),
        (Some(mine), Some(theirs)) => Err(StorageError::Refused(format!(
            "the object store prefix belongs to cluster {theirs}, but this metadata store (--data-dir) \
             is cluster {mine}'s; point both at the same cluster"
        ))),
        (None, Some(theirs)) => Err(StorageError::Refused(format!(
            "the object store prefix holds cluster {theirs}'s segments, but this metadata store \
             (--data-dir) is new or empty; start with that cluster's metadata, or use another prefix"
        ))),
        (stored, None) => {
            if objects.holds_data().await? {
                // A prefix written before markers existed: ours only if the metadata store knows its
                // segments and one of them is there.
                let mut owned = false;
                if stored.is_some() {
                    for id in live_segments.iter().rev().take(3) {
                        if objects.exists(*id).await? {
                            owned = true;
                            break;
                        }
                    }
                }
                if !owned {
                    return Err(StorageError::Refused(
                        "the object store prefix already holds data that this metadata store \
                         (--data-dir) knows nothing of; use an empty prefix, or this data's metadata"
                            .to_string(),
                    ));
                }
            }
            let id = init(meta, stored.unwrap_or_else(new_cluster_id)).await?;
            let marked = objects.write_marker(&id).await?;
            if marked != id {
                return Err(StorageError::Refused(format!(
                    "another broker marked the object store prefix for cluster {marked} meanwhile"
                )));
            }
            Ok(id)
        }
    }
}

async fn init(meta: &Arc<dyn MetadataStore>, id: String) -> Result<String, StorageError> {
    let m = meta.clone();
    tokio::task::spawn_blocking(move || m.init_cluster_id(&id))
        .await
        .map_err(|_| StorageError::TaskFailed("storing the cluster id"))?
}
