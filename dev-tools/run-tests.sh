#!/usr/bin/env bash
# Runs every Halyard check on a fresh Debian machine: installs what is missing (PostgreSQL for
# the test harness; Patroni, etcd and HAProxy for the replicated-database and proxy tests; QEMU
# and the guest image for the QEMU backend's tests), then formatting,
# clippy and every test. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
# ip and bridge (iproute2): the QEMU sleds' virtual switches (namespaces, bridges, VXLAN, taps).
command -v bridge >/dev/null 2>&1 || missing+=(iproute2)
# The web console's build and browser tests: Node.js and npm (its packages, from
# console/package-lock.json), and Debian's Chromium, which Playwright drives headless.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The replicated database (three PostgreSQL under Patroni, with etcd) and HAProxy in front of
# several Nexus. Their packages may enable system services (etcd on 2379, HAProxy); nothing
# here uses those, so the ones installed here are stopped and disabled again.
services=()
command -v patroni >/dev/null 2>&1 || missing+=(patroni)
command -v etcd >/dev/null 2>&1 || { missing+=(etcd-server); services+=(etcd); }
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { missing+=(haproxy); services+=(haproxy); }
if ((${#missing[@]})); then
    echo "==> installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
    for service in "${services[@]}"; do
        $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
    done
fi

echo "==> guest image for the QEMU tests (installs qemu-system-x86; built once per machine)"
bash dev-tools/guest-image.sh

echo "==> web console: npm ci, and the checked-in build reproduced from the lock file"
(cd console && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund && npm run build)
if [ -n "$(git status --porcelain -- console/dist)" ]; then
    git status --short -- console/dist
    echo "error: console/dist differs from what 'npm run build' makes: rebuild and commit it" >&2
    exit 1
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy -j2 --workspace --all-targets -- -D warnings
echo "==> cargo test"
# The crash-replay, lost-reply, racing-operations and reference-model tests run on their own,
# so their summaries (which saga nodes were crashed and recovered; which lost their reply;
# which seeds ran how many operations; how many model cases and steps) show here; so do the
# replicated database's failover and HAProxy's (the failover window, requests after a death).
cargo test -j2 --workspace -- --skip crash_replay:: --skip lost_replies:: --skip races:: --skip model_test:: \
    --skip patroni:: --skip haproxy:: --skip replicated_db:: --skip console::the_console_in_a_real_browser

# `cargo test <args>` for tests selected by name; fails if the selection ran no test at all
# (a renamed or moved module would otherwise "pass" in silence).
run_selected_tests() {
    local output passed status=0
    output=$(mktemp)
    cargo test "$@" 2>&1 | tee "$output" || status=$?
    passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$output" | awk '{n += $4} END {print n + 0}')
    rm -f "$output"
    if [ "$status" -ne 0 ]; then
        return "$status"
    fi
    if [ "$passed" -eq 0 ]; then
        echo "error: cargo test $* selected no tests" >&2
        return 1
    fi
    echo "==> cargo test $*: $passed passed"
}

echo "==> the web console in headless Chromium (Playwright; screenshots in target/console-screenshots)"
run_selected_tests -j2 -p halyard-nexus --test nexus console::the_console_in_a_real_browser -- --nocapture
echo "==> replicated PostgreSQL (Patroni): kill the primary; HAProxy: kill a backend"
run_selected_tests -j2 -p halyard-test-db --lib -- --nocapture patroni:: haproxy::
echo "==> lifecycle load through HAProxy and two Nexus while the Patroni primary is killed"
run_selected_tests -j2 -p halyard-nexus --test nexus replicated_db:: -- --nocapture
echo "==> crash replay at every saga node"
run_selected_tests -j2 -p halyard-nexus --test nexus crash_replay:: -- --nocapture
echo "==> lost replies at every saga node"
run_selected_tests -j2 -p halyard-nexus --test nexus lost_replies:: -- --nocapture
echo "==> racing operations (fixed seeds)"
run_selected_tests -j2 -p halyard-nexus --test nexus races:: -- --nocapture
echo "==> reference model: generated operations, faults and waits (fixed seed)"
run_selected_tests -j2 -p halyard-nexus --test nexus model_test:: -- --nocapture
