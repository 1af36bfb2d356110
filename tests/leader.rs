//! Leader election of `privreg operator` against a real control plane, under the
//! RBAC of deploy/02-rbac.yaml (a ServiceAccount token). Two replicas, A and B,
//! share the Lease `privreg-system/privreg-operator`:
//!
//! 1. A leads through a TCP proxy run by this test; B connects directly. The
//!    test cuts A off (stops accepting, aborts every open connection): A must
//!    give up and exit non-zero *before* B takes over, and B must wait about a
//!    lease duration before it does.
//! 2. Rollout: with B leading and A (restarted) standing by, SIGTERM to B
//!    releases the Lease, so A takes it over well within a lease duration.
//! 3. SIGTERM to a standby stops it at once, and a standby logs the leader at
//!    INFO once, not on every poll.
//!
//! The assertions are about ordering and the protocol's own bounds; the times
//! are printed, not asserted beyond those bounds. One control plane for all
//! (starting one costs ~10 s).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use privreg::api::PrivateRegistry;
use privreg::operator::leader::LeaderConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::cluster::{ControlPlane, eventually};
use common::operator::{Operator, TIMEOUT, condition, install};

const NS: &str = "apps";
const LEASE: &str = "privreg-operator";
const A: &str = "leader-a";
const B: &str = "leader-b";
/// How often the test looks at the Lease and the processes while timing.
const POLL: Duration = Duration::from_millis(100);

/// A TCP proxy on 127.0.0.1 to `upstream`; TLS passes through untouched, so
/// the apiserver's certificate (SAN 127.0.0.1) still verifies.
struct Proxy {
    addr: SocketAddr,
    stop: CancellationToken,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (stop, connections) = (stop.clone(), connections.clone());
            async move {
                loop {
                    let accepted = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((mut client, _)) = accepted else {
                        continue;
                    };
                    let stop = stop.clone();
                    // A connection accepted just as the proxy is cut sees the
                    // token already cancelled and closes at once.
                    let relay = tokio::spawn(async move {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = async {
                                if let Ok(mut server) = TcpStream::connect(upstream).await {
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server)
                                        .await;
                                }
                            } => {}
                        }
                    });
                    let mut open = connections.lock().unwrap();
                    open.retain(|c| !c.is_finished());
                    open.push(relay);
                }
            }
        });
        Proxy {
            addr,
            stop,
            accept: Some(accept),
            connections,
        }
    }

    /// Stops accepting (the listener is closed: new connections are refused)
    /// and aborts every open connection; returns once all of that is done.
    async fn cut(&mut self) {
        self.stop.cancel();
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let open = std::mem::take(&mut *self.connections.lock().unwrap());
        for relay in &open {
            relay.abort();
        }
        for relay in open {
            let _ = relay.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for relay in self.connections.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The apiserver address a kubeconfig (as written by the harness) points at.
fn apiserver_addr(kubeconfig: &Path) -> SocketAddr {
    let doc = read_json(kubeconfig);
    let server = doc["clusters"][0]["cluster"]["server"].as_str().unwrap();
    server
        .strip_prefix("https://")
        .and_then(|hostport| hostport.parse().ok())
        .unwrap_or_else(|| panic!("server {server:?} is not https://<ip>:<port>"))
}

/// Writes `out`: `direct` with its server URL pointing at `proxy` instead.
fn write_proxied_kubeconfig(direct: &Path, proxy: SocketAddr, out: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut doc = read_json(direct);
    for cluster in doc["clusters"].as_array_mut().unwrap() {
        cluster["cluster"]["server"] = format!("https://{proxy}").into();
    }
    std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn lease_spec(leases: &Api<Lease>) -> Option<LeaseSpec> {
    leases.get_opt(LEASE).await.ok()??.spec
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    lease_spec(leases)
        .await?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Lines of `log` with `message` at INFO, and at any level.
fn count_lines(log: &str, message: &str) -> (usize, usize) {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(message)).collect();
    let info = lines.iter().filter(|l| l.contains("INFO")).count();
    (info, lines.len())
}

fn registry(name: &str) -> PrivateRegistry {
    serde_norway::from_str(&format!(
        "apiVersion: privreg.dev/v1alpha1
kind: PrivateRegistry
metadata: {{name: {name}, namespace: {NS}}}
spec:
  hostname: {name}.{NS}.svc
  storage: {{size: 1Gi}}
"
    ))
    .unwrap()
}

async fn wait_certificate(registries: &Api<PrivateRegistry>, name: &str, what: &str) {
    eventually(what, TIMEOUT, || async {
        let pr = registries.get(name).await.ok()?;
        (condition(&pr, "CertificateReady")?.0 == "True").then_some(())
    })
    .await;
}

/// What a process appended to its log after `from` bytes (a restart appends).
fn since(log: &str, from: usize) -> String {
    log.get(from..).unwrap_or(log).to_owned()
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_stops_before_another_leads_and_rollouts_hand_over_at_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(mut cp) = ControlPlane::start().await else {
        return;
    };
    let config = LeaderConfig::default();
    let admin = cp.client().await;
    install(&admin, &[NS]).await;
    let (_sa_client, direct) = cp
        .client_for_service_account("privreg-system", "privreg-operator")
        .await;
    let upstream = apiserver_addr(&direct);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "privreg-system");
    let registries: Api<PrivateRegistry> = Api::namespaced(admin.clone(), NS);

    // --- 1. a leader cut off from the apiserver stops before the other starts ---
    let mut proxy = Proxy::start(upstream).await;
    let a_kubeconfig = cp.dir().join("users").join("leader-a-proxied.kubeconfig");
    write_proxied_kubeconfig(&direct, proxy.addr, &a_kubeconfig);
    let mut a = Operator::start(&a_kubeconfig, A);
    eventually("A takes the Lease", TIMEOUT, || async {
        (holder(&leases).await? == A).then_some(())
    })
    .await;
    let mut b = Operator::start(&direct, B);
    eventually("B stands by", TIMEOUT, || async {
        b.log().contains("another replica leads").then_some(())
    })
    .await;
    registries
        .create(&PostParams::default(), &registry("before"))
        .await
        .unwrap();
    wait_certificate(&registries, "before", "A reconciles a registry").await;
    assert_eq!(holder(&leases).await.as_deref(), Some(A));

    proxy.cut().await;
    let t0 = Instant::now();
    println!("cut A off from the apiserver");
    // Work that only the next leader can do.
    registries
        .create(&PostParams::default(), &registry("after"))
        .await
        .unwrap();
    // Each round looks at A's process first, then at the Lease: a round that
    // finds A gone and then reads a Lease not yet naming B proves A exited
    // before B took over.
    let mut a_exit: Option<(Instant, ExitStatus)> = None;
    let mut exited_before_b: Option<bool> = None;
    let mut a_last_renewal: Option<Timestamp> = None;
    let mut b_took: Option<(Instant, Timestamp)> = None;
    let deadline = t0 + config.lease_duration * 4;
    while a_exit.is_none() || b_took.is_none() {
        assert!(
            Instant::now() < deadline,
            "after the cut: A exited {a_exit:?}, B took the Lease {b_took:?} (within {:?})\nA's log:\n{}\nB's log:\n{}",
            deadline - t0,
            a.log(),
            b.log()
        );
        if a_exit.is_none() {
            a_exit = a.exited().map(|status| (Instant::now(), status));
        }
        if let Some(spec) = lease_spec(&leases).await {
            let now = (Instant::now(), Timestamp::now());
            let who = spec.holder_identity.as_deref();
            if who == Some(A) {
                a_last_renewal = spec.renew_time.map(|t| t.0);
            }
            if a_exit.is_some() && exited_before_b.is_none() {
                exited_before_b = Some(who != Some(B));
            }
            if who == Some(B) && b_took.is_none() {
                b_took = Some(now);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let (t_exit, status) = a_exit.unwrap();
    let (t_b, b_wall) = b_took.unwrap();
    let a_last_renewal = a_last_renewal.expect("A's last renewal seen");
    let since_renewal = Duration::from_micros(
        u64::try_from(b_wall.as_microsecond() - a_last_renewal.as_microsecond()).unwrap_or(0),
    );
    println!(
        "cut-off leader: A exited {} s after the cut ({status}); B took the Lease {} s after the cut, {} s after A's last renewal",
        secs(t_exit - t0),
        secs(t_b - t0),
        secs(since_renewal),
    );
    let a_log = a.log();
    assert!(
        !status.success(),
        "A must exit non-zero when it loses the Lease: {status}\n{a_log}"
    );
    assert!(
        a_log.contains("lost the leader lease"),
        "A reports losing the Lease:\n{a_log}"
    );
    assert_eq!(
        exited_before_b,
        Some(true),
        "A's process was gone before the Lease named B"
    );
    assert!(t_exit < t_b, "A stopped before B could start");
    // B took over only after it saw A's last record unchanged for a lease
    // duration. A renews every retry period, so its last renewal was at most
    // about a retry period before the cut. (Same host, same wall clock; 100 ms
    // for a clock adjustment.)
    assert!(
        since_renewal + Duration::from_millis(100) >= config.lease_duration,
        "B took over {since_renewal:?} after A's last renewal, before the lease duration {:?}",
        config.lease_duration
    );
    assert!(
        t_b - t0 + config.retry_period + Duration::from_secs(1) >= config.lease_duration,
        "B waited only {:?} after the cut",
        t_b - t0
    );
    assert!(
        b.log().contains("the leader stopped renewing; taking over"),
        "{}",
        b.log()
    );
    wait_certificate(&registries, "after", "B reconciles as the new leader").await;
    drop(proxy);

    // --- 2. rollout: SIGTERM to the leader hands over at once ------------------
    // A comes back (as after a container restart) through a fresh proxy.
    let proxy = Proxy::start(upstream).await;
    write_proxied_kubeconfig(&direct, proxy.addr, &a_kubeconfig);
    let a_from = a.log().len();
    a.spawn();
    eventually("A, restarted, stands by", TIMEOUT, || async {
        since(&a.log(), a_from)
            .contains("another replica leads")
            .then_some(())
    })
    .await;
    assert_eq!(holder(&leases).await.as_deref(), Some(B));
    let watch = tokio::spawn({
        let leases = leases.clone();
        let bound = config.lease_duration * 4;
        async move {
            let start = Instant::now();
            while start.elapsed() < bound {
                if holder(&leases).await.as_deref() == Some(A) {
                    return Some(Instant::now());
                }
                tokio::time::sleep(POLL).await;
            }
            None
        }
    });
    let t_term = Instant::now();
    let (mut b, b_status, t_b_exit) = tokio::task::spawn_blocking(move || {
        let status = b.terminate();
        (b, status, Instant::now())
    })
    .await
    .unwrap();
    let t_a = watch.await.unwrap();
    let b_status = b_status.expect("B was running");
    println!(
        "leader on SIGTERM: exited {} s after it ({b_status})",
        secs(t_b_exit - t_term)
    );
    assert!(
        b_status.success(),
        "the leader exits 0 on SIGTERM: {b_status}\n{}",
        b.log()
    );
    assert!(
        t_b_exit - t_term < config.renew_deadline,
        "the leader stops promptly on SIGTERM (took {:?})\n{}",
        t_b_exit - t_term,
        b.log()
    );
    assert!(b.log().contains("released the leader lease"), "{}", b.log());
    let Some(t_a) = t_a else {
        panic!("A never took the Lease\n{}", since(&a.log(), a_from));
    };
    let handover = t_a - t_term;
    println!("handover on rollout: {} s", secs(handover));
    // The standby polls every retry period (× up to 2.2 with jitter): it takes
    // the released Lease on its next poll, not after a lease duration.
    assert!(
        handover < Duration::from_secs(8),
        "handover took {handover:?}, the lease duration is {:?}",
        config.lease_duration
    );

    // --- 3. SIGTERM to a standby stops it at once --------------------------------
    let b_from = b.log().len();
    b.spawn();
    // The first poll is logged at INFO, the following ones at DEBUG.
    eventually(
        "B, restarted, stands by for a few polls",
        TIMEOUT,
        || async {
            let (_, all) = count_lines(&since(&b.log(), b_from), "another replica leads");
            (all >= 3).then_some(())
        },
    )
    .await;
    let t_term = Instant::now();
    let standby_status = b.terminate().expect("B was running");
    let stopped = t_term.elapsed();
    println!(
        "standby on SIGTERM: exited {} s after it ({standby_status})",
        secs(stopped)
    );
    let b_log = since(&b.log(), b_from);
    assert!(
        standby_status.success(),
        "the standby exits 0: {standby_status}\n{b_log}"
    );
    assert!(
        stopped < Duration::from_secs(5),
        "the standby stops at once, not after a grace period (took {stopped:?})\n{b_log}"
    );
    let (info, all) = count_lines(&b_log, "another replica leads");
    println!("standby log: {info} INFO line(s) of {all} about the leader");
    assert!(
        info <= 2,
        "the standby logs the leader at INFO once, not on every poll ({info} of {all}):\n{b_log}"
    );
    assert!(b_log.contains("standby stopped"), "{b_log}");
    assert_eq!(
        holder(&leases).await.as_deref(),
        Some(A),
        "a standby's exit leaves the Lease alone"
    );

    // The leader, stopped last, leaves the Lease free.
    let a_status = a.terminate().expect("A was running");
    assert!(
        a_status.success(),
        "{a_status}\n{}",
        since(&a.log(), a_from)
    );
    assert_eq!(holder(&leases).await, None, "released on SIGTERM");
    drop(proxy);
    cp.stop();
}
