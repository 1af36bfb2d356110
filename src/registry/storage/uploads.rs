//! Blob upload sessions. Bytes stream to `_uploads/<id>/data` while a sha256 runs
//! beside them, so finishing a sha256 upload needs no second read. The running hash
//! lives in memory; after a restart it is rebuilt from the data file, so sessions
//! survive restarts. A request that fails half-way (client gone, limit hit) is
//! rolled back to where it started, so file and hash always agree.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::fsio::{IoContext, create_dirs, remove_tree, write_atomic};
use super::{FsStore, StorageError};
use crate::registry::digest::{Algorithm, Digest, Hasher};
use crate::registry::error::{RegistryError, Result};
use crate::registry::metrics::Metrics;
use crate::registry::names::RepoName;

const WRITE_BUFFER: usize = 256 << 10;
/// Chunks in flight between the receiving task and the writer.
const CHANNEL_CHUNKS: usize = 8;
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

/// All upload sessions of one registry.
pub struct Uploads {
    store: FsStore,
    open: Mutex<HashMap<String, SessionRef>>,
    max_blob_bytes: Option<u64>,
    metrics: Arc<Metrics>,
}

impl Uploads {
    pub fn new(store: FsStore, max_blob_bytes: Option<u64>, metrics: Arc<Metrics>) -> Uploads {
        Uploads {
            store,
            open: Mutex::new(HashMap::new()),
            max_blob_bytes,
            metrics,
        }
    }

    fn data_path(&self, repo: &RepoName, id: &str) -> PathBuf {
        self.store.layout().upload_dir(repo, id).join("data")
    }

    /// Opens a new session and returns its id.
    pub async fn start(&self, repo: &RepoName) -> Result<String> {
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
        .ok_or(RegistryError::BlobUploadUnknown)?;
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
            return Err(RegistryError::BlobUploadUnknown);
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
        let session = self.session(repo, id).await?;
        let mut s = session.lock().await;
        if s.closed {
            return Err(RegistryError::BlobUploadUnknown);
        }
        if let Some(start) = start
            && start != s.size
        {
            discard(body).await;
            return Err(RegistryError::RangeInvalid { size: s.size });
        }
        let path = self.data_path(repo, id);
        let (size, hasher) = self
            .write_body(&path, s.size, s.sha256.clone(), body)
            .await?;
        s.size = size;
        s.sha256 = hasher;
        Ok(size)
    }

    /// Streams `body` into the upload file from offset `start`. The async side only
    /// receives; a blocking writer hashes and writes, so TLS, hashing and disk use
    /// both cores. On any failure the file is cut back to `start`.
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
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let writer_path = path.to_owned();
        let writer =
            tokio::task::spawn_blocking(move || write_chunks(&writer_path, start, hasher, rx));
        let mut size = start;
        let received: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    RegistryError::BlobUploadInvalid(format!("request body failed: {e}"))
                })?;
                size += chunk.len() as u64;
                if self.max_blob_bytes.is_some_and(|max| size > max) {
                    return Err(RegistryError::TooLarge("blob"));
                }
                if tx.send(chunk).await.is_err() {
                    // The writer stopped early; its own error says why.
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = match writer.await {
            Ok(r) => r.map_err(RegistryError::from),
            Err(e) => Err(RegistryError::Storage(StorageError {
                op: "upload writer",
                path: path.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })),
        };
        match (received, written) {
            (Ok(()), Ok((hasher, written))) if written == size => Ok((size, hasher)),
            (received, written) => {
                // Roll back to the session's last good state.
                let _ = truncate(path, start).await;
                Err(received.err().or(written.err()).unwrap_or_else(|| {
                    RegistryError::BlobUploadInvalid("upload ended early".into())
                }))
            }
        }
    }

    /// Verifies the upload against `digest` and commits it as a blob of `repo`.
    /// A mismatch discards the session: no blob becomes visible.
    pub async fn finish(&self, repo: &RepoName, id: &str, digest: &Digest) -> Result<u64> {
        let session = self.session(repo, id).await?;
        let mut s = session.lock().await;
        if s.closed {
            return Err(RegistryError::BlobUploadUnknown);
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
            return Err(RegistryError::DigestInvalid(format!(
                "content has digest {actual}, not {digest}"
            )));
        }
        let (size, seen) = (s.size, s.seen);
        let (store, repo_owned, digest_owned) = (self.store.clone(), repo.clone(), digest.clone());
        let committed = blocking(move || {
            store.commit_blob_file(&path, &digest_owned)?;
            store.link_blob(&repo_owned, &digest_owned)?;
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
            return Err(RegistryError::BlobUploadUnknown);
        }
        s.closed = true;
        let dir = self.store.layout().upload_dir(repo, id);
        blocking(move || remove_tree(&dir)).await?;
        drop(s);
        self.forget(repo, id);
        Ok(())
    }

    fn forget(&self, repo: &RepoName, id: &str) {
        self.lock_map().remove(&session_key(repo, id));
    }
}

/// The writer side of `write_body`: hash and append every chunk; returns the hash
/// and the file length.
fn write_chunks(
    path: &std::path::Path,
    start: u64,
    mut hasher: Hasher,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::result::Result<(Hasher, u64), StorageError> {
    use std::io::{Seek, Write};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .ctx("open upload", path)?;
    file.seek(std::io::SeekFrom::Start(start))
        .ctx("seek upload", path)?;
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut size = start;
    let mut unsynced = 0u64;
    let mut writeback: Option<std::thread::JoinHandle<()>> = None;
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk).ctx("write upload", path)?;
        size += chunk.len() as u64;
        unsynced += chunk.len() as u64;
        if unsynced >= WRITEBACK_EVERY && writeback.as_ref().is_none_or(|w| w.is_finished()) {
            // fdatasync on a second handle runs beside further writes; it only
            // brings the final fsync forward, so its result does not matter here.
            out.flush().ctx("write upload", path)?;
            if let Ok(clone) = out.get_ref().try_clone() {
                writeback = Some(std::thread::spawn(move || {
                    let _ = clone.sync_data();
                }));
            }
            unsynced = 0;
        }
    }
    out.flush().ctx("write upload", path)?;
    if unsynced >= WRITE_BUFFER as u64 && writeback.as_ref().is_none_or(|w| w.is_finished()) {
        // A chunk of a longer upload: start its writeback now rather than at commit.
        if let Ok(clone) = out.get_ref().try_clone() {
            std::thread::spawn(move || {
                let _ = clone.sync_data();
            });
        }
    }
    Ok((hasher, size))
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
    let mut buf = vec![0u8; WRITE_BUFFER];
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
