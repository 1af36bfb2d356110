//! A small synchronous registry client over one raw TLS connection: enough to
//! push blobs (session + PUT, which every registry supports), manifests and
//! images, delete manifests and read statuses.

use std::path::Path;

use serde_json::json;

use super::oci::{DOCKER_MANIFEST, image_manifest};
use super::rawtls::{TlsConn, client_config};
use super::sha256;

pub struct Client {
    pub conn: TlsConn,
}

impl Client {
    pub fn connect(addr: std::net::SocketAddr, ca: &Path) -> Client {
        Client {
            conn: TlsConn::connect(addr, client_config(ca, &[])).expect("connect"),
        }
    }

    pub fn blob(&mut self, repo: &str, data: &[u8]) -> String {
        let (status, body) = self.try_blob(repo, data);
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        sha256(data)
    }

    /// Session, then one PUT (Distribution 2.8 has no single-POST upload).
    /// Returns the first status that is not the expected one, with its body.
    pub fn try_blob(&mut self, repo: &str, data: &[u8]) -> (u16, Vec<u8>) {
        let d = sha256(data);
        let r = self
            .conn
            .request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"")
            .unwrap();
        if r.status != 202 {
            return (r.status, r.body);
        }
        let location = r.header("location").unwrap().to_owned();
        let path = location
            .find("/v2/")
            .map(|i| location[i..].to_owned())
            .unwrap();
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = self
            .conn
            .request(
                "PUT",
                &format!("{path}{sep}digest={d}"),
                &[("Content-Type", "application/octet-stream".into())],
                data,
            )
            .unwrap();
        (r.status, r.body)
    }

    pub fn manifest(
        &mut self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let r = self
            .conn
            .request(
                "PUT",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Content-Type", media_type.into())],
                body,
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        sha256(body)
    }

    /// Config and layers pushed, manifest put under `reference`.
    pub fn image(&mut self, repo: &str, reference: &str, layers: &[&[u8]]) -> (String, Vec<u8>) {
        let config = format!(
            r#"{{"os":"linux","architecture":"amd64","repo":"{repo}","ref":"{reference}","n":{}}}"#,
            layers.len()
        );
        self.blob(repo, config.as_bytes());
        for l in layers {
            self.blob(repo, l);
        }
        let m = image_manifest(DOCKER_MANIFEST, config.as_bytes(), layers, json!({}));
        (self.manifest(repo, reference, DOCKER_MANIFEST, &m), m)
    }

    pub fn delete(&mut self, repo: &str, digest: &str) {
        let r = self
            .conn
            .request(
                "DELETE",
                &format!("/v2/{repo}/manifests/{digest}"),
                &[],
                b"",
            )
            .unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    }

    pub fn status(&mut self, path: &str) -> u16 {
        self.conn.request("GET", path, &[], b"").unwrap().status
    }
}
