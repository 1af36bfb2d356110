//! Real OCI images built byte by byte: tar layers (ustar), gzip (stored deflate
//! blocks, valid for every gzip reader), config, manifest, multi-platform index,
//! and an OCI image layout on disk that skopeo, crane and oras read.
//!
//! Every manifest is pretty-printed JSON, so a registry that re-serialises what
//! it stores (instead of keeping the bytes) changes the digest and fails the tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::sha256;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Content with its media type and digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_owned(),
            digest: sha256(&bytes),
            bytes,
        }
    }

    pub fn json(media_type: &str, value: &Value) -> Blob {
        Blob::new(media_type, serde_json::to_vec_pretty(value).unwrap())
    }

    /// The hex part of the digest (file names in `blobs/sha256/` and `dir:`).
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap()
    }

    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// One platform image: config, gzip'd layers, manifest.
#[derive(Clone, Debug)]
pub struct Image {
    pub os: String,
    pub arch: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// The uncompressed tars, in layer order (their digests are the diff_ids).
    pub tars: Vec<Vec<u8>>,
    /// The files each layer holds.
    pub files: Vec<Vec<(String, Vec<u8>)>>,
    pub manifest: Blob,
}

impl Image {
    /// Every blob of the image, manifest included.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut v = vec![&self.manifest, &self.config];
        v.extend(self.layers.iter());
        v
    }

    pub fn platform(&self) -> Value {
        json!({ "architecture": self.arch, "os": self.os })
    }
}

/// A multi-platform image: an OCI index over platform images.
#[derive(Clone, Debug)]
pub struct MultiImage {
    pub images: Vec<Image>,
    pub index: Blob,
}

impl MultiImage {
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut v = vec![&self.index];
        for i in &self.images {
            v.extend(i.blobs());
        }
        v
    }
}

/// The platform of this machine in OCI terms (what containerd unpacks by default).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        other => panic!("no OCI name for {other}"),
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A random lower-case word, to keep repositories and tags of parallel tests apart.
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

// --- tar --------------------------------------------------------------------

fn octal(field: &mut [u8], value: u64) {
    // Zero-padded octal, NUL-terminated, filling the field.
    let s = format!("{:0width$o}\0", value, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

fn tar_header(name: &str, size: u64, mode: u64, typeflag: u8) -> [u8; 512] {
    assert!(
        name.len() < 100,
        "tar name too long for this writer: {name}"
    );
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], mode);
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000); // mtime
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    // Checksum: the header's byte sum with the checksum field read as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// A POSIX ustar archive of regular files (mode 0755 under `bin/`, else 0644),
/// preceded by entries for their parent directories.
pub fn tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dirs_done: Vec<String> = Vec::new();
    for (name, data) in files {
        let name = name.trim_start_matches('/');
        let parts: Vec<&str> = name.split('/').collect();
        for i in 1..parts.len() {
            let dir = format!("{}/", parts[..i].join("/"));
            if !dirs_done.contains(&dir) {
                out.extend_from_slice(&tar_header(&dir, 0, 0o755, b'5'));
                dirs_done.push(dir);
            }
        }
        let mode = if name.starts_with("bin/") {
            0o755
        } else {
            0o644
        };
        out.extend_from_slice(&tar_header(name, data.len() as u64, mode, b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

// --- gzip (stored blocks) -----------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// RFC 1952 gzip of `data` using uncompressed (stored) deflate blocks.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks: Vec<&[u8]> = data.chunks(65_535).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i == last)); // BFINAL, BTYPE=00 (stored)
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

// --- images -------------------------------------------------------------------

/// An image whose layers hold exactly `layers` (one file list per layer).
pub fn image(arch: &str, layers: Vec<Vec<(String, Vec<u8>)>>, annotations: Value) -> Image {
    image_running(arch, layers, annotations, "/bin/hello")
}

/// [`image`] whose config runs `command` (a path in the image, no arguments).
pub fn image_running(
    arch: &str,
    layers: Vec<Vec<(String, Vec<u8>)>>,
    annotations: Value,
    command: &str,
) -> Image {
    let tars: Vec<Vec<u8>> = layers.iter().map(|files| tar(files)).collect();
    let blobs: Vec<Blob> = tars
        .iter()
        .map(|t| Blob::new(OCI_LAYER_GZIP, gzip(t)))
        .collect();
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    let config = Blob::json(
        OCI_CONFIG,
        &json!({
            "architecture": arch,
            "os": "linux",
            "config": { "Env": ["PATH=/bin"], "Cmd": [command], "WorkingDir": "/" },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": tars.iter().map(|_| json!({ "created_by": "privreg tests" })).collect::<Vec<_>>(),
        }),
    );
    let manifest = Blob::json(
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": blobs.iter().map(Blob::descriptor).collect::<Vec<_>>(),
            "annotations": annotations,
        }),
    );
    Image {
        os: "linux".into(),
        arch: arch.into(),
        config,
        layers: blobs,
        tars,
        files: layers,
        manifest,
    }
}

/// An image with `n_layers` layers of random files (a few KB to ~100 KB each).
pub fn random_image(arch: &str, n_layers: usize) -> Image {
    let layers = (0..n_layers)
        .map(|i| {
            vec![
                (
                    format!("data/layer{i}/random.bin"),
                    random_bytes(4096 + 30_000 * i + (rand::random::<u16>() as usize)),
                ),
                (
                    format!("etc/layer{i}.txt"),
                    format!("layer {i} of a privreg test image for {arch}\n").into_bytes(),
                ),
            ]
        })
        .collect();
    image(
        arch,
        layers,
        json!({ "org.opencontainers.image.title": random_name("privreg-test-") }),
    )
}

/// A two-or-more platform index over `images`.
pub fn multi_image(images: Vec<Image>) -> MultiImage {
    let index = Blob::json(
        OCI_INDEX,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": images.iter().map(|i| {
                let mut d = i.manifest.descriptor();
                d["platform"] = i.platform();
                d
            }).collect::<Vec<_>>(),
        }),
    );
    MultiImage { images, index }
}

// --- OCI image layout -------------------------------------------------------------

/// Writes an OCI image layout at `dir`: `oci-layout`, `index.json` naming each
/// `(tag, top-level blob)`, and every blob under `blobs/sha256/`.
pub fn write_layout<'a>(
    dir: &Path,
    refs: &[(&str, &Blob)],
    blobs: impl IntoIterator<Item = &'a Blob>,
) {
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for b in blobs {
        std::fs::write(blob_dir.join(b.hex()), &b.bytes).unwrap();
    }
    for (_, b) in refs {
        std::fs::write(blob_dir.join(b.hex()), &b.bytes).unwrap();
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": refs.iter().map(|(tag, b)| {
            let mut d = b.descriptor();
            d["annotations"] = json!({ REF_NAME: tag });
            d
        }).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// Every file under `dir/blobs/sha256/`, by digest.
pub fn layout_blobs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir.join("blobs").join("sha256")).unwrap() {
        let e = e.unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        let digest = format!("sha256:{}", e.file_name().to_string_lossy());
        assert_eq!(sha256(&bytes), digest, "blob file content matches its name");
        out.insert(digest, bytes);
    }
    out
}

/// The descriptors of a layout's `index.json`, by `ref.name` annotation.
pub fn layout_refs(dir: &Path) -> BTreeMap<String, Value> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let name = d["annotations"][REF_NAME].as_str().unwrap_or("").to_owned();
            (name, d.clone())
        })
        .collect()
}

/// The expected blob set of `blobs`, by digest.
pub fn by_digest<'a>(blobs: impl IntoIterator<Item = &'a Blob>) -> BTreeMap<String, Vec<u8>> {
    blobs
        .into_iter()
        .map(|b| (b.digest.clone(), b.bytes.clone()))
        .collect()
}

// --- a runnable image -------------------------------------------------------------

/// A static Linux executable that writes `line` to stdout and exits 0: one ELF
/// header, one program header, a few instructions and the text, about 150 bytes
/// in all. No compiler and no busybox needed, so the image is made offline on
/// any machine of that architecture. `None` where no encoding is written here
/// (only x86-64 so far).
pub fn hello_binary(line: &str) -> Option<Vec<u8>> {
    if std::env::consts::ARCH != "x86_64" {
        return None;
    }
    let text = line.as_bytes();
    let len = u32::try_from(text.len()).expect("a short line");
    let mut code: Vec<u8> = Vec::new();
    code.extend([0xb8, 1, 0, 0, 0]); // mov eax, 1 (write)
    code.extend([0xbf, 1, 0, 0, 0]); // mov edi, 1 (stdout)
    code.extend([0x48, 0x8d, 0x35, 0, 0, 0, 0]); // lea rsi, [rip + text]
    let lea_end = code.len();
    code.push(0xba); // mov edx, len
    code.extend(len.to_le_bytes());
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xb8, 60, 0, 0, 0]); // mov eax, 60 (exit)
    code.extend([0x31, 0xff]); // xor edi, edi
    code.extend([0x0f, 0x05]); // syscall
    let rel = i32::try_from(code.len() - lea_end).unwrap();
    code[lea_end - 4..lea_end].copy_from_slice(&rel.to_le_bytes());
    Some(elf_executable(&code, text))
}

/// A static x86-64 ELF executable: one read+execute PT_LOAD of the whole file
/// at 0x400000, entry at `code`, `data` right after it.
pub fn elf_executable(code: &[u8], data: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: usize = 64 + 56;
    let size = (HEADERS + code.len() + data.len()) as u64;
    let mut elf: Vec<u8> = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little-endian, version 1, System V ABI.
    elf.extend([0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend(1u32.to_le_bytes()); // EV_CURRENT
    elf.extend((BASE + HEADERS as u64).to_le_bytes()); // entry: the code
    elf.extend(64u64.to_le_bytes()); // program headers right after this header
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes()); // flags
    elf.extend(64u16.to_le_bytes()); // header size
    elf.extend(56u16.to_le_bytes()); // program header size
    elf.extend(1u16.to_le_bytes()); // one program header
    elf.extend(64u16.to_le_bytes()); // section header size
    elf.extend(0u16.to_le_bytes()); // no sections
    elf.extend(0u16.to_le_bytes()); // no section names
    // One PT_LOAD, read + execute: the whole file at BASE.
    elf.extend(1u32.to_le_bytes());
    elf.extend(5u32.to_le_bytes());
    elf.extend(0u64.to_le_bytes()); // offset
    elf.extend(BASE.to_le_bytes()); // vaddr
    elf.extend(BASE.to_le_bytes()); // paddr
    elf.extend(size.to_le_bytes()); // file size
    elf.extend(size.to_le_bytes()); // memory size
    elf.extend(0x1000u64.to_le_bytes()); // alignment
    assert_eq!(elf.len(), HEADERS);
    elf.extend(code);
    elf.extend(data);
    elf
}

/// A one-layer image whose `/bin/hello` (the config's `Cmd`) prints `line`;
/// `None` where [`hello_binary`] has no encoding.
pub fn hello_image(line: &str) -> Option<Image> {
    let binary = hello_binary(line)?;
    Some(image(
        host_arch(),
        vec![vec![("bin/hello".to_owned(), binary)]],
        json!({ "org.opencontainers.image.title": "privreg hello" }),
    ))
}
