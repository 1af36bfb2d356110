//! What the cluster admin allows, as opposed to what a tenant asks for. A
//! PrivateRegistry's spec is hostile input: the image it names runs with the
//! registry's Secrets mounted, so only images the admin listed may be chosen.
//!
//! An allowed-image pattern is an exact reference or a prefix ending in one `*`
//! (`mirror.internal/privreg/privreg:*`). Nothing richer, on purpose: the same
//! list is rendered into the ValidatingAdmissionPolicy (CEL `==` / `startsWith`),
//! so admission and the operator can never disagree about what a pattern means.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "allowed-image pattern {0:?} must be an image reference, optionally ending in one `*` (a prefix)"
    )]
    Image(String),
    #[error(
        "allowed-hostname pattern {0:?} must be a DNS name or `*.` and a DNS name; `{{namespace}}` and `{{clusterDomain}}` may stand for labels"
    )]
    Hostname(String),
}

/// A host-name pattern: an exact name, or `*.suffix` for every name ending in
/// `.suffix` (any depth). `{namespace}` is filled in per registry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostnamePattern {
    wildcard: bool,
    /// With `{namespace}` still in it; `{clusterDomain}` already filled in.
    name: String,
}

impl HostnamePattern {
    fn parse(p: &str, cluster_domain: &str) -> Result<HostnamePattern, PolicyError> {
        let filled = p.replace("{clusterDomain}", cluster_domain);
        let (wildcard, name) = match filled.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, filled.clone()),
        };
        // Check the shape with a sample namespace in place of the placeholder.
        let sample = name.replace("{namespace}", "ns");
        if !crate::certs::is_dns_name(&sample)
            || sample.starts_with("*.")
            || sample != sample.to_ascii_lowercase()
        {
            return Err(PolicyError::Hostname(p.to_owned()));
        }
        Ok(HostnamePattern { wildcard, name })
    }

    fn matches(&self, hostname: &str, namespace: &str) -> bool {
        // A namespace called `svc` or `pod` would turn `*.{namespace}.{clusterDomain}`
        // into every namespace's Service (or pod) names: no `{namespace}`
        // pattern grants it anything.
        if self.name.contains("{namespace}") && matches!(namespace, "svc" | "pod") {
            return false;
        }
        let name = self.name.replace("{namespace}", namespace);
        if self.wildcard {
            hostname
                .strip_suffix(name.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty())
        } else {
            hostname == name
        }
    }
}

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
    allowed_hostnames: Vec<HostnamePattern>,
}

fn pattern(p: &str) -> Result<ImagePattern, PolicyError> {
    let bad = || PolicyError::Image(p.to_owned());
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

/// The default for `--allowed-hostnames`: names in the registry's own namespace.
pub const DEFAULT_ALLOWED_HOSTNAMES: &[&str] = &[
    "*.{namespace}.svc",
    "*.{namespace}.svc.{clusterDomain}",
    "*.{namespace}.{clusterDomain}",
];

fn non_empty(list: &[String]) -> impl Iterator<Item = &str> {
    list.iter().map(|p| p.trim()).filter(|p| !p.is_empty())
}

impl Policy {
    /// Images as given, host names as [`DEFAULT_ALLOWED_HOSTNAMES`] in `cluster.local`.
    pub fn new(default_image: &str, allowed_images: &[String]) -> Result<Policy, PolicyError> {
        let hostnames: Vec<String> = DEFAULT_ALLOWED_HOSTNAMES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        Policy::with_hostnames(default_image, allowed_images, &hostnames, "cluster.local")
    }

    pub fn with_hostnames(
        default_image: &str,
        allowed_images: &[String],
        allowed_hostnames: &[String],
        cluster_domain: &str,
    ) -> Result<Policy, PolicyError> {
        let allowed_images = non_empty(allowed_images)
            .map(pattern)
            .collect::<Result<_, _>>()?;
        let allowed_hostnames = non_empty(allowed_hostnames)
            .map(|p| HostnamePattern::parse(p, cluster_domain))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            default_image: default_image.to_owned(),
            allowed_images,
            allowed_hostnames,
        })
    }

    /// Whether a registry in `namespace` may claim `hostname` (and so have every
    /// node trust its CA for it).
    pub fn hostname_allowed(&self, hostname: &str, namespace: &str) -> bool {
        self.allowed_hostnames
            .iter()
            .any(|p| p.matches(hostname, namespace))
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
    fn namespaces_named_like_dns_zones_claim_nothing_by_pattern() {
        let p = Policy::with_hostnames(
            "img",
            &[],
            &["*.{namespace}.{clusterDomain}".to_owned()],
            "cluster.local",
        )
        .unwrap();
        assert!(p.hostname_allowed("reg.team-a.cluster.local", "team-a"));
        assert!(!p.hostname_allowed("victim.team-a.svc.cluster.local", "svc"));
        assert!(!p.hostname_allowed("x.pod.cluster.local", "pod"));
    }

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
                PolicyError::Image(bad.into())
            );
        }
    }

    #[test]
    fn by_default_only_names_of_the_own_namespace() {
        let p = Policy::new("own:1", &[]).unwrap();
        assert!(p.hostname_allowed("reg.team-a.svc", "team-a"));
        assert!(p.hostname_allowed("reg.team-a.svc.cluster.local", "team-a"));
        assert!(p.hostname_allowed("registry.team-a.cluster.local", "team-a"));
        // Another namespace's names, the world's names, and the bare suffix.
        assert!(!p.hostname_allowed("reg.team-a.svc", "team-b"));
        assert!(!p.hostname_allowed("registry.k8s.io", "team-a"));
        assert!(!p.hostname_allowed("team-a.svc", "team-a"));
        assert!(!p.hostname_allowed("xteam-a.svc", "team-a"));
    }

    #[test]
    fn admins_allow_more() {
        let p = Policy::with_hostnames(
            "own:1",
            &[],
            &["*.internal".into(), "registry.{namespace}.corp".into()],
            "k8s.example",
        )
        .unwrap();
        assert!(p.hostname_allowed("registry.internal", "any"));
        assert!(p.hostname_allowed("a.b.internal", "any"));
        assert!(p.hostname_allowed("registry.team-a.corp", "team-a"));
        assert!(!p.hostname_allowed("registry.team-a.corp", "team-b"));
        assert!(
            !p.hostname_allowed("reg.team-a.svc", "team-a"),
            "the list replaces the default"
        );
        for bad in ["*", "*.", "a..b", "UPPER.case", "*.*.x"] {
            assert!(
                Policy::with_hostnames("own:1", &[], &[bad.into()], "cluster.local").is_err(),
                "{bad}"
            );
        }
    }
}
