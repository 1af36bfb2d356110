#!/usr/bin/env bash
# Start the reference registry (Debian's docker-registry, CNCF Distribution
# 2.8.2) over TLS on 127.0.0.1, in the background.
#
# Usage:
#   scripts/reference-registry.sh DATA_DIR PORT CERT KEY   start; prints the pid on stdout
#   scripts/reference-registry.sh --stop DATA_DIR          stop the one started for DATA_DIR
#
# Files written next to DATA_DIR (in its parent directory):
#   registry.yml  the generated config      registry.log  its stdout+stderr
#   registry.pid  its pid
# Returns once GET https://127.0.0.1:PORT/v2/ answers 200 (30 s timeout,
# override with REFERENCE_REGISTRY_TIMEOUT). Deletes are enabled
# (storage.delete.enabled, REGISTRY_STORAGE_DELETE_ENABLED=true); no auth.
# The binary can be overridden with DOCKER_REGISTRY (default: docker-registry).
set -euo pipefail

die() { printf 'reference-registry: %s\n' "$*" >&2; exit 1; }

if [[ "${1:-}" == "--stop" ]]; then
    [[ $# -eq 2 ]] || die "usage: $0 --stop DATA_DIR"
    pidfile="$(cd "$(dirname "$2")" && pwd)/registry.pid"
    [[ -f "$pidfile" ]] || die "no $pidfile"
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    exit 0
fi

[[ $# -eq 4 ]] || die "usage: $0 DATA_DIR PORT CERT KEY | --stop DATA_DIR"
data_dir=$1 port=$2 cert=$3 key=$4
bin=${DOCKER_REGISTRY:-docker-registry}
command -v "$bin" >/dev/null || die "$bin not found (apt-get install docker-registry)"
[[ -r "$cert" && -r "$key" ]] || die "cannot read $cert / $key"

mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)
cert=$(cd "$(dirname "$cert")" && pwd)/$(basename "$cert")
key=$(cd "$(dirname "$key")" && pwd)/$(basename "$key")
base=$(dirname "$data_dir")
config=$base/registry.yml
logfile=$base/registry.log
pidfile=$base/registry.pid

if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    die "already running with pid $(cat "$pidfile") ($pidfile)"
fi

cat >"$config" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $data_dir
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: privreg-reference-registry-not-secret
  tls:
    certificate: $cert
    key: $key
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
EOF

# Drop any REGISTRY_* the caller may have set (they override the config);
# keep delete on explicitly.
env -u REGISTRY_HTTP_ADDR -u REGISTRY_STORAGE -u REGISTRY_AUTH \
    REGISTRY_STORAGE_DELETE_ENABLED=true \
    "$bin" serve "$config" >"$logfile" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pidfile"

deadline=$((SECONDS + ${REFERENCE_REGISTRY_TIMEOUT:-30}))
until [[ "$(curl -ks --noproxy "*" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/v2/" 2>/dev/null)" == 200 ]]; do
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"
        tail -n 20 "$logfile" >&2
        die "docker-registry exited during startup (log: $logfile)"
    fi
    if (( SECONDS >= deadline )); then
        kill "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        tail -n 20 "$logfile" >&2
        die "no answer from https://127.0.0.1:$port/v2/ (log: $logfile)"
    fi
    sleep 0.2
done
echo "$pid"
