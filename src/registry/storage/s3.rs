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
//! Not yet here: appending to an upload at an offset (a chunked upload
//! continued by a later request, possibly on another replica), which needs
//! the upload's parts recorded in the bucket; and `touch`, which S3 can only
//! do by copying an object onto itself.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use tokio::runtime::Handle;

use super::StorageError;
use super::driver::{ContentReader, ContentWriter, FileInfo, StorageDriver};
use super::space::Space;

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

/// Size of the parts a writer uploads (S3 wants at least 5 MiB per part but
/// the last).
const PART_SIZE: usize = 16 << 20;

/// Parts of one upload in flight at once: bounds the memory a writer holds.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, Clone)]
pub struct S3Driver {
    store: Arc<AmazonS3>,
    prefix: String,
    runtime: Handle,
}

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
        Ok(S3Driver {
            store: Arc::new(store),
            prefix,
            runtime,
        })
    }

    /// The object key of a layout path; refuses what could leave the prefix.
    fn key(&self, path: &Path) -> Result<Key> {
        let mut parts: Vec<&str> = Vec::new();
        if !self.prefix.is_empty() {
            parts.extend(self.prefix.split('/'));
        }
        for c in path.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| {
                    storage_error("s3 key", path, io::Error::from(io::ErrorKind::InvalidInput))
                })?),
                Component::CurDir => {}
                _ => {
                    return Err(storage_error(
                        "s3 key",
                        path,
                        io::Error::from(io::ErrorKind::InvalidInput),
                    ));
                }
            }
        }
        Key::parse(parts.join("/")).map_err(|e| {
            storage_error(
                "s3 key",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }
}

impl StorageDriver for S3Driver {
    fn get_content(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        let key = self.key(path)?;
        self.block_on(async {
            match self.store.get(&key).await {
                Ok(got) => got
                    .bytes()
                    .await
                    .map(|b| Some(b.to_vec()))
                    .map_err(|e| object_error("s3 get", path, e)),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(object_error("s3 get", path, e)),
            }
        })
    }

    fn put_content(&self, path: &Path, content: &[u8]) -> Result<()> {
        let key = self.key(path)?;
        let payload = PutPayload::from(Bytes::copy_from_slice(content));
        self.block_on(self.store.put(&key, payload))
            .map(|_| ())
            .map_err(|e| object_error("s3 put", path, e))
    }

    fn reader(&self, path: &Path, offset: u64) -> Result<ContentReader> {
        let key = self.key(path)?;
        let range = (offset > 0).then_some(GetRange::Offset(offset));
        let got = self.block_on(self.store.get_opts(
            &key,
            GetOptions {
                range,
                ..GetOptions::default()
            },
        ));
        let got = match got {
            Ok(got) => got,
            // A range that starts at the end: nothing left to read.
            Err(object_store::Error::NotModified { .. }) => {
                return Ok(Box::new(tokio::io::empty()));
            }
            Err(e) => {
                if offset > 0
                    && let Ok(meta) = self.block_on(self.store.head(&key))
                    && meta.size == offset
                {
                    return Ok(Box::new(tokio::io::empty()));
                }
                return Err(object_error("s3 get", path, e));
            }
        };
        let stream = got.into_stream().map_err(io::Error::other);
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }

    fn writer(&self, path: &Path, offset: u64) -> Result<Box<dyn ContentWriter>> {
        if offset != 0 {
            return Err(storage_error(
                "s3 append",
                path,
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "appending to an object at an offset is not supported by the S3 driver yet",
                ),
            ));
        }
        let key = self.key(path)?;
        let upload = self
            .block_on(self.store.put_multipart(&key))
            .map_err(|e| object_error("s3 start multipart upload", path, e))?;
        Ok(Box::new(S3Writer {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
            runtime: self.runtime.clone(),
            path: path.to_owned(),
            size: 0,
        }))
    }

    fn stat(&self, path: &Path) -> Result<Option<FileInfo>> {
        let key = self.key(path)?;
        self.block_on(async {
            match self.store.head(&key).await {
                Ok(meta) => {
                    return Ok(Some(FileInfo {
                        size: meta.size,
                        modified: SystemTime::from(meta.last_modified),
                        is_dir: false,
                    }));
                }
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(object_error("s3 head", path, e)),
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
        let listed = self
            .block_on(self.store.list_with_delimiter(Some(&key)))
            .map_err(|e| object_error("s3 list", path, e))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .chain(listed.objects.iter().map(|o| &o.location))
            .filter_map(|k| k.filename().map(str::to_owned))
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    fn move_content(&self, from: &Path, to: &Path) -> Result<()> {
        let (source, target) = (self.key(from)?, self.key(to)?);
        self.block_on(self.store.rename(&source, &target))
            .map_err(|e| object_error("s3 move", from, e))
    }

    fn delete(&self, path: &Path) -> Result<bool> {
        let key = self.key(path)?;
        self.block_on(async {
            // S3 answers a delete of a missing key with success: ask first.
            let mut found = match self.store.head(&key).await {
                Ok(_) => true,
                Err(e) if not_found(&e) => false,
                Err(e) => return Err(object_error("s3 head", path, e)),
            };
            if found {
                self.store
                    .delete(&key)
                    .await
                    .map_err(|e| object_error("s3 delete", path, e))?;
            }
            let under: Vec<Key> = self
                .store
                .list(Some(&key))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
                .map_err(|e| object_error("s3 list", path, e))?;
            found |= !under.is_empty();
            for k in under {
                match self.store.delete(&k).await {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(object_error("s3 delete", path, e)),
                }
            }
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
}

/// One upload request's body, streamed into an S3 multipart upload.
struct S3Writer {
    upload: Option<WriteMultipart>,
    runtime: Handle,
    path: PathBuf,
    size: u64,
}

impl ContentWriter for S3Writer {
    fn write(&mut self, chunks: &[Bytes]) -> Result<()> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(storage_error(
                "s3 write",
                &self.path,
                io::Error::other("the upload was ended"),
            ));
        };
        for chunk in chunks {
            self.runtime
                .block_on(upload.wait_for_capacity(PARTS_IN_FLIGHT))
                .map_err(|e| object_error("s3 upload part", &self.path, e))?;
            upload.put(chunk.clone());
            self.size += chunk.len() as u64;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        let Some(upload) = self.upload.take() else {
            return Ok(());
        };
        self.runtime
            .block_on(upload.finish())
            .map(|_| ())
            .map_err(|e| object_error("s3 complete multipart upload", &self.path, e))
    }

    fn cancel(mut self: Box<Self>) -> Result<()> {
        let Some(upload) = self.upload.take() else {
            return Ok(());
        };
        self.runtime
            .block_on(upload.abort())
            .map_err(|e| object_error("s3 abort multipart upload", &self.path, e))
    }
}
