//! Manifest parsing and validation: which kind a manifest is, which blobs and child
//! manifests it references, and what the referrers API reports about it. Pure: the
//! handlers check the references against storage.

use std::collections::HashMap;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Layers that registries are not expected to hold (their content lives at `urls`).
const NON_DISTRIBUTABLE_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error("manifest media type {0:?} is not supported")]
    UnsupportedMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("manifest does not fit its media type: {0}")]
    Structure(String),
    #[error("descriptor digest {0:?} is invalid")]
    BadDescriptorDigest(String),
}

/// What the registry needs to know about a stored or incoming manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: String,
    /// Blobs that must exist in the repository (config and layers).
    pub blobs: Vec<Digest>,
    /// Manifests that must exist in the repository (children of an index).
    pub children: Vec<Digest>,
    /// The manifest this one refers to (referrers API).
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest without it, the config media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<HashMap<String, String>>,
}

impl ParsedManifest {
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }
}

/// Just enough of any manifest to decide its kind.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
}

/// Parses a manifest body. `content_type` is the request's Content-Type on upload
/// (None when reading back from storage).
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    if probe.schema_version != Some(serde_json::Value::from(2)) {
        return Err(ManifestError::SchemaVersion);
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| is_manifest_media_type(c));
    let media_type = match (&probe.media_type, header) {
        (Some(body), Some(header)) if body != header => {
            return Err(ManifestError::MediaTypeMismatch {
                header: header.to_owned(),
                body: body.clone(),
            });
        }
        (Some(body), _) => body.clone(),
        (None, Some(header)) => header.to_owned(),
        // No declared type: the spec's structure tells an index from an image.
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) if probe.config.is_some() => OCI_MANIFEST.to_owned(),
        (None, None) => return Err(ManifestError::UnsupportedMediaType(String::new())),
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest = serde_json::from_slice(body)
                .map_err(|e| ManifestError::Structure(e.to_string()))?;
            let mut blobs = vec![digest_of(m.config())?];
            for layer in m.layers() {
                if !NON_DISTRIBUTABLE_LAYERS.contains(&layer.media_type().to_string().as_str()) {
                    blobs.push(digest_of(layer)?);
                }
            }
            let artifact_type = m
                .artifact_type()
                .as_ref()
                .map(|t| t.to_string())
                .or_else(|| Some(m.config().media_type().to_string()));
            Ok(ParsedManifest {
                media_type,
                blobs,
                children: Vec::new(),
                subject: m.subject().as_ref().map(digest_of).transpose()?,
                artifact_type,
                annotations: m.annotations().clone(),
            })
        }
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            let i: ImageIndex = serde_json::from_slice(body)
                .map_err(|e| ManifestError::Structure(e.to_string()))?;
            let children = i
                .manifests()
                .iter()
                .map(digest_of)
                .collect::<Result<_, _>>()?;
            Ok(ParsedManifest {
                media_type,
                blobs: Vec::new(),
                children,
                subject: i.subject().as_ref().map(digest_of).transpose()?,
                artifact_type: i.artifact_type().as_ref().map(|t| t.to_string()),
                annotations: i.annotations().clone(),
            })
        }
        other => Err(ManifestError::UnsupportedMediaType(other.to_owned())),
    }
}

pub fn is_manifest_media_type(t: &str) -> bool {
    [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ]
    .contains(&t)
}

fn digest_of(d: &Descriptor) -> Result<Digest, ManifestError> {
    let s = d.digest().to_string();
    s.parse()
        .map_err(|_| ManifestError::BadDescriptorDigest(s.clone()))
}

/// Whether a client's `Accept` header admits a manifest of `media_type`. No header,
/// or a wildcard, admits everything; clients that list types get only those.
pub fn accepts(accept_headers: &[&str], media_type: &str) -> bool {
    let listed: Vec<&str> = accept_headers
        .iter()
        .flat_map(|h| h.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .filter(|t| !t.is_empty())
        .collect();
    listed.is_empty()
        || listed
            .iter()
            .any(|t| *t == media_type || *t == "*/*" || *t == "application/*")
        // Clients that list no manifest type at all (plain `application/json`) still
        // get the manifest, as from every other registry.
        || !listed.iter().any(|t| is_manifest_media_type(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const L1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{CFG}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{L1}","size":5}}]{extra}}}"#
        )
    }

    #[test]
    fn image_manifest_lists_its_blobs() {
        let m = parse(Some(OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.blobs, vec![CFG.parse().unwrap(), L1.parse().unwrap()]);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(!m.is_index());
    }

    #[test]
    fn subject_and_artifact_type_are_read() {
        let body = image(&format!(
            r#","artifactType":"application/vnd.example.sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{L1}","size":9}}"#
        ));
        let m = parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.subject, Some(L1.parse().unwrap()));
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.example.sig")
        );
    }

    #[test]
    fn index_lists_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{L1}","size":7,
            "platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let m = parse(Some(OCI_INDEX), body.as_bytes()).unwrap();
        assert!(m.is_index());
        assert_eq!(m.children, vec![L1.parse().unwrap()]);
        // Without a declared type the structure decides.
        assert_eq!(parse(None, body.as_bytes()).unwrap().media_type, OCI_INDEX);
    }

    #[test]
    fn docker_schema2_is_accepted() {
        let body = image("").replace(OCI_MANIFEST, DOCKER_MANIFEST);
        let m = parse(Some(DOCKER_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST);
    }

    #[test]
    fn non_distributable_layers_need_not_be_present() {
        let body = image("").replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        );
        assert_eq!(parse(None, body.as_bytes()).unwrap().blobs.len(), 1);
    }

    #[test]
    fn invalid_manifests_are_rejected() {
        assert!(matches!(
            parse(None, b"not json"),
            Err(ManifestError::NotJson(_))
        ));
        assert_eq!(
            parse(None, br#"{"schemaVersion":1}"#),
            Err(ManifestError::SchemaVersion)
        );
        assert!(matches!(
            parse(Some(OCI_INDEX), image("").as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        let odd = image("").replace(OCI_MANIFEST, "application/x-other");
        assert!(matches!(
            parse(None, odd.as_bytes()),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        let bad_digest = image("").replace(L1, "sha256:xyz");
        assert!(parse(None, bad_digest.as_bytes()).is_err());
        let missing_config =
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        assert!(matches!(
            parse(None, missing_config.as_bytes()),
            Err(ManifestError::Structure(_))
        ));
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts(&[], OCI_MANIFEST));
        assert!(accepts(&["*/*"], OCI_MANIFEST));
        assert!(accepts(
            &[&format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9")],
            OCI_MANIFEST
        ));
        assert!(!accepts(&[DOCKER_MANIFEST], OCI_INDEX));
        assert!(accepts(&["application/json"], OCI_INDEX));
    }
}
