#!/usr/bin/env bash
# Run the pinned OCI distribution-spec conformance suite (Ginkgo generation,
# built by scripts/test-tools.sh) against a registry over TLS.
#
# Usage: scripts/conformance.sh ROOT_URL CA_FILE OUT_DIR [KEY=VALUE ...]
#   ROOT_URL  e.g. https://127.0.0.1:5443
#   CA_FILE   CA bundle for the registry (exported as SSL_CERT_FILE; see note)
#   OUT_DIR   junit.xml, report.html and conformance.log land here
#   KEY=VALUE extra environment for the suite, e.g. OCI_AUTOMATIC_CROSSMOUNT=false,
#             OCI_DEBUG=1, OCI_DELETE_MANIFEST_BEFORE_BLOBS=0, OCI_NAMESPACE=a/b
#
# Runs all four workflows (pull, push, content discovery, content management)
# with OCI_NAMESPACE=myorg/myrepo and OCI_CROSSMOUNT_NAMESPACE=myorg/other.
# OCI_USERNAME / OCI_PASSWORD / OCI_AUTH_SCOPE and any other OCI_* variable in
# the caller's environment are passed through. OCI_AUTOMATIC_CROSSMOUNT is
# only set if given (env or argument): the suite checks mount-without-from
# only when the variable is *present* (true: expects 201, false: expects 202).
#
# Prints `conformance: N passed, M failed, K skipped` (from junit.xml), then one
# `FAILED: <test name>` line per failure. Exits 1 if any test failed or the
# suite did not produce a junit.xml.
#
# Note: the Ginkgo suite's HTTP client (reggie) is built with
# InsecureSkipTLSVerify(true), so the suite itself never verifies the
# certificate; SSL_CERT_FILE is set anyway (for the v2 suite and any
# helper), and we check the chain once with curl before running.
set -euo pipefail

die() { printf 'conformance: %s\n' "$*" >&2; exit 2; }

[[ $# -ge 3 ]] || die "usage: $0 ROOT_URL CA_FILE OUT_DIR [KEY=VALUE ...]"
root_url=${1%/} ca_file=$2 out_dir=$3
shift 3
for kv in "$@"; do
    [[ "$kv" == [A-Za-z_]*=* ]] || die "extra argument is not KEY=VALUE: $kv"
done
[[ -r "$ca_file" ]] || die "cannot read CA file $ca_file"
ca_file=$(cd "$(dirname "$ca_file")" && pwd)/$(basename "$ca_file")
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -z "${PRIVREG_CONFORMANCE:-}" ]]; then
    eval "$("$here/test-tools.sh" --env)"
fi
[[ -x "$PRIVREG_CONFORMANCE" ]] || die "suite binary not found: $PRIVREG_CONFORMANCE"

# The certificate must verify against CA_FILE (the suite would not notice).
if [[ "$root_url" == https://* ]]; then
    curl -sS --noproxy "*" --cacert "$ca_file" -o /dev/null "$root_url/v2/" ||
        die "TLS check against $root_url/v2/ with $ca_file failed"
fi

rm -f "$out_dir/junit.xml" "$out_dir/report.html"
suite_rc=0
(
    cd "$out_dir"
    export OCI_ROOT_URL="$root_url"
    export OCI_NAMESPACE="${OCI_NAMESPACE:-myorg/myrepo}"
    export OCI_CROSSMOUNT_NAMESPACE="${OCI_CROSSMOUNT_NAMESPACE:-myorg/other}"
    export OCI_TEST_PULL=1 OCI_TEST_PUSH=1 OCI_TEST_CONTENT_DISCOVERY=1 OCI_TEST_CONTENT_MANAGEMENT=1
    export OCI_HIDE_SKIPPED_WORKFLOWS="${OCI_HIDE_SKIPPED_WORKFLOWS:-0}"
    export OCI_REPORT_DIR="$out_dir"
    export SSL_CERT_FILE="$ca_file"
    for kv in "$@"; do export "${kv?}"; done
    exec "$PRIVREG_CONFORMANCE" -test.v -test.timeout=30m -ginkgo.no-color
) >"$out_dir/conformance.log" 2>&1 || suite_rc=$?

[[ -s "$out_dir/junit.xml" ]] || {
    tail -n 30 "$out_dir/conformance.log" >&2
    die "no junit.xml produced (suite exit $suite_rc, log: $out_dir/conformance.log)"
}

# Count test cases; Ginkgo's synthetic nodes ([BeforeSuite], [ReportAfterSuite] ...)
# are not tests and are left out unless they failed.
py_rc=0
python3 - "$out_dir/junit.xml" <<'EOF' || py_rc=$?
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
passed = failed = skipped = 0
failures = []
for tc in root.iter("testcase"):
    name = tc.get("name", "")
    bad = tc.find("failure") is not None or tc.find("error") is not None
    if name.startswith("[") and not name.startswith("[It]") and not bad:
        continue
    if bad:
        failed += 1
        failures.append(name)
    elif tc.find("skipped") is not None or tc.get("status") in ("skipped", "pending"):
        skipped += 1
    else:
        passed += 1
print(f"conformance: {passed} passed, {failed} failed, {skipped} skipped")
for n in failures:
    print(f"FAILED: {n}")
sys.exit(1 if failed else 0)
EOF
if (( py_rc == 0 && suite_rc != 0 )); then
    echo "conformance: suite exited $suite_rc with no failed test in junit.xml (log: $out_dir/conformance.log)" >&2
    exit 1
fi
exit "$py_rc"
