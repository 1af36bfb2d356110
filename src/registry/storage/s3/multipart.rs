//! Writing one object in parts, with the multipart upload recorded in the
//! bucket so that a replica killed mid-write leaves nothing uncollected.
//!
//! An S3 multipart upload that is neither completed nor aborted keeps its
//! parts: invisible, still stored and billed, until a lifecycle rule (if the
//! bucket has one) removes them. A replica killed during a large request
//! leaves one. S3 can list a bucket's unfinished uploads, but `object_store`
//! does not expose that call, and the listing would also show what others
//! write to the bucket. So each upload writes a small record
//! `<records>/<sha256 of key and id>` holding the key and the upload id,
//! refreshes it with every part and deletes it when the upload ends; the
//! upload purge aborts the uploads whose records went stale.
//!
//! Content smaller than a part never starts a multipart upload: it is one
//! PUT when the writer finishes (one request instead of three).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutPayload, PutPayloadMut};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

/// Size of each part but the last: S3 wants at least 5 MiB, R2 wants all
/// equal; 16 MiB keeps the part count of a 10 GiB layer at 640 (S3 allows
/// 10,000).
pub(super) const PART_SIZE: usize = 16 << 20;

/// Parts of one upload in flight at once: with the part being filled, this
/// bounds a writer's memory to three parts.
const PARTS_IN_FLIGHT: usize = 2;

type Result<T> = object_store::Result<T>;

/// Content on its way to one object: buffered up to a part, then sent in
/// parts of a recorded multipart upload.
pub(super) struct PartWriter {
    store: Arc<AmazonS3>,
    target: Key,
    records: Key,
    pending: PutPayloadMut,
    upload: Option<RecordedUpload>,
}

impl PartWriter {
    /// A writer of `target`, recording a multipart upload under `records`.
    pub(super) fn new(store: Arc<AmazonS3>, target: Key, records: Key) -> PartWriter {
        PartWriter {
            store,
            target,
            records,
            pending: PutPayloadMut::new(),
            upload: None,
        }
    }

    /// Adds `chunk`; sends a part whenever one fills (waiting while the
    /// parts in flight are at their cap).
    pub(super) async fn push(&mut self, mut chunk: Bytes) -> Result<()> {
        while !chunk.is_empty() {
            let room = PART_SIZE - self.pending.content_length();
            let piece = if chunk.len() > room {
                chunk.split_to(room)
            } else {
                std::mem::take(&mut chunk)
            };
            self.pending.push(piece);
            if self.pending.content_length() == PART_SIZE {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<()> {
        let part = std::mem::take(&mut self.pending).freeze();
        if self.upload.is_none() {
            self.upload = Some(
                RecordedUpload::start(self.store.clone(), self.target.clone(), &self.records)
                    .await?,
            );
        }
        self.upload.as_mut().expect("started above").put(part).await
    }

    /// Makes the object visible, whole: one PUT if it never filled a part.
    /// With nothing pushed, `target` becomes an empty object.
    pub(super) async fn finish(mut self) -> Result<()> {
        let rest = std::mem::take(&mut self.pending).freeze();
        match self.upload.take() {
            None => self.store.put(&self.target, rest).await.map(|_| ()),
            Some(mut upload) => {
                if rest.content_length() > 0 {
                    upload.put(rest).await?;
                }
                upload.complete().await
            }
        }
    }

    /// Ends without an object, leaving no parts stored.
    pub(super) async fn abort(mut self) -> Result<()> {
        match self.upload.take() {
            Some(upload) => upload.abort().await,
            None => Ok(()),
        }
    }
}

/// A multipart upload with its record in the bucket.
struct RecordedUpload {
    store: Arc<AmazonS3>,
    target: Key,
    id: MultipartId,
    record: Key,
    sent: usize,
    in_flight: JoinSet<(usize, Result<PartId>)>,
    done: Vec<Option<PartId>>,
}

impl RecordedUpload {
    /// Starts the upload and writes its record. A kill between the two
    /// leaves an upload with no parts, which holds no data.
    async fn start(store: Arc<AmazonS3>, target: Key, records: &Key) -> Result<RecordedUpload> {
        let id = store.create_multipart(&target).await?;
        let name = hex::encode(
            Sha256::new()
                .chain_update(target.as_ref())
                .chain_update([0])
                .chain_update(&id)
                .finalize(),
        );
        let upload = RecordedUpload {
            record: records.clone().join(name.as_str()),
            store,
            target,
            id,
            sent: 0,
            in_flight: JoinSet::new(),
            done: Vec::new(),
        };
        if let Err(e) = upload.write_record().await {
            let _ = upload
                .store
                .abort_multipart(&upload.target, &upload.id)
                .await;
            return Err(e);
        }
        Ok(upload)
    }

    async fn write_record(&self) -> Result<()> {
        let body = format!("{}\n{}\n", self.target, self.id);
        self.store.put(&self.record, body.into()).await.map(|_| ())
    }

    /// Sends `part` in the background, after waiting for room; refreshes
    /// the record so a long upload never reads as abandoned.
    async fn put(&mut self, part: PutPayload) -> Result<()> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.settle_one().await?;
        }
        if self.sent > 0 {
            self.write_record().await?;
        }
        let (store, target, id, index) = (
            self.store.clone(),
            self.target.clone(),
            self.id.clone(),
            self.sent,
        );
        self.in_flight
            .spawn(async move { (index, store.put_part(&target, &id, index, part).await) });
        self.sent += 1;
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<()> {
        let Some(joined) = self.in_flight.join_next().await else {
            return Ok(());
        };
        let (index, part) = joined.map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        })?;
        if self.done.len() <= index {
            self.done.resize(index + 1, None);
        }
        self.done[index] = Some(part?);
        Ok(())
    }

    async fn complete(mut self) -> Result<()> {
        let result = self.complete_parts().await;
        if result.is_err() {
            self.in_flight.abort_all();
            let _ = self.store.abort_multipart(&self.target, &self.id).await;
        }
        // The record goes once the upload is complete or aborted; if this
        // delete fails, the purge finds the upload already ended.
        let _ = self.store.delete(&self.record).await;
        result
    }

    async fn complete_parts(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        let parts: Vec<PartId> = self.done.drain(..).flatten().collect();
        debug_assert_eq!(parts.len(), self.sent);
        self.store
            .complete_multipart(&self.target, &self.id, parts)
            .await
            .map(|_| ())
    }

    async fn abort(mut self) -> Result<()> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.store.abort_multipart(&self.target, &self.id).await?;
        let _ = self.store.delete(&self.record).await;
        Ok(())
    }
}

/// Aborts the multipart uploads whose records under `records` are older than
/// `max_age` (their writer died), and deletes those records. Only targets
/// under `within` are touched, whatever a record says. Returns how many
/// uploads were aborted (a record of an upload that had ended counts none).
pub(super) async fn abort_stale(
    store: &AmazonS3,
    records: &Key,
    within: &Key,
    max_age: Duration,
) -> Result<usize> {
    let now = SystemTime::now();
    let mut listed = store.list(Some(records));
    let mut stale = Vec::new();
    while let Some(meta) = listed.next().await {
        let meta = meta?;
        let age = now
            .duration_since(SystemTime::from(meta.last_modified))
            .unwrap_or_default();
        if age >= max_age {
            stale.push(meta.location);
        }
    }
    let mut aborted = 0;
    for record in stale {
        let body = match store.get(&record).await {
            Ok(got) => got.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&body);
        let mut lines = text.lines();
        if let (Some(target), Some(id)) = (lines.next(), lines.next())
            && let Ok(target) = Key::parse(target)
            && target.prefix_matches(within)
        {
            match store.abort_multipart(&target, &id.to_owned()).await {
                Ok(()) => aborted += 1,
                // Already completed or aborted: only the record was left.
                Err(object_store::Error::NotFound { .. }) => {}
                // Kept for the next purge, without holding up the others.
                Err(e) => {
                    tracing::warn!(error = %e, record = %record, "aborting an abandoned multipart upload failed");
                    continue;
                }
            }
        }
        store.delete(&record).await?;
    }
    Ok(aborted)
}
