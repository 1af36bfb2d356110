//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas
//! never reconcile at once. It follows client-go's `leaderelection` package.
//!
//! # Protocol
//!
//! * The leader rewrites the Lease (`renewTime`) every `retry_period`.
//! * A standby polls the Lease every `retry_period` (jittered, like client-go's
//!   `wait.JitterUntil`, so standbys started together do not poll in lockstep)
//!   and takes it over once it has seen the *same record* — holder, renewTime,
//!   acquireTime, leaseDurationSeconds, leaseTransitions — for a full lease
//!   duration on its own monotonic clock. It never compares `renewTime` with its
//!   wall clock: the two were read on different nodes, and a node whose clock
//!   runs a few seconds ahead would take over a live lease (two leaders), while
//!   one that runs behind would wait far too long. Observing "unchanged for
//!   long enough" needs no agreement between clocks at all, only that every
//!   replica's clock advances at about the same rate.
//! * A Lease with no holder was released on purpose and is taken at once. One
//!   that names this replica's own identity (a restarted container of the same
//!   Pod) is ours: renewed at once.
//! * Every write is a compare-and-swap: `replace` with the resourceVersion just
//!   read (409: someone else wrote first, not ours this round) or `create`
//!   (409: someone else created it first). Two candidates can never both win.
//! * The leader must renew within `renew_deadline` of its last successful
//!   renewal (measured from when that request was *sent*, the earliest moment a
//!   standby could have seen it), or it gives up: `hold` returns
//!   [`LeaderError::Lost`]. A standby waits at least `lease_duration` from when
//!   it *saw* that record, so the old leader has `lease_duration −
//!   renew_deadline` ([`LeaderConfig::handover_margin`]) to stop reconciling
//!   before anyone else may start. Each request carries its own timeout so a
//!   hung connection to the apiserver cannot stall the leader past its deadline.
//! * On shutdown the leader releases the Lease (client-go's `ReleaseOnCancel`):
//!   holder cleared, leaseDurationSeconds 1, so a rolling update hands over at
//!   once instead of after a full lease duration.
//!
//! The decisions are pure ([`Observation`], [`decide`], [`renew_budget`], the
//! spec builders) and unit-tested below; [`LeaderElector`] only adds the API
//! calls, the timers and the logging.
//!
//! # Wiring (for the caller)
//!
//! Leading must end *before* another replica may start, and a lost lease must
//! not be hidden. The caller therefore:
//!
//! 1. validates the [`LeaderConfig`] and calls [`LeaderElector::acquire`] with a
//!    token cancelled on SIGTERM; `Ok(false)` means SIGTERM came first: exit 0
//!    (calling `release` then is harmless and clears a lease that a write cut
//!    short by the cancellation may still have taken);
//! 2. runs the controller with graceful shutdown triggered by either SIGTERM or
//!    [`LeaderElector::hold`] returning `Err` (spawn `hold` with a child token of
//!    the SIGTERM token; when it returns, cancel that child token, which is the
//!    controller's shutdown trigger). In-flight reconciles must finish within
//!    [`LeaderConfig::handover_margin`] of the trigger, so bound the controller's
//!    drain by it (drop the controller future when it runs out);
//! 3. after the controller has stopped: cancels the child token (so `hold`
//!    returns if the controller stopped on its own), awaits the `hold` task,
//!    calls [`LeaderElector::release`] (only clears the Lease if it still names
//!    us), and finally returns the `hold` error, if any, so a lost lease makes
//!    the process exit non-zero and restart as a standby.
//!
//! ```rust,ignore
//! let sigterm = CancellationToken::new(); // cancelled by the signal handler
//! config.validate()?;
//! let elector = Arc::new(LeaderElector::new(client, ns, "privreg-operator", &id, config));
//! if !elector.acquire(&sigterm).await? {
//!     return Ok(());
//! }
//! let shutdown = sigterm.child_token();
//! let keeper = tokio::spawn({
//!     let (elector, shutdown) = (elector.clone(), shutdown.clone());
//!     async move {
//!         let held = elector.hold(&shutdown).await; // Ok on shutdown, Err(Lost) otherwise
//!         shutdown.cancel(); // either way, stop the controller
//!         held
//!     }
//! });
//! controller.graceful_shutdown_on(shutdown.clone().cancelled_owned()).run(..).await;
//! shutdown.cancel();
//! let held = keeper.await?;
//! elector.release().await?;
//! held?;
//! ```

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// client-go's `JitterFactor`: a standby waits between 1 and 2.2 retry periods,
/// so standbys started together spread out. `renew_deadline` must exceed
/// `retry_period` times this, so the deadline always leaves room for a renewal
/// attempt after the first one is due.
pub const JITTER_FACTOR: f64 = 1.2;

/// Timings of the election; the defaults are client-go's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// How long a standby waits, after it last saw the Lease change, before it
    /// takes it over. Written to the Lease (rounded up to whole seconds) so
    /// standbys honour the holder's own duration.
    pub lease_duration: Duration,
    /// How long the leader keeps leading, from its last successful renewal,
    /// while renewals fail. Shorter than `lease_duration`, so it stops before a
    /// standby may take over.
    pub renew_deadline: Duration,
    /// Time between renewals by the leader, and between polls by a standby.
    pub retry_period: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaderConfig {
    /// client-go's checks: `lease_duration > renew_deadline >
    /// retry_period × 1.2 > 0`. Also: `lease_duration` is at least 1 s and fits
    /// the Lease's `int32` seconds, because it is stored in whole seconds.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |msg: String| Err(LeaderError::Config(msg));
        if self.retry_period.is_zero() {
            return bad("retry_period must be greater than zero".into());
        }
        if self.renew_deadline.is_zero() {
            return bad("renew_deadline must be greater than zero".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return bad(format!(
                "lease_duration ({:?}) must be at least 1s: the Lease stores whole seconds",
                self.lease_duration
            ));
        }
        if i32::try_from(ceil_secs(self.lease_duration)).is_err() {
            return bad(format!(
                "lease_duration ({:?}) does not fit the Lease's leaseDurationSeconds",
                self.lease_duration
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return bad(format!(
                "lease_duration ({:?}) must be greater than renew_deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.renew_deadline.as_secs_f64() <= self.retry_period.as_secs_f64() * JITTER_FACTOR {
            return bad(format!(
                "renew_deadline ({:?}) must be greater than retry_period ({:?}) × {JITTER_FACTOR}",
                self.renew_deadline, self.retry_period
            ));
        }
        Ok(())
    }

    /// `lease_duration − renew_deadline`: how long the leader has, after `hold`
    /// gives up, to stop reconciling before a standby may start.
    pub fn handover_margin(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_deadline)
    }

    /// The longest one renewal attempt may take: half the deadline, so a
    /// request stuck on a dead connection still leaves room for another try.
    fn attempt_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }

    /// `leaseDurationSeconds` as written: rounded up, so a standby never waits
    /// less than we promised.
    fn lease_seconds(&self) -> i32 {
        i32::try_from(ceil_secs(self.lease_duration)).unwrap_or(i32::MAX)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Why leader election failed. `acquire` retries API errors itself; they reach
/// the caller only from `release`.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("the leader Lease request failed")]
    Api(#[from] kube::Error),
    /// We no longer lead: stop reconciling (another replica may start after
    /// `handover_margin`).
    #[error("lost the leader Lease: {reason}")]
    Lost { reason: String },
    #[error("invalid leader election settings: {0}")]
    Config(String),
    #[error("the leader Lease request timed out")]
    Timeout,
}

/// The part of a Lease that says who leads and since when: what a standby
/// compares between polls (client-go's `LeaderElectionRecord`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `None` when the Lease is free (never taken, or released).
    pub holder: Option<String>,
    pub renew_time: Option<MicroTime>,
    pub acquire_time: Option<MicroTime>,
    pub lease_duration_seconds: Option<i32>,
    pub lease_transitions: Option<i32>,
}

impl LeaseRecord {
    /// The record of a Lease spec; an empty holder counts as none, as in
    /// client-go, where a released Lease has `holderIdentity: ""`.
    pub fn from_spec(spec: Option<&LeaseSpec>) -> Self {
        let Some(spec) = spec else {
            return LeaseRecord::default();
        };
        LeaseRecord {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.clone(),
            acquire_time: spec.acquire_time.clone(),
            lease_duration_seconds: spec.lease_duration_seconds,
            lease_transitions: spec.lease_transitions,
        }
    }

    /// The holder's own lease duration, if it wrote a usable one.
    fn lease_duration(&self) -> Option<Duration> {
        let secs = u64::try_from(self.lease_duration_seconds?).ok()?;
        (secs > 0).then(|| Duration::from_secs(secs))
    }
}

/// What this replica has seen of the Lease and since when, on its own
/// monotonic clock (client-go's `observedRecord` / `observedTime`).
#[derive(Clone, Debug, Default)]
pub struct Observation {
    seen: Option<(LeaseRecord, Instant)>,
}

impl Observation {
    /// Feeds the record read at `now`; returns how long this exact record has
    /// been seen unchanged (zero when it differs from the last one, which
    /// restarts the clock: the holder is alive).
    pub fn observe(&mut self, record: LeaseRecord, now: Instant) -> Duration {
        match &self.seen {
            Some((last, since)) if *last == record => now.saturating_duration_since(*since),
            _ => {
                self.seen = Some((record, now));
                Duration::ZERO
            }
        }
    }
}

/// May this replica take the Lease?
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (released): take it now.
    Free,
    /// It names this replica: renew it.
    Ours,
    /// `holder` has not changed the record for a full lease duration that we
    /// watched: it is gone, take over.
    Expired { holder: String },
    /// `holder` leads; it expires if the record stays unchanged for `remaining`.
    Held { holder: String, remaining: Duration },
}

/// Decides from a record that has been seen unchanged for `unchanged_for`.
/// The holder's own `leaseDurationSeconds` counts (it is what the holder
/// promised); `fallback` (ours) only when the record has none.
pub fn decide(
    record: &LeaseRecord,
    unchanged_for: Duration,
    identity: &str,
    fallback: Duration,
) -> Decision {
    let Some(holder) = record.holder.as_deref().filter(|h| !h.is_empty()) else {
        return Decision::Free;
    };
    if holder == identity {
        return Decision::Ours;
    }
    let lease = record.lease_duration().unwrap_or(fallback);
    match lease.checked_sub(unchanged_for) {
        Some(remaining) if !remaining.is_zero() => Decision::Held {
            holder: holder.to_owned(),
            remaining,
        },
        _ => Decision::Expired {
            holder: holder.to_owned(),
        },
    }
}

/// The time the next renewal attempt may take, or `None` when the deadline
/// (`last_renewed + renew_deadline`) has passed and we must give up leading.
pub fn renew_budget(
    last_renewed: Instant,
    now: Instant,
    config: &LeaderConfig,
) -> Option<Duration> {
    let remaining = config
        .renew_deadline
        .checked_sub(now.saturating_duration_since(last_renewed))
        .filter(|r| !r.is_zero())?;
    Some(remaining.min(config.attempt_timeout()))
}

/// `base` stretched by up to `factor` of itself; `unit` in `[0, 1)` picks how
/// much (client-go's `wait.Jitter`).
fn jittered(base: Duration, factor: f64, unit: f64) -> Duration {
    Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 + factor * unit.clamp(0.0, 1.0)))
        .unwrap_or(base)
}

/// `t + d` without a panic on overflow; `validate` bounds every duration to
/// `i32::MAX` seconds, so the fallback (`t`: act now) is never reached.
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// The spec that claims (or renews) the Lease for `identity`, keeping fields we
/// do not manage. Taking it from someone else, or from nobody, is a transition.
fn claimed(spec: Option<LeaseSpec>, identity: &str, now: &MicroTime, secs: i32) -> LeaseSpec {
    let mut spec = spec.unwrap_or_default();
    if spec.holder_identity.as_deref() == Some(identity) {
        spec.acquire_time.get_or_insert_with(|| now.clone());
        spec.lease_transitions.get_or_insert(0);
    } else {
        spec.holder_identity = Some(identity.to_owned());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.renew_time = Some(now.clone());
    spec.lease_duration_seconds = Some(secs);
    spec
}

/// The spec that releases the Lease (client-go's `release`): no holder, and a
/// 1 s duration for standbys that still judge by time.
fn released(spec: Option<LeaseSpec>, now: &MicroTime) -> LeaseSpec {
    let mut spec = spec.unwrap_or_default();
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now.clone());
    spec.acquire_time = Some(now.clone());
    spec
}

/// A fresh Lease, held by `identity`.
fn new_lease(name: &str, identity: &str, now: &MicroTime, secs: i32) -> Lease {
    let mut spec = claimed(None, identity, now, secs);
    // Creating is not taking over from anyone.
    spec.lease_transitions = Some(0);
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(spec),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One acquisition attempt's result.
enum Acquire {
    /// We hold the Lease now.
    Leading,
    /// `holder` holds it for at least `remaining` more.
    Waiting { holder: String, remaining: Duration },
    /// Another writer changed the Lease between our read and our write.
    Conflict,
}

/// One renewal attempt's result.
enum Renew {
    Renewed,
    /// Another writer changed the Lease between our read and our write; the
    /// next read tells whether it is still ours.
    Conflict,
    /// The Lease names someone else (or nobody, or is gone): we lost it.
    NotOurs {
        holder: Option<String>,
    },
}

#[derive(Default)]
struct State {
    observation: Observation,
    /// When the request of our last successful write was sent; `None` while
    /// not leading.
    last_renewed: Option<Instant>,
}

/// Takes, keeps and releases one Lease for one identity. Call `acquire`, then
/// `hold`, then `release`, one at a time (see the module docs).
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    config: LeaderConfig,
    state: Mutex<State>,
}

impl LeaderElector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        config: LeaderConfig,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: lease_name.to_owned(),
            identity: identity.to_owned(),
            config,
            state: Mutex::new(State::default()),
        }
    }

    pub fn config(&self) -> &LeaderConfig {
        &self.config
    }

    /// The state holds no invariant a panic could break halfway, so a
    /// poisoned lock is still good.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until this replica holds the Lease (`Ok(true)`) or `stop` is
    /// cancelled (`Ok(false)`, at once, even mid-request). API errors are
    /// logged and retried, like client-go: the apiserver may come back, and
    /// RBAC may be fixed, without restarting the operator.
    pub async fn acquire(&self, stop: &CancellationToken) -> Result<bool, LeaderError> {
        self.config.validate()?;
        // The holder last logged at INFO: one line per change of leader, not
        // one per poll.
        let mut announced: Option<String> = None;
        let mut failures: u32 = 0;
        loop {
            let sent = Instant::now();
            let attempt = tokio::time::timeout(self.config.renew_deadline, self.try_acquire());
            let outcome = tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(false),
                outcome = attempt => outcome,
            };
            match outcome {
                Ok(Ok(Acquire::Leading)) => {
                    self.state().last_renewed = Some(sent);
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired the leader lease");
                    return Ok(true);
                }
                Ok(Ok(Acquire::Waiting { holder, remaining })) => {
                    failures = 0;
                    if announced.as_deref() == Some(holder.as_str()) {
                        tracing::debug!(lease = %self.name, %holder, ?remaining, "another replica leads; waiting");
                    } else {
                        tracing::info!(lease = %self.name, %holder, "another replica leads; waiting");
                        announced = Some(holder);
                    }
                }
                Ok(Ok(Acquire::Conflict)) => {
                    failures = 0;
                    tracing::debug!(lease = %self.name, "another replica wrote the lease first");
                }
                Ok(Err(e)) => {
                    failures = failures.saturating_add(1);
                    self.log_failure(failures, &e);
                }
                Err(_) => {
                    failures = failures.saturating_add(1);
                    self.log_failure(failures, &"the request timed out");
                }
            }
            let pause = jittered(
                self.config.retry_period,
                JITTER_FACTOR,
                rand::random::<f64>(),
            );
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(false),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// WARN on the 1st, 2nd, 4th, 8th… failure in a row, DEBUG otherwise: an
    /// unreachable apiserver stays visible without a line every poll.
    fn log_failure(&self, failures: u32, error: &dyn std::fmt::Display) {
        if failures.is_power_of_two() {
            tracing::warn!(lease = %self.name, %error, failures, "leader election failed; retrying");
        } else {
            tracing::debug!(lease = %self.name, %error, failures, "leader election failed; retrying");
        }
    }

    /// Keeps the Lease while leading: renews every `retry_period`. Returns
    /// `Ok(())` as soon as `stop` is cancelled, and `Err(Lost)` when the Lease
    /// names someone else, or when no renewal succeeded within `renew_deadline`
    /// of the last one: the caller must then stop reconciling at once.
    pub async fn hold(&self, stop: &CancellationToken) -> Result<(), LeaderError> {
        self.config.validate()?;
        let Some(mut last_renewed) = self.state().last_renewed else {
            return Err(LeaderError::Lost {
                reason: "not leading: acquire() has not won the lease".into(),
            });
        };
        let mut next = after(last_renewed, self.config.retry_period);
        let mut last_error = String::from("no attempt finished");
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(next) => {}
            }
            let sent = Instant::now();
            let Some(budget) = renew_budget(last_renewed, sent, &self.config) else {
                return Err(self.lost(format!(
                    "not renewed within renew_deadline ({:?}); last error: {last_error}",
                    self.config.renew_deadline
                )));
            };
            let attempt = tokio::time::timeout(budget, self.try_renew());
            let outcome = tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                outcome = attempt => outcome,
            };
            let deadline = after(last_renewed, self.config.renew_deadline);
            match outcome {
                Ok(Ok(Renew::Renewed)) => {
                    last_renewed = sent;
                    self.state().last_renewed = Some(sent);
                    next = after(sent, self.config.retry_period);
                    tracing::debug!(lease = %self.name, "renewed the leader lease");
                    continue;
                }
                Ok(Ok(Renew::NotOurs { holder })) => {
                    let holder = holder.as_deref().unwrap_or("nobody");
                    return Err(self.lost(format!("the lease is now held by {holder}")));
                }
                Ok(Ok(Renew::Conflict)) => {
                    // Someone else wrote it: read again now to learn who.
                    last_error = "another writer changed the lease".into();
                    tracing::debug!(lease = %self.name, "renewal conflicted; reading again");
                    next = Instant::now();
                    continue;
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("the request timed out after {budget:?}"),
            }
            tracing::warn!(
                lease = %self.name,
                error = %last_error,
                remaining = ?deadline.saturating_duration_since(Instant::now()),
                "renewing the leader lease failed; retrying until the deadline"
            );
            next = after(Instant::now(), self.config.retry_period).min(deadline);
        }
    }

    fn lost(&self, reason: String) -> LeaderError {
        self.state().last_renewed = None;
        tracing::error!(lease = %self.name, %reason, "lost the leader lease; stop leading");
        LeaderError::Lost { reason }
    }

    /// Gives the Lease up if it still names us, so a standby takes it at once
    /// (client-go's `ReleaseOnCancel`). Call only after reconciling stopped.
    /// Bounded by `renew_deadline`, so shutdown never hangs on it.
    pub async fn release(&self) -> Result<(), LeaderError> {
        self.state().last_renewed = None;
        match tokio::time::timeout(self.config.renew_deadline, self.try_release()).await {
            Ok(result) => result,
            Err(_) => Err(LeaderError::Timeout),
        }
    }

    async fn try_release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let record = LeaseRecord::from_spec(lease.spec.as_ref());
        if record.holder.as_deref() != Some(self.identity.as_str()) {
            tracing::debug!(lease = %self.name, holder = ?record.holder, "not the holder; nothing to release");
            return Ok(());
        }
        lease.spec = Some(released(lease.spec.take(), &MicroTime(Timestamp::now())));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                tracing::info!(lease = %self.name, "released the leader lease");
                Ok(())
            }
            // Someone wrote after our read: it is no longer ours to release.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the Lease and records what we saw; returns the Lease and how long
    /// its record has been seen unchanged.
    async fn read(&self) -> Result<Option<(Lease, LeaseRecord, Duration)>, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(None);
        };
        let record = LeaseRecord::from_spec(lease.spec.as_ref());
        let unchanged_for = self
            .state()
            .observation
            .observe(record.clone(), Instant::now());
        Ok(Some((lease, record, unchanged_for)))
    }

    fn observe(&self, lease: &Lease) {
        let record = LeaseRecord::from_spec(lease.spec.as_ref());
        self.state().observation.observe(record, Instant::now());
    }

    async fn try_acquire(&self) -> Result<Acquire, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let secs = self.config.lease_seconds();
        let Some((mut lease, record, unchanged_for)) = self.read().await? else {
            let lease = new_lease(&self.name, &self.identity, &now, secs);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(written) => {
                    self.observe(&written);
                    Ok(Acquire::Leading)
                }
                Err(e) if is_conflict(&e) => Ok(Acquire::Conflict),
                Err(e) => Err(e),
            };
        };
        match decide(
            &record,
            unchanged_for,
            &self.identity,
            self.config.lease_duration,
        ) {
            Decision::Held { holder, remaining } => {
                return Ok(Acquire::Waiting { holder, remaining });
            }
            Decision::Expired { holder } => tracing::info!(
                lease = %self.name,
                %holder,
                ?unchanged_for,
                "the leader stopped renewing; taking over"
            ),
            Decision::Free | Decision::Ours => {}
        }
        lease.spec = Some(claimed(lease.spec.take(), &self.identity, &now, secs));
        if self.write(&lease).await? {
            Ok(Acquire::Leading)
        } else {
            Ok(Acquire::Conflict)
        }
    }

    async fn try_renew(&self) -> Result<Renew, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some((mut lease, record, _)) = self.read().await? else {
            return Ok(Renew::NotOurs { holder: None });
        };
        // Never take it back from someone else here: another replica led in
        // between, and the caller must hear that.
        if decide(
            &record,
            Duration::ZERO,
            &self.identity,
            self.config.lease_duration,
        ) != Decision::Ours
        {
            return Ok(Renew::NotOurs {
                holder: record.holder,
            });
        }
        lease.spec = Some(claimed(
            lease.spec.take(),
            &self.identity,
            &now,
            self.config.lease_seconds(),
        ));
        if self.write(&lease).await? {
            Ok(Renew::Renewed)
        } else {
            Ok(Renew::Conflict)
        }
    }

    /// Compare-and-swap: `replace` carries the resourceVersion we read, so a
    /// concurrent writer makes it 409 (`Ok(false)`).
    async fn write(&self, lease: &Lease) -> Result<bool, kube::Error> {
        match self
            .api
            .replace(&self.name, &PostParams::default(), lease)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn time(s: i64) -> MicroTime {
        MicroTime(Timestamp::from_second(s).expect("in range"))
    }

    fn record(holder: Option<&str>, renewed: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            renew_time: Some(time(renewed)),
            acquire_time: Some(time(1_000)),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(3),
        }
    }

    #[test]
    fn defaults_are_client_go_and_valid() {
        let c = LeaderConfig::default();
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (secs(15), secs(10), secs(2))
        );
        assert!(c.validate().is_ok());
        assert_eq!(c.handover_margin(), secs(5));
        assert_eq!(c.lease_seconds(), 15);
    }

    #[test]
    fn validate_enforces_lease_over_deadline_over_jittered_retry() {
        let cfg = |l: Duration, d: Duration, r: Duration| LeaderConfig {
            lease_duration: l,
            renew_deadline: d,
            retry_period: r,
        };
        let invalid = |c: LeaderConfig| matches!(c.validate(), Err(LeaderError::Config(_)));
        assert!(
            invalid(cfg(secs(10), secs(10), secs(2))),
            "lease == deadline"
        );
        assert!(invalid(cfg(secs(9), secs(10), secs(2))), "lease < deadline");
        // 2.4 s is exactly 2 s × 1.2: not enough.
        assert!(invalid(cfg(secs(15), Duration::from_millis(2400), secs(2))));
        assert!(
            cfg(secs(15), Duration::from_millis(2401), secs(2))
                .validate()
                .is_ok()
        );
        assert!(invalid(cfg(secs(15), secs(10), Duration::ZERO)));
        assert!(invalid(cfg(secs(15), Duration::ZERO, Duration::ZERO)));
        assert!(invalid(cfg(
            Duration::from_millis(900),
            Duration::from_millis(500),
            Duration::from_millis(100)
        )));
        assert!(invalid(cfg(Duration::MAX, secs(10), secs(2))));
        assert!(
            invalid(cfg(secs(u64::MAX / 2), secs(10), secs(2))),
            "overflows int32 seconds"
        );
    }

    #[test]
    fn lease_seconds_round_up() {
        let c = LeaderConfig {
            lease_duration: Duration::from_millis(1500),
            renew_deadline: secs(1),
            retry_period: Duration::from_millis(100),
        };
        assert_eq!(c.lease_seconds(), 2);
    }

    #[test]
    fn an_unchanged_record_accumulates_observed_time() {
        let t0 = Instant::now();
        let mut seen = Observation::default();
        assert_eq!(seen.observe(record(Some("a"), 100), t0), Duration::ZERO);
        assert_eq!(seen.observe(record(Some("a"), 100), t0 + secs(5)), secs(5));
        assert_eq!(
            seen.observe(record(Some("a"), 100), t0 + secs(16)),
            secs(16)
        );
    }

    #[test]
    fn any_changed_field_restarts_the_clock() {
        let base = record(Some("a"), 100);
        let changes: Vec<LeaseRecord> = vec![
            LeaseRecord {
                holder: Some("b".into()),
                ..base.clone()
            },
            LeaseRecord {
                renew_time: Some(time(102)),
                ..base.clone()
            },
            LeaseRecord {
                acquire_time: Some(time(99)),
                ..base.clone()
            },
            LeaseRecord {
                lease_duration_seconds: Some(30),
                ..base.clone()
            },
            LeaseRecord {
                lease_transitions: Some(4),
                ..base.clone()
            },
        ];
        for changed in changes {
            let t0 = Instant::now();
            let mut seen = Observation::default();
            seen.observe(base.clone(), t0);
            assert_eq!(seen.observe(base.clone(), t0 + secs(10)), secs(10));
            assert_eq!(
                seen.observe(changed.clone(), t0 + secs(12)),
                Duration::ZERO,
                "{changed:?}"
            );
            // The clock now runs from the change, not from the first sighting.
            assert_eq!(seen.observe(changed.clone(), t0 + secs(20)), secs(8));
        }
    }

    #[test]
    fn a_held_lease_expires_only_after_a_full_observed_duration() {
        let r = record(Some("other"), 100);
        assert_eq!(
            decide(&r, Duration::ZERO, "me", secs(60)),
            Decision::Held {
                holder: "other".into(),
                remaining: secs(15)
            },
            "the record's 15 s counts, not our fallback"
        );
        assert_eq!(
            decide(&r, secs(14), "me", secs(60)),
            Decision::Held {
                holder: "other".into(),
                remaining: secs(1)
            }
        );
        assert_eq!(
            decide(&r, secs(15), "me", secs(60)),
            Decision::Expired {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(&r, secs(100), "me", secs(60)),
            Decision::Expired {
                holder: "other".into()
            }
        );
    }

    #[test]
    fn renew_time_does_not_matter_only_observation_does() {
        // A renewTime from 1970 or from the far future: same decision, because
        // only how long we saw the record unchanged counts.
        for renewed in [0, 4_102_444_800] {
            let r = record(Some("other"), renewed);
            assert!(matches!(
                decide(&r, secs(1), "me", secs(15)),
                Decision::Held { .. }
            ));
            assert!(matches!(
                decide(&r, secs(15), "me", secs(15)),
                Decision::Expired { .. }
            ));
        }
    }

    #[test]
    fn our_fallback_duration_counts_when_the_record_has_none() {
        for duration in [None, Some(0), Some(-5)] {
            let r = LeaseRecord {
                lease_duration_seconds: duration,
                ..record(Some("other"), 100)
            };
            assert_eq!(
                decide(&r, secs(5), "me", secs(8)),
                Decision::Held {
                    holder: "other".into(),
                    remaining: secs(3)
                }
            );
            assert_eq!(
                decide(&r, secs(8), "me", secs(8)),
                Decision::Expired {
                    holder: "other".into()
                }
            );
        }
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let released = LeaseRecord {
            holder: None,
            ..record(None, 100)
        };
        assert_eq!(
            decide(&released, Duration::ZERO, "me", secs(15)),
            Decision::Free
        );
        let spec = LeaseSpec {
            holder_identity: Some(String::new()),
            ..Default::default()
        };
        let empty = LeaseRecord::from_spec(Some(&spec));
        assert_eq!(empty.holder, None, "an empty holder is no holder");
        assert_eq!(
            decide(&empty, Duration::ZERO, "me", secs(15)),
            Decision::Free
        );
        assert_eq!(LeaseRecord::from_spec(None), LeaseRecord::default());
    }

    #[test]
    fn a_lease_naming_us_is_ours_whatever_its_age() {
        let r = record(Some("me"), 100);
        assert_eq!(decide(&r, Duration::ZERO, "me", secs(15)), Decision::Ours);
        assert_eq!(decide(&r, secs(1_000), "me", secs(15)), Decision::Ours);
    }

    #[test]
    fn the_renewal_budget_ends_at_the_deadline_and_caps_each_attempt() {
        let c = LeaderConfig::default();
        let t0 = Instant::now();
        assert_eq!(
            renew_budget(t0, t0 + secs(2), &c),
            Some(secs(5)),
            "capped at half the deadline"
        );
        assert_eq!(
            renew_budget(t0, t0 + secs(7), &c),
            Some(secs(3)),
            "what is left of the deadline"
        );
        assert_eq!(renew_budget(t0, t0 + secs(10), &c), None);
        assert_eq!(renew_budget(t0, t0 + secs(11), &c), None);
        // The leader stops (10 s) before a standby may take over (15 s).
        assert!(c.renew_deadline < c.lease_duration);
    }

    #[test]
    fn jitter_stretches_by_up_to_the_factor() {
        assert_eq!(jittered(secs(2), JITTER_FACTOR, 0.0), secs(2));
        assert_eq!(
            jittered(secs(2), JITTER_FACTOR, 0.5),
            Duration::from_millis(3200)
        );
        for _ in 0..100 {
            let d = jittered(secs(2), JITTER_FACTOR, rand::random::<f64>());
            assert!(d >= secs(2) && d <= Duration::from_millis(4400), "{d:?}");
        }
    }

    #[test]
    fn claiming_from_another_holder_is_a_transition() {
        let now = time(2_000);
        let old = LeaseSpec {
            holder_identity: Some("other".into()),
            acquire_time: Some(time(1_000)),
            renew_time: Some(time(1_500)),
            lease_duration_seconds: Some(30),
            lease_transitions: Some(3),
            preferred_holder: Some("kept".into()),
            strategy: Some("kept".into()),
        };
        let spec = claimed(Some(old), "me", &now, 15);
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.acquire_time, Some(now.clone()));
        assert_eq!(spec.renew_time, Some(now));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.preferred_holder.as_deref(), Some("kept"));
        assert_eq!(spec.strategy.as_deref(), Some("kept"));
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let old = LeaseSpec {
            holder_identity: Some("me".into()),
            acquire_time: Some(time(1_000)),
            renew_time: Some(time(1_500)),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(3),
            ..Default::default()
        };
        let spec = claimed(Some(old), "me", &time(2_000), 15);
        assert_eq!(spec.acquire_time, Some(time(1_000)));
        assert_eq!(spec.renew_time, Some(time(2_000)));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn a_new_lease_has_no_transitions_and_a_release_clears_the_holder() {
        let lease = new_lease("l", "me", &time(2_000), 15);
        let spec = lease.spec.expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(0));

        let spec = released(Some(spec), &time(3_000));
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.renew_time, Some(time(3_000)));
        assert_eq!(spec.acquire_time, Some(time(3_000)));
        assert_eq!(spec.lease_transitions, Some(0), "kept");
    }

    /// The elector against an in-memory apiserver that stores one Lease and
    /// enforces resourceVersion like the real one. Real (short) time: tokio's
    /// paused clock is not enabled in this crate.
    mod against_a_fake_apiserver {
        use super::*;
        use std::convert::Infallible;
        use std::sync::Arc;

        use axum::http::{Method, Request, Response};
        use bytes::Bytes;
        use http_body_util::{BodyExt, Full};

        const NAME: &str = "privreg-operator";

        #[derive(Default)]
        struct Fake {
            lease: Option<Lease>,
            version: u64,
            /// Requests never answer (a dead connection).
            hang: bool,
            /// The next this many requests fail with 500.
            fail_next: u32,
            writes: u32,
        }

        impl Fake {
            fn store(&mut self, mut lease: Lease) -> Lease {
                self.version += 1;
                lease.metadata.name = Some(NAME.into());
                lease.metadata.resource_version = Some(self.version.to_string());
                self.lease = Some(lease.clone());
                lease
            }

            fn handle(&mut self, method: &Method, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
                if self.fail_next > 0 {
                    self.fail_next -= 1;
                    return status(500, "InternalError");
                }
                let named = path.ends_with(&format!("/leases/{NAME}"));
                let sent = || serde_json::from_slice::<Lease>(body).expect("a Lease");
                match (method.as_str(), named, self.lease.clone()) {
                    ("GET", true, Some(l)) => ok(&l),
                    ("GET", true, None) => status(404, "NotFound"),
                    ("POST", false, Some(_)) => status(409, "AlreadyExists"),
                    ("POST", false, None) => {
                        self.writes += 1;
                        let l = self.store(sent());
                        ok(&l)
                    }
                    ("PUT", true, Some(l)) => {
                        let lease = sent();
                        if lease.metadata.resource_version != l.metadata.resource_version {
                            return status(409, "Conflict");
                        }
                        self.writes += 1;
                        let l = self.store(lease);
                        ok(&l)
                    }
                    ("PUT", true, None) => status(404, "NotFound"),
                    _ => status(405, "MethodNotAllowed"),
                }
            }
        }

        fn ok(lease: &Lease) -> (u16, Vec<u8>) {
            (200, serde_json::to_vec(lease).expect("serializable"))
        }

        fn status(code: u16, reason: &str) -> (u16, Vec<u8>) {
            let body = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": reason, "reason": reason, "code": code,
            });
            (code, body.to_string().into_bytes())
        }

        fn client(fake: &Arc<Mutex<Fake>>) -> kube::Client {
            let fake = fake.clone();
            let service = tower::service_fn(move |req: Request<kube::client::Body>| {
                let fake = fake.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let hang = fake.lock().expect("lock").hang;
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    let (code, json) =
                        fake.lock()
                            .expect("lock")
                            .handle(&parts.method, parts.uri.path(), &body);
                    let response = Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(json)))
                        .expect("a response");
                    Ok::<_, Infallible>(response)
                }
            });
            kube::Client::new(service, "ns")
        }

        /// lease 1 s, deadline 500 ms, retry 100 ms.
        fn fast() -> LeaderConfig {
            LeaderConfig {
                lease_duration: secs(1),
                renew_deadline: Duration::from_millis(500),
                retry_period: Duration::from_millis(100),
            }
        }

        fn elector(fake: &Arc<Mutex<Fake>>, identity: &str, config: LeaderConfig) -> LeaderElector {
            LeaderElector::new(client(fake), "ns", NAME, identity, config)
        }

        fn holder(fake: &Arc<Mutex<Fake>>) -> Option<String> {
            let fake = fake.lock().expect("lock");
            fake.lease
                .as_ref()
                .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
        }

        fn spec(fake: &Arc<Mutex<Fake>>) -> LeaseSpec {
            let fake = fake.lock().expect("lock");
            fake.lease
                .as_ref()
                .and_then(|l| l.spec.clone())
                .expect("a lease")
        }

        /// A Lease held by `other` whose renewTime is `renewed` (seconds since
        /// the epoch) and which nobody renews.
        fn held_by_other(renewed: i64) -> Arc<Mutex<Fake>> {
            let fake = Arc::new(Mutex::new(Fake::default()));
            fake.lock().expect("lock").store(Lease {
                metadata: ObjectMeta::default(),
                spec: Some(LeaseSpec {
                    holder_identity: Some("other".into()),
                    lease_duration_seconds: Some(1),
                    renew_time: Some(time(renewed)),
                    acquire_time: Some(time(renewed)),
                    lease_transitions: Some(2),
                    ..Default::default()
                }),
            });
            fake
        }

        #[tokio::test]
        async fn acquire_creates_a_missing_lease() {
            let fake = Arc::new(Mutex::new(Fake::default()));
            let a = elector(&fake, "a", fast());
            assert!(a.acquire(&CancellationToken::new()).await.expect("acquire"));
            let spec = spec(&fake);
            assert_eq!(spec.holder_identity.as_deref(), Some("a"));
            assert_eq!(spec.lease_duration_seconds, Some(1));
            assert_eq!(spec.lease_transitions, Some(0));
        }

        #[tokio::test]
        async fn an_ancient_renew_time_is_not_taken_before_a_full_observed_duration() {
            // Comparing renewTime (year 2000) with the clock would take it at once.
            let fake = held_by_other(946_684_800);
            let b = elector(&fake, "b", fast());
            let start = Instant::now();
            let won = tokio::time::timeout(secs(5), b.acquire(&CancellationToken::new())).await;
            assert!(won.expect("in time").expect("acquire"));
            assert!(
                start.elapsed() >= secs(1),
                "took over after {:?}",
                start.elapsed()
            );
            let spec = spec(&fake);
            assert_eq!(spec.holder_identity.as_deref(), Some("b"));
            assert_eq!(spec.lease_transitions, Some(3));
        }

        #[tokio::test]
        async fn a_future_renew_time_is_taken_once_unchanged_for_the_duration() {
            // Comparing renewTime (year 2100) with the clock would wait forever.
            let fake = held_by_other(4_102_444_800);
            let b = elector(&fake, "b", fast());
            let won = tokio::time::timeout(secs(5), b.acquire(&CancellationToken::new())).await;
            assert!(won.expect("in time").expect("acquire"));
            assert_eq!(holder(&fake).as_deref(), Some("b"));
        }

        #[tokio::test]
        async fn acquire_returns_false_at_once_when_stopped() {
            let fake = held_by_other(946_684_800);
            let b = elector(&fake, "b", LeaderConfig::default());
            let stop = CancellationToken::new();
            let start = Instant::now();
            let cancel = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                cancel.cancel();
            });
            assert!(!b.acquire(&stop).await.expect("acquire"));
            // The retry period is 2 s; we returned well before the next poll.
            assert!(start.elapsed() < secs(1), "{:?}", start.elapsed());
            assert_eq!(holder(&fake).as_deref(), Some("other"));
        }

        #[tokio::test]
        async fn release_hands_over_at_once() {
            let fake = Arc::new(Mutex::new(Fake::default()));
            let a = elector(&fake, "a", fast());
            let b = elector(&fake, "b", LeaderConfig::default());
            assert!(
                a.acquire(&CancellationToken::new())
                    .await
                    .expect("a acquires")
            );
            a.release().await.expect("release");
            let spec = spec(&fake);
            assert_eq!(spec.holder_identity, None);
            assert_eq!(spec.lease_duration_seconds, Some(1));
            // b would wait 2 s between polls and 15 s for expiry: it must win on
            // its first poll.
            let start = Instant::now();
            assert!(
                b.acquire(&CancellationToken::new())
                    .await
                    .expect("b acquires")
            );
            assert!(start.elapsed() < secs(1), "{:?}", start.elapsed());
            assert_eq!(holder(&fake).as_deref(), Some("b"));
        }

        #[tokio::test]
        async fn release_leaves_another_holders_lease_alone() {
            let fake = held_by_other(946_684_800);
            let a = elector(&fake, "a", fast());
            a.release().await.expect("release");
            assert_eq!(holder(&fake).as_deref(), Some("other"));
            assert_eq!(fake.lock().expect("lock").writes, 0);
        }

        #[tokio::test]
        async fn hold_renews_until_stopped() {
            let fake = Arc::new(Mutex::new(Fake::default()));
            let a = elector(&fake, "a", fast());
            assert!(a.acquire(&CancellationToken::new()).await.expect("acquire"));
            let first = spec(&fake).renew_time;
            let stop = CancellationToken::new();
            let cancel = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                cancel.cancel();
            });
            // Longer than the lease duration: renewals kept it.
            a.hold(&stop).await.expect("held until stopped");
            assert!(fake.lock().expect("lock").writes >= 5);
            assert!(spec(&fake).renew_time > first);
            assert_eq!(holder(&fake).as_deref(), Some("a"));
        }

        #[tokio::test]
        async fn hold_survives_failures_within_the_deadline() {
            let fake = Arc::new(Mutex::new(Fake::default()));
            let a = elector(&fake, "a", fast());
            assert!(a.acquire(&CancellationToken::new()).await.expect("acquire"));
            fake.lock().expect("lock").fail_next = 2;
            let stop = CancellationToken::new();
            let cancel = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(900)).await;
                cancel.cancel();
            });
            a.hold(&stop)
                .await
                .expect("two failed renewals are within the deadline");
            assert_eq!(fake.lock().expect("lock").fail_next, 0);
        }

        #[tokio::test]
        async fn hold_gives_up_before_the_lease_expires_when_the_apiserver_hangs() {
            let fake = Arc::new(Mutex::new(Fake::default()));
            let a = elector(&fake, "a", fast());
            let start = Instant::now();
            assert!(a.acquire(&CancellationToken::new()).await.expect("acquire"));
            fake.lock().expect("lock").hang = true;
            let held = tokio::time::timeout(secs(5), a.hold(&CancellationToken::new())).await;
            let err = held.expect("hold returned");
            assert!(matches!(err, Err(LeaderError::Lost { .. })), "{err:?}");
            let elapsed = start.elapsed();
            // At the 500 ms renew deadline, before the 1 s lease could expire.
            assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
            assert!(elapsed < secs(1), "{elapsed:?}");
        }

        #[tokio::test]
        async fn hold_reports_a_new_holder_at_once() {
            let fake = Arc::new(Mutex::new(Fake::default()));
            let a = elector(&fake, "a", fast());
            assert!(a.acquire(&CancellationToken::new()).await.expect("acquire"));
            {
                let mut fake = fake.lock().expect("lock");
                let mut lease = fake.lease.clone().expect("a lease");
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = Some("intruder".into());
                }
                fake.store(lease);
            }
            let start = Instant::now();
            let err = a.hold(&CancellationToken::new()).await;
            match err {
                Err(LeaderError::Lost { reason }) => {
                    assert!(reason.contains("intruder"), "{reason}")
                }
                other => panic!("expected Lost, got {other:?}"),
            }
            // On the first renewal, not at the deadline.
            assert!(
                start.elapsed() < Duration::from_millis(400),
                "{:?}",
                start.elapsed()
            );
            assert_eq!(
                holder(&fake).as_deref(),
                Some("intruder"),
                "never taken back"
            );
        }

        #[tokio::test]
        async fn hold_without_acquire_is_not_leading() {
            let fake = Arc::new(Mutex::new(Fake::default()));
            let a = elector(&fake, "a", fast());
            let err = a.hold(&CancellationToken::new()).await;
            assert!(matches!(err, Err(LeaderError::Lost { .. })), "{err:?}");
        }

        #[tokio::test]
        async fn an_invalid_config_is_refused() {
            let fake = Arc::new(Mutex::new(Fake::default()));
            let config = LeaderConfig {
                renew_deadline: secs(20),
                ..LeaderConfig::default()
            };
            let a = elector(&fake, "a", config);
            let err = a.acquire(&CancellationToken::new()).await;
            assert!(matches!(err, Err(LeaderError::Config(_))), "{err:?}");
            assert!(fake.lock().expect("lock").lease.is_none());
        }
    }
}
