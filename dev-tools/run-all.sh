#!/usr/bin/env bash
# Starts the whole system for development: PostgreSQL (data in .halyard-dev/, kept across runs;
# pass --fresh to wipe it), Nexus, simulated sled agents and a QEMU sled agent. Installs what is
# missing first (PostgreSQL; QEMU and the guest image, built once per machine).
# Ctrl-C stops everything. Options are halyard-run-all's (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# jq: the printed example that reads a serial console uses it.
command -v jq >/dev/null 2>&1 || missing+=(jq)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi
bash dev-tools/guest-image.sh
cargo build -j2 -q -p halyard-run-all
exec target/debug/halyard-run-all "$@"
