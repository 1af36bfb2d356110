//! CA rotation with overlap, for a generated CA. Pure: the reconcile reads the
//! CA Secret, asks [`next_step`] what to do, and writes the result.
//!
//! 1. *Start* (the CA nears its end, `spec.tls.ca.renewBefore`, or the
//!    annotation `privreg.dev/rotate-ca` carries a value not handled yet): a new
//!    CA is made and kept as `next`; the CA ConfigMap, and so the trust bundle,
//!    carries both. The server certificate stays with the old CA.
//! 2. *Wait* until every node that runs the trust agent reports a bundle with
//!    both CAs (the same count as `trustedNodes`).
//! 3. *Promote*: the new CA signs; the old one is kept as `previous`, still
//!    published, for the overlap (`--ca-overlap-seconds`): the server
//!    certificate is re-issued from the new CA at once and the registry reloads
//!    it, while clients that still hold the old certificate's chain keep
//!    working.
//! 4. *Drop* the previous CA after the overlap: nodes forget it.
//!
//! A leaf is never issued past its CA's notAfter (`certs::issue_server_cert`).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use time::OffsetDateTime;

use crate::certs::{self, CertAndKey};

/// Asks for a rotation now: any value not handled before.
pub const ROTATE_ANNOTATION: &str = "privreg.dev/rotate-ca";
/// On the CA Secret: the last `rotate-ca` value acted on.
pub const HANDLED_ANNOTATION: &str = "privreg.dev/rotate-ca-handled";
/// On the CA Secret: when the previous CA stops being published (RFC 3339).
pub const PREVIOUS_UNTIL_ANNOTATION: &str = "privreg.dev/previous-ca-until";

/// What the generated CA's Secret holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CaState {
    /// Signs the server certificate.
    pub current: CertAndKey,
    /// Made by a rotation, published, not signing yet.
    pub next: Option<CertAndKey>,
    /// Replaced by a rotation, published until `previous_until`.
    pub previous: Option<String>,
    pub previous_until: Option<OffsetDateTime>,
    /// The last rotation request acted on.
    pub handled: Option<String>,
    /// The names a constrained CA permits (kept by every rotation).
    pub constraints: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("its {0} is missing or not a certificate")]
pub struct BadCaState(&'static str);

/// The first certificate of a PEM text, re-encoded alone: whatever else a
/// user's `tls.crt` holds (a chain, or by mistake the key) never travels on to
/// the CA ConfigMap or the nodes.
pub fn first_certificate(pem: &str) -> Option<String> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    let der = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|(kind, _)| *kind == SectionKind::Certificate)?
        .1;
    Some(certs::certificate_pem(&der))
}

fn text(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

impl CaState {
    /// A CA with no rotation in flight.
    pub fn new(current: CertAndKey, constraints: Option<Vec<String>>) -> CaState {
        CaState {
            current,
            next: None,
            previous: None,
            previous_until: None,
            handled: None,
            constraints,
        }
    }

    /// Reads a CA Secret (generated, or brought by the user, which has only
    /// `tls.crt`/`tls.key`).
    pub fn from_secret(s: &Secret) -> Result<CaState, BadCaState> {
        let pair =
            |cert: &'static str, key: &'static str| -> Result<Option<CertAndKey>, BadCaState> {
                match (text(s, cert), text(s, key)) {
                    (Some(cert_pem), Some(key_pem)) if certs::inspect(&cert_pem).is_ok() => {
                        Ok(Some(CertAndKey { cert_pem, key_pem }))
                    }
                    (None, None) => Ok(None),
                    _ => Err(BadCaState(cert)),
                }
            };
        let current = pair("tls.crt", "tls.key")?.ok_or(BadCaState("tls.crt"))?;
        let next = pair("next.crt", "next.key")?;
        let previous = text(s, "previous.crt")
            .as_deref()
            .and_then(first_certificate)
            .filter(|p| certs::inspect(p).is_ok());
        let annotations = s.annotations();
        let previous_until = annotations.get(PREVIOUS_UNTIL_ANNOTATION).and_then(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        Ok(CaState {
            current,
            next,
            previous,
            previous_until,
            handled: annotations.get(HANDLED_ANNOTATION).cloned(),
            constraints: annotations
                .get(super::objects::NAME_CONSTRAINTS_ANNOTATION)
                .map(|names| names.split(',').map(str::to_owned).collect()),
        })
    }

    /// What nodes and clients should trust: every CA in play, the signing one
    /// first.
    pub fn published_pem(&self) -> String {
        let mut pems = vec![self.current.cert_pem.trim_end()];
        if let Some(next) = &self.next {
            pems.push(next.cert_pem.trim_end());
        }
        if let Some(previous) = &self.previous {
            pems.push(previous.trim_end());
        }
        let mut out = pems.join("\n");
        out.push('\n');
        out
    }

    /// The certificates a node must trust before the new CA may sign.
    pub fn overlap_pem(&self) -> Option<String> {
        let next = self.next.as_ref()?;
        Some(format!(
            "{}\n{}\n",
            self.current.cert_pem.trim_end(),
            next.cert_pem.trim_end()
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartReason {
    Expiring,
    Requested,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until `until` (the next rotation or drop), if any.
    Keep {
        until: Option<OffsetDateTime>,
    },
    Start(StartReason),
    /// The new CA is published; not every node trusts it yet.
    Wait,
    Promote,
    DropPrevious,
}

/// The next step of the rotation. `nodes_trust_both`: whether every node that
/// runs the trust agent trusts both the current and the next CA (`None`: not
/// known yet, so wait). `leaf_from_current`: when the server certificate now in
/// the TLS Secret was issued, if the current CA issued it. The previous CA is
/// dropped only once that certificate has been out for the overlap (so the
/// registry serves it), and not before `previous_until`.
pub fn next_step(
    state: &CaState,
    request: Option<&str>,
    renew_before: Duration,
    now: OffsetDateTime,
    nodes_trust_both: Option<bool>,
    leaf_from_current: Option<OffsetDateTime>,
    overlap: Duration,
) -> Step {
    if state.next.is_some() {
        return if nodes_trust_both == Some(true) {
            Step::Promote
        } else {
            Step::Wait
        };
    }
    if state.previous.is_some() {
        let overlap = time::Duration::try_from(overlap).unwrap_or(time::Duration::ZERO);
        let served_long_enough = leaf_from_current.and_then(|t| t.checked_add(overlap));
        let until = match (state.previous_until, served_long_enough) {
            (_, None) => return Step::Keep { until: None },
            (Some(a), Some(b)) => a.max(b),
            (None, Some(b)) => b,
        };
        return if now < until {
            Step::Keep { until: Some(until) }
        } else {
            Step::DropPrevious
        };
    }
    if let Some(r) = request
        && state.handled.as_deref() != Some(r)
    {
        return Step::Start(StartReason::Requested);
    }
    // Checked: renew_before comes from a spec (bounded, but never trusted).
    let due = certs::inspect(&state.current.cert_pem).ok().and_then(|i| {
        time::Duration::try_from(renew_before)
            .ok()
            .and_then(|d| i.not_after.checked_sub(d))
    });
    match due {
        Some(due) if now >= due => Step::Start(StartReason::Expiring),
        due => Step::Keep { until: due },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{KeyAlgorithm, generate_ca};

    const HOUR: Duration = Duration::from_secs(3600);

    fn ca(hours: u64) -> CertAndKey {
        generate_ca("ca", HOUR * hours as u32, KeyAlgorithm::EcdsaP256).unwrap()
    }

    #[test]
    fn a_rotation_goes_start_wait_promote_keep_drop() {
        let now = OffsetDateTime::now_utc();
        let mut state = CaState::new(ca(100), None);
        // Far from its end, no request: keep until the rotation is due.
        let Step::Keep { until: Some(due) } =
            next_step(&state, None, 10 * HOUR, now, None, None, HOUR)
        else {
            panic!()
        };
        assert!(due > now + time::Duration::hours(89));
        // Near its end: start.
        assert_eq!(
            next_step(
                &state,
                None,
                10 * HOUR,
                now + time::Duration::hours(91),
                None,
                None,
                HOUR
            ),
            Step::Start(StartReason::Expiring)
        );
        // A request starts one now, once.
        assert_eq!(
            next_step(&state, Some("1"), 10 * HOUR, now, None, None, HOUR),
            Step::Start(StartReason::Requested)
        );
        state.handled = Some("1".into());
        assert!(matches!(
            next_step(&state, Some("1"), 10 * HOUR, now, None, None, HOUR),
            Step::Keep { .. }
        ));

        let old = state.current.clone();
        state.next = Some(ca(100));
        let published = state.published_pem();
        assert_eq!(published.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(published.starts_with(old.cert_pem.trim_end()));
        for trust in [None, Some(false)] {
            assert_eq!(
                next_step(&state, None, 10 * HOUR, now, trust, None, HOUR),
                Step::Wait
            );
        }
        assert_eq!(
            next_step(&state, None, 10 * HOUR, now, Some(true), None, HOUR),
            Step::Promote
        );

        // Promoted: the old CA stays published until the overlap ends.
        state.current = state.next.take().unwrap();
        state.previous = Some(old.cert_pem.clone());
        state.previous_until = Some(now + time::Duration::minutes(5));
        assert_eq!(
            state.published_pem().matches("BEGIN CERTIFICATE").count(),
            2
        );
        let five = Duration::from_secs(300);
        // The new CA's certificate was issued now.
        let issued = Some(now);
        assert_eq!(
            next_step(&state, Some("2"), 10 * HOUR, now, None, issued, five),
            Step::Keep {
                until: state.previous_until
            },
            "a new request waits for the overlap to end"
        );
        let later = now + time::Duration::minutes(6);
        assert_eq!(
            next_step(&state, None, 10 * HOUR, later, None, issued, five),
            Step::DropPrevious
        );
        // No certificate from the new CA yet: the old CA stays, however late.
        assert_eq!(
            next_step(&state, None, 10 * HOUR, later, None, None, five),
            Step::Keep { until: None }
        );
        // Issued late: the overlap counts from then.
        let late = Some(now + time::Duration::minutes(4));
        assert_eq!(
            next_step(&state, None, 10 * HOUR, later, None, late, five),
            Step::Keep {
                until: Some(now + time::Duration::minutes(9))
            }
        );
    }

    #[test]
    fn only_the_certificate_of_a_users_tls_crt_is_kept() {
        let ca = ca(100);
        let mixed = format!("{}{}", ca.key_pem, ca.cert_pem);
        let kept = first_certificate(&mixed).unwrap();
        assert!(!kept.contains("PRIVATE KEY"));
        assert_eq!(
            certs::inspect(&kept).unwrap().sha256_fingerprint,
            certs::inspect(&ca.cert_pem).unwrap().sha256_fingerprint
        );
        assert_eq!(first_certificate(&ca.key_pem), None);
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let mut state = CaState::new(ca(100), Some(vec!["reg.ns.svc".into()]));
        state.next = Some(ca(100));
        state.handled = Some("x".into());
        let d = super::super::objects::tests::desired("{}");
        let owner = super::super::objects::tests::owner();
        let secret = super::super::objects::ca_secret(&d, &state, &owner);
        assert_eq!(CaState::from_secret(&secret).unwrap(), state);
        let mut broken = secret.clone();
        broken.data.as_mut().unwrap().remove("next.key");
        assert_eq!(CaState::from_secret(&broken), Err(BadCaState("next.crt")));
    }
}
