//! What the cluster admin allows, as opposed to what a tenant asks for. A
//! PrivateRegistry's spec is hostile input: the image it names runs with the
//! registry's Secrets mounted, so only images the admin listed may be chosen.
//!
//! An allowed-image pattern is an exact reference or a prefix ending in one `*`
//! (`mirror.internal/privreg/privreg:*`). Nothing richer, on purpose: the same
//! list is rendered into the ValidatingAdmissionPolicy (CEL `==` / `startsWith`),
//! so admission and the operator can never disagree about what a pattern means.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "allowed-image pattern {0:?} must be an image reference, optionally ending in one `*` (a prefix)"
)]
pub struct PolicyError(String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum ImagePattern {
    Exact(String),
    Prefix(String),
}

/// The admin's policy, fixed at operator start.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The operator's own image: always allowed, and the default for registries.
    default_image: String,
    allowed_images: Vec<ImagePattern>,
}

fn pattern(p: &str) -> Result<ImagePattern, PolicyError> {
    let bad = || PolicyError(p.to_owned());
    let (body, prefix) = match p.strip_suffix('*') {
        Some(body) => (body, true),
        None => (p, false),
    };
    if body.is_empty()
        || body.len() > 512
        || body.contains('*')
        || body.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    Ok(if prefix {
        ImagePattern::Prefix(body.to_owned())
    } else {
        ImagePattern::Exact(body.to_owned())
    })
}

impl Policy {
    pub fn new(default_image: &str, allowed_images: &[String]) -> Result<Policy, PolicyError> {
        let allowed_images = allowed_images
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(pattern)
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            default_image: default_image.to_owned(),
            allowed_images,
        })
    }

    pub fn default_image(&self) -> &str {
        &self.default_image
    }

    /// Whether a registry may run `image`.
    pub fn image_allowed(&self, image: &str) -> bool {
        image == self.default_image
            || self.allowed_images.iter().any(|p| match p {
                ImagePattern::Exact(e) => image == e,
                ImagePattern::Prefix(prefix) => image.starts_with(prefix.as_str()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_own_image_by_default() {
        let p = Policy::new("ghcr.io/privreg/privreg:0.1.0", &[]).unwrap();
        assert!(p.image_allowed("ghcr.io/privreg/privreg:0.1.0"));
        assert!(!p.image_allowed("ghcr.io/privreg/privreg:0.1.1"));
        assert!(!p.image_allowed("evil.example/cat-secrets:latest"));
    }

    #[test]
    fn exact_images_and_prefixes() {
        let p = Policy::new(
            "own:1",
            &[
                "mirror.internal/privreg/privreg:*".into(),
                " ".into(),
                "mirror.internal/privreg/privreg@sha256:*".into(),
                "other.example/privreg:2".into(),
            ],
        )
        .unwrap();
        assert!(p.image_allowed("mirror.internal/privreg/privreg:0.2.0"));
        assert!(p.image_allowed("mirror.internal/privreg/privreg@sha256:00ff"));
        assert!(!p.image_allowed("mirror.internal/privreg/privreg-evil:1"));
        assert!(!p.image_allowed("mirror.internal/privreg/privreg"));
        assert!(p.image_allowed("other.example/privreg:2"));
        assert!(!p.image_allowed("other.example/privreg:20"));
    }

    #[test]
    fn only_trailing_stars() {
        for bad in ["*", "a*b", "a**", "has space:1", "a\u{0}b"] {
            assert_eq!(
                Policy::new("own:1", &[bad.into()]).unwrap_err(),
                PolicyError(bad.into())
            );
        }
    }
}
