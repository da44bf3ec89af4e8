#!/usr/bin/env bash
# Builds the tiny guest that the sled agent's QEMU backend boots, from Debian packages only:
# the Debian cloud kernel (the dependency of linux-image-cloud-amd64) and busybox-static, with a
# gzip'd newc initramfs holding busybox, the ACPI power-button, virtio block and virtio network
# modules and an /init script.
# The result is built once per machine and cached.
#
#   bash dev-tools/guest-image.sh               build if missing or stale, print where it is
#   bash dev-tools/guest-image.sh --force       rebuild
#   bash dev-tools/guest-image.sh --print-dir   print the output directory only
#
# Output: ${HALYARD_GUEST_DIR:-/var/cache/halyard/guest}/{vmlinuz,initramfs.cpio.gz,VERSION}.
# That path is a symlink, swapped atomically to a freshly built directory next to it, so a
# concurrent or interrupted build never leaves half an image; builds are serialised by flock.
# VERSION holds the kernel and busybox package versions and the hash of /init and of the build
# recipe; the image is rebuilt when that hash changes (a newer Debian kernel only with --force).
#
# Kernel command line contract (what the sled agent passes; nothing else is needed):
#   console=ttyS0 quiet panic=-1 halyard.hostname=NAME [halyard.nic=MAC,ADDRESS/PREFIX ...]
# One halyard.nic per NIC, in slot order; MAC in lower case (a8:40:25:f0:00:01), ADDRESS/PREFIX
# an IPv4 address with its subnet's prefix length (172.30.0.5/22). The guest brings lo up and
# gives the interface with that MAC (a virtio-net device; /sys/class/net/*/address) the address
# (so a route to the subnet), and brings it up, all before the banner; no gateway, no DHCP.
# With at least one NIC it then serves, on every address:
#   TCP port 7    echo (RFC 862): sends back what it receives, until the client's EOF
#   TCP port 79   answers the guest's hostname and a newline, then closes
# busybox has ping, nc (echo hi | nc ADDRESS 7), ip and arping for use from the console.
# The guest then prints on the serial console:
#   HALYARD-GUEST BOOTED hostname=NAME          once, when the power button is already armed
#   HALYARD-HEARTBEAT n=N                        N = 1, 2, 3, ... about 4 times a second
# Match these as substrings: the interactive shell's prompt and echoed input share the console,
# so a heartbeat can follow a prompt on the same line. Input typed on the serial line runs in a
# root shell (with ttyS0 as its controlling tty).
# Disks: the VMM's virtio disks are /dev/vda, /dev/vdb, ... in the order it attached them (the
# boot disk first), each with the disk's name as its serial (/sys/block/vdX/serial). busybox has
# mke2fs (ext2; the kernel's ext4 driver mounts it), mount, sync, sha256sum and md5sum.
# ACPI powerdown (QMP system_powerdown) powers the guest off at once ("sync; poweroff -f": file
# systems are synced, not unmounted), but only once the banner is out: a powerdown requested
# earlier is lost. The guest needs -m 72 or more (less resets in a
# loop, silently with "quiet").
set -euo pipefail

out="${HALYARD_GUEST_DIR:-/var/cache/halyard/guest}"
out="${out%/}"
force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --print-dir) echo "$out"; exit 0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "guest-image: unknown argument '$arg' (try --help)" >&2; exit 1 ;;
    esac
done

# The guest's PID 1 (busybox sh). Any change to it changes the stamp and so rebuilds the image.
read -r -d '' INIT <<'EOF' || true
#!/bin/sh
# Halyard guest /init (PID 1). Built by dev-tools/guest-image.sh.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# In dependency order (no modprobe here): the power button, then virtio block devices (the
# VMM's disks: /dev/vda, /dev/vdb, ... in the order the VMM attached them; ext4, which also
# mounts ext2, is built into the kernel), then virtio network devices (the VMM's NICs).
for m in button evdev virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
    failover net_failover virtio_net; do
    insmod "/lib/modules/$m.ko" || echo "halyard-init: insmod $m failed"
done

name=halyard-guest
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        halyard.hostname=?*) name="${arg#halyard.hostname=}" ;;
    esac
done
hostname "$name"

# Network: one halyard.nic=MAC,ADDRESS/PREFIX per NIC. The interface whose MAC matches gets
# the address and is brought up; then an echo server listens on TCP port 7 and a server
# answering the guest's hostname on TCP port 79.
ip link set lo up
nics=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        halyard.nic=?*,?*) ;;
        *) continue ;;
    esac
    spec="${arg#halyard.nic=}"
    mac="${spec%%,*}"
    address="${spec#*,}"
    dev=""
    i=0
    while [ -z "$dev" ] && [ "$i" -lt 100 ]; do
        for d in /sys/class/net/*; do
            [ "$(cat "$d/address" 2>/dev/null)" = "$mac" ] && dev="${d##*/}"
        done
        [ -n "$dev" ] || { i=$((i + 1)); usleep 10000; }
    done
    if [ -z "$dev" ]; then
        echo "halyard-init: no network interface with MAC $mac"
        continue
    fi
    if ip addr add "$address" dev "$dev" && ip link set "$dev" up; then
        nics=$((nics + 1))
    else
        echo "halyard-init: configuring $dev ($mac) with $address failed"
    fi
done
if [ "$nics" -gt 0 ]; then
    nc -ll -p 7 -e cat </dev/null >/dev/null 2>&1 &
    nc -ll -p 79 -e hostname </dev/null >/dev/null 2>&1 &
fi

# Power button: open every input device named "Power Button" before the banner, so that a
# powerdown requested as soon as the banner is seen is not missed (evdev queues events from the
# moment the device is open), then block on one event and power off.
armed=0
i=0
while [ "$armed" -eq 0 ] && [ "$i" -lt 200 ]; do
    for d in /sys/class/input/event*; do
        [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ] || continue
        dev="/dev/input/${d##*/}"
        [ -c "$dev" ] || continue
        rm -f /run/armed
        (
            exec <"$dev" || exit 1
            : >/run/armed
            if dd bs=24 count=1 of=/dev/null 2>/dev/null; then
                sync
                poweroff -f
            fi
            echo "halyard-init: reading $dev failed; the power button will not work"
        ) &
        while [ ! -e /run/armed ] && kill -0 $! 2>/dev/null; do usleep 10000; done
        [ -e /run/armed ] && armed=$((armed + 1))
    done
    [ "$armed" -gt 0 ] || { i=$((i + 1)); usleep 10000; }
done
[ "$armed" -gt 0 ] || echo "halyard-init: no Power Button input device; ACPI powerdown will not work"

# The firmware leaves "Booting from ROM.." without a newline: end that line first.
echo
echo "HALYARD-GUEST BOOTED hostname=$name"

(
    n=0
    while :; do
        n=$((n + 1))
        echo "HALYARD-HEARTBEAT n=$n"
        usleep 250000
    done
) &

# An interactive shell on the console, in its own session with the console tty (ttyS0) as its
# controlling terminal (cttyhack finds it), respawned when it exits.
export PS1='\h# '
while :; do
    setsid cttyhack sh
    usleep 200000
done
EOF

# What the build does, beyond /init; bump it when the image's layout changes.
RECIPE="recipe 3: vmlinuz from the cloud kernel; busybox-static with applet symlinks; /mnt; /lib/modules/{button,evdev,virtio_ring,virtio,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio_pci,virtio_blk,failover,net_failover,virtio_net}.ko"
init_hash="$(printf '%s\n%s\n' "$RECIPE" "$INIT" | sha256sum | cut -d' ' -f1)"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_opts=(-q -o Dpkg::Use-Pty=0)
# As root, apt-get download would otherwise warn that the _apt user cannot write the temp dir.
[ -z "$sudo" ] && apt_opts+=(-o APT::Sandbox::User=root)

# Says why QEMU can't be had, in one line that run-all.sh and run-tests.sh pass on, and stops.
no_qemu() {
    echo "guest-image: QEMU can't be installed: $*" >&2
    exit 3
}

# The Debian suite whose qemu-system-x86 matches the QEMU packages already installed, or nothing
# for the release's own. A new machine of this kind ships qemu-utils from bookworm-backports
# (QEMU 10), which Breaks bookworm's qemu-system-common (7.2): the QEMU to install is then the
# backports one, never a removal or a downgrade of what is there.
matching_qemu_suite() {
    local codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    if dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' 'qemu-*' 2>/dev/null |
        awk '$1 == "ii" { print $2 }' | grep -q '~bpo'; then
        echo "$codename-backports"
    fi
}

# apt knows a suite only when a source names it. Backports is not configured on a new machine:
# add it for the install only, and take it away again afterwards.
backports_source="/etc/apt/sources.list.d/halyard-backports.sources"
with_suite_source() {
    local suite="$1"
    shift
    if [ -z "$suite" ] || apt-cache policy 2>/dev/null | grep -q " $suite/"; then
        "$@"
        return
    fi
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$suite" | $sudo tee "$backports_source" >/dev/null
    local status=0
    { $sudo apt-get "${apt_opts[@]}" update && "$@"; } || status=$?
    $sudo rm -f "$backports_source"
    return "$status"
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive $sudo apt-get "${apt_opts[@]}" install -y --no-remove "$@"
}

missing=()
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v gzip >/dev/null 2>&1 || missing+=(gzip)
command -v flock >/dev/null 2>&1 || missing+=(util-linux)
# QEMU itself, and qemu-utils: qemu-storage-daemon serves a QEMU sled's regions over NBD;
# qemu-img makes their files and the storage tests read them back with qemu-io.
need_qemu=0
for tool in qemu-system-x86_64 qemu-storage-daemon qemu-img qemu-io; do
    command -v "$tool" >/dev/null 2>&1 || need_qemu=1
done
if ((need_qemu)) || ((${#missing[@]})); then
    log="$(mktemp "${TMPDIR:-/tmp}/halyard-guest-apt.XXXXXX")"
    if ((${#missing[@]})); then
        echo "==> installing ${missing[*]} (apt-get)"
        { $sudo apt-get "${apt_opts[@]}" update && apt_install "${missing[@]}"; } >"$log" 2>&1 || {
            cat "$log" >&2
            echo "guest-image: installing ${missing[*]} failed (output above)" >&2
            exit 1
        }
    fi
    if ((need_qemu)); then
        suite="$(matching_qemu_suite)"
        echo "==> installing qemu-system-x86 and qemu-utils${suite:+ from $suite, matching the QEMU packages installed} (apt-get; about 30 s)"
        # --no-remove: never take other packages away to make room; apt never downgrades unasked.
        # Without recommends (a GUI, audio, extra block drivers): the sled agent runs QEMU
        # headless, and from backports the recommends would upgrade the desktop's libraries.
        if ! with_suite_source "$suite" apt_install --no-install-recommends ${suite:+-t "$suite"} \
            qemu-system-x86 qemu-utils >"$log" 2>&1; then
            cat "$log" >&2
            reason="$(grep -m1 -E '^E: ' "$log" | sed 's/^E: //' || true)"
            no_qemu "apt-get install qemu-system-x86${suite:+ -t $suite} failed: ${reason:-see the output above}"
        fi
    fi
    rm -f "$log"
fi
command -v qemu-system-x86_64 >/dev/null 2>&1 || no_qemu "qemu-system-x86_64 is not on PATH after installing qemu-system-x86"
command -v qemu-storage-daemon >/dev/null 2>&1 || no_qemu "qemu-storage-daemon is not on PATH after installing qemu-utils"

cached() {
    [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/VERSION" ] &&
        grep -qx "init-sha256=$init_hash" "$out/VERSION"
}
if [ "$force" -eq 0 ] && cached; then
    echo "==> guest image up to date in $out ($(sed -n 's/^kernel=//p' "$out/VERSION"))"
    exit 0
fi

parent="$(dirname "$out")"
base="$(basename "$out")"
if [ ! -w "$parent" ] && ! mkdir -p "$parent" 2>/dev/null; then
    $sudo mkdir -p "$parent"
    $sudo chown "$(id -u):$(id -g)" "$parent"
fi
mkdir -p "$parent"

# One build at a time; whoever waited finds the image the other one built.
exec 9>"$parent/.$base.lock"
if ! flock -n 9; then
    echo "==> another build of $out is running; waiting for it"
    flock 9
fi
if [ "$force" -eq 0 ] && cached; then
    echo "==> guest image up to date in $out ($(sed -n 's/^kernel=//p' "$out/VERSION"))"
    exit 0
fi

# Both next to the output, so a build killed outright leaves nothing the next one does not remove.
work="$(mktemp -d "$parent/.$base.work.XXXXXX")"
dest="$(mktemp -d "$parent/.$base.XXXXXX")"
published=0
cleanup() {
    rm -rf "$work"
    [ "$published" -eq 1 ] || rm -rf "$dest"
}
trap cleanup EXIT
started=$SECONDS

apt_known() { apt-cache show "$1" >/dev/null 2>&1; }
if ! apt_known linux-image-cloud-amd64 || ! apt_known busybox-static; then
    echo "==> apt-get update (package lists do not know the kernel or busybox yet)"
    $sudo apt-get "${apt_opts[@]}" update
fi
kpkg="$(apt-cache depends linux-image-cloud-amd64 |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1)"
if [ -z "$kpkg" ]; then
    echo "guest-image: cannot tell which kernel linux-image-cloud-amd64 depends on" >&2
    exit 1
fi

echo "==> downloading $kpkg and busybox-static"
download() {
    (cd "$work" && apt-get "${apt_opts[@]}" -qq download "$kpkg" busybox-static)
}
if ! download; then
    echo "==> download failed; apt-get update and one more try"
    $sudo apt-get "${apt_opts[@]}" update
    download
fi
kdeb="$(echo "$work/$kpkg"_*.deb)"
bdeb="$(echo "$work"/busybox-static_*.deb)"
kver="$(dpkg-deb -f "$kdeb" Version)"
bver="$(dpkg-deb -f "$bdeb" Version)"

echo "==> unpacking $kpkg $kver and busybox-static $bver"
dpkg-deb -x "$kdeb" "$work/kernel"
dpkg-deb -x "$bdeb" "$work/busybox"
bb="$work/busybox/bin/busybox"
vmlinuz="$(echo "$work"/kernel/boot/vmlinuz-*)"
[ -f "$vmlinuz" ] || { echo "guest-image: no /boot/vmlinuz-* in $kdeb" >&2; exit 1; }

echo "==> building the initramfs"
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,root,etc,mnt,lib/modules}
cp "$bb" "$root/bin/busybox"
# One symlink per applet, where busybox expects it (bin/sh, sbin/poweroff, usr/bin/setsid, ...).
while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -sf /bin/busybox "$root/$applet"
done < <("$bb" --list-full)
# In the order /init loads them: each module's dependencies come before it.
loaded=" "
for m in drivers/acpi/button drivers/input/evdev drivers/virtio/virtio_ring drivers/virtio/virtio \
    drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev \
    drivers/virtio/virtio_pci drivers/block/virtio_blk net/core/failover drivers/net/net_failover \
    drivers/net/virtio_net; do
    name="$(basename "$m")"
    src="$(find "$work/kernel/lib/modules" -path "*/kernel/$m.ko*" | head -n1)"
    [ -n "$src" ] || { echo "guest-image: $m.ko not in $kdeb" >&2; exit 1; }
    case "$src" in
        *.ko) cp "$src" "$root/lib/modules/$name.ko" ;;
        *.ko.xz) "$bb" unxz -c "$src" >"$root/lib/modules/$name.ko" ;;
        *.ko.gz) gzip -dc "$src" >"$root/lib/modules/$name.ko" ;;
        *.ko.zst)
            command -v zstd >/dev/null 2>&1 ||
                DEBIAN_FRONTEND=noninteractive $sudo apt-get "${apt_opts[@]}" install -y zstd
            zstd -qdc "$src" >"$root/lib/modules/$name.ko" ;;
        *) echo "guest-image: cannot unpack module $src" >&2; exit 1 ;;
    esac
    # /init insmods them without modprobe, so what each needs must be loaded before it.
    deps="$(tr '\0' '\n' <"$root/lib/modules/$name.ko" | sed -n 's/^depends=//p')"
    for dep in ${deps//,/ }; do
        case "$loaded" in
            *" $dep "*) ;;
            *) echo "guest-image: $name.ko needs $dep, which is not loaded before it" >&2; exit 1 ;;
        esac
    done
    loaded="$loaded$name "
done
printf '%s\n' "$INIT" >"$root/init"
chmod 755 "$root/init"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -9n >"$dest/initramfs.cpio.gz"
cp "$vmlinuz" "$dest/vmlinuz"
cat >"$dest/VERSION" <<EOF
kernel=$kpkg $kver
busybox-static=$bver
init-sha256=$init_hash
EOF
chmod 755 "$dest"
chmod 644 "$dest"/*

# Publish: point the output path (a symlink) at the new directory in one rename.
if [ -d "$out" ] && [ ! -L "$out" ]; then
    # A plain directory from elsewhere: move it aside first (not atomic, happens once).
    mv -T "$out" "$parent/.$base.old.$$"
fi
ln -sfn "$(basename "$dest")" "$parent/.$base.link.$$"
previous="$(readlink "$out" 2>/dev/null || true)"
mv -Tf "$parent/.$base.link.$$" "$out"
published=1
# Keep the image just replaced (a QEMU starting right now may still be reading it); drop older.
for d in "$parent/.$base".*; do
    if [ ! -d "$d" ] || [ -L "$d" ]; then continue; fi
    case "$(basename "$d")" in
        "$(basename "$dest")" | "$previous" | ".$base.lock") ;;
        *) rm -rf "$d" ;;
    esac
done
echo "==> guest image built in $((SECONDS - started)) s: $out ($kpkg $kver, initramfs $(du -k "$out/initramfs.cpio.gz" | cut -f1) KiB)"
