//! Certificate decisions: whether the server certificate in the TLS Secret can stay,
//! or must be issued again, and when the next renewal is due. Pure: the caller
//! passes what it read and the time.

use std::time::Duration;

use time::OffsetDateTime;

use crate::certs;

/// What is in the TLS Secret now.
#[derive(Debug, Clone, Default)]
pub struct CurrentLeaf<'a> {
    pub cert_pem: Option<&'a str>,
    pub key_pem: Option<&'a str>,
    /// The CA certificate that was current when the leaf was issued.
    pub ca_pem: Option<&'a str>,
    /// The issuance policy (validity, key algorithm) it was issued under.
    pub policy: Option<&'a str>,
}

/// The issuance policy recorded on the TLS Secret: a changed validity or key
/// algorithm re-issues at once rather than at the next renewal.
pub fn policy(validity: Duration, algorithm: crate::certs::KeyAlgorithm) -> String {
    format!("validity={}s,key={algorithm:?}", validity.as_secs())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafDecision {
    /// The present certificate serves until `renew_at`.
    Keep {
        not_after: OffsetDateTime,
        renew_at: OffsetDateTime,
    },
    /// Issue a new certificate, for this reason.
    Issue(IssueReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueReason {
    Missing,
    Unreadable,
    NamesChanged,
    CaChanged,
    PolicyChanged,
    RenewalDue,
}

impl IssueReason {
    /// Whether this is a routine renewal (an Event says "renewed", not "issued").
    pub fn is_renewal(self) -> bool {
        self == IssueReason::RenewalDue
    }

    pub fn describe(self) -> &'static str {
        match self {
            IssueReason::Missing => "no server certificate yet",
            IssueReason::Unreadable => "the stored certificate could not be read",
            IssueReason::NamesChanged => "the certificate's names changed",
            IssueReason::CaChanged => "the CA changed",
            IssueReason::PolicyChanged => "the validity or key algorithm changed",
            IssueReason::RenewalDue => "the certificate is due for renewal",
        }
    }
}

/// Whether the present server certificate can stay. A certificate whose end was
/// capped at the CA's end is kept even when its renewal is due: a new one would
/// end at the same moment, so re-issuing would only loop (CA rotation is what
/// helps then).
pub fn decide(
    current: &CurrentLeaf<'_>,
    ca_pem: &str,
    wanted_sans: &[String],
    wanted_policy: &str,
    renew_before: Duration,
    now: OffsetDateTime,
) -> LeafDecision {
    let ca_not_after = certs::inspect(ca_pem).ok().map(|i| i.not_after);
    let (Some(cert), Some(_key)) = (current.cert_pem, current.key_pem) else {
        return LeafDecision::Issue(IssueReason::Missing);
    };
    let Ok(info) = certs::inspect(cert) else {
        return LeafDecision::Issue(IssueReason::Unreadable);
    };
    if current.ca_pem.map(str::trim) != Some(ca_pem.trim()) {
        return LeafDecision::Issue(IssueReason::CaChanged);
    }
    if current.policy != Some(wanted_policy) {
        return LeafDecision::Issue(IssueReason::PolicyChanged);
    }
    let mut have = info.sans.clone();
    let mut want = wanted_sans.to_vec();
    have.sort();
    want.sort();
    if have != want {
        return LeafDecision::Issue(IssueReason::NamesChanged);
    }
    // Checked: renew_before comes from a spec (bounded, but never trusted).
    let renew_at = time::Duration::try_from(renew_before)
        .ok()
        .and_then(|d| info.not_after.checked_sub(d))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let capped_by_ca = ca_not_after.is_some_and(|end| info.not_after >= end);
    if now >= renew_at && !capped_by_ca {
        return LeafDecision::Issue(IssueReason::RenewalDue);
    }
    LeafDecision::Keep {
        not_after: info.not_after,
        renew_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{KeyAlgorithm, generate_ca, issue_server_cert};

    const HOUR: Duration = Duration::from_secs(3600);
    const P: &str = "validity=36000s,key=EcdsaP256";

    #[test]
    fn decisions() {
        let ca = generate_ca("ca", 100 * HOUR, KeyAlgorithm::EcdsaP256).unwrap();
        let sans = vec!["reg.ns.svc".to_owned(), "10.0.0.1".to_owned()];
        let leaf = issue_server_cert(&ca, &sans, 10 * HOUR, KeyAlgorithm::EcdsaP256).unwrap();
        let now = OffsetDateTime::now_utc();
        let current = CurrentLeaf {
            cert_pem: Some(&leaf.cert_pem),
            key_pem: Some(&leaf.key_pem),
            ca_pem: Some(&ca.cert_pem),
            policy: Some(P),
        };
        match decide(&current, &ca.cert_pem, &sans, P, 2 * HOUR, now) {
            LeafDecision::Keep {
                renew_at,
                not_after,
            } => {
                assert_eq!(not_after - renew_at, time::Duration::hours(2));
            }
            other => panic!("{other:?}"),
        }
        // Order of names does not matter; a new name does.
        let reversed: Vec<_> = sans.iter().rev().cloned().collect();
        assert!(matches!(
            decide(&current, &ca.cert_pem, &reversed, P, 2 * HOUR, now),
            LeafDecision::Keep { .. }
        ));
        let more = [sans.clone(), vec!["extra.example".into()]].concat();
        assert_eq!(
            decide(&current, &ca.cert_pem, &more, P, 2 * HOUR, now),
            LeafDecision::Issue(IssueReason::NamesChanged)
        );
        // Renewal time reached.
        assert_eq!(
            decide(
                &current,
                &ca.cert_pem,
                &sans,
                P,
                2 * HOUR,
                now + time::Duration::hours(9)
            ),
            LeafDecision::Issue(IssueReason::RenewalDue)
        );
        // A leaf capped at the CA's end is not re-issued in a loop.
        let short_ca = generate_ca("short", 3 * HOUR, KeyAlgorithm::EcdsaP256).unwrap();
        let capped =
            issue_server_cert(&short_ca, &sans, 10 * HOUR, KeyAlgorithm::EcdsaP256).unwrap();
        let capped_current = CurrentLeaf {
            cert_pem: Some(&capped.cert_pem),
            key_pem: Some(&capped.key_pem),
            ca_pem: Some(&short_ca.cert_pem),
            policy: Some(P),
        };
        assert!(matches!(
            decide(&capped_current, &short_ca.cert_pem, &sans, P, 5 * HOUR, now),
            LeafDecision::Keep { .. }
        ));
        // A new validity policy.
        assert_eq!(
            decide(
                &current,
                &ca.cert_pem,
                &sans,
                "validity=60s,key=EcdsaP256",
                HOUR,
                now
            ),
            LeafDecision::Issue(IssueReason::PolicyChanged)
        );
        // A different CA.
        let other = generate_ca("other", HOUR, KeyAlgorithm::EcdsaP256).unwrap();
        assert_eq!(
            decide(&current, &other.cert_pem, &sans, P, HOUR, now),
            LeafDecision::Issue(IssueReason::CaChanged)
        );
        assert_eq!(
            decide(&CurrentLeaf::default(), &ca.cert_pem, &sans, P, HOUR, now),
            LeafDecision::Issue(IssueReason::Missing)
        );
    }
}
