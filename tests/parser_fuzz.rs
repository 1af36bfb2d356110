//! Property tests over every parser that reads a client's bytes: the route
//! parser, `Range` and `Content-Range`, query strings, digests, manifests. They
//! must never panic, and what they accept must be within bounds. The case count
//! is fixed (PRIVREG_FUZZ_CASES overrides it), so CI time is bounded.

use axum::http::{HeaderMap, HeaderValue, header};
use proptest::prelude::*;

use privreg::registry::digest::Digest;
use privreg::registry::handlers::Query;
use privreg::registry::handlers::blobs::parse_range;
use privreg::registry::handlers::uploads::chunk_start;
use privreg::registry::manifest;
use privreg::registry::names::RepoName;
use privreg::registry::routes::{self, Endpoint};

fn config() -> ProptestConfig {
    let cases = std::env::var("PRIVREG_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(4096);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Path segments that look like the API's, mixed with hostile ones.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("v2".to_owned()),
        Just("blobs".to_owned()),
        Just("uploads".to_owned()),
        Just("manifests".to_owned()),
        Just("tags".to_owned()),
        Just("list".to_owned()),
        Just("referrers".to_owned()),
        Just("_catalog".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just(String::new()),
        Just(format!("sha256:{}", "a".repeat(64))),
        "[a-z0-9._-]{1,12}",
        "sha256:[0-9a-f]{0,70}",
        "[a-zA-Z0-9:@%._~-]{0,20}",
        any::<String>(),
    ]
}

fn api_path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..8).prop_map(|segs| format!("/{}", segs.join("/")))
}

/// Numbers near the edges, where arithmetic overflows.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just(String::new()),
        "[0-9]{1,25}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn routes_never_panic_and_names_are_valid(path in prop_oneof![api_path(), any::<String>()]) {
        if let Ok(endpoint) = routes::parse(&path) {
            let name = match &endpoint {
                Endpoint::Tags(n) | Endpoint::Manifest(n, _) | Endpoint::Blob(n, _)
                | Endpoint::UploadStart(n) | Endpoint::Upload(n, _) | Endpoint::Referrers(n, _) => {
                    Some(n.to_string())
                }
                _ => None,
            };
            if let Some(name) = name {
                prop_assert!(RepoName::parse(&name).is_some(), "{name:?} from {path:?}");
                prop_assert!(!name.split('/').any(|c| c == ".." || c == "." || c.is_empty()));
                prop_assert!(path.contains(&name));
            }
        }
    }

    #[test]
    fn blob_range_stays_inside_the_blob(
        a in number(), b in number(), suffix in any::<bool>(), size in any::<u64>(),
        raw in any::<String>(),
    ) {
        let header = if suffix { format!("bytes=-{b}") } else { format!("bytes={a}-{b}") };
        for h in [header.as_str(), raw.as_str()] {
            if let Ok(Some((start, end))) = parse_range(Some(h), size) {
                prop_assert!(start <= end && end < size, "{h:?} size {size}: {start}-{end}");
            }
        }
    }

    #[test]
    fn content_range_is_checked(
        a in number(), b in number(), len in prop::option::of(number()), size in any::<u64>(),
        form in 0..3u8,
    ) {
        let range = match form {
            0 => format!("{a}-{b}"),
            1 => format!("bytes {a}-{b}/*"),
            _ => format!("bytes={a}-{b}"),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_RANGE, HeaderValue::from_str(&range).unwrap());
        if let Some(len) = &len
            && let Ok(v) = HeaderValue::from_str(len)
        {
            headers.insert(header::CONTENT_LENGTH, v);
        }
        if let Ok(Some(start)) = chunk_start(&headers, size) {
            let (sa, sb): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            prop_assert_eq!(start, sa);
            prop_assert!(sb >= sa);
            if let Some(len) = len.and_then(|l| l.parse::<u64>().ok()) {
                prop_assert_eq!(Some(len), (sb - sa).checked_add(1));
            }
        }
    }

    #[test]
    fn queries_and_digests_never_panic(raw in any::<String>(), digest in "[a-z0-9+._-]{0,10}:[a-zA-Z0-9=_-]{0,140}") {
        let q = Query::parse(Some(&raw));
        let _ = q.get("n");
        let _ = q.get("digest");
        for d in [raw.as_str(), digest.as_str()] {
            if let Ok(parsed) = d.parse::<Digest>() {
                prop_assert_eq!(parsed.to_string(), d);
            }
        }
    }

    #[test]
    fn manifests_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        json in manifest_like(),
        content_type in prop::option::of(prop_oneof![
            Just("application/vnd.oci.image.manifest.v1+json".to_owned()),
            Just("application/vnd.oci.image.index.v1+json".to_owned()),
            Just("application/vnd.docker.distribution.manifest.v2+json".to_owned()),
            any::<String>(),
        ]),
    ) {
        let _ = manifest::parse(content_type.as_deref(), &bytes);
        if let Ok(m) = manifest::parse(content_type.as_deref(), json.as_bytes()) {
            for d in m.blobs.iter().chain(&m.children).chain(&m.subject) {
                prop_assert!(json.contains(&d.to_string()));
            }
        }
    }
}

/// JSON shaped like a manifest, with hostile values in its fields.
fn manifest_like() -> impl Strategy<Value = String> {
    let digest = prop_oneof![
        Just(format!("sha256:{}", "b".repeat(64))),
        "sha256:[0-9a-f]{0,66}",
        any::<String>(),
    ];
    let size = prop_oneof![
        Just("-1".to_owned()),
        Just(u64::MAX.to_string()),
        Just("1e400".to_owned()),
        Just("\"12\"".to_owned()),
        "[0-9]{1,22}",
    ];
    let media = prop_oneof![
        Just("application/vnd.oci.image.manifest.v1+json".to_owned()),
        Just("application/vnd.oci.image.index.v1+json".to_owned()),
        Just("application/vnd.oci.image.layer.v1.tar".to_owned()),
        "[ -~]{0,30}",
    ];
    (media.clone(), digest.clone(), size.clone(), digest, size, media, 0..3u8).prop_map(
        |(mt, cd, cs, ld, ls, lmt, kind)| {
            let esc = |s: &str| serde_json::to_string(s).unwrap();
            match kind {
                0 => format!(
                    r#"{{"schemaVersion":2,"mediaType":{},"config":{{"mediaType":"x","digest":{},"size":{cs}}},"layers":[{{"mediaType":{},"digest":{},"size":{ls}}}]}}"#,
                    esc(&mt), esc(&cd), esc(&lmt), esc(&ld)
                ),
                1 => format!(
                    r#"{{"schemaVersion":2,"mediaType":{},"manifests":[{{"mediaType":{},"digest":{},"size":{ls}}}],"subject":{{"mediaType":"x","digest":{},"size":{cs}}}}}"#,
                    esc(&mt), esc(&lmt), esc(&ld), esc(&cd)
                ),
                _ => format!(r#"{{"schemaVersion":{cs},"mediaType":{}}}"#, esc(&mt)),
            }
        },
    )
}
