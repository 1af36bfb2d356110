#!/usr/bin/env bash
# Regenerates crds/ from the Rust types, and the copies in deploy/ and the chart.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo run -q -- crds > crds/privreg.dev_privateregistries.yaml
cp crds/privreg.dev_privateregistries.yaml deploy/00-crds.yaml
cp crds/privreg.dev_privateregistries.yaml charts/privreg/crds/privreg.dev_privateregistries.yaml
