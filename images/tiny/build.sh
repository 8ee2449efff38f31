#!/usr/bin/env bash
# Builds the nimbus "tiny" guest from Debian packages: the kernel of
# linux-image-cloud-amd64 with the virtio modules it needs, and an initramfs with
# busybox-static and images/tiny/init. Reproducible (sorted archive, fixed times,
# gzip -n) and cached by package versions.
#   usage: build.sh OUTDIR      -> OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/cmdline
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
init=${NIMBUS_TINY_INIT:-$here/init}
cache=${NIMBUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nimbus}/tiny
mkdir -p "$cache" "$out"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need apt-get || ! need dpkg-deb; then
  echo "build.sh: needs apt-get and dpkg-deb (a Debian-based system)" >&2; exit 1
fi
for t in cpio gzip; do need $t || { echo "build.sh: needs $t (apt-get install $t)" >&2; exit 1; }; done

kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$kpkg" ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[ -n "$kpkg" ] || { echo "build.sh: package linux-image-cloud-amd64 not found in apt sources" >&2; exit 1; }
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
bver=$(apt-cache policy busybox-static | awk '/Candidate:/{print $2}')
key=$(printf '%s %s %s %s' "$kpkg" "$kver" "$bver" "$(sha256sum "$init" | cut -c1-16)" | sha256sum | cut -c1-16)
if [ -f "$cache/$key/initrd.img" ]; then
  cp "$cache/$key/vmlinuz" "$cache/$key/initrd.img" "$cache/$key/cmdline" "$out/"
  echo "tiny image: cached ($kpkg $kver, busybox $bver)" >&2
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "tiny image: fetching $kpkg and busybox-static from the Debian archive" >&2
chown _apt "$work" 2>/dev/null || true
apt-get download "$kpkg" busybox-static >/dev/null 2>&1 \
  || { echo "build.sh: apt-get download $kpkg busybox-static failed" >&2; exit 1; }
mkdir k b root
dpkg-deb -x "$kpkg"_*.deb k
dpkg-deb -x busybox-static_*.deb b
kv=$(ls k/lib/modules)
mkdir -p root/bin root/lib/modules root/dev
cp b/bin/busybox root/bin/busybox
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
         failover net_failover virtio_net virtio_blk cdrom isofs button evdev; do
  f=$(find "k/lib/modules/$kv" -name "$m.ko*" | head -1)
  [ -n "$f" ] || { echo "build.sh: module $m not found in $kpkg" >&2; exit 1; }
  case "$f" in
    *.xz) xz -dc "$f" > "root/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" > "root/lib/modules/$m.ko" ;;
    *) cp "$f" "root/lib/modules/$m.ko" ;;
  esac
done
cp "$init" root/init
chmod 755 root/init root/bin/busybox
find root -exec touch -h -d @0 {} +
(cd root && find . -print0 | LC_ALL=C sort -z | cpio --null --reproducible -o -H newc --owner=0:0 2>/dev/null) \
  | gzip -n -9 > initrd.img
cp k/boot/vmlinuz-"$kv" vmlinuz
echo "console=ttyS0 panic=-1 quiet" > cmdline
mkdir -p "$cache/$key"
cp vmlinuz initrd.img cmdline "$cache/$key/"
cp vmlinuz initrd.img cmdline "$out/"
echo "tiny image: built ($kpkg $kver, busybox $bver)" >&2
