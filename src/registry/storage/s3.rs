//! The storage driver for S3-compatible object storage (AWS S3, Ceph RGW,
//! SeaweedFS, Garage, R2), through the `object_store` crate.
//!
//! Keys are Distribution's layout under an optional prefix (Distribution's S3
//! driver calls it `rootdirectory`), so one bucket can be served by either.
//! "Directories" are key prefixes: one exists while a key lies under it.
//!
//! Every S3 request is durable when it is acknowledged, so `put_content` and
//! `move_content` need nothing more. The driver's operations block (the trait
//! is called from the blocking pool): each runs its request on the runtime the
//! driver was made on.
//!
//! S3 cannot append to an object. Content written through `writer` (upload
//! data) is kept as segments instead: one object per request body, named by
//! the offset it starts at, under `<name>.segments/` beside the path, so any
//! replica can continue an upload another one started (the segments are the
//! state, in the bucket). Reads chain the segments; `move_content` turns them
//! into one object (a rename for one segment, a streamed multipart copy for
//! several). Content is either one plain object or segments, never both.
//!
//! Not here: `touch`, which S3 can only do by copying an object onto itself.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload,
};
use tokio::runtime::Handle;

use super::StorageError;
use super::driver::{ContentReader, ContentWriter, FileInfo, StorageDriver, check_relative};
use super::space::Space;
use crate::registry::digest::{Algorithm, Digest, Hasher};

mod multipart;
use multipart::PartWriter;

type Result<T> = std::result::Result<T, StorageError>;

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// `https://host:port` of an S3-compatible server; AWS when `None`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Key prefix under which Distribution's layout starts (no leading or
    /// trailing `/`); empty for the bucket's root.
    pub prefix: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`
    /// (most self-hosted servers need it).
    pub path_style: bool,
    /// Static credentials; with none, the AWS chain (environment, web
    /// identity, instance metadata) as `object_store` reads it.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// PEM CA certificates trusted for the endpoint (a private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Plain HTTP to the endpoint (only for a server on loopback in tests).
    pub allow_http: bool,
}

/// Under the prefix: the records of multipart uploads in progress.
const MULTIPART_RECORDS: &str = "privreg/multipart";

#[derive(Debug, Clone)]
pub struct S3Driver {
    store: Arc<AmazonS3>,
    prefix: String,
    /// Where multipart uploads in progress are recorded (see `multipart`).
    records: Key,
    runtime: Handle,
    /// The largest object moved by a server-side copy (S3's CopyObject takes
    /// at most 5 GiB); larger content is copied as a stream.
    max_server_copy: u64,
}

/// S3's limit on one CopyObject.
const MAX_SERVER_COPY: u64 = 5 << 30;

fn storage_error(op: &'static str, path: &Path, e: impl Into<io::Error>) -> StorageError {
    StorageError {
        op,
        path: path.to_owned(),
        source: e.into(),
    }
}

fn object_error(op: &'static str, path: &Path, e: object_store::Error) -> StorageError {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    storage_error(op, path, io::Error::new(kind, e))
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl S3Driver {
    /// Moves of content larger than `bytes` copy it as a stream rather than
    /// server side (the default is S3's own limit; lower in tests, to take
    /// that path without 5 GiB blobs).
    pub fn with_max_server_copy(self, bytes: u64) -> S3Driver {
        S3Driver {
            max_server_copy: bytes,
            ..self
        }
    }

    /// A driver for `config`, making its requests on the current runtime.
    pub fn new(config: &S3Config) -> Result<S3Driver> {
        let here = Path::new(&config.bucket);
        // reqwest is built without a crypto provider of its own: it takes the
        // process's, ring, as the server's TLS does (a no-op once installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = Handle::try_current()
            .map_err(|e| storage_error("s3 driver", here, io::Error::other(e)))?;
        let mut options = ClientOptions::new().with_allow_http(config.allow_http);
        if let Some(pem) = &config.ca_pem {
            for cert in object_store::Certificate::from_pem_bundle(pem)
                .map_err(|e| object_error("read the S3 CA", here, e))?
            {
                options = options.with_root_certificate(cert);
            }
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(options);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = &config.session_token {
                builder = builder.with_token(token);
            }
        }
        let store = builder
            .build()
            .map_err(|e| object_error("configure the S3 client", here, e))?;
        let prefix = config.prefix.trim_matches('/').to_owned();
        if prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err(storage_error(
                "s3 prefix",
                Path::new(&prefix),
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        let records = Key::from_iter(
            prefix
                .split('/')
                .filter(|p| !p.is_empty())
                .chain(MULTIPART_RECORDS.split('/')),
        );
        Ok(S3Driver {
            store: Arc::new(store),
            prefix,
            records,
            runtime,
            max_server_copy: MAX_SERVER_COPY,
        })
    }

    /// The object key of a layout path; refuses what could leave the prefix.
    fn key(&self, path: &Path) -> Result<Key> {
        check_relative(path)?;
        let invalid = |e: io::Error| storage_error("s3 key", path, e);
        let mut parts: Vec<&str> = Vec::new();
        if !self.prefix.is_empty() {
            parts.extend(self.prefix.split('/'));
        }
        for c in path.components() {
            if let Component::Normal(p) = c {
                parts.push(
                    p.to_str()
                        .ok_or_else(|| invalid(io::ErrorKind::InvalidInput.into()))?,
                );
            }
        }
        Key::parse(parts.join("/"))
            .map_err(|e| invalid(io::Error::new(io::ErrorKind::InvalidInput, e)))
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// A writer of the object at `target`, its multipart uploads recorded
    /// for the purge.
    fn part_writer(&self, target: Key) -> PartWriter {
        PartWriter::new(self.store.clone(), target, self.records.clone())
    }
}

/// Where a path's content lives.
enum Content {
    Absent,
    Object(ObjectMeta),
    /// `(offset, segment)`, by offset, contiguous from 0.
    Segments(Vec<(u64, ObjectMeta)>),
}

impl Content {
    fn size(&self) -> Option<u64> {
        match self {
            Content::Absent => None,
            Content::Object(meta) => Some(meta.size),
            Content::Segments(segments) => segments.last().map(|(offset, meta)| offset + meta.size),
        }
    }

    /// When the content was last written (its newest segment).
    fn modified(&self) -> SystemTime {
        let newest = match self {
            Content::Absent => None,
            Content::Object(meta) => Some(meta.last_modified),
            Content::Segments(segments) => segments.iter().map(|(_, m)| m.last_modified).max(),
        };
        newest.map_or(SystemTime::UNIX_EPOCH, SystemTime::from)
    }
}

const SEGMENTS_SUFFIX: &str = ".segments";

/// Keys read under one child of a listed prefix before skipping past it.
const KEYS_BEFORE_SKIP: usize = 32;

impl S3Driver {
    /// The prefix of the segments of the content at `key`.
    fn segments_of(&self, key: &Key) -> Key {
        let name = key.filename().unwrap_or_default();
        let parent: Vec<_> = key.parts().collect();
        let parent = &parent[..parent.len().saturating_sub(1)];
        Key::from_iter(parent.iter().cloned()).join(format!("{name}{SEGMENTS_SUFFIX}").as_str())
    }

    /// The plain object at `key`, or its segments (checked contiguous).
    async fn content(&self, key: &Key, path: &Path) -> Result<Content> {
        match self.store.head(key).await {
            Ok(meta) => return Ok(Content::Object(meta)),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(object_error("s3 head", path, e)),
        }
        self.segments(key, path).await
    }

    /// The segments of the content at `key` (checked contiguous), when there
    /// is no plain object there. Empty segments only make content exist (a
    /// new upload, a cancelled first request): they are left out unless no
    /// other is there. Two segments with data at one offset were written by
    /// two requests at once: the content is then unusable (the client's
    /// upload must start again), never a guess.
    async fn segments(&self, key: &Key, path: &Path) -> Result<Content> {
        let listed: Vec<ObjectMeta> = self
            .store
            .list(Some(&self.segments_of(key)))
            .try_collect()
            .await
            .map_err(|e| object_error("s3 list segments", path, e))?;
        let mut segments = Vec::with_capacity(listed.len());
        let mut placeholder = None;
        for meta in listed {
            let offset = meta
                .location
                .filename()
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| corrupt(path, "a segment name is not an offset"))?;
            if meta.size == 0 {
                placeholder.get_or_insert((offset, meta));
            } else {
                segments.push((offset, meta));
            }
        }
        segments.sort_unstable_by_key(|(offset, _)| *offset);
        let mut end = 0;
        for (offset, meta) in &segments {
            if *offset < end {
                return Err(conflicting_writes(path));
            }
            if *offset != end {
                return Err(corrupt(path, "segments are not contiguous"));
            }
            end += meta.size;
        }
        if segments.is_empty() {
            segments.extend(placeholder);
        }
        Ok(if segments.is_empty() {
            Content::Absent
        } else {
            Content::Segments(segments)
        })
    }

    /// A stream of the content's bytes from `offset`.
    async fn stream(
        &self,
        content: Content,
        offset: u64,
        path: &Path,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>> {
        let pieces: Vec<(Key, u64)> = match content {
            Content::Absent => {
                return Err(storage_error(
                    "s3 get",
                    path,
                    io::Error::from(io::ErrorKind::NotFound),
                ));
            }
            Content::Object(meta) if offset < meta.size || offset == 0 => {
                vec![(meta.location, offset)]
            }
            Content::Object(_) => Vec::new(),
            Content::Segments(segments) => segments
                .into_iter()
                .filter(|(start, meta)| start + meta.size > offset && meta.size > 0)
                .map(|(start, meta)| (meta.location, offset.saturating_sub(start)))
                .collect(),
        };
        let store = self.store.clone();
        let stream = futures_util::stream::iter(pieces)
            .then(move |(key, from)| {
                let store = store.clone();
                async move {
                    let range = (from > 0).then_some(GetRange::Offset(from));
                    let got = store
                        .get_opts(
                            &key,
                            GetOptions {
                                range,
                                ..GetOptions::default()
                            },
                        )
                        .await
                        .map_err(io::Error::other)?;
                    Ok::<_, io::Error>(got.into_stream().map_err(io::Error::other))
                }
            })
            .try_flatten();
        Ok(stream.boxed())
    }

    async fn delete_all(&self, keys: Vec<Key>, path: &Path) -> Result<()> {
        for k in keys {
            match self.store.delete(&k).await {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(object_error("s3 delete", path, e)),
            }
        }
        Ok(())
    }

    /// Deletes every segment of the content at `key` (moved elsewhere),
    /// the empty ones that only made it exist included.
    async fn drop_segments(&self, key: &Key, path: &Path) -> Result<()> {
        let keys = self.keys_under(&self.segments_of(key), path).await?;
        self.delete_all(keys, path).await
    }

    /// The content at `key`, or NotFound (for `op`) when there is none.
    async fn existing_content(&self, key: &Key, path: &Path, op: &'static str) -> Result<Content> {
        match self.content(key, path).await? {
            Content::Absent => Err(storage_error(
                op,
                path,
                io::Error::from(io::ErrorKind::NotFound),
            )),
            content => Ok(content),
        }
    }

    /// The digest of `content`, read whole.
    async fn hash(&self, content: Content, path: &Path, mut hasher: Hasher) -> Result<Digest> {
        let mut bytes = self.stream(content, 0, path).await?;
        while let Some(chunk) = bytes.next().await {
            hasher.update(&chunk.map_err(|e| storage_error("s3 read", path, e))?);
        }
        Ok(hasher.finish())
    }

    /// Moves the content at `from` into one object at `to`: one object
    /// within the server-side copy limit is renamed, anything else copied as
    /// a stream. With `expected`, only content that hashes to it moves,
    /// checked on the very bytes moved; returns the other digest when it
    /// did not.
    async fn move_whole(
        &self,
        from: &Path,
        to: &Path,
        expected: Option<&Digest>,
    ) -> Result<Option<Digest>> {
        let (source, target) = (self.key(from)?, self.key(to)?);
        let content = self.existing_content(&source, from, "s3 move").await?;
        let plain = matches!(content, Content::Object(_));
        let single = match &content {
            Content::Object(meta) => Some(meta.clone()),
            Content::Segments(segments) if segments.len() == 1 => Some(segments[0].1.clone()),
            _ => None,
        };
        if let Some(single) = single.filter(|meta| meta.size <= self.max_server_copy) {
            // One object: hashed, then that very object moves (a later
            // request writes a new key, never over this one).
            if let Some(expected) = expected {
                let hasher = expected.algorithm().hasher();
                let actual = self
                    .hash(Content::Object(single.clone()), from, hasher)
                    .await?;
                if &actual != expected {
                    return Ok(Some(actual));
                }
            }
            self.store
                .rename(&single.location, &target)
                .await
                .map_err(|e| object_error("s3 move", from, e))?;
            if !plain {
                self.drop_segments(&source, from).await?;
            }
            return Ok(None);
        }
        // Several objects, or one too large for a server-side copy: copied
        // into one object (hashed on the way), made visible only on a match.
        let mut hasher = expected.map(|d| d.algorithm().hasher());
        let mut bytes = self.stream(content, 0, from).await?;
        let mut object = self.part_writer(target);
        while let Some(chunk) = bytes.next().await {
            let pushed = match chunk {
                Ok(chunk) => {
                    if let Some(hasher) = &mut hasher {
                        hasher.update(&chunk);
                    }
                    object
                        .push(chunk)
                        .await
                        .map_err(|e| object_error("s3 upload part", to, e))
                }
                Err(e) => Err(storage_error("s3 read segment", from, e)),
            };
            if let Err(e) = pushed {
                let _ = object.abort().await;
                return Err(e);
            }
        }
        if let (Some(hasher), Some(expected)) = (hasher, expected) {
            let actual = hasher.finish();
            if &actual != expected {
                object
                    .abort()
                    .await
                    .map_err(|e| object_error("s3 abort multipart upload", to, e))?;
                return Ok(Some(actual));
            }
        }
        object
            .finish()
            .await
            .map_err(|e| object_error("s3 complete upload", to, e))?;
        if plain {
            self.delete_all(vec![source], from).await
        } else {
            self.drop_segments(&source, from).await
        }
        .map(|()| None)
    }

    async fn keys_under(&self, prefix: &Key, path: &Path) -> Result<Vec<Key>> {
        self.store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| object_error("s3 list", path, e))
    }
}

/// Two requests wrote data at one offset of `path` (see `ConflictingWrites`).
fn conflicting_writes(path: &Path) -> StorageError {
    storage_error(
        "s3 segments",
        path,
        io::Error::new(io::ErrorKind::InvalidData, super::ConflictingWrites),
    )
}

fn corrupt(path: &Path, what: &'static str) -> StorageError {
    storage_error(
        "s3 segments",
        path,
        io::Error::new(io::ErrorKind::InvalidData, what),
    )
}

impl StorageDriver for S3Driver {
    fn get_content(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        let key = self.key(path)?;
        self.block_on(async {
            // Small content (links, manifests) is a plain object: one GET.
            match self.store.get(&key).await {
                Ok(got) => {
                    return got
                        .bytes()
                        .await
                        .map(|b| Some(b.to_vec()))
                        .map_err(|e| object_error("s3 get", path, e));
                }
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(object_error("s3 get", path, e)),
            }
            let content = self.segments(&key, path).await?;
            if matches!(content, Content::Absent) {
                return Ok(None);
            }
            let mut bytes = Vec::with_capacity(content.size().unwrap_or(0) as usize);
            let mut stream = self.stream(content, 0, path).await?;
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.map_err(|e| storage_error("s3 get", path, e))?);
            }
            Ok(Some(bytes))
        })
    }

    fn put_content(&self, path: &Path, content: &[u8]) -> Result<()> {
        let key = self.key(path)?;
        let payload = PutPayload::from(Bytes::copy_from_slice(content));
        self.block_on(async {
            self.store
                .put(&key, payload)
                .await
                .map_err(|e| object_error("s3 put", path, e))?;
            // Content is one object or segments, never both.
            let stale = self.keys_under(&self.segments_of(&key), path).await?;
            self.delete_all(stale, path).await
        })
    }

    fn reader(&self, path: &Path, offset: u64) -> Result<ContentReader> {
        let key = self.key(path)?;
        let stream = self.block_on(async {
            // A blob is a plain object: one ranged GET, without asking first.
            let range = (offset > 0).then_some(GetRange::Offset(offset));
            let options = GetOptions {
                range,
                ..GetOptions::default()
            };
            let content = match self.store.get_opts(&key, options).await {
                Ok(got) => {
                    let stream: BoxStream<'static, io::Result<Bytes>> =
                        got.into_stream().map_err(io::Error::other).boxed();
                    return Ok(stream);
                }
                Err(e) if not_found(&e) => self.segments(&key, path).await?,
                // Most likely a range starting at the end (S3 answers 416).
                Err(_) => self.content(&key, path).await?,
            };
            if content.size().is_some_and(|size| offset > size) {
                return Err(storage_error(
                    "s3 get",
                    path,
                    io::Error::from(io::ErrorKind::UnexpectedEof),
                ));
            }
            self.stream(content, offset, path).await
        })?;
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }

    fn writer(&self, path: &Path, offset: u64) -> Result<Box<dyn ContentWriter>> {
        let key = self.key(path)?;
        let segments = self.segments_of(&key);
        self.block_on(async {
            let content = self.content(&key, path).await?;
            let size = content.size().unwrap_or(0);
            match content {
                // Replacing the content: the plain object goes, segments
                // from here on are written.
                Content::Object(_) if offset == 0 => {
                    self.delete_all(vec![key.clone()], path).await?
                }
                Content::Object(_) => {
                    return Err(storage_error(
                        "s3 append",
                        path,
                        io::Error::new(io::ErrorKind::Unsupported, "appending to a plain object"),
                    ));
                }
                Content::Absent if offset > 0 => {
                    return Err(storage_error(
                        "s3 append",
                        path,
                        io::Error::from(io::ErrorKind::NotFound),
                    ));
                }
                Content::Absent => {}
                Content::Segments(existing) => {
                    if offset > size {
                        return Err(storage_error(
                            "s3 append",
                            path,
                            io::Error::new(io::ErrorKind::InvalidInput, "offset past the end"),
                        ));
                    }
                    if existing
                        .iter()
                        .any(|(o, m)| *o < offset && o + m.size > offset)
                    {
                        return Err(corrupt(path, "the offset falls inside a segment"));
                    }
                    // Data at or past `offset`: another request wrote there
                    // since this one read the size (a failed request of
                    // this driver leaves no segment: its upload is aborted).
                    // It is not cut away: that request was acknowledged.
                    if offset < size {
                        return Err(conflicting_writes(path));
                    }
                }
            }
            Ok::<_, StorageError>(())
        })?;
        // Named by offset and by this request: a request at the same offset
        // on another replica writes beside it, never over it, so content
        // once hashed stays what was hashed (see `move_verified`).
        let segment = segments
            .clone()
            .join(format!("{offset:020}-{:016x}", rand::random::<u64>()).as_str());
        Ok(Box::new(S3Writer {
            object: Some(self.part_writer(segment.clone())),
            segment,
            driver: self.clone(),
            path: path.to_owned(),
            start: offset,
            size: offset,
        }))
    }

    fn stat(&self, path: &Path) -> Result<Option<FileInfo>> {
        let key = self.key(path)?;
        self.block_on(async {
            let content = self.content(&key, path).await?;
            if let Some(size) = content.size() {
                return Ok(Some(FileInfo {
                    size,
                    modified: content.modified(),
                    is_dir: false,
                }));
            }
            // A "directory" exists while a key lies under it; the first page
            // of the listing tells.
            let mut under = self.store.list(Some(&key));
            match under.next().await {
                Some(Ok(_)) => Ok(Some(FileInfo {
                    size: 0,
                    modified: SystemTime::UNIX_EPOCH,
                    is_dir: true,
                })),
                Some(Err(e)) => Err(object_error("s3 list", path, e)),
                None => Ok(None),
            }
        })
    }

    fn list(&self, path: &Path) -> Result<Vec<String>> {
        let key = self.key(path)?;
        let base = match key.as_ref().len() {
            0 => 0,
            n => n + 1,
        };
        self.block_on(async {
            // Names are taken from the keys under the prefix, not from a
            // delimiter listing: a server with folders (SeaweedFS) lists a
            // prefix whose objects are all gone as a folder for minutes. A
            // child with many keys is skipped past with one more request
            // (`start-after` its last possible key), so a listing costs a
            // request per large child, as a walk with a delimiter would.
            let mut names: Vec<String> = Vec::new();
            let mut after: Option<Key> = None;
            'requests: loop {
                let mut keys = match &after {
                    None => self.store.list(Some(&key)),
                    Some(after) => self.store.list_with_offset(Some(&key), after),
                };
                let mut seen_in_child = 0usize;
                while let Some(meta) = keys.next().await {
                    let meta = meta.map_err(|e| object_error("s3 list", path, e))?;
                    let relative = meta.location.as_ref().get(base..).unwrap_or_default();
                    let child = relative.split('/').next().unwrap_or_default();
                    let name = child.strip_suffix(SEGMENTS_SUFFIX).unwrap_or(child);
                    if names.last().map(String::as_str) != Some(name) {
                        names.push(name.to_owned());
                        seen_in_child = 0;
                        continue;
                    }
                    seen_in_child += 1;
                    if seen_in_child >= KEYS_BEFORE_SKIP
                        && let Ok(past) = Key::parse(
                            format!("{}/{child}/\u{10FFFF}", key.as_ref()).trim_start_matches('/'),
                        )
                    {
                        after = Some(past);
                        continue 'requests;
                    }
                }
                break;
            }
            names.sort_unstable();
            names.dedup();
            Ok(names)
        })
    }

    fn move_content(&self, from: &Path, to: &Path) -> Result<()> {
        self.block_on(self.move_whole(from, to, None)).map(drop)
    }

    fn hash_content(&self, path: &Path, algorithm: Algorithm) -> Result<Digest> {
        let key = self.key(path)?;
        self.block_on(async {
            let content = self.existing_content(&key, path, "s3 read").await?;
            self.hash(content, path, algorithm.hasher()).await
        })
    }

    fn move_verified(&self, from: &Path, to: &Path, expected: &Digest) -> Result<Digest> {
        // Moved: it hashed to `expected`.
        let mismatch = self.block_on(self.move_whole(from, to, Some(expected)))?;
        Ok(mismatch.unwrap_or_else(|| expected.clone()))
    }

    fn delete(&self, path: &Path) -> Result<bool> {
        let key = self.key(path)?;
        self.block_on(async {
            // S3 answers a delete of a missing key with success: ask first.
            let mut doomed = match self.store.head(&key).await {
                Ok(_) => vec![key.clone()],
                Err(e) if not_found(&e) => Vec::new(),
                Err(e) => return Err(object_error("s3 head", path, e)),
            };
            doomed.extend(self.keys_under(&self.segments_of(&key), path).await?);
            doomed.extend(self.keys_under(&key, path).await?);
            let found = !doomed.is_empty();
            self.delete_all(doomed, path).await?;
            Ok(found)
        })
    }

    fn touch(&self, _path: &Path) {
        // S3 can date an object only by copying it onto itself; garbage
        // collection's grace period counts from the upload on this backend.
    }

    fn space(&self) -> Option<Space> {
        None
    }

    fn url_for(&self, path: &Path, valid: std::time::Duration) -> Result<Option<String>> {
        use object_store::signer::Signer as _;
        let key = self.key(path)?;
        self.block_on(
            self.store
                .signed_url(reqwest_object_store::Method::GET, &key, valid),
        )
        .map(|url| Some(url.to_string()))
        .map_err(|e| object_error("s3 presign", path, e))
    }

    fn abort_abandoned_writes(&self, max_age: std::time::Duration) -> Result<usize> {
        let within = Key::from_iter(self.prefix.split('/').filter(|p| !p.is_empty()));
        self.block_on(multipart::abort_stale(
            &self.store,
            &self.records,
            &within,
            max_age,
        ))
        .map_err(|e| {
            object_error(
                "s3 abort abandoned uploads",
                Path::new(MULTIPART_RECORDS),
                e,
            )
        })
    }
}

/// One upload request's body, written as one segment: visible whole when
/// the writer closes.
struct S3Writer {
    object: Option<PartWriter>,
    segment: Key,
    driver: S3Driver,
    path: PathBuf,
    start: u64,
    size: u64,
}

impl ContentWriter for S3Writer {
    fn write(&mut self, chunks: &[Bytes]) -> Result<()> {
        let object = self.object.as_mut().expect("open until closed");
        for chunk in chunks {
            self.driver
                .block_on(object.push(chunk.clone()))
                .map_err(|e| object_error("s3 upload part", &self.path, e))?;
            self.size += chunk.len() as u64;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        let object = self.object.take().expect("open until closed");
        // An empty body makes a segment only at 0: content that starts empty
        // exists, as a file opened for writing does.
        if self.size == self.start && self.start > 0 {
            return self
                .driver
                .block_on(object.abort())
                .map_err(|e| object_error("s3 abort multipart upload", &self.path, e));
        }
        self.driver
            .block_on(object.finish())
            .map_err(|e| object_error("s3 complete upload", &self.path, e))
    }

    fn cancel(mut self: Box<Self>) -> Result<()> {
        let object = self.object.take().expect("open until closed");
        self.driver
            .block_on(object.abort())
            .map_err(|e| object_error("s3 abort multipart upload", &self.path, e))?;
        // Cut back to where this writer started: empty content still exists.
        if self.start == 0 {
            let empty = self.driver.part_writer(self.segment.clone());
            self.driver
                .block_on(empty.finish())
                .map_err(|e| object_error("s3 put", &self.path, e))?;
        }
        Ok(())
    }
}

impl Drop for S3Writer {
    /// A writer dropped unclosed (its request's task failed) aborts what it
    /// had sent, in the background.
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            self.driver.runtime.spawn(async move {
                let _ = object.abort().await;
            });
        }
    }
}
