//! The agent runtime behind `privreg trust`: the loop around [`crate::trust::sync`].
//!
//! - On start it logs the preset and paths, binds `/healthz`, `/readyz` and
//!   `/metrics`, starts watching the bundle, then runs one pass.
//! - A pass (blocking work, on the blocking pool) checks the node's containerd
//!   config, reads the bundle and syncs the node. Results go to the metrics, to
//!   readiness and to the log, which reports on change only ([`Memory`]).
//! - Passes run when the bundle's directory changes (watched with `notify`; the
//!   kubelet updates a ConfigMap volume by renaming the `..data` symlink, so the
//!   directory is watched, not the file, and bursts of events are debounced) and
//!   every `--resync-seconds`, which also repairs what someone changed on the node.
//! - SIGTERM or SIGINT: the pass in flight finishes, then the agent exits 0 and
//!   leaves the node's files as they are; the next agent takes over.
//! - `--uninstall`: removes everything the agent wrote, restores every backup,
//!   prints a summary and exits, non-zero when something could not be undone.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::TrustArgs;
use crate::trust::apply::{self, ApplyError};
use crate::trust::bundle::MAX_BUNDLE_BYTES;
use crate::trust::health::{self, Shared};
use crate::trust::render::{Layout, Preset};
use crate::trust::summary::{self, ContainerdAdvice, Memory, Summary, Topic};
use crate::trust::{SyncError, containerd_config};

/// After a change, wait for this long without another before syncing: the
/// kubelet's update is several events (new dir, symlink, rename, removal).
const QUIET: Duration = Duration::from_millis(200);
/// A steady stream of events still gets a pass this often.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the node root {0} is not a directory")]
    NodeRoot(PathBuf),
    #[error("reading the trust bundle {path} failed")]
    ReadBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("listening on {addr} for /healthz, /readyz and /metrics failed")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {path} for bundle changes failed")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("listening for SIGTERM failed")]
    Signal(#[source] std::io::Error),
    #[error("the blocking sync task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("--expected-bundle {0:?} is not a SHA-256 in hex (64 characters 0-9a-f)")]
    ExpectedBundle(String),
    #[error("uninstall failed")]
    Uninstall(#[source] ApplyError),
    #[error(
        "uninstall left {0} path(s) in place (listed above); the state file keeps them for the next try"
    )]
    UninstallIncomplete(usize),
}

impl AgentError {
    /// A fixed word for the `sync_errors` metric.
    pub fn category(&self) -> &'static str {
        match self {
            AgentError::NodeRoot(_) => "node_root",
            AgentError::ExpectedBundle(_) => "expected_bundle",
            AgentError::ReadBundle { .. } => "read_bundle",
            AgentError::Sync(SyncError::Bundle(_)) => "parse_bundle",
            AgentError::Sync(SyncError::Apply(_)) => "apply",
            AgentError::Listen { .. } => "listen",
            AgentError::Watch { .. } => "watch",
            AgentError::Signal(_) => "signal",
            AgentError::Task(_) => "task",
            AgentError::Uninstall(_) | AgentError::UninstallIncomplete(_) => "uninstall",
        }
    }
}

/// Everything a pass needs, owned, so it can move onto the blocking pool.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub state_dir: PathBuf,
    pub preset: Preset,
    pub layout: Layout,
    pub resync: Duration,
    pub listen: SocketAddr,
    /// SHA-256 (lowercase hex) of the bundle this pod was created for.
    pub expected_bundle: Option<String>,
}

impl Config {
    pub fn new(args: &TrustArgs) -> Config {
        Config {
            root: args.node_root.clone(),
            bundle: args.bundle.clone(),
            state_dir: args.state_dir.clone(),
            preset: args.preset,
            layout: args.preset.layout(),
            // A zero interval would spin, a huge one overflow the timer: 1 s to a day.
            resync: Duration::from_secs(args.resync_seconds.clamp(1, 86_400)),
            listen: args.metrics_listen,
            // Empty (the downward API's value for a missing annotation) means unset.
            expected_bundle: args
                .expected_bundle
                .as_ref()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty()),
        }
    }

    /// The directory watched for bundle changes.
    fn bundle_dir(&self) -> PathBuf {
        match self.bundle.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    fn on_node(&self, rel: &Path) -> String {
        self.root.join(rel).display().to_string()
    }
}

/// `privreg trust`.
pub async fn run(args: TrustArgs) -> Result<(), AgentError> {
    let config = Config::new(&args);
    if args.uninstall {
        return if args.stay {
            uninstall_and_stay(config).await
        } else {
            uninstall(config).await
        };
    }
    if let Some(hash) = &config.expected_bundle
        && !(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(AgentError::ExpectedBundle(hash.clone()));
    }
    Agent::new(config).run().await
}

/// `privreg trust --uninstall --stay`, the trust DaemonSet's container while the
/// operator uninstalls node trust (the chart's pre-delete hook): uninstall,
/// retrying every `--resync-seconds` until nothing is left, then stay Ready (so
/// the operator counts the node as done) until SIGTERM.
async fn uninstall_and_stay(config: Config) -> Result<(), AgentError> {
    use axum::http::StatusCode;
    let done: Arc<std::sync::Mutex<Result<(), String>>> =
        Arc::new(std::sync::Mutex::new(Err("not started yet".to_owned())));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Signal)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let readyz = {
        let done = done.clone();
        move || {
            let done = done.clone();
            async move {
                match &*done.lock().unwrap_or_else(|e| e.into_inner()) {
                    Ok(()) => (
                        StatusCode::OK,
                        "ready: every trust file privreg wrote on this node is gone\n".to_owned(),
                    ),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n- {why}\n"),
                    ),
                }
            }
        }
    };
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz));
    let stop = CancellationToken::new();
    let server = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        })
    };
    loop {
        let result = uninstall(config.clone())
            .await
            .map_err(|e| summary::chain(&e));
        let finished = result.is_ok();
        if let Err(why) = &result {
            tracing::warn!(error = %why, "uninstall incomplete; trying again");
        }
        *done.lock().unwrap_or_else(|e| e.into_inner()) = result;
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(config.resync), if !finished => {}
            _ = std::future::pending::<()>(), if finished => {}
        }
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

/// `privreg trust --uninstall`.
async fn uninstall(config: Config) -> Result<(), AgentError> {
    tracing::info!(
        preset = %config.preset,
        node_root = %config.root.display(),
        state_dir = %config.state_dir.display(),
        "removing every trust file privreg wrote on this node and restoring backups"
    );
    let (root, state, layout) = (
        config.root.clone(),
        config.state_dir.clone(),
        config.layout.clone(),
    );
    let report = tokio::task::spawn_blocking(move || apply::uninstall(&root, &state, &layout))
        .await
        .map_err(AgentError::Task)?
        .map_err(AgentError::Uninstall)?;
    print!("{}", summary::uninstall_summary(&report));
    let left = report.skipped.iter().filter(|s| !s.reason.benign()).count();
    if left > 0 {
        return Err(AgentError::UninstallIncomplete(left));
    }
    tracing::info!(
        removed = report.removed.len(),
        restored = report.restored.len(),
        "uninstalled"
    );
    Ok(())
}

/// What the bundle watcher reports to the loop.
#[derive(Debug)]
enum WatchEvent {
    /// Something in the bundle's directory changed.
    Changed,
    /// The watch itself failed or its directory went away: re-armed at the next resync.
    Lost(String),
}

struct Agent {
    config: Config,
    shared: Arc<Shared>,
    memory: Memory,
}

impl Agent {
    fn new(config: Config) -> Agent {
        Agent {
            shared: Arc::new(Shared::expecting(config.expected_bundle.clone())),
            config,
            memory: Memory::default(),
        }
    }

    async fn run(mut self) -> Result<(), AgentError> {
        let c = &self.config;
        tracing::info!(
            preset = %c.preset,
            node_root = %c.root.display(),
            bundle = %c.bundle.display(),
            state_dir = %c.state_dir.display(),
            containerd_certs_d = %c.on_node(&c.layout.containerd_certs_d),
            containerd_config = %c.on_node(&c.layout.containerd_config),
            docker_certs_d = %c.on_node(&c.layout.docker_certs_d),
            containers_certs_d = %c.on_node(&c.layout.containers_certs_d),
            etc_hosts = %c.on_node(&c.layout.etc_hosts),
            resync_seconds = c.resync.as_secs(),
            metrics_listen = %c.listen,
            expected_bundle = c.expected_bundle.as_deref().unwrap_or("-"),
            "privreg trust starting"
        );
        if !c.root.is_dir() {
            return Err(AgentError::NodeRoot(c.root.clone()));
        }

        // Signals first, so a SIGTERM during startup is not lost.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(AgentError::Signal)?;
        let stop = CancellationToken::new();
        let health = {
            let listener = tokio::net::TcpListener::bind(c.listen)
                .await
                .map_err(|source| AgentError::Listen {
                    addr: c.listen,
                    source,
                })?;
            let app = health::router(self.shared.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the health and metrics server stopped");
                }
            })
        };

        // Watch before the first read, so no change can fall between the two.
        let (tx, mut rx) = mpsc::channel::<WatchEvent>(16);
        let mut watcher = self.arm_watch(&tx);

        self.pass("start").await;

        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.resync,
            self.config.resync,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    if watcher.is_none() {
                        watcher = self.arm_watch(&tx);
                    }
                    "resync"
                }
                event = rx.recv() => match event {
                    Some(WatchEvent::Changed) => {
                        debounce(&mut rx).await;
                        "change"
                    }
                    Some(WatchEvent::Lost(why)) => {
                        tracing::warn!(
                            dir = %self.config.bundle_dir().display(),
                            reason = %why,
                            "lost the watch on the bundle's directory; syncing every {} s until it is re-armed",
                            self.config.resync.as_secs()
                        );
                        watcher = None;
                        continue;
                    }
                    // The sender lives in this function: never closed while we loop.
                    None => continue,
                },
            };
            self.pass(trigger).await;
            tick.reset();
        }
        tracing::info!(
            "shutdown requested; the node's trust files stay as they are for the next agent"
        );
        drop(watcher);
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), health).await;
        Ok(())
    }

    /// Starts watching the bundle's directory; on failure logs it and returns
    /// `None` (the periodic resync still runs, and re-arms the watch).
    fn arm_watch(&self, tx: &mpsc::Sender<WatchEvent>) -> Option<notify::RecommendedWatcher> {
        let dir = self.config.bundle_dir();
        match watch(&dir, tx.clone()) {
            Ok(w) => {
                tracing::debug!(dir = %dir.display(), "watching the bundle's directory");
                Some(w)
            }
            Err(e) => {
                tracing::warn!(
                    error = %summary::chain(&e),
                    "cannot watch the bundle's directory; syncing every {} s instead",
                    self.config.resync.as_secs()
                );
                None
            }
        }
    }

    /// One pass on the blocking pool, then metrics, readiness and logs.
    async fn pass(&mut self, trigger: &'static str) {
        let config = self.config.clone();
        let started = Instant::now();
        let (summary, advice) = match tokio::task::spawn_blocking(move || pass(&config)).await {
            Ok(result) => result,
            Err(e) => {
                let e = AgentError::Task(e);
                let advice = ContainerdAdvice::unknown(&self.config.layout.containerd_config, &e);
                (Summary::failed(e.category(), &e), advice)
            }
        };
        let took = started.elapsed();
        self.shared.metrics.sync_seconds.observe(took.as_secs_f64());
        self.shared.metrics.record(trigger, &summary, &advice);
        self.log(trigger, took, &summary, &advice);
        self.shared.set(summary, advice);
    }

    /// Logs what changed since the last pass, and nothing else.
    fn log(&mut self, trigger: &str, took: Duration, s: &Summary, advice: &ContainerdAdvice) {
        let m = &mut self.memory;

        let d = m.update(Topic::Containerd, [advice.line.clone()]);
        if !d.added.is_empty() {
            match advice.verdict {
                Some(containerd_config::Verdict::Effective) => {
                    tracing::info!(verdict = advice.label(), "{}", advice.line)
                }
                _ => tracing::warn!(verdict = advice.label(), "{}", advice.line),
            }
        }

        let d = m.update(
            Topic::Failure,
            s.failure
                .iter()
                .map(|f| format!("{}: {}", f.category, f.message)),
        );
        if let Some(f) = &s.failure
            && !d.added.is_empty()
        {
            tracing::error!(
                reason = f.category,
                error = %f.message,
                "sync failed; the node's trust files are left as they are"
            );
        }
        if s.failure.is_none() && !d.gone.is_empty() {
            tracing::info!("sync works again");
        }
        if s.failure.is_some() {
            // Nothing below was computed: keep the memory of the last real pass.
            return;
        }

        let d = m.update(Topic::Refused, s.refused.iter().map(|r| r.key()));
        for r in s.refused.iter().filter(|r| d.added.contains(&r.key())) {
            tracing::warn!(
                registry = %r.registry,
                field = %r.field,
                problem = %r.problem,
                "trust bundle entry refused; its registry keeps its last good files on this node"
            );
        }
        for gone in &d.gone {
            tracing::info!("no longer refused: {gone}");
        }

        let d = m.update(Topic::Problems, s.problems.iter().map(|p| p.key()));
        for p in s.problems.iter().filter(|p| d.added.contains(&p.key())) {
            tracing::warn!(
                path = %p.path,
                registry = p.registry.as_deref().unwrap_or("-"),
                reason = %p.reason,
                "trust file not as the bundle says"
            );
        }
        for gone in &d.gone {
            tracing::info!("resolved: {gone}");
        }

        let d = m.update(Topic::Notes, s.notes.iter().map(|p| p.key()));
        for p in s.notes.iter().filter(|p| d.added.contains(&p.key())) {
            tracing::info!(path = %p.path, reason = %p.reason, "skipped");
        }

        if !s.changes.is_empty() {
            let c = &s.changes;
            tracing::info!(
                trigger,
                took_ms = took.as_millis() as u64,
                written = ?c.written,
                removed = ?c.removed,
                backed_up = ?c.backed_up,
                restored = ?c.restored,
                "trust files updated"
            );
        }
        match m.converged(s.converged) {
            Some(true) => tracing::info!(
                registries = s.applied,
                trigger,
                "the node matches the trust bundle"
            ),
            Some(false) => tracing::warn!(
                refused = s.refused.len(),
                problems = s.problems.len(),
                "the node does not fully match the trust bundle (reasons above, and on /readyz)"
            ),
            None => tracing::debug!(trigger, "sync: nothing changed"),
        }
    }
}

/// Waits until the watcher has been quiet for [`QUIET`] (at most [`MAX_DEBOUNCE`]).
async fn debounce(rx: &mut mpsc::Receiver<WatchEvent>) {
    let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
    loop {
        let quiet = tokio::time::Instant::now() + QUIET;
        match tokio::time::timeout_at(quiet.min(deadline), rx.recv()).await {
            Ok(Some(_)) if tokio::time::Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

/// A non-recursive watch on `dir` that sends [`WatchEvent`]s. Access events
/// are ignored: the agent's own reads of the bundle would otherwise wake it.
fn watch(
    dir: &Path,
    tx: mpsc::Sender<WatchEvent>,
) -> Result<notify::RecommendedWatcher, AgentError> {
    let watched = dir.to_owned();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let message = match event {
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => return,
            Ok(e)
                if matches!(e.kind, EventKind::Remove(_))
                    && e.paths.iter().any(|p| p == &watched) =>
            {
                WatchEvent::Lost(format!("{} was removed", watched.display()))
            }
            Ok(_) => WatchEvent::Changed,
            Err(e) => WatchEvent::Lost(e.to_string()),
        };
        // A full channel already holds a wake-up: dropping this one loses nothing.
        let _ = tx.try_send(message);
    })
    .map_err(|source| AgentError::Watch {
        path: dir.to_owned(),
        source,
    })?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|source| AgentError::Watch {
            path: dir.to_owned(),
            source,
        })?;
    Ok(watcher)
}

/// One pass: the containerd check, then read the bundle and sync. Blocking.
fn pass(config: &Config) -> (Summary, ContainerdAdvice) {
    let advice = match containerd_config::check(&config.root, &config.layout) {
        Ok(check) => summary::advise(&check, &config.layout),
        Err(e) => ContainerdAdvice::unknown(&config.layout.containerd_config, &e),
    };
    let summary = match sync_once(config) {
        Ok((outcome, entries, sha256)) => Summary::synced(&outcome, entries, sha256),
        Err(e) => Summary::failed(e.category(), &e),
    };
    (summary, advice)
}

fn sync_once(config: &Config) -> Result<(crate::trust::Outcome, usize, String), AgentError> {
    if !config.root.is_dir() {
        return Err(AgentError::NodeRoot(config.root.clone()));
    }
    let bytes = read_bundle(&config.bundle)?;
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let outcome = crate::trust::sync(&config.root, &config.state_dir, &config.layout, &bytes)?;
    Ok((outcome, count_entries(&bytes), sha256))
}

/// Reads the bundle (through the kubelet's symlinks), at most one byte more
/// than the parser accepts, so a huge file costs no more memory than that.
pub fn read_bundle(path: &Path) -> Result<Vec<u8>, AgentError> {
    let err = |source| AgentError::ReadBundle {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(bytes)
}

/// How many entries a parsed bundle lists (each is accepted or refused).
fn count_entries(json: &[u8]) -> usize {
    #[derive(serde::Deserialize)]
    struct Outer {
        registries: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Outer>(json)
        .map(|o| o.registries.len())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::bundle::{Bundle, tests::entry};

    fn config(root: &Path, bundle: &Path) -> Config {
        Config {
            root: root.to_owned(),
            bundle: bundle.to_owned(),
            state_dir: root.join("var/lib/privreg-trust"),
            preset: Preset::Containerd,
            layout: Preset::Containerd.layout(),
            resync: Duration::from_secs(60),
            listen: "127.0.0.1:0".parse().unwrap(),
            expected_bundle: None,
        }
    }

    #[test]
    fn a_pass_syncs_and_counts_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("node");
        std::fs::create_dir_all(root.join("etc/containerd")).unwrap();
        let good = entry("a/one", "one.internal", "10.96.0.1");
        let mut bad = entry("b/two", "two.internal", "10.96.0.2");
        bad.server = "http://10.96.0.2:5000".into();
        let json = serde_json::to_vec(&Bundle {
            registries: vec![good, bad],
        })
        .unwrap();
        let path = dir.path().join("bundle.json");
        std::fs::write(&path, &json).unwrap();
        let (s, advice) = pass(&config(&root, &path));
        assert!(s.failure.is_none(), "{s:?}");
        assert_eq!((s.applied, s.refused.len()), (1, 1));
        assert!(!s.converged);
        assert!(
            s.changes
                .written
                .iter()
                .any(|p| p.ends_with("etc/containerd/certs.d/one.internal:5000/hosts.toml")),
            "{s:?}"
        );
        // No containerd config on this node: it depends on the version.
        assert_eq!(
            advice.verdict,
            Some(containerd_config::Verdict::DependsOnVersion)
        );
    }

    #[test]
    fn unreadable_and_unparsable_bundles_are_typed_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.json");
        let (s, _) = pass(&config(dir.path(), &path));
        assert_eq!(s.failure.as_ref().map(|f| f.category), Some("read_bundle"));
        assert!(
            s.failure.unwrap().message.contains("No such file"),
            "the cause is kept"
        );
        std::fs::write(&path, b"{").unwrap();
        let (s, _) = pass(&config(dir.path(), &path));
        assert_eq!(s.failure.map(|f| f.category), Some("parse_bundle"));
        let (s, _) = pass(&config(&dir.path().join("missing"), &path));
        assert_eq!(s.failure.map(|f| f.category), Some("node_root"));
    }

    #[test]
    fn reading_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.json");
        std::fs::write(&path, vec![b' '; MAX_BUNDLE_BYTES + 100]).unwrap();
        assert_eq!(read_bundle(&path).unwrap().len(), MAX_BUNDLE_BYTES + 1);
    }

    #[test]
    fn the_bundle_directory_is_watched() {
        let c = config(Path::new("/"), Path::new("/etc/privreg/bundle/bundle.json"));
        assert_eq!(c.bundle_dir(), Path::new("/etc/privreg/bundle"));
        let c = config(Path::new("/"), Path::new("bundle.json"));
        assert_eq!(c.bundle_dir(), Path::new("."));
    }

    #[tokio::test]
    async fn the_watch_sees_a_kubelet_style_swap_and_ignores_reads() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path();
        std::fs::create_dir(vol.join("..v1")).unwrap();
        std::fs::write(vol.join("..v1/bundle.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("..v1", vol.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/bundle.json", vol.join("bundle.json")).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let _w = watch(vol, tx).unwrap();

        // Reading the bundle is no change.
        read_bundle(&vol.join("bundle.json")).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "a read woke the agent"
        );

        // The kubelet's swap: a new timestamped dir, a temp symlink renamed over ..data.
        std::fs::create_dir(vol.join("..v2")).unwrap();
        std::fs::write(vol.join("..v2/bundle.json"), b"{\"registries\":[]}").unwrap();
        std::os::unix::fs::symlink("..v2", vol.join("..data_tmp")).unwrap();
        std::fs::rename(vol.join("..data_tmp"), vol.join("..data")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(got, Ok(Some(WatchEvent::Changed))), "{got:?}");
        debounce(&mut rx).await;
        assert_eq!(
            read_bundle(&vol.join("bundle.json")).unwrap(),
            b"{\"registries\":[]}"
        );
    }
}
