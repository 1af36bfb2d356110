//! The S3 storage driver against a real S3 server: SeaweedFS on loopback
//! (built by scripts/test-tools.sh), with signed requests and one bucket.
//! What the driver promises (see `StorageDriver`) is checked operation by
//! operation, including Distribution's "directories are key prefixes".

mod common;

use std::io;
use std::path::Path;

use bytes::Bytes;
use privreg::registry::storage::StorageDriver;
use privreg::registry::storage::s3::{S3Config, S3Driver};
use tokio::io::AsyncReadExt;

use common::daemons::SeaweedFs;

fn config(s3: &SeaweedFs, prefix: &str) -> S3Config {
    s3.config(prefix)
}

/// Runs blocking driver calls off the runtime's async threads, as the
/// registry does.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn read_all(driver: &S3Driver, path: &'static str, offset: u64) -> Vec<u8> {
    let d = driver.clone();
    let mut reader = blocking(move || d.reader(Path::new(path), offset))
        .await
        .unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_driver_keeps_the_driver_contract_on_a_real_s3_server() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "privreg") else {
        return;
    };
    let driver = S3Driver::new(&config(&s3, "tenant-a/registry")).unwrap();
    let d = driver.clone();
    blocking(move || {
        let link = Path::new("docker/registry/v2/repositories/a/b/_layers/sha256/aa/link");
        // Absence is not an error.
        assert_eq!(d.get_content(link).unwrap(), None);
        assert_eq!(d.stat(link).unwrap(), None);
        assert!(
            d.list(Path::new("docker/registry/v2/repositories"))
                .unwrap()
                .is_empty()
        );
        assert!(!d.delete(link).unwrap());

        // Content round-trips and replaces.
        d.put_content(link, b"sha256:first").unwrap();
        d.put_content(link, b"sha256:second").unwrap();
        assert_eq!(
            d.get_content(link).unwrap().as_deref(),
            Some(&b"sha256:second"[..])
        );
        let info = d.stat(link).unwrap().unwrap();
        assert_eq!((info.size, info.is_dir), (13, false));

        // Directories are prefixes: they exist while something is under them.
        let dir_info = d
            .stat(Path::new("docker/registry/v2/repositories/a"))
            .unwrap()
            .unwrap();
        assert!(dir_info.is_dir);
        d.put_contents(&[
            (
                "docker/registry/v2/repositories/a/c/_manifests/tags/v1/current/link".into(),
                &b"sha256:x"[..],
            ),
            (
                "docker/registry/v2/repositories/z/_manifests/tags/v1/current/link".into(),
                &b"sha256:y"[..],
            ),
        ])
        .unwrap();
        assert_eq!(
            d.list(Path::new("docker/registry/v2/repositories/a"))
                .unwrap(),
            vec!["b".to_owned(), "c".to_owned()]
        );
        assert_eq!(
            d.list(Path::new("docker/registry/v2/repositories"))
                .unwrap(),
            vec!["a".to_owned(), "z".to_owned()]
        );

        // A move replaces its target and leaves no source.
        let (from, to) = (
            Path::new("docker/registry/v2/repositories/z/_uploads/u1/data"),
            Path::new("docker/registry/v2/blobs/sha256/aa/aa00/data"),
        );
        d.put_content(from, b"blob bytes").unwrap();
        d.move_content(from, to).unwrap();
        assert_eq!(d.get_content(from).unwrap(), None);
        assert_eq!(
            d.get_content(to).unwrap().as_deref(),
            Some(&b"blob bytes"[..])
        );

        // Deleting a prefix deletes everything under it, once.
        assert!(
            d.delete(Path::new("docker/registry/v2/repositories/a"))
                .unwrap()
        );
        assert!(
            !d.delete(Path::new("docker/registry/v2/repositories/a"))
                .unwrap()
        );
        // Nothing is under it any more, and listings say so at once (SeaweedFS
        // keeps an empty folder for minutes; the driver lists keys, not folders).
        assert_eq!(
            d.stat(Path::new("docker/registry/v2/repositories/a"))
                .unwrap(),
            None
        );
        assert_eq!(
            d.list(Path::new("docker/registry/v2/repositories"))
                .unwrap(),
            vec!["z".to_owned()]
        );

        // A child with many keys is skipped past, not read key by key.
        let many: Vec<(std::path::PathBuf, &[u8])> = (0..100)
            .map(|i| {
                (
                    format!("docker/registry/v2/repositories/m/_layers/{i:03}/link").into(),
                    &b"l"[..],
                )
            })
            .chain([("docker/registry/v2/repositories/n/link".into(), &b"l"[..])])
            .collect();
        d.put_contents(&many).unwrap();
        assert_eq!(
            d.list(Path::new("docker/registry/v2/repositories"))
                .unwrap(),
            vec!["m".to_owned(), "n".to_owned(), "z".to_owned()]
        );
        assert_eq!(
            d.list(Path::new("docker/registry/v2/repositories/m/_layers"))
                .unwrap()
                .len(),
            100
        );

        // Paths cannot leave the prefix.
        for bad in ["../tenant-b/x", "docker/../../x", "/etc/passwd"] {
            let e = d.get_content(Path::new(bad)).unwrap_err();
            assert_eq!(e.source.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    })
    .await;

    // The prefix is where everything went: another prefix in the same bucket
    // sees none of it.
    let other = S3Driver::new(&config(&s3, "tenant-b")).unwrap();
    let listed = blocking(move || other.list(Path::new("docker/registry/v2")).unwrap()).await;
    assert!(listed.is_empty(), "{listed:?}");

    // Reads stream from an offset, including the end.
    assert_eq!(
        read_all(&driver, "docker/registry/v2/blobs/sha256/aa/aa00/data", 0).await,
        b"blob bytes"
    );
    assert_eq!(
        read_all(&driver, "docker/registry/v2/blobs/sha256/aa/aa00/data", 5).await,
        b"bytes"
    );
    assert!(
        read_all(&driver, "docker/registry/v2/blobs/sha256/aa/aa00/data", 10)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_writer_streams_a_multipart_upload_and_a_cancel_keeps_nothing_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "uploads") else {
        return;
    };
    let driver = S3Driver::new(&config(&s3, "")).unwrap();

    // 40 MiB in 1 MiB chunks: three parts of the multipart upload.
    let chunks: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; 1 << 20])).collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let d = driver.clone();
    blocking(move || {
        let path = Path::new("docker/registry/v2/repositories/r/_uploads/big/data");
        let mut w = d.writer(path, 0).unwrap();
        for piece in chunks.chunks(8) {
            w.write(piece).unwrap();
        }
        assert_eq!(w.size(), 40 << 20);
        w.close().unwrap();
        assert_eq!(d.stat(path).unwrap().unwrap().size, 40 << 20);

        // A cancelled request leaves nothing of what it wrote.
        let gone = Path::new("docker/registry/v2/repositories/r/_uploads/cancelled/data");
        let mut w = d.writer(gone, 0).unwrap();
        w.write(&[Bytes::from(vec![7u8; 6 << 20])]).unwrap();
        w.cancel().unwrap();

        // A cancelled first request leaves empty content, as a file would be.
        assert_eq!(d.stat(gone).unwrap().unwrap().size, 0);
    })
    .await;
    let got = read_all(
        &driver,
        "docker/registry/v2/repositories/r/_uploads/big/data",
        0,
    )
    .await;
    assert!(
        got == expected,
        "the uploaded object differs from what was written"
    );
}

/// A chunked upload continued by another replica: each request body is a
/// segment in the bucket, so a second driver (another process) appends where
/// the first stopped; a failed request is cut back; the move makes one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_appends_continue_across_drivers_and_move_into_one_object() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "chunked") else {
        return;
    };
    let first = S3Driver::new(&config(&s3, "r")).unwrap();
    let second = S3Driver::new(&config(&s3, "r")).unwrap();
    let chunk = |n: usize, byte: u8| Bytes::from(vec![byte; n]);
    let (a, b) = (first.clone(), second.clone());
    blocking(move || {
        let upload = Path::new("docker/registry/v2/repositories/x/_uploads/u1");
        let data = upload.join("data");
        // The session starts with empty content (`Uploads::start`).
        a.writer(&data, 0).unwrap().close().unwrap();
        assert_eq!(a.stat(&data).unwrap().unwrap().size, 0);

        let mut w = a.writer(&data, 0).unwrap();
        w.write(&[chunk(6 << 20, 1)]).unwrap();
        w.close().unwrap();
        // The other replica sees the size and continues.
        assert_eq!(b.stat(&data).unwrap().unwrap().size, 6 << 20);
        let mut w = b.writer(&data, 6 << 20).unwrap();
        w.write(&[chunk(1 << 20, 2), chunk(2 << 20, 3)]).unwrap();
        w.close().unwrap();
        assert_eq!(a.stat(&data).unwrap().unwrap().size, 9 << 20);

        // A request that fails midway is cut back to where it started.
        let mut w = a.writer(&data, 9 << 20).unwrap();
        w.write(&[chunk(7 << 20, 9)]).unwrap();
        w.cancel().unwrap();
        assert_eq!(b.stat(&data).unwrap().unwrap().size, 9 << 20);
        // Offsets past the end, or inside a request's segment, are refused
        // and change nothing.
        let past = a.writer(&data, 10 << 20).err().unwrap();
        assert_eq!(past.source.kind(), io::ErrorKind::InvalidInput);
        let inside = a.writer(&data, 7 << 20).err().unwrap();
        assert_eq!(inside.source.kind(), io::ErrorKind::InvalidData);
        assert_eq!(b.stat(&data).unwrap().unwrap().size, 9 << 20);
        // A request that read the size before another replica's request
        // ended opens at an offset now written: refused as two writes at
        // one offset, and the other request's acknowledged segment stays.
        let late = a.writer(&data, 6 << 20).err().unwrap();
        assert!(late.is_conflicting_writes(), "{late:?}");
        assert_eq!(b.stat(&data).unwrap().unwrap().size, 9 << 20);

        // The session directory lists its content once, by its name.
        a.put_content(&upload.join("startedat"), b"2026-12-04T00:00:00Z")
            .unwrap();
        assert_eq!(
            a.list(upload).unwrap(),
            vec!["data".to_owned(), "startedat".to_owned()]
        );
    })
    .await;

    // Reads chain the segments, from any offset.
    let expected: Vec<u8> = [vec![1u8; 6 << 20], vec![2u8; 1 << 20], vec![3u8; 2 << 20]].concat();
    let data = "docker/registry/v2/repositories/x/_uploads/u1/data";
    assert!(read_all(&second, data, 0).await == expected);
    assert!(read_all(&first, data, (6 << 20) - 3).await == expected[(6 << 20) - 3..]);
    assert!(read_all(&first, data, 9 << 20).await.is_empty());

    // The move composes one object and removes the segments.
    let b = second.clone();
    blocking(move || {
        let (from, to) = (
            Path::new(data),
            Path::new("docker/registry/v2/blobs/sha256/ab/abcd/data"),
        );
        b.move_content(from, to).unwrap();
        assert_eq!(b.stat(from).unwrap(), None);
        assert_eq!(b.stat(to).unwrap().unwrap().size, 9 << 20);
        assert!(
            b.delete(Path::new("docker/registry/v2/repositories/x/_uploads/u1"))
                .unwrap()
        );
        assert_eq!(
            b.stat(Path::new("docker/registry/v2/repositories/x/_uploads/u1"))
                .unwrap(),
            None
        );
    })
    .await;
    assert!(read_all(&first, "docker/registry/v2/blobs/sha256/ab/abcd/data", 0).await == expected);
}

/// `--s3-redirect-seconds`: a blob GET is answered with a 307 to a presigned
/// URL of the object, which a client fetches from the S3 server itself; only
/// for blobs the repository may serve; HEAD still answers in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gets_redirect_to_presigned_urls_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "redirects") else {
        return;
    };
    let data = dir.path().join("privreg");
    let reg = s3.start_privreg(
        &data,
        "r",
        &["--s3-redirect-seconds", "60"].map(String::from),
    );
    let client = common::https_client(&reg.ca());
    let blob = common::oci::random_bytes(3 << 20);
    let digest = common::oci::push_monolithic(&client, &reg.url(), "r/img", blob.clone())
        .await
        .unwrap();

    let direct = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(reg.ca()).unwrap()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("{}/v2/r/img/blobs/{digest}", reg.url());
    let answer = direct.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 307);
    assert_eq!(answer.headers()["docker-content-digest"], digest.as_str());
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&s3.endpoint()) && location.contains("X-Amz-Signature="),
        "{location}"
    );
    // The presigned URL serves the blob without credentials of the client's own.
    let fetched = reqwest::get(&location).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert!(fetched.bytes().await.unwrap() == blob);

    // A client that follows redirects pulls as before; HEAD stays in place.
    let (status, body) = common::oci::get_bytes(&client, &url).await;
    assert!(status == 200 && body == blob);
    let head = direct.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        (3 << 20).to_string().as_str()
    );
    // No redirect for a blob this repository may not serve.
    let other = direct
        .get(format!("{}/v2/r/other/blobs/{digest}", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

/// Multipart uploads are recorded in the bucket while they run: a writer that
/// closes or cancels leaves neither a record nor an unfinished upload; one
/// that never ends (its process died) is aborted by `abort_abandoned_writes`
/// once its record is older than the age given, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_multipart_uploads_are_aborted_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "abandoned") else {
        return;
    };
    let driver = S3Driver::new(&config(&s3, "tenant")).unwrap();
    let records = Path::new("privreg/multipart");
    let d = driver.clone();
    blocking(move || {
        let part = Bytes::from(vec![1u8; 20 << 20]);
        let mut closed = d.writer(Path::new("uploads/closed/data"), 0).unwrap();
        closed.write(std::slice::from_ref(&part)).unwrap();
        closed.close().unwrap();
        let mut cancelled = d.writer(Path::new("uploads/cancelled/data"), 0).unwrap();
        cancelled.write(std::slice::from_ref(&part)).unwrap();
        cancelled.cancel().unwrap();
        assert_eq!(d.list(records).unwrap(), Vec::<String>::new());
        // A small body is one PUT: no multipart upload, no record.
        let mut small = d.writer(Path::new("uploads/small/data"), 0).unwrap();
        small.write(&[Bytes::from_static(b"small")]).unwrap();
        assert_eq!(d.list(records).unwrap(), Vec::<String>::new());
        small.close().unwrap();
    })
    .await;
    assert_eq!(
        s3.unfinished_multipart_uploads().await,
        Vec::<String>::new()
    );

    // A writer whose process died: never closed, never dropped.
    let d = driver.clone();
    blocking(move || {
        let mut dead = d.writer(Path::new("uploads/dead/data"), 0).unwrap();
        dead.write(&[Bytes::from(vec![2u8; 20 << 20])]).unwrap();
        std::mem::forget(dead);
    })
    .await;
    assert_eq!(s3.unfinished_multipart_uploads().await.len(), 1);
    let d = driver.clone();
    let (young, old) = blocking(move || {
        let young = d
            .abort_abandoned_writes(std::time::Duration::from_secs(3600))
            .unwrap();
        let listed = d.list(records).unwrap();
        assert_eq!(listed.len(), 1, "a young record stays");
        // A record whose upload already ended (its delete failed) is cleared
        // without counting.
        d.put_content(
            &records.join("ended"),
            b"tenant/uploads/closed/data.segments/00000000000000000000\nno-such-upload\n",
        )
        .unwrap();
        let old = d.abort_abandoned_writes(std::time::Duration::ZERO).unwrap();
        assert_eq!(d.list(records).unwrap(), Vec::<String>::new());
        (young, old)
    })
    .await;
    assert_eq!((young, old), (0, 1));
    assert_eq!(
        s3.unfinished_multipart_uploads().await,
        Vec::<String>::new()
    );
}

/// `move_verified` moves content only when the bytes it reads hash to the
/// digest named, and two segments with data at one offset (two requests
/// that raced on two replicas) make the content unusable, not a guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_are_verified_on_the_bytes_moved() {
    use privreg::registry::digest::Digest;

    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "verified") else {
        return;
    };
    let (a, b) = (
        S3Driver::new(&config(&s3, "v")).unwrap(),
        S3Driver::new(&config(&s3, "v")).unwrap(),
    );
    blocking(move || {
        let digest = |data: &[u8]| -> Digest { common::sha256(data).parse().unwrap() };
        let (upload, blob) = (Path::new("uploads/u/data"), Path::new("blobs/x/data"));
        let write = |d: &S3Driver, offset: u64, data: &[u8]| {
            let mut w = d.writer(upload, offset).unwrap();
            w.write(&[Bytes::copy_from_slice(data)]).unwrap();
            w
        };
        write(&a, 0, b"hello ").close().unwrap();
        write(&b, 6, b"world").close().unwrap();

        // A wrong digest: nothing moves, the upload stays as it was.
        let wrong = digest(b"hello there");
        assert_eq!(
            a.move_verified(upload, blob, &wrong).unwrap(),
            digest(b"hello world")
        );
        assert_eq!(a.stat(blob).unwrap(), None);
        assert_eq!(a.stat(upload).unwrap().unwrap().size, 11);

        // The right one moves those bytes, segments and all.
        let right = digest(b"hello world");
        assert_eq!(b.move_verified(upload, blob, &right).unwrap(), right);
        assert_eq!(a.stat(upload).unwrap(), None);
        assert_eq!(a.get_content(blob).unwrap().unwrap(), b"hello world");

        // Two requests at offset 6 at once: both writers were opened before
        // either closed, so each wrote its own segment. The upload is then
        // unusable (a client must start again); it can only be deleted.
        write(&a, 0, b"hello ").close().unwrap();
        let (first, second) = (write(&a, 6, b"WORLD"), write(&b, 6, b"there"));
        first.close().unwrap();
        second.close().unwrap();
        let other = Path::new("blobs/y/data");
        let conflict = a
            .move_verified(upload, other, &digest(b"hello WORLD"))
            .unwrap_err();
        assert!(conflict.is_conflicting_writes(), "{conflict:?}");
        assert!(b.writer(upload, 11).err().unwrap().is_conflicting_writes());
        assert_eq!(a.stat(other).unwrap(), None);
        assert!(a.delete(Path::new("uploads/u")).unwrap());
        assert_eq!(b.stat(upload).unwrap(), None);
        assert_eq!(a.get_content(blob).unwrap().unwrap(), b"hello world");
    })
    .await;
}

/// S3 copies at most 5 GiB server side; one object beyond the limit (a large
/// layer pushed in one request, or a plain object) is moved as a streamed,
/// hashed copy instead. The limit is lowered here to take that path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_beyond_the_server_copy_limit_is_streamed() {
    use privreg::registry::digest::Digest;

    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "big-move") else {
        return;
    };
    let driver = S3Driver::new(&config(&s3, "m"))
        .unwrap()
        .with_max_server_copy(1 << 20);
    blocking(move || {
        let data = common::oci::random_bytes(3 << 20);
        let digest: Digest = common::sha256(&data).parse().unwrap();
        let (upload, blob) = (Path::new("uploads/u/data"), Path::new("blobs/x/data"));

        // One segment of 3 MiB (one request's body).
        let mut w = driver.writer(upload, 0).unwrap();
        w.write(&[Bytes::copy_from_slice(&data)]).unwrap();
        w.close().unwrap();
        let wrong: Digest = common::sha256(b"other").parse().unwrap();
        assert_eq!(driver.move_verified(upload, blob, &wrong).unwrap(), digest);
        assert_eq!(driver.stat(blob).unwrap(), None);
        assert_eq!(driver.move_verified(upload, blob, &digest).unwrap(), digest);
        assert_eq!(driver.stat(upload).unwrap(), None);
        assert_eq!(driver.get_content(blob).unwrap().unwrap(), data);

        // A plain object of the same size.
        let (plain, moved) = (Path::new("plain/data"), Path::new("blobs/y/data"));
        driver.put_content(plain, &data).unwrap();
        assert_eq!(driver.move_verified(plain, moved, &digest).unwrap(), digest);
        assert_eq!(driver.stat(plain).unwrap(), None);
        assert_eq!(driver.get_content(moved).unwrap().unwrap(), data);
    })
    .await;
}
