#!/usr/bin/env bash
# Build (once) and locate the Kubernetes control plane the operator's
# integration tests run against: etcd, kube-apiserver, kube-controller-manager
# and kube-scheduler, and the node commands of the real-node end-to-end test
# (kubelet, kube-proxy, kubectl), all built from Go modules.
#
# The versions are pinned by two wrapper modules, with their go.sum:
#   tests/k8s/etcd/           go.etcd.io/etcd/server/v3 + etcdctl/v3
#   tests/k8s/control-plane/  k8s.io/kubernetes, every staging module replaced
#                             by its published v0.N.M (see the go.mod comment)
# Each binary is built once into
#   ${PRIVREG_CACHE:-$HOME/.cache/privreg}/k8s/<name>-<version>/<name>
# and not rebuilt while it is there (the version is read from the go.mod, so
# bumping a pin builds into a new directory). The Go module cache and build
# cache stay at Go's defaults. Builds run under `nice` (PRIVREG_GO_NICE,
# default 19) so they do not starve whatever else runs on the machine.
#
# Usage:
#   scripts/k8s-tools.sh            build what is missing, print the paths (human readable)
#   scripts/k8s-tools.sh --env      build what is missing (log on stderr), print `export ...`
#                                   lines on stdout:  eval "$(scripts/k8s-tools.sh --env)"
#   scripts/k8s-tools.sh --check    build nothing; exit 1 if a binary is missing
#   scripts/k8s-tools.sh --regen-control-plane-mod VERSION
#                                   rewrite tests/k8s/control-plane/go.mod for another
#                                   Kubernetes version (replace list derived from its go.mod)
#   source scripts/k8s-tools.sh     same as the eval line above, in the current shell
#
# Exports: PRIVREG_ETCD, PRIVREG_ETCDCTL, PRIVREG_KUBE_APISERVER,
#          PRIVREG_KUBE_CONTROLLER_MANAGER, PRIVREG_KUBE_SCHEDULER, PRIVREG_KUBELET,
#          PRIVREG_KUBE_PROXY, PRIVREG_KUBECTL (absolute paths),
#          PRIVREG_K8S_VERSION, PRIVREG_ETCD_VERSION.

# Sourced: run ourselves as a child (so `set -euo pipefail` does not leak into
# the caller's shell) and import its exports.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    __privreg_k8s_env="$(bash "${BASH_SOURCE[0]}" --env)" || return 1
    eval "$__privreg_k8s_env"
    unset __privreg_k8s_env
    return 0
fi

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CP_MOD="$ROOT/tests/k8s/control-plane"
ETCD_MOD="$ROOT/tests/k8s/etcd"

log() { printf 'k8s-tools: %s\n' "$*" >&2; }

# --- pins (read from the wrapper modules' go.mod) ---------------------------
# mod_version DIR MODULE: the version DIR/go.mod requires MODULE at.
mod_version() {
    local v
    v=$(awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { print ($1 == m ? $2 : $3); exit }' "$1/go.mod")
    [[ -n "$v" ]] || { log "$1/go.mod does not require $2"; exit 1; }
    printf '%s' "$v"
}

K8S_VERSION=$(mod_version "$CP_MOD" k8s.io/kubernetes)
ETCD_VERSION=$(mod_version "$ETCD_MOD" go.etcd.io/etcd/server/v3)

CACHE_ROOT="${PRIVREG_CACHE:-$HOME/.cache/privreg}"
K8S_DIR="$CACHE_ROOT/k8s"

ETCD_BIN="$K8S_DIR/etcd-$ETCD_VERSION/etcd"
ETCDCTL_BIN="$K8S_DIR/etcd-$ETCD_VERSION/etcdctl"
APISERVER_BIN="$K8S_DIR/kube-apiserver-$K8S_VERSION/kube-apiserver"
KCM_BIN="$K8S_DIR/kube-controller-manager-$K8S_VERSION/kube-controller-manager"
SCHEDULER_BIN="$K8S_DIR/kube-scheduler-$K8S_VERSION/kube-scheduler"
KUBELET_BIN="$K8S_DIR/kubelet-$K8S_VERSION/kubelet"
KUBE_PROXY_BIN="$K8S_DIR/kube-proxy-$K8S_VERSION/kube-proxy"
KUBECTL_BIN="$K8S_DIR/kubectl-$K8S_VERSION/kubectl"

need_go() {
    command -v go >/dev/null 2>&1 || { log "go is not on PATH; install Go >= 1.26"; exit 1; }
}

# Environment for every build: static binaries, the machine's Go caches, the
# wrapper module's go.sum as is (-mod=readonly).
go_env() {
    env CGO_ENABLED=0 GOFLAGS="${PRIVREG_GOFLAGS:--buildvcs=false -mod=readonly}" \
        nice -n "${PRIVREG_GO_NICE:-19}" "$@"
}

# What Kubernetes' hack/lib/version.sh stamps, so `--version` reports the real
# version (kubectl skew checks and kwokctl read it).
k8s_ldflags() {
    local minor
    minor=$(cut -d. -f2 <<<"$K8S_VERSION")
    local ld="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    printf '%s' "$ld"
}

# build_in MODDIR PKG DEST_BIN LDFLAGS
# `go build` PKG inside the wrapper module into a temp dir next to DEST_BIN,
# then rename into place (atomic, so a half-built binary is never seen as
# cached).
build_in() {
    local moddir=$1 pkg=$2 dest=$3 ldflags=$4
    [[ -x "$dest" ]] && return 0
    need_go
    local dir tmp start
    dir=$(dirname "$dest")
    mkdir -p "$dir"
    tmp=$(mktemp -d "$dir/.build.XXXXXX")
    start=$SECONDS
    log "building $(basename "$dest") ($pkg, $(basename "$dir")) ..."
    if ! (cd "$moddir" && go_env go build -trimpath -ldflags="$ldflags" -o "$tmp/out" "$pkg" >&2); then
        rm -rf "$tmp"; log "building $pkg failed"; exit 1
    fi
    mv -f "$tmp/out" "$dest"
    rm -rf "$tmp"
    log "built $dest in $((SECONDS - start))s"
}

build_etcd() {
    # etcd reports its version from go.etcd.io/etcd/api/v3/version: no -X needed.
    # etcdctl first: etcd being present is what "cached" means for the pair.
    build_in "$ETCD_MOD" go.etcd.io/etcd/etcdctl/v3 "$ETCDCTL_BIN" "-s -w"
    build_in "$ETCD_MOD" go.etcd.io/etcd/server/v3 "$ETCD_BIN" "-s -w"
}

build_k8s() {
    local ld
    ld=$(k8s_ldflags)
    build_in "$CP_MOD" k8s.io/kubernetes/cmd/kube-apiserver "$APISERVER_BIN" "$ld"
    build_in "$CP_MOD" k8s.io/kubernetes/cmd/kube-controller-manager "$KCM_BIN" "$ld"
    build_in "$CP_MOD" k8s.io/kubernetes/cmd/kube-scheduler "$SCHEDULER_BIN" "$ld"
    build_in "$CP_MOD" k8s.io/kubernetes/cmd/kubelet "$KUBELET_BIN" "$ld"
    build_in "$CP_MOD" k8s.io/kubernetes/cmd/kube-proxy "$KUBE_PROXY_BIN" "$ld"
    build_in "$CP_MOD" k8s.io/kubernetes/cmd/kubectl "$KUBECTL_BIN" "$ld"
}

build_all() {
    build_etcd
    build_k8s
}

all_bins() {
    printf '%s\n' "$ETCD_BIN" "$ETCDCTL_BIN" "$APISERVER_BIN" "$KCM_BIN" "$SCHEDULER_BIN" \
        "$KUBELET_BIN" "$KUBE_PROXY_BIN" "$KUBECTL_BIN"
}

print_env() {
    printf 'export PRIVREG_ETCD=%q\n' "$ETCD_BIN"
    printf 'export PRIVREG_ETCDCTL=%q\n' "$ETCDCTL_BIN"
    printf 'export PRIVREG_KUBE_APISERVER=%q\n' "$APISERVER_BIN"
    printf 'export PRIVREG_KUBE_CONTROLLER_MANAGER=%q\n' "$KCM_BIN"
    printf 'export PRIVREG_KUBE_SCHEDULER=%q\n' "$SCHEDULER_BIN"
    printf 'export PRIVREG_KUBELET=%q\n' "$KUBELET_BIN"
    printf 'export PRIVREG_KUBE_PROXY=%q\n' "$KUBE_PROXY_BIN"
    printf 'export PRIVREG_KUBECTL=%q\n' "$KUBECTL_BIN"
    printf 'export PRIVREG_K8S_VERSION=%q\n' "$K8S_VERSION"
    printf 'export PRIVREG_ETCD_VERSION=%q\n' "$ETCD_VERSION"
}

# Rewrites tests/k8s/control-plane/go.mod for Kubernetes VERSION: requires
# k8s.io/kubernetes@VERSION and replaces every staging module that version's
# go.mod points at ./staging/ with its v0.N.M (the list changes by release:
# 1.36 adds cri-streaming and streaming). Then `go mod tidy`.
regen_control_plane_mod() {
    local k=$1 s gomod m
    [[ "$k" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { log "expected a version like v1.34.2, got '$k'"; exit 2; }
    need_go
    s="v0.${k#v1.}"
    gomod=$(go mod download -json "k8s.io/kubernetes@$k" |
            python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("GoMod") or sys.exit(d.get("Error","no GoMod")))')
    cd "$CP_MOD"
    for m in $(go mod edit -json | python3 -c 'import json,sys; [print(r["Old"]["Path"]) for r in (json.load(sys.stdin).get("Replace") or [])]'); do
        go mod edit -dropreplace="$m"
    done
    go mod edit -require="k8s.io/kubernetes@$k"
    for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod"); do
        go mod edit -replace="$m=$m@$s"
    done
    nice -n "${PRIVREG_GO_NICE:-19}" go mod tidy
    log "tests/k8s/control-plane now pins $k ($(go mod edit -json | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("Replace") or []))') staging replaces); keep k8s-openapi's v1_NN feature equal"
}

case "${1:-}" in
    --env)
        build_all
        print_env
        ;;
    --check)
        missing=0
        while read -r b; do
            [[ -x "$b" ]] || { log "missing: $b"; missing=1; }
        done < <(all_bins)
        exit "$missing"
        ;;
    --regen-control-plane-mod)
        regen_control_plane_mod "${2:?usage: $0 --regen-control-plane-mod v1.N.M}"
        ;;
    ""|--build)
        build_all
        all_bins
        ;;
    -h|--help)
        sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
        ;;
    *)
        log "unknown argument: $1 (try --help)"; exit 2
        ;;
esac
