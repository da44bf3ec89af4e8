#!/usr/bin/env bash
# Starts the whole system for development: PostgreSQL (data in .halyard-dev/, kept across runs;
# pass --fresh to wipe it), Nexus, simulated sled agents and QEMU sled agents (joined by an
# underlay bridge, so guests of one VPC reach each other; run as root). Installs what is
# missing first (PostgreSQL; Patroni, etcd and HAProxy for --replicated-db and --nexus-count; QEMU
# and the guest image, built once per machine).
# Ctrl-C stops everything. Options are halyard-run-all's (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# jq: the printed example that reads a serial console uses it.
command -v jq >/dev/null 2>&1 || missing+=(jq)
# ip and bridge (iproute2): the QEMU sleds' virtual switches and the underlay between them.
command -v bridge >/dev/null 2>&1 || missing+=(iproute2)
# The replicated database (three PostgreSQL under Patroni, with etcd) and HAProxy in front of
# several Nexus. Their packages may enable system services (etcd on 2379, HAProxy); nothing
# here uses those, so the ones installed here are stopped and disabled again.
services=()
command -v patroni >/dev/null 2>&1 || missing+=(patroni)
command -v etcd >/dev/null 2>&1 || { missing+=(etcd-server); services+=(etcd); }
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { missing+=(haproxy); services+=(haproxy); }
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
    for service in "${services[@]}"; do
        $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
    done
fi
# Without QEMU the system still runs, on simulated sleds only; the reason is the last line
# guest-image.sh printed.
qemu_args=()
if ! bash dev-tools/guest-image.sh 2> >(tee /tmp/halyard-guest-image.$$ >&2); then
    why="$(grep -m1 "QEMU can't be installed" /tmp/halyard-guest-image.$$ || tail -n1 /tmp/halyard-guest-image.$$)"
    qemu_args=(--qemu-sleds 0 --no-qemu-reason "${why#guest-image: }")
fi
rm -f /tmp/halyard-guest-image.$$
# halyard-nexus too: with --nexus-count above 1, each Nexus runs as a process of its own.
cargo build -j2 -p halyard-run-all -p halyard-nexus
exec target/debug/halyard-run-all "${qemu_args[@]}" "$@"
