//! skopeo with a private, permissive signature policy (so the tests do not
//! depend on the machine's /etc/containers/policy.json).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run, tool};

pub struct Skopeo {
    pub bin: PathBuf,
    policy: PathBuf,
}

impl Skopeo {
    /// `None` (skip) when skopeo is missing outside CI.
    pub fn find(dir: &Path) -> Option<Skopeo> {
        let bin = tool("skopeo", "PRIVREG_SKOPEO")?;
        std::fs::create_dir_all(dir).unwrap();
        let policy = dir.join("policy.json");
        std::fs::write(
            &policy,
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        Some(Skopeo { bin, policy })
    }

    /// `skopeo --policy <policy> <sub>`.
    pub fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--policy").arg(&self.policy).arg(sub);
        c
    }

    /// `skopeo copy --preserve-digests [--all] [--src-cert-dir|--dest-cert-dir] src dest`.
    /// `cert_dir` applies to whichever side is `docker://`.
    pub fn copy(&self, src: &str, dest: &str, all: bool, cert_dir: &Path) {
        let mut c = self.cmd("copy");
        c.arg("--preserve-digests");
        if all {
            c.arg("--all");
        }
        if src.starts_with("docker://") {
            c.arg("--src-cert-dir").arg(cert_dir);
        }
        if dest.starts_with("docker://") {
            c.arg("--dest-cert-dir").arg(cert_dir);
        }
        run(c.arg(src).arg(dest));
    }

    /// `skopeo inspect --raw --cert-dir <dir> docker://<reference>`.
    pub fn raw_manifest(&self, reference: &str, cert_dir: &Path) -> Vec<u8> {
        run(self
            .cmd("inspect")
            .arg("--raw")
            .arg("--cert-dir")
            .arg(cert_dir)
            .arg(format!("docker://{reference}")))
        .stdout
    }
}
