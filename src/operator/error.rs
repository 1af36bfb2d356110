//! The operator's errors: each names the call that failed and keeps its cause.
//! Mapped once, in `error_policy`, to an Event, a condition and a requeue.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading Secret {name} failed")]
    GetSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
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
}

impl Error {
    /// A fixed, low-cardinality label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::GetSecret { .. } | Error::Get { .. } => "read",
            Error::CreateCaSecret { .. } => "create_ca",
            Error::BadCaSecret { .. } => "bad_ca",
            Error::Certificate(_) => "certificate",
            Error::Apply { .. } => "apply",
            Error::PatchStatus(_) => "status",
            Error::Serialize(_) => "serialize",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
