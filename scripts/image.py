#!/usr/bin/env python3
"""Build the privreg container image without a container engine.

    python3 scripts/image.py [--binary PATH] [--out DIR] [--no-build]

Builds `cargo build --release --locked` (unless --binary or --no-build), then
writes an OCI image of:

  layer 1 (changes with the build machine's Debian, rarely):
    the shared libraries `ldd` names for the binary, at the paths it names;
    /etc/ssl/certs/ca-certificates.crt (Debian's ca-certificates);
    /etc/passwd, /etc/group (root and nonroot 65532), /etc/nsswitch.conf;
    /tmp (1777), /var/lib/privreg (owned by 65532)
  layer 2 (changes with every release):
    /usr/local/bin/privreg

The dynamic glibc binary with exactly its libraries, not a static musl one:
musl's allocator costs the registry's hot paths (many small allocations per
request) and the image is under 20 MB compressed either way.

Reproducible: every tar entry is sorted, owned by 0:0 (except the data dir),
dated SOURCE_DATE_EPOCH (default: the last commit's time), gzip without a name
or time. The same commit and build machine give the same digests.

Outputs, under --out (default target/image):
  oci/                          an OCI image layout (skopeo copy oci:target/image/oci:TAG)
  privreg-VERSION-ARCH.tar      the same layout as one tar, with a docker-archive
                                manifest.json beside it: `ctr images import`,
                                `skopeo copy oci-archive:` and `docker-archive:`,
                                `docker load` and `podman load` all read it
  image.json                    reference, digests, sizes (for the tests and CI)

The image reference is Cargo.toml's [package.metadata.privreg] image plus the
package version: the one place the chart, deploy/ and the operator's default
follow (tests/manifests.rs checks that they do).
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NONROOT = 65532

PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"
NSSWITCH = "hosts: files dns\n"


def log(msg):
    print(f"image: {msg}", file=sys.stderr)


def cargo_metadata():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        cargo = tomllib.load(f)
    pkg = cargo["package"]
    repo = pkg["metadata"]["privreg"]["image"]
    return pkg["version"], repo, pkg.get("license", ""), pkg.get("description", "")


def go_arch():
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def source_date_epoch():
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%ct"],
                             capture_output=True, text=True, check=True).stdout.strip()
        return int(out)
    except (subprocess.CalledProcessError, ValueError, FileNotFoundError):
        return 0


def git_revision():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return ""


def shared_libraries(binary):
    """The absolute paths `ldd` resolves for `binary` (the interpreter included)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        sys.exit(f"ldd {binary} failed: {out.stderr.strip()}")
    paths = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" ")[0]
            if target == "not":
                sys.exit(f"{binary}: a library is missing: {line}")
        else:
            target = line.split(" ")[0]
        if target.startswith("/"):
            paths.append(target)
    return sorted(set(paths))


class Layer:
    """A reproducible tar layer: entries added in any order, written sorted."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}

    def _info(self, path, kind, mode, uid=0):
        ti = tarfile.TarInfo(path.strip("/"))
        ti.type, ti.mode, ti.mtime = kind, mode, self.mtime
        ti.uid = ti.gid = uid
        ti.uname = ti.gname = ""
        return ti

    def parents(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            self.entries.setdefault(d, (self._info(d, tarfile.DIRTYPE, 0o755), None))

    def dir(self, path, mode=0o755, uid=0):
        self.parents(path)
        self.entries[path.strip("/")] = (self._info(path, tarfile.DIRTYPE, mode, uid), None)

    def file(self, path, data, mode=0o644):
        self.parents(path)
        ti = self._info(path, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.entries[path.strip("/")] = (ti, data)

    def tar(self):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name in sorted(self.entries):
                ti, data = self.entries[name]
                tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        return raw.getvalue()


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", help="a built privreg binary (default: cargo build --release)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/privreg as it is")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "image"))
    ap.add_argument("--tag", help="image tag (default: the Cargo.toml version)")
    a = ap.parse_args()

    version, repo, license_, description = cargo_metadata()
    tag = a.tag or version
    reference = f"{repo}:{tag}"
    binary = a.binary
    if not binary:
        target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
        binary = os.path.join(os.path.abspath(target_dir), "release", "privreg")
        if not a.no_build:
            log("cargo build --release --locked --bin privreg")
            subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "privreg"],
                           cwd=ROOT, check=True)
    if not os.path.isfile(binary):
        sys.exit(f"{binary}: no such binary")
    mtime = source_date_epoch()
    arch = go_arch()

    base = Layer(mtime)
    for lib in shared_libraries(binary):
        base.file(lib, read(os.path.realpath(lib)), 0o755)
    base.file("/etc/ssl/certs/ca-certificates.crt", read("/etc/ssl/certs/ca-certificates.crt"))
    base.file("/etc/passwd", PASSWD.encode())
    base.file("/etc/group", GROUP.encode())
    base.file("/etc/nsswitch.conf", NSSWITCH.encode())
    base.dir("/tmp", 0o1777)
    base.dir("/home/nonroot", 0o700, NONROOT)
    base.dir("/var/lib/privreg", 0o755, NONROOT)
    app = Layer(mtime)
    app.file("/usr/local/bin/privreg", read(binary), 0o755)

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
    labels = {
        "org.opencontainers.image.title": "privreg",
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": license_,
        "org.opencontainers.image.source": "https://github.com/privreg/privreg",
        "org.opencontainers.image.revision": git_revision(),
        "org.opencontainers.image.created": created,
    }
    blobs = {}

    def blob(data):
        d = digest(data)
        blobs[d] = data
        return d

    layers, diff_ids = [], []
    for layer in (base, app):
        raw = layer.tar()
        gz = gzip_bytes(raw)
        diff_ids.append(digest(raw))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": blob(gz), "size": len(gz)})
    config = {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Entrypoint": ["/usr/local/bin/privreg"],
            "Cmd": ["serve", "--data", "/var/lib/privreg"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": "scripts/image.py: base (libraries, certificates, users)"},
                    {"created": created, "created_by": "scripts/image.py: privreg"}],
    }
    config_bytes = json.dumps(config, indent=2, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob(config_bytes), "size": len(config_bytes)},
        "layers": layers,
        "annotations": labels,
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    manifest_digest = blob(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": manifest["mediaType"],
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {
                # containerd's import names the image by this one; the OCI
                # layout spec's ref.name is the tag alone.
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, indent=2, sort_keys=True).encode(),
        # docker-archive: what `docker load` and skopeo's docker-archive read.
        "manifest.json": json.dumps([{
            "Config": "blobs/sha256/" + manifest["config"]["digest"].split(":")[1],
            "RepoTags": [reference],
            "Layers": ["blobs/sha256/" + l["digest"].split(":")[1] for l in layers],
        }], indent=2).encode(),
    }
    for d, data in blobs.items():
        files["blobs/sha256/" + d.split(":")[1]] = data

    layout = os.path.join(a.out, "oci")
    os.makedirs(a.out, exist_ok=True)
    subprocess.run(["rm", "-rf", layout], check=True)
    for name, data in files.items():
        if name == "manifest.json":
            continue
        path = os.path.join(layout, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    archive = os.path.join(a.out, f"privreg-{tag}-{arch}.tar")
    out = Layer(mtime)
    for name, data in files.items():
        out.file(name, data)
    tmp = archive + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out.tar())
    os.replace(tmp, archive)

    compressed = sum(l["size"] for l in layers) + len(config_bytes) + len(manifest_bytes)
    info = {
        "reference": reference,
        "manifest_digest": manifest_digest,
        "architecture": arch,
        "archive": archive,
        "layout": layout,
        "compressed_bytes": compressed,
        "uncompressed_bytes": sum(len(layer.tar()) for layer in (base, app)),
        "layers": [{"digest": l["digest"], "size": l["size"]} for l in layers],
    }
    with open(os.path.join(a.out, "image.json"), "w") as f:
        json.dump(info, f, indent=2)
    log(f"{reference} ({arch}) {manifest_digest}: {compressed / 1e6:.1f} MB compressed, "
        f"{info['uncompressed_bytes'] / 1e6:.1f} MB unpacked -> {archive}")
    print(archive)


if __name__ == "__main__":
    main()
