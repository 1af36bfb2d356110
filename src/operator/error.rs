//! The operator's errors: each names the call that failed and keeps its cause.
//! Mapped once, in `error_policy`, to an Event, a condition and a requeue.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the CA Secret {name} failed")]
    CreateCaSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the CA Secret {name} lacks tls.crt or tls.key, or they do not parse")]
    BadCaSecret { name: String },
    #[error("making a certificate failed")]
    Certificate(#[source] crate::certs::CertError),
    #[error("applying {kind} {name} failed")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {kind} {name} failed")]
    Get {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status failed")]
    PatchStatus(#[source] kube::Error),
    #[error("serializing an object failed")]
    Serialize(#[source] serde_json::Error),
    #[error("the reconcile panicked: {0}")]
    Panicked(String),
    #[error("the PrivateRegistry has no uid yet")]
    NoUid,
    /// The operator refuses to act for this registry until a person changes
    /// something; not a failure of the operator.
    #[error("{0}")]
    Refused(#[from] Refusal),
}

/// Why a registry is refused: each names the object and what would resolve it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{kind} {name} already exists and is not owned by this PrivateRegistry; privreg never adopts or changes objects it did not create. Delete or rename it, or give the registry another name"
    )]
    NameConflict { kind: &'static str, name: String },
    #[error(
        "Secret {name} is not labelled {label}={use_}; the Secret's owner consents to this use with: kubectl label secret {name} -n {namespace} {label}={use_}"
    )]
    SecretNotOptedIn {
        name: String,
        namespace: String,
        label: &'static str,
        use_: &'static str,
    },
    #[error(
        "{endpoint} is already held by PrivateRegistry {holder}; node trust is node-wide, so one registry holds a host:port. Choose another hostname or port"
    )]
    HostnameConflict { endpoint: String, holder: String },
    #[error("Secret {name} is labelled for privreg but lacks the key {key}")]
    SecretKeyMissing { name: String, key: &'static str },
    #[error(
        "the CA's name constraints do not cover {0}; a CA with name constraints is fixed when made: delete its Secret to have a new one made"
    )]
    OutsideNameConstraints(String),
}

impl Refusal {
    /// The condition and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NameConflict { .. } => "NameConflict",
            Refusal::SecretNotOptedIn { .. } => "SecretNotOptedIn",
            Refusal::SecretKeyMissing { .. } => "SecretKeyMissing",
            Refusal::HostnameConflict { .. } => "HostnameConflict",
            Refusal::OutsideNameConstraints(_) => "OutsideNameConstraints",
        }
    }
}

impl Error {
    /// A fixed, low-cardinality label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Get { .. } => "read",
            Error::CreateCaSecret { .. } => "create_ca",
            Error::BadCaSecret { .. } => "bad_ca",
            Error::Certificate(_) => "certificate",
            Error::Apply { .. } => "apply",
            Error::PatchStatus(_) => "status",
            Error::Serialize(_) => "serialize",
            Error::Panicked(_) => "panic",
            Error::NoUid => "read",
            Error::Refused(_) => "refused",
        }
    }

    /// The reason on the Ready condition and the Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Refused(r) => r.reason(),
            _ => "ReconcileFailed",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
