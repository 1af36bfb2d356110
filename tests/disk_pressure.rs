//! A registry whose volume fills: a 24 MiB tmpfs as the data directory. Below
//! `--min-free-space` new uploads are refused at once (403 DENIED, "storage is
//! full") with nothing written; a chunk that meets the full disk itself is
//! rolled back and answered the same way; pulls keep working; deleting images
//! lets garbage collection make room, and pushes succeed again.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::rawclient::Client;
use common::{Privreg, free_port, sha256};

const MIB: usize = 1 << 20;

/// A tmpfs of a fixed size, unmounted on drop.
struct SmallVolume(PathBuf);

impl SmallVolume {
    fn mount(dir: &Path, size: &str) -> Option<SmallVolume> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                !common::tools_required(),
                "mounting a tmpfs needs root (CI runs as root)"
            );
            eprintln!("skipped: cannot mount a tmpfs here");
            return None;
        }
        Some(SmallVolume(dir.to_owned()))
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn layer(i: usize) -> Vec<u8> {
    let mut v = vec![0u8; 3 * MIB];
    for (j, b) in v.iter_mut().enumerate() {
        *b = (j as u8) ^ (i as u8).wrapping_mul(31);
    }
    v
}

/// Pushes config + one 3 MiB layer + manifest as `img:<i>`; `Err` carries the
/// refusal (status, body).
fn push_image(reg: &Privreg, i: usize) -> Result<(String, Vec<u8>), (u16, String)> {
    let mut c = Client::connect(reg.addr(), &reg.ca());
    let l = layer(i);
    let config = format!(r#"{{"os":"linux","architecture":"amd64","i":{i}}}"#);
    for blob in [config.as_bytes(), &l] {
        let (status, body) = c.try_blob("img", blob);
        if status != 201 {
            return Err((status, String::from_utf8_lossy(&body).into_owned()));
        }
    }
    let m = common::oci::image_manifest(
        common::oci::DOCKER_MANIFEST,
        config.as_bytes(),
        &[&l],
        serde_json::json!({}),
    );
    c.manifest("img", &format!("v{i}"), common::oci::DOCKER_MANIFEST, &m);
    Ok((sha256(&m), l))
}

#[test]
fn a_full_volume_refuses_uploads_cleanly_and_recovers_after_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(volume) = SmallVolume::mount(&tmp.path().join("volume"), "24m") else {
        return;
    };
    let data = volume.0.join("data");
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let reg = Privreg::start(
        &data,
        &[
            "--min-free-space",
            "5Mi",
            "--gc-interval-seconds",
            "1",
            // Long enough for a push's manifest to follow its blobs.
            "--gc-grace-seconds",
            "3",
            "--metrics-listen",
            &metrics_addr,
        ],
    );

    let mut pushed = Vec::new();
    for i in 0..2 {
        pushed.push((i, push_image(&reg, i).expect("room for two images")));
    }

    // A chunk larger than the space left passes the threshold check, meets
    // ENOSPC while writing, and is rolled back.
    let mut c = Client::connect(reg.addr(), &reg.ca());
    let r = c
        .conn
        .request("POST", "/v2/img/blobs/uploads/", &[], b"")
        .unwrap();
    assert_eq!(r.status, 202);
    let location = r.header("location").unwrap().to_owned();
    let r = c
        .conn
        .request("PATCH", &location, &[], &vec![1u8; 20 * MIB])
        .unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("DENIED"));
    let mut c = Client::connect(reg.addr(), &reg.ca());
    let r = c.conn.request("GET", &location, &[], b"").unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("range"),
        Some("0-0"),
        "the refused chunk was rolled back"
    );

    // Fill up to the threshold: then uploads are refused before a byte is written.
    let refusal = loop {
        let i = pushed.len();
        assert!(i < 10, "a 24 MiB volume took ten 3 MiB images");
        match push_image(&reg, i) {
            Ok(image) => pushed.push((i, image)),
            Err(refusal) => break refusal,
        }
    };
    assert_eq!(refusal.0, 403, "{}", refusal.1);
    assert!(
        refusal.1.contains("DENIED") && refusal.1.contains("storage is full"),
        "{}",
        refusal.1
    );
    println!(
        "{} images fit before uploads were refused: {}",
        pushed.len(),
        refusal.1
    );
    let sessions: Vec<_> = common::store::paths(&data)
        .into_iter()
        .filter(|p| p.contains("_uploads/") && p.ends_with("/data"))
        .filter(|p| std::fs::metadata(data.join(p)).is_ok_and(|m| m.len() > 0))
        .collect();
    assert!(
        sessions.is_empty(),
        "refused uploads left data: {sessions:?}"
    );

    // Pulls go on.
    for (i, (_, l)) in &pushed {
        let mut c = Client::connect(reg.addr(), &reg.ca());
        let r = c
            .conn
            .request("GET", &format!("/v2/img/blobs/{}", sha256(l)), &[], b"")
            .unwrap();
        assert_eq!(r.status, 200, "image {i}");
        assert_eq!(&r.body, l);
    }
    let (status, metrics) = common::node::http_get(metrics_addr.parse().unwrap(), "/metrics")
        .expect("metrics endpoint answers");
    assert_eq!(status, 200);
    assert!(metrics.contains("privreg_storage_free_bytes"), "{metrics}");
    let refused_line = metrics
        .lines()
        .find(|l| l.starts_with("privreg_uploads_refused_storage_full_total"))
        .unwrap_or_default()
        .to_owned();
    assert!(!refused_line.ends_with(" 0"), "{refused_line}\n{metrics}");
    // What the operator's StoragePressure condition reads.
    assert!(
        metrics.lines().any(|l| l == "privreg_storage_pressure 1"),
        "{metrics}"
    );
    let report = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(privreg::operator::storage_pressure::scrape(
            std::net::Ipv4Addr::LOCALHOST.into(),
            metrics_port,
        ))
        .expect("the operator's scrape reads the registry's metrics");
    assert!(report.pressure, "{report:?}");
    assert_eq!(report.min_free, 5 << 20);
    assert!(
        report.free < report.min_free && report.size >= 20 << 20,
        "{report:?}"
    );

    // Delete two images; the online collection frees their blobs; pushes work again.
    for (_, (digest, _)) in pushed.drain(..2) {
        Client::connect(reg.addr(), &reg.ca()).delete("img", &digest);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let i = 100;
    loop {
        match push_image(&reg, i) {
            Ok(_) => break,
            Err(refusal) => {
                assert_eq!(refusal.0, 403, "{}", refusal.1);
                assert!(Instant::now() < deadline, "no room after deletes and GC");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    let (_, metrics) = common::node::http_get(metrics_addr.parse().unwrap(), "/metrics")
        .expect("metrics endpoint answers");
    // One more image fits only if the collection freed more than the guard's
    // margin, so the guard may be on or off again now: the gauge must agree
    // with the free space measured in the same scrape.
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    let free = gauge("privreg_storage_free_bytes");
    let min_free = gauge("privreg_storage_min_free_bytes");
    assert_eq!(
        gauge("privreg_storage_pressure"),
        u64::from(free < min_free),
        "{free} free, {min_free} minimum"
    );
    drop(reg);
    drop(volume);
}
