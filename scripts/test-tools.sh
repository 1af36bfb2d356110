#!/usr/bin/env bash
# Build (once) and locate the Go-built test tools: crane, oras, crictl (the CRI
# client kubelet's image pulls go through), the OCI distribution-spec
# conformance suite (both generations), Helm, and SeaweedFS (the S3 server of
# the object-storage tests).
#
# Everything is built from the Go module proxy with the machine's Go toolchain
# and cached by version under
#   ${PRIVREG_CACHE:-$HOME/.cache/privreg}/tools/<tool>-<version>/<binary>
# A tool whose binary is already there is not rebuilt. The Go module cache and
# build cache stay at Go's defaults.
#
# Usage:
#   scripts/test-tools.sh            build what is missing, print the paths (human readable)
#   scripts/test-tools.sh --env      build what is missing (log on stderr), print `export ...`
#                                    lines on stdout:  eval "$(scripts/test-tools.sh --env)"
#   scripts/test-tools.sh --check    build nothing; exit 1 if a tool is missing
#   source scripts/test-tools.sh     same as the eval line above, in the current shell
#
# Exports: PRIVREG_CRANE, PRIVREG_ORAS, PRIVREG_CRICTL, PRIVREG_CONFORMANCE,
#          PRIVREG_CONFORMANCE2, PRIVREG_HELM, PRIVREG_SEAWEEDFS (absolute paths),
#          PRIVREG_CONFORMANCE_VERSION.
# Versions can be overridden with PRIVREG_<TOOL>_VERSION.

# Sourced: run ourselves as a child (so `set -euo pipefail` does not leak into
# the caller's shell) and import its exports.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    __privreg_tools_env="$(bash "${BASH_SOURCE[0]}" --env)" || return 1
    eval "$__privreg_tools_env"
    unset __privreg_tools_env
    return 0
fi

set -euo pipefail

# --- pins -------------------------------------------------------------------
# crane: github.com/google/go-containerregistry (cmd/crane is in the root module).
CRANE_MODULE=github.com/google/go-containerregistry
CRANE_VERSION="${PRIVREG_CRANE_VERSION:-v0.22.1}"
# oras CLI, v1.x.
ORAS_MODULE=oras.land/oras
ORAS_VERSION="${PRIVREG_ORAS_VERSION:-v1.3.6}"
# crictl: sigs.k8s.io/cri-tools (no replace directives; the proxy here serves
# v1.34.0 and v1.37.0). Speaks CRI v1, which containerd 1.6 serves.
CRICTL_MODULE=sigs.k8s.io/cri-tools
CRICTL_VERSION="${PRIVREG_CRICTL_VERSION:-v1.37.0}"
# Conformance suite, Ginkgo generation. The intended pin was commit 13a5d3ee
# (v0.0.0-20260413194130-13a5d3ee2857, the last commit before the 2026
# redesign), but the module proxy reachable here answers 403 "This module
# version is not available" for it (and for every other commit pseudo-version
# except the two it lists). The only Ginkgo-generation version it serves is
# f2182352d4cc (2023-11-01, "HEAD blob should return content-length", between
# v1.1.0-rc.3 and rc.4). `go list -m -versions` lists nothing (no tags);
# `curl $GOPROXY/<module>/@v/list` lists this one and 97274622c111 (the new,
# non-Ginkgo "conformance v2" program).
CONFORMANCE_MODULE=github.com/opencontainers/distribution-spec/conformance
CONFORMANCE_VERSION="${PRIVREG_CONFORMANCE_VERSION:-v0.0.0-20231101194043-f2182352d4cc}"

# The redesigned suite ("conformance v2", a program configured by OCI_* env):
# its 1.1 profile adds sha512 digests, anonymous mounts, nested indexes,
# non-distributable layers and more. Both generations run in the tests.
CONFORMANCE2_VERSION="${PRIVREG_CONFORMANCE2_VERSION:-v0.0.0-20260831232431-97274622c111}"

# SeaweedFS (Apache-2.0), the S3-compatible object store of the object-storage
# tests: `weed mini` runs master, volume, filer and S3 gateway in one process.
# Its go.mod has a replace directive, so `go install pkg@version` refuses it:
# it is built inside the downloaded module, like the conformance suite. MinIO
# is AGPL and not used. The proxy serves this one pseudo-version.
SEAWEEDFS_MODULE=github.com/seaweedfs/seaweedfs
SEAWEEDFS_VERSION="${PRIVREG_SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"

# Helm, for the chart checks (lint, template, server-side dry run).
HELM_VERSION="${PRIVREG_HELM_VERSION:-v3.21.4}"

CACHE_ROOT="${PRIVREG_CACHE:-$HOME/.cache/privreg}"
TOOLS_DIR="$CACHE_ROOT/tools"

CRANE_BIN="$TOOLS_DIR/crane-$CRANE_VERSION/crane"
ORAS_BIN="$TOOLS_DIR/oras-$ORAS_VERSION/oras"
CRICTL_BIN="$TOOLS_DIR/crictl-$CRICTL_VERSION/crictl"
CONFORMANCE_BIN="$TOOLS_DIR/conformance-$CONFORMANCE_VERSION/conformance.test"
CONFORMANCE2_BIN="$TOOLS_DIR/conformance2-$CONFORMANCE2_VERSION/conformance"
HELM_BIN="$TOOLS_DIR/helm-$HELM_VERSION/helm"
SEAWEEDFS_BIN="$TOOLS_DIR/seaweedfs-$SEAWEEDFS_VERSION/weed"

log() { printf 'test-tools: %s\n' "$*" >&2; }

need_go() {
    command -v go >/dev/null 2>&1 || { log "go is not on PATH; install Go >= 1.26"; exit 1; }
}

# Environment for every build: static binaries, the machine's Go caches.
go_env() {
    env CGO_ENABLED=0 GOFLAGS="${PRIVREG_GOFLAGS:--buildvcs=false}" "$@"
}

# install_module_cmd NAME PKG VERSION DEST_BIN [ldflags]
# `go install pkg@version` into a temp dir, then rename into place (atomic,
# so a half-built binary is never seen as cached).
install_module_cmd() {
    local name=$1 pkg=$2 version=$3 dest=$4 ldflags=${5:-}
    [[ -x "$dest" ]] && return 0
    need_go
    local dir tmp start
    dir=$(dirname "$dest")
    mkdir -p "$dir"
    tmp=$(mktemp -d "$dir/.build.XXXXXX")
    start=$SECONDS
    log "building $name $version ($pkg@$version) ..."
    if ! go_env GOBIN="$tmp" go install -trimpath ${ldflags:+-ldflags="$ldflags"} "$pkg@$version" >&2; then
        rm -rf "$tmp"; log "building $name failed"; exit 1
    fi
    mv -f "$tmp/$(basename "$pkg")" "$dest"
    rm -rf "$tmp"
    log "built $dest in $((SECONDS - start))s"
}

build_crane() {
    install_module_cmd crane "$CRANE_MODULE/cmd/crane" "$CRANE_VERSION" "$CRANE_BIN"
}

build_oras() {
    # oras hard-codes its version in internal/version (no -X needed).
    install_module_cmd oras "$ORAS_MODULE/cmd/oras" "$ORAS_VERSION" "$ORAS_BIN" "-s -w"
}

build_crictl() {
    install_module_cmd crictl "$CRICTL_MODULE/cmd/crictl" "$CRICTL_VERSION" "$CRICTL_BIN" \
        "-s -w -X $CRICTL_MODULE/pkg/version.Version=$CRICTL_VERSION"
}

# build_in_module NAME MODULE VERSION DEST_BIN PACKAGE GO_SUBCOMMAND [FLAGS...]
# For modules `go install` refuses (a test package, replace directives):
# download the module, then build inside it (its go.mod/go.sum pin the deps;
# the module cache is read-only, so -mod=readonly, the default, is what works
# there).
build_in_module() {
    local name=$1 module=$2 version=$3 dest=$4 package=$5
    shift 5
    [[ -x "$dest" ]] && return 0
    need_go
    local dir tmp start moddir
    dir=$(dirname "$dest")
    mkdir -p "$dir"
    tmp=$(mktemp -d "$dir/.build.XXXXXX")
    start=$SECONDS
    log "building $name $version ($module, go $1) ..."
    if ! moddir=$(go_env go mod download -json "$module@$version" |
                  python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit("go mod download: "+d.get("Error","no Dir")))'); then
        rm -rf "$tmp"; log "cannot download $module@$version"; exit 1
    fi
    if ! (cd "$moddir" && go_env GOFLAGS="-buildvcs=false -mod=readonly" go "$@" -o "$tmp/out" "$package" >&2); then
        rm -rf "$tmp"; log "building $name failed"; exit 1
    fi
    mv -f "$tmp/out" "$dest"
    rm -rf "$tmp"
    log "built $dest in $((SECONDS - start))s"
}

build_conformance() {
    # The suite is a test package: `go test -c` inside its module.
    build_in_module conformance "$CONFORMANCE_MODULE" "$CONFORMANCE_VERSION" "$CONFORMANCE_BIN" . \
        test -c -trimpath -ldflags="-X $CONFORMANCE_MODULE.Version=$CONFORMANCE_VERSION"
}

build_seaweedfs() {
    build_in_module seaweedfs "$SEAWEEDFS_MODULE" "$SEAWEEDFS_VERSION" "$SEAWEEDFS_BIN" ./weed \
        build -trimpath -ldflags="-s -w"
}

build_conformance2() {
    install_module_cmd conformance2 "$CONFORMANCE_MODULE" "$CONFORMANCE2_VERSION" "$CONFORMANCE2_BIN"
}

build_helm() {
    install_module_cmd helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$HELM_BIN" \
        "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

build_all() {
    build_helm
    build_crane
    build_oras
    build_crictl
    build_conformance
    build_conformance2
    build_seaweedfs
}

print_env() {
    printf 'export PRIVREG_CRANE=%q\n' "$CRANE_BIN"
    printf 'export PRIVREG_ORAS=%q\n' "$ORAS_BIN"
    printf 'export PRIVREG_CRICTL=%q\n' "$CRICTL_BIN"
    printf 'export PRIVREG_CONFORMANCE=%q\n' "$CONFORMANCE_BIN"
    printf 'export PRIVREG_CONFORMANCE_VERSION=%q\n' "$CONFORMANCE_VERSION"
    printf 'export PRIVREG_CONFORMANCE2=%q\n' "$CONFORMANCE2_BIN"
    printf 'export PRIVREG_HELM=%q\n' "$HELM_BIN"
    printf 'export PRIVREG_SEAWEEDFS=%q\n' "$SEAWEEDFS_BIN"
}

case "${1:-}" in
    --env)
        build_all
        print_env
        ;;
    --check)
        missing=0
        for b in "$CRANE_BIN" "$ORAS_BIN" "$CRICTL_BIN" "$CONFORMANCE_BIN" "$CONFORMANCE2_BIN" "$HELM_BIN" "$SEAWEEDFS_BIN"; do
            [[ -x "$b" ]] || { log "missing: $b"; missing=1; }
        done
        exit "$missing"
        ;;
    ""|--build)
        build_all
        printf 'crane        %s\noras         %s\ncrictl       %s\nconformance  %s\nconformance2 %s\nseaweedfs    %s\n' "$CRANE_BIN" "$ORAS_BIN" "$CRICTL_BIN" "$CONFORMANCE_BIN" "$CONFORMANCE2_BIN" "$SEAWEEDFS_BIN"
        ;;
    -h|--help)
        sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
        ;;
    *)
        log "unknown argument: $1 (try --help)"; exit 2
        ;;
esac
