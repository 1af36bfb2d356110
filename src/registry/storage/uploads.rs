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
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::fsio::{IoContext, create_dirs, remove_tree, write_atomic};
use super::space::{MinFree, SpaceGuard};
use super::{FsStore, StorageError};
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
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for UploadError {
    fn from(e: StorageError) -> Self {
        if e.is_full() {
            UploadError::Full
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
/// Start writeback of what was written every this many bytes, so the fsync at
/// commit has little left to flush.
const WRITEBACK_EVERY: u64 = 32 << 20;

struct Session {
    size: u64,
    /// When this process first saw the session (for the upload duration metric).
    seen: std::time::Instant,
    sha256: Hasher,
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
    store: FsStore,
    open: Mutex<HashMap<String, SessionRef>>,
    limits: UploadLimits,
    receiving: Arc<tokio::sync::Semaphore>,
    space: SpaceGuard,
    metrics: Arc<Metrics>,
}

impl Uploads {
    pub fn new(store: FsStore, limits: UploadLimits, metrics: Arc<Metrics>) -> Uploads {
        let root = store.layout().root().to_owned();
        Uploads {
            store,
            open: Mutex::new(HashMap::new()),
            receiving: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            space: SpaceGuard::new(root, limits.min_free, metrics.clone()),
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
        blocking(move || {
            create_dirs(&dir)?;
            std::fs::File::create(dir.join("data")).ctx("create upload", &dir)?;
            write_atomic(&dir.join("startedat"), started.as_bytes())
        })
        .await?;
        let session = Session {
            size: 0,
            seen: std::time::Instant::now(),
            sha256: Algorithm::Sha256.hasher(),
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
        let rebuilt = blocking(move || match std::fs::File::open(&path) {
            Ok(file) => hash_file(file, &path, Algorithm::Sha256).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("open upload", &path),
        })
        .await?
        .ok_or(UploadError::Unknown)?;
        let (sha256, size) = rebuilt;
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

    /// Bytes received so far.
    pub async fn size(&self, repo: &RepoName, id: &str) -> Result<u64> {
        let session = self.session(repo, id).await?;
        let s = session.lock().await;
        if s.closed {
            return Err(UploadError::Unknown);
        }
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
        if let Some(start) = start
            && start != s.size
        {
            discard(body).await;
            return Err(UploadError::OutOfOrder { size: s.size });
        }
        let path = self.data_path(repo, id);
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
        hasher: Hasher,
        mut body: S,
    ) -> Result<(u64, Hasher)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let opened = {
            let p = path.to_owned();
            blocking(move || PieceWriter::open(&p, start, hasher)).await
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
            let (hasher, written) = w.finish();
            if written == size {
                return Ok((size, hasher));
            }
        }
        // Let a piece still being written finish before cutting the file back.
        if let Some(pending) = in_flight.take() {
            let _ = pending.await;
        }
        let _ = truncate(path, start).await;
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
        let actual = match digest.algorithm() {
            Algorithm::Sha256 => s.sha256.clone().finish(),
            other => {
                let p = path.clone();
                blocking(move || {
                    let file = std::fs::File::open(&p).ctx("open upload", &p)?;
                    hash_file(file, &p, other).map(|(h, _)| h.finish())
                })
                .await?
            }
        };
        s.closed = true;
        let dir = self.store.layout().upload_dir(repo, id);
        if &actual != digest {
            drop(s);
            self.forget(repo, id);
            blocking(move || remove_tree(&dir)).await?;
            return Err(UploadError::DigestMismatch {
                actual,
                expected: digest.clone(),
            });
        }
        let (size, seen) = (s.size, s.seen);
        let (store, repo_owned, digest_owned) = (self.store.clone(), repo.clone(), digest.clone());
        let committed = blocking(move || {
            store.gate().pushing(|| {
                store.commit_blob_file(&path, &digest_owned)?;
                store.link_blob(&repo_owned, &digest_owned)?;
                Ok(((), vec![digest_owned.clone()]))
            })?;
            remove_tree(&dir)
        })
        .await;
        drop(s);
        self.forget(repo, id);
        committed?;
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
        blocking(move || remove_tree(&dir)).await?;
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
            blocking(move || remove_tree(&dir)).await?;
            self.forget(&repo, &id);
            purged += 1;
        }
        self.metrics.uploads_purged.inc_by(purged as u64);
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

/// The upload file, its running hash and length, and the writeback of what was
/// written so far. Moves to the blocking pool for each piece and back.
struct PieceWriter {
    file: std::fs::File,
    path: PathBuf,
    hasher: Hasher,
    size: u64,
    unsynced: u64,
    writeback: Option<std::thread::JoinHandle<()>>,
}

impl PieceWriter {
    fn open(
        path: &std::path::Path,
        start: u64,
        hasher: Hasher,
    ) -> std::result::Result<PieceWriter, StorageError> {
        use std::io::Seek;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .ctx("open upload", path)?;
        file.seek(std::io::SeekFrom::Start(start))
            .ctx("seek upload", path)?;
        Ok(PieceWriter {
            file,
            path: path.to_owned(),
            hasher,
            size: start,
            unsynced: 0,
            writeback: None,
        })
    }

    /// Hashes and appends `chunks` (blocking).
    fn write(mut self, chunks: Vec<Bytes>) -> PieceResult {
        use std::io::{IoSlice, Write};
        for c in &chunks {
            self.hasher.update(c);
        }
        // Empty frames would make write_vectored return 0 (WriteZero); skip them.
        let mut slices: Vec<IoSlice<'_>> = chunks
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| IoSlice::new(c))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err(StorageError {
                        op: "write upload",
                        path: self.path,
                        source: e,
                    });
                }
                Ok(n) => {
                    self.size += n as u64;
                    self.unsynced += n as u64;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(StorageError {
                        op: "write upload",
                        path: self.path,
                        source: e,
                    });
                }
            }
        }
        if self.unsynced >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(self)
    }

    /// fdatasync on a second handle, beside further writes: it only brings the
    /// fsync at commit forward, so its result does not matter here.
    fn start_writeback(&mut self) {
        if self.writeback.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        if let Ok(clone) = self.file.try_clone() {
            self.writeback = Some(std::thread::spawn(move || {
                let _ = clone.sync_data();
            }));
            self.unsynced = 0;
        }
    }

    /// The hash and length; a chunk of a longer upload starts its writeback now
    /// rather than at commit.
    fn finish(mut self) -> (Hasher, u64) {
        if self.unsynced >= READ_BUFFER as u64 {
            self.start_writeback();
        }
        (self.hasher, self.size)
    }
}

async fn truncate(path: &std::path::Path, len: u64) -> std::io::Result<()> {
    let f = tokio::fs::OpenOptions::new().write(true).open(path).await?;
    f.set_len(len).await
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

/// Hashes a whole file; returns the running hash and the byte count.
fn hash_file(
    mut file: std::fs::File,
    path: &std::path::Path,
    algorithm: Algorithm,
) -> std::result::Result<(Hasher, u64), StorageError> {
    let mut hasher = algorithm.hasher();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).ctx("read upload", path)?;
        if n == 0 {
            return Ok((hasher, size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
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
