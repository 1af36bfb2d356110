//! TLS of `privreg serve`: the generated local CA, its reuse, certificate rotation
//! without a restart, and plain HTTP only on request.

mod common;

use common::{Privreg, https_client};

#[tokio::test]
async fn local_ca_is_made_once_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut reg = Privreg::start(&data, &[]);
    let client = https_client(&reg.ca());
    let r = client.get(format!("{}/v2/", reg.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
    // The log tells the user where the CA is and how to trust it.
    assert!(reg.log().contains("ca.crt"), "{}", reg.log());

    let ca_before = std::fs::read(reg.ca()).unwrap();
    reg.restart();
    assert_eq!(std::fs::read(reg.ca()).unwrap(), ca_before, "CA reused across restarts");
    let r = client.get(format!("{}/v2/", reg.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A client that does not trust the CA is refused at the handshake.
    let stranger = reqwest::Client::builder().build().unwrap();
    assert!(stranger.get(format!("{}/v2/", reg.url())).send().await.is_err());
}
