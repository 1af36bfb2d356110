//! What a pass means for people: pure functions from the core's results to the
//! lines the agent logs, the `/readyz` body and the uninstall summary. No
//! filesystem, no clock, so every wording is unit-tested.
//!
//! The agent logs on change, never on repetition: [`Memory`] remembers the
//! last set of lines per topic and hands back only what appeared or went away,
//! so a refused entry is reported once, not at every resync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::trust::apply::{Report, Skipped};
use crate::trust::bundle::EntryError;
use crate::trust::containerd_config::{ConfigCheck, Finding, Source, Verdict};
use crate::trust::render::Layout;

/// A refused bundle entry, as logged: which registry, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub registry: String,
    pub field: String,
    pub problem: String,
}

impl Refusal {
    /// The text that identifies it across passes.
    pub fn key(&self) -> String {
        format!("entry {:?}: {} {}", self.registry, self.field, self.problem)
    }
}

impl From<&EntryError> for Refusal {
    fn from(e: &EntryError) -> Self {
        Refusal {
            registry: e.registry.clone(),
            field: e.field.to_string(),
            problem: e.problem.to_string(),
        }
    }
}

/// A path the writer did not make match, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The path as the node sees it (`/etc/containerd/certs.d/...`).
    pub path: String,
    pub registry: Option<String>,
    /// The reason with its whole cause chain.
    pub reason: String,
}

impl Leftover {
    pub fn key(&self) -> String {
        match &self.registry {
            Some(r) => format!("{} ({r}): {}", self.path, self.reason),
            None => format!("{}: {}", self.path, self.reason),
        }
    }
}

impl From<&Skipped> for Leftover {
    fn from(s: &Skipped) -> Self {
        Leftover {
            path: node_path(&s.path),
            registry: s.registry.clone(),
            reason: chain(&s.reason),
        }
    }
}

/// Paths a pass changed on the node, as the node sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub written: Vec<String>,
    pub removed: Vec<String>,
    pub backed_up: Vec<String>,
    pub restored: Vec<String>,
}

impl Changes {
    pub fn of(report: &Report) -> Changes {
        let paths = |v: &[PathBuf]| v.iter().map(|p| node_path(p)).collect();
        Changes {
            written: paths(&report.written),
            removed: paths(&report.removed),
            backed_up: paths(&report.backed_up),
            restored: paths(&report.restored),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
            && self.removed.is_empty()
            && self.backed_up.is_empty()
            && self.restored.is_empty()
    }
}

/// Why a pass did not get as far as the writer; the node was left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// A fixed word, safe as a metric label (`read_bundle`, `parse_bundle`, ...).
    pub category: &'static str,
    /// The error with its whole cause chain.
    pub message: String,
}

/// One pass, reduced to what readiness, metrics and logs need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Set when the pass stopped before writing anything.
    pub failure: Option<Failure>,
    /// Bundle entries accepted (their files were made to match).
    pub applied: usize,
    pub refused: Vec<Refusal>,
    /// Paths that do not match the bundle (readiness fails on them).
    pub problems: Vec<Leftover>,
    /// Paths skipped for benign reasons (a runtime that is not installed).
    pub notes: Vec<Leftover>,
    pub changes: Changes,
    /// The node matches the bundle (the core's `Outcome::converged`).
    pub converged: bool,
    /// SHA-256 (lowercase hex) of the bundle bytes this pass read.
    pub bundle_sha256: Option<String>,
}

impl Summary {
    /// A pass that stopped before writing.
    pub fn failed(category: &'static str, error: &dyn std::error::Error) -> Summary {
        Summary {
            failure: Some(Failure {
                category,
                message: chain(error),
            }),
            ..Summary::default()
        }
    }

    /// A pass that ran: `entries` is the number of entries in the bundle, so the
    /// accepted ones are those not refused (each entry is one or the other).
    pub fn synced(
        outcome: &crate::trust::Outcome,
        entries: usize,
        bundle_sha256: String,
    ) -> Summary {
        let (notes, problems): (Vec<&Skipped>, Vec<&Skipped>) = outcome
            .report
            .skipped
            .iter()
            .partition(|s| s.reason.benign());
        Summary {
            failure: None,
            applied: entries.saturating_sub(outcome.rejected.len()),
            refused: outcome.rejected.iter().map(Refusal::from).collect(),
            problems: problems.into_iter().map(Leftover::from).collect(),
            notes: notes.into_iter().map(Leftover::from).collect(),
            changes: Changes::of(&outcome.report),
            converged: outcome.converged(),
            bundle_sha256: Some(bundle_sha256),
        }
    }
}

/// What the containerd config check means for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdAdvice {
    /// `None` when the config could not be read: nothing can be claimed.
    pub verdict: Option<Verdict>,
    /// One line: the finding and, unless effective, what to set.
    pub line: String,
}

impl ContainerdAdvice {
    /// The check failed (a config that does not parse, an import that is missing).
    pub fn unknown(config: &Path, error: &dyn std::error::Error) -> ContainerdAdvice {
        ContainerdAdvice {
            verdict: None,
            line: format!(
                "cannot tell whether containerd reads the trust files: reading {} failed: {}",
                Path::new("/").join(config).display(),
                chain(error)
            ),
        }
    }

    /// Blocks readiness: the files are written but no containerd reads them.
    pub fn blocks_readiness(&self) -> bool {
        self.verdict == Some(Verdict::NotEffective)
    }

    /// The label value of the `containerd_config` metric.
    pub fn label(&self) -> &'static str {
        verdict_label(self.verdict)
    }
}

/// Every value of the `containerd_config` metric's label.
pub const VERDICT_LABELS: [&str; 4] = [
    "effective",
    "not_effective",
    "depends_on_version",
    "unknown",
];

pub fn verdict_label(verdict: Option<Verdict>) -> &'static str {
    match verdict {
        Some(Verdict::Effective) => "effective",
        Some(Verdict::NotEffective) => "not_effective",
        Some(Verdict::DependsOnVersion) => "depends_on_version",
        None => "unknown",
    }
}

/// Words for the check: what containerd does with the certs.d the agent writes,
/// and, when not every release reads it, exactly what to set where.
pub fn advise(check: &ConfigCheck, layout: &Layout) -> ContainerdAdvice {
    let wanted = check.wanted.display();
    let config = Path::new("/").join(&layout.containerd_config);
    let verdict = check.verdict();
    let findings = {
        let mut parts = Vec::new();
        if let Some(v1) = &check.v1 {
            parts.push(("containerd 1.x", finding(v1)));
        }
        parts.push(("2.0/2.1", finding(&check.v2_0)));
        parts.push(("2.2+", finding(&check.v2_2)));
        if parts.iter().all(|(_, f)| *f == parts[0].1) {
            let releases = if check.v1.is_some() {
                "every containerd release"
            } else {
                "containerd 2.x"
            };
            format!("{releases}: {}", parts[0].1)
        } else {
            let parts: Vec<String> = parts.iter().map(|(r, f)| format!("{r}: {f}")).collect();
            parts.join("; ")
        }
    };
    let files = if check.files.is_empty() {
        format!("{} does not exist (built-in defaults)", config.display())
    } else {
        let list: Vec<String> = check
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        format!("read {}", list.join(", "))
    };
    // 1.x refuses a version 3 file, so no 1.x finding means version 3.
    let table = if check.v1.is_some() {
        "[plugins.\"io.containerd.grpc.v1.cri\".registry] (config version 2)"
    } else {
        "[plugins.\"io.containerd.cri.v1.images\".registry] (config version 3)"
    };
    let set = format!(
        "set config_path = \"{wanted}\" under {table} in {} and restart containerd",
        config.display()
    );
    let line = match verdict {
        Verdict::Effective => format!("containerd reads {wanted} ({findings}; {files})"),
        Verdict::NotEffective => format!(
            "containerd does NOT read {wanted}: the trust files are written but image pulls \
             ignore them ({findings}; {files}); {set}"
        ),
        Verdict::DependsOnVersion => format!(
            "whether containerd reads {wanted} depends on its version ({findings}; {files}); \
             to be sure, {set}"
        ),
    };
    ContainerdAdvice {
        verdict: Some(verdict),
        line,
    }
}

fn finding(f: &Finding) -> String {
    let from = |s: &Source| match s {
        Source::File(p) => format!("from {}", p.display()),
        Source::Default => "the built-in default".to_owned(),
    };
    match f {
        Finding::Included {
            config_path,
            from: s,
        } => {
            format!("config_path = {config_path:?} ({}) includes it", from(s))
        }
        Finding::Excluded {
            config_path,
            from: s,
        } => {
            format!(
                "config_path = {config_path:?} ({}) does not include it",
                from(s)
            )
        }
        Finding::Unset => "config_path is unset, so certs.d is ignored".to_owned(),
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub body: String,
}

/// Ready only when the last pass converged on the bundle this pod was made for
/// (`expected`, when the DaemonSet says) and containerd is not known to ignore
/// the files; the body says why not, one reason a line.
pub fn readiness(
    last: Option<&Summary>,
    containerd: Option<&ContainerdAdvice>,
    expected: Option<&str>,
) -> Readiness {
    let mut reasons = Vec::new();
    if let (Some(want), Some(s)) = (expected, last)
        && s.failure.is_none()
        && s.bundle_sha256.as_deref() != Some(want)
    {
        reasons.push(format!(
            "the mounted bundle is sha256:{}, this pod was created for sha256:{want} (the kubelet refreshes ConfigMap volumes within about a minute)",
            s.bundle_sha256.as_deref().unwrap_or("unknown")
        ));
    }
    match last {
        None => reasons.push("no sync has completed yet".to_owned()),
        Some(s) => {
            if let Some(f) = &s.failure {
                reasons.push(format!(
                    "the last sync failed ({}), the node was left as it is: {}",
                    f.category, f.message
                ));
            }
            for r in &s.refused {
                reasons.push(format!("refused bundle {}", r.key()));
            }
            for p in &s.problems {
                reasons.push(format!("not as the bundle says: {}", p.key()));
            }
            if s.failure.is_none() && !s.converged && s.refused.is_empty() && s.problems.is_empty()
            {
                reasons.push("the last sync did not converge".to_owned());
            }
        }
    }
    if let Some(c) = containerd.filter(|c| c.blocks_readiness()) {
        reasons.push(c.line.clone());
    }
    if reasons.is_empty() {
        let applied = last.map(|s| s.applied).unwrap_or_default();
        let mut body = format!("ready: the node matches the trust bundle ({applied} registries)\n");
        if let Some(c) = containerd {
            let _ = writeln!(body, "{}", c.line);
        }
        Readiness { ready: true, body }
    } else {
        let mut body = String::from("not ready:\n");
        for r in reasons {
            let _ = writeln!(body, "- {r}");
        }
        Readiness { ready: false, body }
    }
}

/// The topics the agent logs on change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topic {
    Failure,
    Refused,
    Problems,
    Notes,
    Containerd,
}

/// What appeared and what went away since the last pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub added: BTreeSet<String>,
    pub gone: BTreeSet<String>,
}

/// The lines logged last time, per topic.
#[derive(Debug, Default)]
pub struct Memory {
    seen: BTreeMap<Topic, BTreeSet<String>>,
    converged: Option<bool>,
}

impl Memory {
    /// Remembers `now` for `topic` and says what changed.
    pub fn update(&mut self, topic: Topic, now: impl IntoIterator<Item = String>) -> Delta {
        let now: BTreeSet<String> = now.into_iter().collect();
        let before = self.seen.insert(topic, now.clone()).unwrap_or_default();
        Delta {
            added: now.difference(&before).cloned().collect(),
            gone: before.difference(&now).cloned().collect(),
        }
    }

    /// `Some(new value)` when convergence changed (or on the first pass).
    pub fn converged(&mut self, now: bool) -> Option<bool> {
        (self.converged.replace(now) != Some(now)).then_some(now)
    }
}

/// The summary `privreg trust --uninstall` prints.
pub fn uninstall_summary(report: &Report) -> String {
    let changes = Changes::of(report);
    let left: Vec<Leftover> = report.skipped.iter().map(Leftover::from).collect();
    let mut out = format!(
        "privreg trust --uninstall: removed {} path(s), restored {} file(s) from backups, {} left in place\n",
        changes.removed.len(),
        changes.restored.len(),
        left.len()
    );
    for p in &changes.removed {
        let _ = writeln!(out, "removed   {p}");
    }
    for p in &changes.restored {
        let _ = writeln!(out, "restored  {p}");
    }
    for l in &left {
        let _ = writeln!(out, "left      {}", l.key());
    }
    out
}

/// A path relative to the host root, as the node sees it.
pub fn node_path(rel: &Path) -> String {
    Path::new("/").join(rel).display().to_string()
}

/// An error and every cause, `: `-separated, each said once.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cur = error.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::apply::SkipReason;
    use crate::trust::bundle::{Field, Problem};
    use crate::trust::render::Preset;

    fn outcome(rejected: Vec<EntryError>, report: Report) -> crate::trust::Outcome {
        crate::trust::Outcome { rejected, report }
    }

    fn refused(registry: &str) -> EntryError {
        EntryError {
            registry: registry.into(),
            field: Field::Server,
            problem: Problem::BadServer("http://10.0.0.1:5000".into()),
        }
    }

    #[test]
    fn a_clean_pass_is_ready() {
        let report = Report {
            written: vec!["etc/containerd/certs.d/r.test:5000/ca.crt".into()],
            ..Report::default()
        };
        let s = Summary::synced(&outcome(vec![], report), 2, "ab".repeat(32));
        assert_eq!(s.applied, 2);
        assert!(s.converged);
        assert_eq!(
            s.changes.written,
            ["/etc/containerd/certs.d/r.test:5000/ca.crt"]
        );
        let r = readiness(Some(&s), None, None);
        assert!(r.ready, "{}", r.body);
        assert!(
            r.body
                .starts_with("ready: the node matches the trust bundle (2 registries)")
        );
        // The pod was made for that very bundle: ready; for another: not yet.
        let same = "ab".repeat(32);
        assert!(readiness(Some(&s), None, Some(&same)).ready);
        let other = "cd".repeat(32);
        let r = readiness(Some(&s), None, Some(&other));
        assert!(!r.ready);
        assert!(
            r.body.contains(&format!(
                "the mounted bundle is sha256:{same}, this pod was created for sha256:{other}"
            )),
            "{}",
            r.body
        );
    }

    #[test]
    fn refused_entries_and_problems_block_readiness_with_reasons() {
        let report = Report {
            skipped: vec![
                Skipped {
                    path: "etc/docker".into(),
                    registry: Some("a/b".into()),
                    reason: SkipReason::RuntimeAbsent("etc/docker".into()),
                },
                Skipped {
                    path: "etc/containerd/certs.d/x:1".into(),
                    registry: Some("a/b".into()),
                    reason: SkipReason::ManagedByOther("k3s".into()),
                },
            ],
            ..Report::default()
        };
        let s = Summary::synced(&outcome(vec![refused("c/d")], report), 2, "ab".repeat(32));
        assert_eq!(s.applied, 1);
        assert_eq!(s.notes.len(), 1);
        assert_eq!(s.problems.len(), 1);
        assert_eq!(
            s.refused[0].key(),
            "entry \"c/d\": server \"http://10.0.0.1:5000\" is not https://<ip or [ipv6]>:<port>"
        );
        let r = readiness(Some(&s), None, None);
        assert!(!r.ready);
        assert!(
            r.body.contains("refused bundle entry \"c/d\": server"),
            "{}",
            r.body
        );
        assert!(
            r.body
                .contains("/etc/containerd/certs.d/x:1 (a/b): its hosts.toml was generated by k3s"),
            "{}",
            r.body
        );
        assert!(
            !r.body.contains("/etc/docker"),
            "benign skips are not reasons"
        );
    }

    #[test]
    fn failures_and_first_start_are_not_ready() {
        let r = readiness(None, None, None);
        assert_eq!(
            (r.ready, r.body.as_str()),
            (false, "not ready:\n- no sync has completed yet\n")
        );
        let err = std::io::Error::other("boom");
        let s = Summary::failed("read_bundle", &err);
        let r = readiness(Some(&s), None, None);
        assert!(!r.ready);
        assert!(
            r.body
                .contains("the last sync failed (read_bundle), the node was left as it is: boom")
        );
    }

    fn check(files: &[(&str, &str)]) -> ConfigCheck {
        let root = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let path = root.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        crate::trust::containerd_config::check(root.path(), &Preset::Containerd.layout()).unwrap()
    }

    #[test]
    fn containerd_advice_says_what_to_set() {
        let layout = Preset::Containerd.layout();
        let ok = advise(
            &check(&[(
                "etc/containerd/config.toml",
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n",
            )]),
            &layout,
        );
        assert_eq!(ok.verdict, Some(Verdict::Effective));
        assert!(!ok.blocks_readiness());
        assert!(
            ok.line
                .starts_with("containerd reads /etc/containerd/certs.d"),
            "{}",
            ok.line
        );

        let elsewhere = advise(
            &check(&[(
                "etc/containerd/config.toml",
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/opt/certs\"\n",
            )]),
            &layout,
        );
        assert_eq!(elsewhere.verdict, Some(Verdict::NotEffective));
        assert!(elsewhere.blocks_readiness());
        assert!(
            elsewhere.line.contains(
                "set config_path = \"/etc/containerd/certs.d\" under [plugins.\"io.containerd.grpc.v1.cri\".registry] (config version 2) in /etc/containerd/config.toml"
            ),
            "{}",
            elsewhere.line
        );
        assert!(
            elsewhere.line.contains(
                "(every containerd release: config_path = \"/opt/certs\" (from /etc/containerd/config.toml) does not include it;"
            ),
            "the same finding is said once: {}",
            elsewhere.line
        );
        let r = readiness(
            Some(&Summary {
                converged: true,
                ..Summary::default()
            }),
            Some(&elsewhere),
            None,
        );
        assert!(!r.ready);
        assert!(
            r.body
                .contains("containerd does NOT read /etc/containerd/certs.d")
        );

        let v3 = advise(
            &check(&[(
                "etc/containerd/config.toml",
                "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/opt/certs\"\n",
            )]),
            &layout,
        );
        assert!(
            v3.line.contains("io.containerd.cri.v1.images"),
            "{}",
            v3.line
        );

        let none = advise(&check(&[]), &layout);
        assert_eq!(none.verdict, Some(Verdict::DependsOnVersion));
        assert!(!none.blocks_readiness());
        assert!(
            none.line
                .contains("/etc/containerd/config.toml does not exist (built-in defaults)"),
            "{}",
            none.line
        );
        assert!(
            none.line.contains("containerd 1.x: config_path is unset, so certs.d is ignored; 2.0/2.1: config_path is unset")
                && none.line.contains("2.2+: config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\" (the built-in default) includes it"),
            "{}",
            none.line
        );
        assert_eq!(none.label(), "depends_on_version");
    }

    #[test]
    fn memory_reports_only_changes() {
        let mut m = Memory::default();
        let d = m.update(Topic::Refused, ["a".to_owned(), "b".to_owned()]);
        assert_eq!(d.added, BTreeSet::from(["a".into(), "b".into()]));
        assert!(d.gone.is_empty());
        let d = m.update(Topic::Refused, ["a".to_owned(), "b".to_owned()]);
        assert_eq!(d, Delta::default(), "the same lines are not logged again");
        let d = m.update(Topic::Refused, ["b".to_owned(), "c".to_owned()]);
        assert_eq!(d.added, BTreeSet::from(["c".into()]));
        assert_eq!(d.gone, BTreeSet::from(["a".into()]));
        // Topics are independent.
        assert_eq!(m.update(Topic::Problems, ["a".to_owned()]).added.len(), 1);
        assert_eq!(m.converged(true), Some(true));
        assert_eq!(m.converged(true), None);
        assert_eq!(m.converged(false), Some(false));
    }

    #[test]
    fn uninstall_summary_lists_everything() {
        let report = Report {
            removed: vec!["etc/containerd/certs.d/10.0.0.1:5000".into()],
            restored: vec!["etc/containerd/certs.d/r.test:5000/hosts.toml".into()],
            ..Report::default()
        };
        assert_eq!(
            uninstall_summary(&report),
            "privreg trust --uninstall: removed 1 path(s), restored 1 file(s) from backups, 0 left in place\n\
             removed   /etc/containerd/certs.d/10.0.0.1:5000\n\
             restored  /etc/containerd/certs.d/r.test:5000/hosts.toml\n"
        );
    }

    #[test]
    fn chains_say_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(
            chain(&Outer(std::io::Error::other("inner"))),
            "outer: inner"
        );
    }
}
