//! The trust bundle: the wire format the operator writes (ConfigMap key
//! [`BUNDLE_KEY`]) and the node agent reads, and the agent's validation of it.
//!
//! The types live here, beside their validation, and `operator::trust_bundle`
//! re-exports them, so the writer and the reader cannot drift apart.
//!
//! The agent treats every entry as hostile input: it runs as root with the node's
//! trust directories mounted, so an entry must never name a path outside them,
//! smuggle a private key onto the node, or claim a name another entry holds.
//! Validation is per entry: a bad entry is reported (with the registry and the
//! field at fault) and skipped, and the rest of the bundle still applies.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::api::Runtime;

/// The ConfigMap key holding the bundle, and the file name of its mount.
pub const BUNDLE_KEY: &str = "bundle.json";

/// A bundle larger than this is refused whole: a ConfigMap holds at most 1 MiB.
pub const MAX_BUNDLE_BYTES: usize = 4 << 20;

/// A CA field larger than this is refused: a CA chain is a few KiB.
const MAX_CA_BYTES: usize = 64 << 10;

/// A CA field with more certificates than this is refused.
const MAX_CA_CERTS: usize = 16;

/// One registry, as the node agent needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    /// `<namespace>/<name>` of the PrivateRegistry.
    pub registry: String,
    /// `host:port` forms clients use: the hostname and the ClusterIP
    /// (IPv6 bracketed: `[fd00::10]:5000`).
    pub endpoints: Vec<String>,
    /// Where nodes connect: `https://<ClusterIP>:<port>`, so they need no DNS.
    pub server: String,
    /// The CA certificate (PEM) to trust.
    pub ca_pem: String,
    pub runtimes: Vec<Runtime>,
    /// `<ClusterIP> <hostname>` for the node's /etc/hosts, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_entry: Option<(String, String)>,
}

/// Everything the agent reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub registries: Vec<BundleEntry>,
}

/// The host part of an endpoint: a lowercase RFC 1123 name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    /// The host as it appears in `host:port`: IPv6 in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Dns(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// A validated `host:port`. Its `Display` is the canonical text, which is also
/// the certs.d directory name: containerd looks the registry up under the image
/// reference's host, brackets and all (`remotes/docker/config/config_unix.go`,
/// `hostPaths`: `filepath.Join(root, host)`), and docker and containers-image
/// name the directory `host:port` the same way.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// One `/etc/hosts` line: `<ip> <hostname>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostsLine {
    pub ip: IpAddr,
    pub hostname: String,
}

/// An entry that passed validation; everything the renderer needs, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEntry {
    pub registry: String,
    /// In bundle order, no duplicates.
    pub endpoints: Vec<Endpoint>,
    /// The address nodes dial (`https://<server>`); its host is an IP.
    pub server: Endpoint,
    /// The validated certificates, re-encoded as clean PEM: only what parsed as
    /// X.509 reaches the node, never the bundle's surrounding text.
    pub ca_pem: String,
    pub runtimes: Vec<Runtime>,
    pub hosts_line: Option<HostsLine>,
}

/// The field of an entry that failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The entry as a whole (wrong JSON shape).
    Entry,
    Registry,
    Endpoints,
    Server,
    CaPem,
    HostsEntry,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Entry => "entry",
            Field::Registry => "registry",
            Field::Endpoints => "endpoints",
            Field::Server => "server",
            Field::CaPem => "caPem",
            Field::HostsEntry => "hostsEntry",
        })
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("does not have the bundle's shape: {0}")]
    Shape(String),
    #[error("{0:?} contains '/', '..', NUL, whitespace or a control character")]
    ForbiddenCharacter(String),
    #[error("{0:?} is not <namespace>/<name>")]
    RegistryName(String),
    #[error("is empty")]
    Empty,
    #[error("{0:?} is not host:port")]
    NotHostPort(String),
    #[error("{0:?} is neither a lowercase RFC 1123 DNS name nor an IP address")]
    BadHost(String),
    #[error("{0:?} is an IP address not in canonical form (write {1})")]
    NotCanonical(String, String),
    #[error("{0:?} is an unspecified, multicast, broadcast or IPv4-mapped address")]
    UnusableAddress(String),
    #[error("port {0:?} is not a number from 1 to 65535 without leading zeros")]
    BadPort(String),
    #[error("{0:?} is listed twice")]
    Duplicate(String),
    #[error("{endpoint} is already claimed by registry {by}")]
    ClaimedBy { endpoint: String, by: String },
    #[error("{0:?} is not https://<ip or [ipv6]>:<port>")]
    BadServer(String),
    #[error("holds a private key; only public certificates may reach nodes")]
    PrivateKey,
    #[error("is not PEM: {0}")]
    NotPem(String),
    #[error("holds no certificate")]
    NoCertificate,
    #[error("certificate {0} does not parse as X.509")]
    BadCertificate(usize),
    #[error("is larger than {0} bytes or {1} certificates")]
    TooLarge(usize, usize),
    #[error("hostname {0:?} is not the host of one of this entry's endpoints")]
    ForeignHostname(String),
    #[error("address {0:?} is not this entry's server address")]
    ForeignAddress(String),
    #[error("hostname {hostname} already has an /etc/hosts line from registry {by}")]
    HostnameClaimedBy { hostname: String, by: String },
}

/// A refused entry: which registry, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trust bundle entry {registry:?}: {field} {problem}")]
pub struct EntryError {
    /// The entry's `registry` as written (possibly empty or invalid).
    pub registry: String,
    pub field: Field,
    #[source]
    pub problem: Problem,
}

/// Why a whole bundle could not be read; the agent then keeps the node as it is.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the trust bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("the trust bundle is not a JSON object with a `registries` list")]
    Parse(#[source] serde_json::Error),
}

/// A bundle after validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validated {
    /// Entries to apply, in bundle order.
    pub valid: Vec<ValidEntry>,
    /// Entries refused, each with its reason.
    pub rejected: Vec<EntryError>,
}

impl Validated {
    /// Names of refused entries whose `registry` field itself was sound: the
    /// agent keeps their last good files instead of removing them, so a
    /// transiently malformed entry never rips trust off the nodes.
    pub fn rejected_registries(&self) -> BTreeSet<String> {
        self.rejected
            .iter()
            .filter(|e| registry_name(&e.registry).is_ok())
            .map(|e| e.registry.clone())
            .collect()
    }
}

/// Parses and validates the bundle JSON. Only a bundle that is not JSON of the
/// right outer shape fails whole; every entry is judged on its own.
pub fn parse(json: &[u8]) -> Result<Validated, BundleError> {
    if json.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    /// The outer shape only, so one malformed entry cannot sink the rest.
    #[derive(Deserialize)]
    struct Outer {
        registries: Vec<serde_json::Value>,
    }
    let outer: Outer = serde_json::from_slice(json).map_err(BundleError::Parse)?;
    let mut entries = Vec::with_capacity(outer.registries.len());
    let mut rejected = Vec::new();
    for value in outer.registries {
        let registry = value
            .get("registry")
            .and_then(|r| r.as_str())
            .unwrap_or_default()
            .to_owned();
        match serde_json::from_value::<BundleEntry>(value) {
            Ok(entry) => entries.push(entry),
            Err(e) => rejected.push(EntryError {
                registry,
                field: Field::Entry,
                problem: Problem::Shape(e.to_string()),
            }),
        }
    }
    let mut validated = validate(&entries);
    rejected.append(&mut validated.rejected);
    validated.rejected = rejected;
    Ok(validated)
}

/// Validates each entry, then refuses any entry that claims an endpoint or an
/// /etc/hosts name an earlier entry holds (first in bundle order wins; the
/// operator sorts the bundle by registry, so the order is stable).
pub fn validate(entries: &[BundleEntry]) -> Validated {
    let mut out = Validated::default();
    let mut claimed: std::collections::BTreeMap<Endpoint, String> = Default::default();
    let mut hostnames: std::collections::BTreeMap<String, String> = Default::default();
    for entry in entries {
        let valid = match validate_entry(entry) {
            Ok(valid) => valid,
            Err(e) => {
                out.rejected.push(e);
                continue;
            }
        };
        let reject = |field, problem| EntryError {
            registry: valid.registry.clone(),
            field,
            problem,
        };
        if out.valid.iter().any(|v| v.registry == valid.registry) {
            // Files and /etc/hosts lines are labelled by registry: one name, one entry.
            let problem = Problem::Duplicate(valid.registry.clone());
            out.rejected.push(reject(Field::Registry, problem));
            continue;
        }
        if let Some(ep) = valid.endpoints.iter().find(|ep| claimed.contains_key(ep)) {
            let by = claimed.get(ep).cloned().unwrap_or_default();
            out.rejected.push(reject(
                Field::Endpoints,
                Problem::ClaimedBy {
                    endpoint: ep.to_string(),
                    by,
                },
            ));
            continue;
        }
        if let Some(line) = &valid.hosts_line
            && let Some(by) = hostnames.get(&line.hostname)
        {
            out.rejected.push(reject(
                Field::HostsEntry,
                Problem::HostnameClaimedBy {
                    hostname: line.hostname.clone(),
                    by: by.clone(),
                },
            ));
            continue;
        }
        for ep in &valid.endpoints {
            claimed.insert(ep.clone(), valid.registry.clone());
        }
        if let Some(line) = &valid.hosts_line {
            hostnames.insert(line.hostname.clone(), valid.registry.clone());
        }
        out.valid.push(valid);
    }
    out
}

/// Validates one entry on its own.
pub fn validate_entry(entry: &BundleEntry) -> Result<ValidEntry, EntryError> {
    let err = |field, problem| EntryError {
        registry: entry.registry.clone(),
        field,
        problem,
    };
    registry_name(&entry.registry).map_err(|p| err(Field::Registry, p))?;

    if entry.endpoints.is_empty() {
        return Err(err(Field::Endpoints, Problem::Empty));
    }
    let mut endpoints = Vec::with_capacity(entry.endpoints.len());
    for text in &entry.endpoints {
        let ep = parse_endpoint(text).map_err(|p| err(Field::Endpoints, p))?;
        if endpoints.contains(&ep) {
            return Err(err(Field::Endpoints, Problem::Duplicate(text.clone())));
        }
        endpoints.push(ep);
    }

    let server = parse_server(&entry.server).map_err(|p| err(Field::Server, p))?;
    let ca_pem = clean_ca_pem(&entry.ca_pem).map_err(|p| err(Field::CaPem, p))?;

    let hosts_line = match &entry.hosts_entry {
        None => None,
        Some((ip, hostname)) => Some(
            hosts_line(ip, hostname, &endpoints, &server).map_err(|p| err(Field::HostsEntry, p))?,
        ),
    };

    Ok(ValidEntry {
        registry: entry.registry.clone(),
        endpoints,
        server,
        ca_pem,
        runtimes: entry.runtimes.clone(),
        hosts_line,
    })
}

/// Refuses the characters that could turn a name into a path or a second line.
fn forbidden(text: &str) -> Result<(), Problem> {
    if text.contains('/')
        || text.contains("..")
        || text
            .chars()
            .any(|c| c == '\0' || c.is_whitespace() || c.is_control())
    {
        return Err(Problem::ForbiddenCharacter(text.to_owned()));
    }
    Ok(())
}

/// A lowercase RFC 1123 name without wildcard.
fn dns_name(text: &str) -> bool {
    !text.starts_with("*.")
        && crate::certs::is_dns_name(text)
        && !text.bytes().any(|b| b.is_ascii_uppercase())
}

/// `<namespace>/<name>`: both Kubernetes names, so the registry can label files
/// and reports without escaping.
fn registry_name(text: &str) -> Result<(), Problem> {
    let bad = || Problem::RegistryName(text.to_owned());
    let (ns, name) = text.split_once('/').ok_or_else(bad)?;
    forbidden(ns).map_err(|_| bad())?;
    forbidden(name).map_err(|_| bad())?;
    if dns_name(ns) && dns_name(name) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// An IP address written exactly as Rust (and Kubernetes) print it, so one
/// address never yields two directories.
fn canonical_ip(text: &str) -> Result<Option<IpAddr>, Problem> {
    let Ok(ip) = text.parse::<IpAddr>() else {
        return Ok(None);
    };
    if ip.to_string() != text {
        return Err(Problem::NotCanonical(text.to_owned(), ip.to_string()));
    }
    let unusable = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        // An IPv4-mapped address is another spelling of an IPv4 one: refused so
        // one address never yields two directories.
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || v6.to_ipv4_mapped().is_some(),
    };
    if unusable {
        return Err(Problem::UnusableAddress(text.to_owned()));
    }
    Ok(Some(ip))
}

fn parse_port(text: &str) -> Result<u16, Problem> {
    let bad = || Problem::BadPort(text.to_owned());
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

/// `host:port` with host a DNS name, an IPv4 address or a bracketed IPv6
/// address; the port is required (the certs.d directory name carries it).
pub fn parse_endpoint(text: &str) -> Result<Endpoint, Problem> {
    forbidden(text)?;
    let not_host_port = || Problem::NotHostPort(text.to_owned());
    if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(not_host_port)?;
        let port = after.strip_prefix(':').ok_or_else(not_host_port)?;
        let Ok(v6) = inner.parse::<Ipv6Addr>() else {
            return Err(Problem::BadHost(inner.to_owned()));
        };
        let ip = canonical_ip(inner)?.filter(|ip| ip.is_ipv6());
        if ip.is_none() {
            // An IPv4-mapped or other form that prints differently.
            return Err(Problem::NotCanonical(inner.to_owned(), v6.to_string()));
        }
        return Ok(Endpoint {
            host: Host::Ip(IpAddr::V6(v6)),
            port: parse_port(port)?,
        });
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(not_host_port)?;
    if host.contains(':') {
        // An unbracketed IPv6 address: ambiguous with the port.
        return Err(not_host_port());
    }
    let port = parse_port(port)?;
    let host = match canonical_ip(host)? {
        Some(ip) => Host::Ip(ip),
        None if dns_name(host) => Host::Dns(host.to_owned()),
        None => return Err(Problem::BadHost(host.to_owned())),
    };
    Ok(Endpoint { host, port })
}

/// `https://<ip or [ipv6]>:<port>`, nothing more: no name (nodes need no DNS),
/// no path, no trailing slash.
fn parse_server(text: &str) -> Result<Endpoint, Problem> {
    let bad = || Problem::BadServer(text.to_owned());
    let rest = text.strip_prefix("https://").ok_or_else(bad)?;
    let ep = parse_endpoint(rest).map_err(|_| bad())?;
    match ep.host {
        Host::Ip(_) => Ok(ep),
        Host::Dns(_) => Err(bad()),
    }
}

/// Keeps only what parses as X.509, re-encoded as PEM. Refuses private keys
/// outright (of any PEM label): a key in the CA field is an operator bug or an
/// attack, and these files are world-readable on the node.
fn clean_ca_pem(text: &str) -> Result<String, Problem> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    if text.len() > MAX_CA_BYTES {
        return Err(Problem::TooLarge(MAX_CA_BYTES, MAX_CA_CERTS));
    }
    if text.contains("PRIVATE KEY") {
        return Err(Problem::PrivateKey);
    }
    let mut out = String::new();
    let mut count = 0;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
        let (kind, der) = section.map_err(|e| Problem::NotPem(e.to_string()))?;
        match kind {
            SectionKind::Certificate => {}
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                return Err(Problem::PrivateKey);
            }
            _ => continue,
        }
        count += 1;
        if count > MAX_CA_CERTS {
            return Err(Problem::TooLarge(MAX_CA_BYTES, MAX_CA_CERTS));
        }
        match x509_parser::parse_x509_certificate(&der) {
            Ok(([], _)) => {}
            _ => return Err(Problem::BadCertificate(count)),
        }
        out.push_str(&crate::certs::certificate_pem(&der));
    }
    if count == 0 {
        return Err(Problem::NoCertificate);
    }
    Ok(out)
}

/// The /etc/hosts line may only map a hostname this entry already serves to the
/// address it already dials: anything else would let one entry redirect an
/// arbitrary name on every node.
fn hosts_line(
    ip: &str,
    hostname: &str,
    endpoints: &[Endpoint],
    server: &Endpoint,
) -> Result<HostsLine, Problem> {
    forbidden(ip)?;
    forbidden(hostname)?;
    let Some(addr) = canonical_ip(ip)? else {
        return Err(Problem::BadHost(ip.to_owned()));
    };
    if !dns_name(hostname) {
        return Err(Problem::BadHost(hostname.to_owned()));
    }
    if server.host != Host::Ip(addr) {
        return Err(Problem::ForeignAddress(ip.to_owned()));
    }
    if !endpoints
        .iter()
        .any(|ep| ep.host == Host::Dns(hostname.to_owned()))
    {
        return Err(Problem::ForeignHostname(hostname.to_owned()));
    }
    Ok(HostsLine {
        ip: addr,
        hostname: hostname.to_owned(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real self-signed CA, as the operator makes it.
    pub(crate) fn ca_pem() -> String {
        static CA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| new_ca().cert_pem);
        CA.clone()
    }

    fn new_ca() -> crate::certs::CertAndKey {
        crate::certs::generate_ca(
            "test CA",
            std::time::Duration::from_secs(86400),
            crate::certs::KeyAlgorithm::EcdsaP256,
        )
        .expect("CA")
    }

    pub(crate) fn entry(registry: &str, host: &str, ip: &str) -> BundleEntry {
        let ip_host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        };
        BundleEntry {
            registry: registry.into(),
            endpoints: vec![format!("{host}:5000"), format!("{ip_host}:5000")],
            server: format!("https://{ip_host}:5000"),
            ca_pem: ca_pem(),
            runtimes: vec![Runtime::Containerd, Runtime::Docker, Runtime::CriO],
            hosts_entry: Some((ip.into(), host.into())),
        }
    }

    fn problem(e: &BundleEntry) -> (Field, Problem) {
        let err = validate_entry(e).expect_err("should be refused");
        assert_eq!(err.registry, e.registry);
        (err.field, err.problem)
    }

    #[test]
    fn a_good_entry_validates_with_clean_pem() {
        let e = entry("tools/reg", "registry.internal", "10.96.0.20");
        let v = validate_entry(&e).unwrap();
        assert_eq!(v.endpoints[0].to_string(), "registry.internal:5000");
        assert_eq!(v.endpoints[1].to_string(), "10.96.0.20:5000");
        assert_eq!(v.server.to_string(), "10.96.0.20:5000");
        assert_eq!(v.ca_pem, e.ca_pem.replace("\r\n", "\n"));
        assert_eq!(
            v.hosts_line,
            Some(HostsLine {
                ip: "10.96.0.20".parse().unwrap(),
                hostname: "registry.internal".into()
            })
        );
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let e = entry("tools/reg", "registry.internal", "fd00::10");
        let v = validate_entry(&e).unwrap();
        assert_eq!(v.endpoints[1].to_string(), "[fd00::10]:5000");
        assert_eq!(v.server.to_string(), "[fd00::10]:5000");
    }

    #[test]
    fn endpoints_are_checked_as_hostile() {
        for bad in [
            "registry.internal",       // no port
            "registry.internal:0",     // port 0
            "registry.internal:65536", // too big
            "registry.internal:05000", // leading zero
            "registry.internal:+500",  // sign
            "../etc:5000",             // traversal
            "a/b:5000",                // slash
            "reg istry:5000",          // whitespace
            "reg\0:5000",              // NUL
            "reg\n:5000",              // newline
            "*.wild.card:5000",        // wildcard
            "Upper.Case:5000",         // not lowercase
            "under_score:5000",        // not RFC 1123
            "fd00::10:5000",           // unbracketed IPv6
            "[fd00::10]",              // bracketed, no port
            "[fd00::10]5000",          // missing colon
            "[FD00::10]:5000",         // not canonical
            "[fd00:0::10]:5000",       // not canonical
            "[::ffff:10.0.0.1]:5000",  // IPv4-mapped alias
            "[10.0.0.1]:5000",         // IPv4 in brackets
            "0.0.0.0:5000",            // unspecified
            "[::]:5000",               // unspecified
            "224.0.0.1:5000",          // multicast
            ":5000",                   // empty host
            "",                        // empty
        ] {
            let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
            e.endpoints = vec![bad.into()];
            e.hosts_entry = None;
            let (field, _) = problem(&e);
            assert_eq!(field, Field::Endpoints, "{bad:?} should be refused");
        }
        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        e.endpoints.clear();
        assert_eq!(problem(&e), (Field::Endpoints, Problem::Empty));
        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        e.endpoints.push("10.96.0.20:5000".into());
        assert_eq!(
            problem(&e),
            (
                Field::Endpoints,
                Problem::Duplicate("10.96.0.20:5000".into())
            )
        );
    }

    #[test]
    fn server_must_be_https_to_an_ip() {
        for bad in [
            "http://10.96.0.20:5000",
            "https://registry.internal:5000",
            "https://10.96.0.20:5000/",
            "https://10.96.0.20:5000/v2",
            "https://10.96.0.20",
            "https://fd00::10:5000",
            "10.96.0.20:5000",
            "https://user@10.96.0.20:5000",
        ] {
            let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
            e.server = bad.into();
            assert_eq!(
                problem(&e),
                (Field::Server, Problem::BadServer(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn ca_must_be_certificates_and_nothing_secret() {
        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        e.ca_pem = "hello".into();
        assert_eq!(problem(&e), (Field::CaPem, Problem::NoCertificate));

        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        e.ca_pem = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n".into();
        assert_eq!(problem(&e), (Field::CaPem, Problem::BadCertificate(1)));

        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        let key = new_ca().key_pem;
        e.ca_pem = format!("{}{key}", e.ca_pem);
        assert_eq!(problem(&e), (Field::CaPem, Problem::PrivateKey));

        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        e.ca_pem = format!(
            "{}-----BEGIN ENCRYPTED PRIVATE KEY-----\naGVsbG8=\n-----END ENCRYPTED PRIVATE KEY-----\n",
            e.ca_pem
        );
        assert_eq!(problem(&e), (Field::CaPem, Problem::PrivateKey));

        // Text around the PEM never reaches the node; two certificates both do.
        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        let two = format!("junk before\n{}middle\n{}", e.ca_pem, new_ca().cert_pem);
        e.ca_pem = two;
        let v = validate_entry(&e).unwrap();
        assert_eq!(v.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(!v.ca_pem.contains("junk") && !v.ca_pem.contains("middle"));
    }

    #[test]
    fn registry_names_are_namespace_slash_name() {
        for bad in ["", "reg", "a/b/c", "../x", "a/..", "A/b", "a /b", "a/b\n"] {
            let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
            e.registry = bad.into();
            assert_eq!(problem(&e).0, Field::Registry, "{bad:?}");
        }
    }

    #[test]
    fn hosts_line_must_match_the_entry() {
        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        e.hosts_entry = Some(("10.96.0.20".into(), "github.com".into()));
        assert_eq!(
            problem(&e),
            (
                Field::HostsEntry,
                Problem::ForeignHostname("github.com".into())
            )
        );
        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        e.hosts_entry = Some(("10.0.0.1".into(), "registry.internal".into()));
        assert_eq!(
            problem(&e),
            (
                Field::HostsEntry,
                Problem::ForeignAddress("10.0.0.1".into())
            )
        );
        let mut e = entry("tools/reg", "registry.internal", "10.96.0.20");
        e.hosts_entry = Some((
            "10.96.0.20".into(),
            "registry.internal\n1.2.3.4 evil".into(),
        ));
        assert_eq!(problem(&e).0, Field::HostsEntry);
    }

    #[test]
    fn bad_entries_are_skipped_and_the_rest_applies() {
        let good = entry("a/one", "one.internal", "10.96.0.1");
        let mut bad = entry("b/two", "two.internal", "10.96.0.2");
        bad.server = "http://10.96.0.2:5000".into();
        let thief = entry("c/three", "one.internal", "10.96.0.3");
        let twin = entry("a/one", "twin.internal", "10.96.0.4");
        let mut json = serde_json::to_value(Bundle {
            registries: vec![good, bad, thief, twin],
        })
        .unwrap();
        // An entry of the wrong shape is refused alone.
        json["registries"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"registry": "d/four", "endpoints": 7}));
        let v = parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(
            v.valid
                .iter()
                .map(|e| e.registry.as_str())
                .collect::<Vec<_>>(),
            ["a/one"]
        );
        let refused: Vec<_> = v
            .rejected
            .iter()
            .map(|e| (e.registry.as_str(), e.field))
            .collect();
        assert_eq!(
            refused,
            [
                ("d/four", Field::Entry),
                ("b/two", Field::Server),
                ("c/three", Field::Endpoints),
                ("a/one", Field::Registry),
            ]
        );
        assert!(matches!(
            &v.rejected[2].problem,
            Problem::ClaimedBy { endpoint, by } if endpoint == "one.internal:5000" && by == "a/one"
        ));
        assert_eq!(
            v.rejected_registries(),
            BTreeSet::from([
                "a/one".into(),
                "b/two".into(),
                "c/three".into(),
                "d/four".into()
            ])
        );
        assert!(v.rejected[1].to_string().contains("\"b/two\": server"));
    }

    #[test]
    fn a_bundle_that_is_not_json_fails_whole() {
        assert!(matches!(parse(b"{"), Err(BundleError::Parse(_))));
        assert!(matches!(parse(b"[]"), Err(BundleError::Parse(_))));
        let huge = vec![b' '; MAX_BUNDLE_BYTES + 1];
        assert!(matches!(parse(&huge), Err(BundleError::TooLarge)));
        assert_eq!(
            parse(br#"{"registries": []}"#).unwrap(),
            Validated::default()
        );
    }
}
