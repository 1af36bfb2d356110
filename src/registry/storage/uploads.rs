//! Blob upload sessions. Bytes stream to `_uploads/<id>/data` while a sha256 runs
//! beside them, so finishing a sha256 upload needs no second read. The running hash
//! lives in memory; after a restart it is rebuilt from the data file, so sessions
//! survive restarts. A request that fails half-way (client gone, limit hit) is
//! rolled back to where it started, so file and hash always agree.
//!
//! Bodies are received on the async side and written in pieces of up to
//! `PIECE` bytes, one piece at a time on the blocking pool: a client that
//! trickles holds no thread, only its connection. Concurrent body-carrying
//! requests, open sessions and the wait for each piece of a body are bounded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::driver::ContentWriter;
use super::space::{MinFree, SpaceGuard};
use super::{StorageError, Store};
use crate::registry::digest::{Algorithm, Digest, Hasher};
use crate::registry::metrics::Metrics;
use crate::registry::names::RepoName;

/// Why an upload operation failed, in storage's terms; `error.rs` maps each
/// to the spec's code once.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("no such upload session")]
    Unknown,
    #[error("the chunk does not start where the upload ends ({size} bytes)")]
    OutOfOrder { size: u64 },
    #[error("the blob exceeds the configured limit")]
    TooLarge,
    #[error("content has digest {actual}, not {expected}")]
    DigestMismatch { actual: Digest, expected: Digest },
    #[error("{0}")]
    Busy(&'static str),
    #[error("storage is full")]
    Full,
    #[error("request body failed: {0}")]
    Body(String),
    #[error("no body data for {0} s")]
    BodyStalled(u64),
    #[error("upload ended early")]
    Short,
    #[error("two requests wrote at one offset of this upload at once; start it again")]
    Conflicting,
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for UploadError {
    fn from(e: StorageError) -> Self {
        if e.is_full() {
            UploadError::Full
        } else if e.is_conflicting_writes() {
            UploadError::Conflicting
        } else {
            UploadError::Storage(e)
        }
    }
}

type Result<T, E = UploadError> = std::result::Result<T, E>;

const READ_BUFFER: usize = 256 << 10;
/// Bytes received before a piece goes to the writer; one piece is written while
/// the next is received.
const PIECE: usize = 1 << 20;

struct Session {
    size: u64,
    /// When this process first saw the session (for the upload duration metric).
    seen: std::time::Instant,
    /// The running hash of what was received, on storage only this process
    /// writes. On shared storage another replica may append or replace
    /// bytes, so the finish hashes the very bytes it commits instead.
    sha256: Option<Hasher>,
    /// Set once the session is finished or cancelled; late requests see it as unknown.
    closed: bool,
}

type SessionRef = Arc<tokio::sync::Mutex<Session>>;

/// Bounds on what uploads may hold.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// Largest blob (None: no limit).
    pub max_blob_bytes: Option<u64>,
    /// Requests receiving a body at once; more get 429.
    pub max_concurrent: usize,
    /// Open sessions; more get 429 on POST.
    pub max_sessions: usize,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// Free space below which uploads are refused.
    pub min_free: MinFree,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_blob_bytes: None,
            max_concurrent: 256,
            max_sessions: 4096,
            body_timeout: Duration::from_secs(60),
            min_free: MinFree::default(),
        }
    }
}

/// All upload sessions of one registry.
pub struct Uploads {
    store: Store,
    open: Mutex<HashMap<String, SessionRef>>,
    limits: UploadLimits,
    receiving: Arc<tokio::sync::Semaphore>,
    space: SpaceGuard,
    metrics: Arc<Metrics>,
}

impl Uploads {
    pub fn new(store: Store, limits: UploadLimits, metrics: Arc<Metrics>) -> Uploads {
        Uploads {
            space: SpaceGuard::new(store.driver().clone(), limits.min_free, metrics.clone()),
            store,
            open: Mutex::new(HashMap::new()),
            receiving: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            limits,
            metrics,
        }
    }

    /// The disk-pressure guard (also refreshed by metrics scrapes).
    pub fn space(&self) -> &SpaceGuard {
        &self.space
    }

    fn refuse(&self, what: &'static str) -> UploadError {
        self.metrics.uploads_refused.inc();
        UploadError::Busy(what)
    }

    fn data_path(&self, repo: &RepoName, id: &str) -> PathBuf {
        self.store.layout().upload_dir(repo, id).join("data")
    }

    /// Opens a new session and returns its id.
    pub async fn start(&self, repo: &RepoName) -> Result<String> {
        if self.lock_map().len() >= self.limits.max_sessions {
            return Err(self.refuse("too many open upload sessions"));
        }
        if !self.space.admits_upload() {
            return Err(UploadError::Full);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.store.layout().upload_dir(repo, &id);
        let started = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let driver = self.store.driver().clone();
        blocking(move || {
            driver.put_content(&dir.join("startedat"), started.as_bytes())?;
            driver.writer(&dir.join("data"), 0)?.close()
        })
        .await?;
        let session = Session {
            size: 0,
            seen: std::time::Instant::now(),
            sha256: (!self.store.shared()).then(|| Algorithm::Sha256.hasher()),
            closed: false,
        };
        self.lock_map().insert(
            session_key(repo, &id),
            Arc::new(tokio::sync::Mutex::new(session)),
        );
        Ok(id)
    }

    fn lock_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionRef>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds a session in memory, or on disk after a restart (re-hashing its data).
    async fn session(&self, repo: &RepoName, id: &str) -> Result<SessionRef> {
        let key = session_key(repo, id);
        if let Some(s) = self.lock_map().get(&key) {
            return Ok(s.clone());
        }
        let path = self.data_path(repo, id);
        let (sha256, size) = if self.store.shared() {
            let (driver, p) = (self.store.driver().clone(), path.clone());
            match blocking(move || driver.stat(&p)).await {
                Ok(Some(info)) => (None, info.size),
                Ok(None) => return Err(UploadError::Unknown),
                // Data that cannot be read (two writes at one offset): the
                // session is there, so that it can be cancelled; every other
                // request meets the error again.
                Err(e) if e.source.kind() == std::io::ErrorKind::InvalidData => (None, 0),
                Err(e) => return Err(e.into()),
            }
        } else {
            match self.hash_upload(&path, Algorithm::Sha256).await {
                Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => {
                    return Err(UploadError::Unknown);
                }
                rebuilt => rebuilt.map(|(hasher, size)| (Some(hasher), size))?,
            }
        };
        let mut map = self.lock_map();
        let entry = map.entry(key).or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(Session {
                size,
                seen: std::time::Instant::now(),
                sha256,
                closed: false,
            }))
        });
        Ok(entry.clone())
    }

    /// On storage that other replicas write to, a session this process
    /// remembers may be behind (another replica appended to it) or over
    /// (finished or cancelled there): the stored content says which. No
    /// hash to rebuild: the finish hashes what it commits.
    async fn refresh(&self, s: &mut Session, path: &Path) -> Result<()> {
        if !self.store.shared() {
            return Ok(());
        }
        let (driver, p) = (self.store.driver().clone(), path.to_owned());
        match blocking(move || driver.stat(&p)).await? {
            None => {
                s.closed = true;
                Err(UploadError::Unknown)
            }
            Some(info) => {
                s.size = info.size;
                Ok(())
            }
        }
    }

    /// Hashes what an upload holds; returns the running hash and the byte count.
    async fn hash_upload(
        &self,
        path: &Path,
        algorithm: Algorithm,
    ) -> std::result::Result<(Hasher, u64), StorageError> {
        use tokio::io::AsyncReadExt as _;
        let (driver, p) = (self.store.driver().clone(), path.to_owned());
        let mut reader = blocking(move || driver.reader(&p, 0)).await?;
        let mut hasher = algorithm.hasher();
        let mut buf = vec![0u8; READ_BUFFER];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf).await.map_err(|source| StorageError {
                op: "read upload",
                path: path.to_owned(),
                source,
            })?;
            if n == 0 {
                return Ok((hasher, size));
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
    }

    /// Bytes received so far.
    pub async fn size(&self, repo: &RepoName, id: &str) -> Result<u64> {
        let session = self.session(repo, id).await?;
        let mut s = session.lock().await;
        if s.closed {
            return Err(UploadError::Unknown);
        }
        self.refresh(&mut s, &self.data_path(repo, id)).await?;
        Ok(s.size)
    }

    /// Appends a request body. With `start` (from `Content-Range`), the chunk must
    /// begin exactly where the upload ends. Returns the new size.
    pub async fn append<S, E>(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let Ok(_receiving) = self.receiving.clone().try_acquire_owned() else {
            return Err(self.refuse("too many uploads in progress"));
        };
        if !self.space.admits_upload() {
            return Err(UploadError::Full);
        }
        let session = self.session(repo, id).await?;
        let mut s = session.lock().await;
        if s.closed {
            return Err(UploadError::Unknown);
        }
        let path = self.data_path(repo, id);
        if let Err(e) = self.refresh(&mut s, &path).await {
            discard(body).await;
            return Err(e);
        }
        if let Some(start) = start
            && start != s.size
        {
            discard(body).await;
            return Err(UploadError::OutOfOrder { size: s.size });
        }
        let (size, hasher) = self
            .write_body(&path, s.size, s.sha256.clone(), body)
            .await?;
        s.size = size;
        s.sha256 = hasher;
        Ok(size)
    }

    /// Streams `body` into the upload file from offset `start`: received here,
    /// written piece by piece on the blocking pool (one piece written while the
    /// next arrives). On any failure the file is cut back to `start`.
    async fn write_body<S, E>(
        &self,
        path: &std::path::Path,
        start: u64,
        hasher: Option<Hasher>,
        mut body: S,
    ) -> Result<(u64, Option<Hasher>)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let opened = {
            let (driver, p) = (self.store.driver().clone(), path.to_owned());
            blocking(move || {
                Ok(PieceWriter {
                    content: driver.writer(&p, start)?,
                    hasher,
                })
            })
            .await
        };
        let mut writer = Some(opened?);
        let mut in_flight: Option<tokio::task::JoinHandle<PieceResult>> = None;
        let mut piece: Vec<Bytes> = Vec::new();
        let mut piece_len = 0usize;
        let mut size = start;
        let received: Result<()> = async {
            loop {
                let next = tokio::time::timeout(self.limits.body_timeout, body.next())
                    .await
                    .map_err(|_| UploadError::BodyStalled(self.limits.body_timeout.as_secs()))?;
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                size = size
                    .checked_add(chunk.len() as u64)
                    .ok_or(UploadError::TooLarge)?;
                if self.limits.max_blob_bytes.is_some_and(|max| size > max) {
                    return Err(UploadError::TooLarge);
                }
                piece_len += chunk.len();
                piece.push(chunk);
                if piece_len >= PIECE {
                    let w = next_writer(&mut writer, &mut in_flight, path).await?;
                    let full = std::mem::take(&mut piece);
                    piece_len = 0;
                    in_flight = Some(tokio::task::spawn_blocking(move || w.write(full)));
                }
            }
            let w = next_writer(&mut writer, &mut in_flight, path).await?;
            let rest = std::mem::take(&mut piece);
            writer = Some(blocking(move || w.write(rest)).await?);
            Ok(())
        }
        .await;
        if received.is_ok()
            && let Some(w) = writer.take()
        {
            let written = w.content.size();
            let PieceWriter { content, hasher } = w;
            if written == size {
                blocking(move || content.close()).await?;
                return Ok((size, hasher));
            }
        }
        // Let a piece still being written finish before cutting the upload back
        // (with a fresh writer at `start` when the failed one is gone).
        if let Some(pending) = in_flight.take()
            && let Ok(Ok(w)) = pending.await
        {
            writer = Some(w);
        }
        let driver = self.store.driver().clone();
        let p = path.to_owned();
        let cut = blocking(move || match writer {
            Some(w) => w.content.cancel(),
            None => driver.writer(&p, start)?.cancel(),
        })
        .await;
        if let Err(e) = cut {
            tracing::warn!(error = %e, "cutting a failed upload request back failed");
        }
        Err(received.err().unwrap_or(UploadError::Short))
    }

    /// Verifies the upload against `digest` and commits it as a blob of `repo`.
    /// A mismatch discards the session: no blob becomes visible.
    pub async fn finish(&self, repo: &RepoName, id: &str, digest: &Digest) -> Result<u64> {
        let session = self.session(repo, id).await?;
        let mut s = session.lock().await;
        if s.closed {
            return Err(UploadError::Unknown);
        }
        let path = self.data_path(repo, id);
        self.refresh(&mut s, &path).await?;
        let actual = match (&s.sha256, digest.algorithm()) {
            // Checked on the bytes the commit moves, below.
            (None, _) => None,
            (Some(hasher), Algorithm::Sha256) => Some(hasher.clone().finish()),
            (Some(_), other) => Some(self.hash_upload(&path, other).await?.0.finish()),
        };
        s.closed = true;
        let dir = self.store.layout().upload_dir(repo, id);
        if let Some(actual) = actual
            && &actual != digest
        {
            drop(s);
            self.forget(repo, id);
            let driver = self.store.driver().clone();
            blocking(move || driver.delete(&dir)).await?;
            return Err(UploadError::DigestMismatch {
                actual,
                expected: digest.clone(),
            });
        }
        let (size, seen) = (s.size, s.seen);
        let (store, repo_owned, digest_owned) = (self.store.clone(), repo.clone(), digest.clone());
        let committed = blocking(move || {
            let mismatch = store.pushing(|mark| {
                if let Some(actual) = store.commit_blob_file(&path, &digest_owned)? {
                    return Ok(Some(actual));
                }
                mark(std::slice::from_ref(&digest_owned))?;
                store.link_blob(&repo_owned, &digest_owned)?;
                Ok(None)
            })?;
            store.driver().delete(&dir)?;
            Ok(mismatch)
        })
        .await;
        drop(s);
        self.forget(repo, id);
        if let Some(actual) = committed? {
            return Err(UploadError::DigestMismatch {
                actual,
                expected: digest.clone(),
            });
        }
        self.metrics
            .upload_seconds
            .observe(seen.elapsed().as_secs_f64());
        Ok(size)
    }

    /// Cancels a session and deletes what it received.
    pub async fn cancel(&self, repo: &RepoName, id: &str) -> Result<()> {
        let session = self.session(repo, id).await?;
        let mut s = session.lock().await;
        if s.closed {
            return Err(UploadError::Unknown);
        }
        s.closed = true;
        let dir = self.store.layout().upload_dir(repo, id);
        let driver = self.store.driver().clone();
        blocking(move || driver.delete(&dir)).await?;
        drop(s);
        self.forget(repo, id);
        Ok(())
    }

    /// Deletes sessions that received nothing for `max_age` (by the data file's
    /// modification time), on disk and in memory; a session receiving a body
    /// right now is left alone. Returns how many were deleted.
    pub async fn purge(&self, max_age: Duration) -> Result<usize> {
        let store = self.store.clone();
        let stale = blocking(move || store.stale_uploads(max_age)).await?;
        let mut purged = 0;
        for (repo, id) in stale {
            let in_memory = self.lock_map().get(&session_key(&repo, &id)).cloned();
            let guard = match &in_memory {
                Some(session) => match session.clone().try_lock_owned() {
                    Ok(g) => Some(g),
                    Err(_) => continue, // busy: not abandoned
                },
                None => None,
            };
            if let Some(mut g) = guard {
                if g.closed {
                    continue;
                }
                g.closed = true;
            }
            let dir = self.store.layout().upload_dir(&repo, &id);
            let driver = self.store.driver().clone();
            blocking(move || driver.delete(&dir)).await?;
            self.forget(&repo, &id);
            purged += 1;
        }
        self.metrics.uploads_purged.inc_by(purged as u64);
        // What a killed replica was writing when it died (an object store's
        // multipart upload) is not part of any session directory.
        let driver = self.store.driver().clone();
        let aborted = blocking(move || driver.abort_abandoned_writes(max_age)).await?;
        if aborted > 0 {
            tracing::info!(uploads = aborted, "abandoned multipart uploads aborted");
        }
        Ok(purged)
    }

    /// Purges at once and then every `every`, logging what it did.
    pub fn purge_on_schedule(self: Arc<Self>, max_age: Duration, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match self.purge(max_age).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(sessions = n, "abandoned uploads purged"),
                    Err(e) => tracing::warn!(error = %e, "upload purge failed"),
                }
            }
        });
    }

    /// Open sessions known to this process.
    pub fn open_sessions(&self) -> usize {
        self.lock_map().len()
    }

    fn forget(&self, repo: &RepoName, id: &str) {
        self.lock_map().remove(&session_key(repo, id));
    }
}

type PieceResult = std::result::Result<PieceWriter, StorageError>;

/// Waits for the piece in flight (if any) and returns the writer for the next.
async fn next_writer(
    writer: &mut Option<PieceWriter>,
    in_flight: &mut Option<tokio::task::JoinHandle<PieceResult>>,
    path: &std::path::Path,
) -> Result<PieceWriter> {
    if let Some(pending) = in_flight.take() {
        let w = match pending.await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => {
                return Err(UploadError::Storage(StorageError {
                    op: "upload writer",
                    path: path.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                }));
            }
        };
        *writer = Some(w);
    }
    writer.take().ok_or_else(|| {
        UploadError::Storage(StorageError {
            op: "upload writer",
            path: path.to_owned(),
            source: std::io::Error::other("writer lost after a failed piece"),
        })
    })
}

/// The upload's content writer and its running hash. Moves to the blocking
/// pool for each piece and back.
struct PieceWriter {
    content: Box<dyn ContentWriter>,
    hasher: Option<Hasher>,
}

impl PieceWriter {
    /// Hashes and appends `chunks` (blocking).
    fn write(mut self, chunks: Vec<Bytes>) -> PieceResult {
        if let Some(hasher) = &mut self.hasher {
            for c in &chunks {
                hasher.update(c);
            }
        }
        self.content.write(&chunks)?;
        Ok(self)
    }
}

/// Reads and drops a refused request body (bounded in bytes and time), so the
/// client, still sending, can read the error instead of a broken pipe.
pub(crate) async fn discard<S, E>(mut body: S)
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
{
    const LIMIT: usize = 16 << 20;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.len();
            if seen > LIMIT {
                break;
            }
        }
    })
    .await;
}

/// Sessions are keyed by repository and id: an id is only valid in its repository.
fn session_key(repo: &RepoName, id: &str) -> String {
    format!("{repo}@{id}")
}

/// Runs blocking storage work off the async threads.
pub async fn blocking<T, F>(f: F) -> std::result::Result<T, StorageError>
where
    F: FnOnce() -> std::result::Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StorageError {
            op: "blocking task",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}
