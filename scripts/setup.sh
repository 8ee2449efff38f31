#!/usr/bin/env bash
# Installs what nimbus needs from the system, idempotently. Safe to run again.
# Needs: a Rust toolchain (cargo), python3 (example workloads and tests), and a
# writable cgroup hierarchy (v1 or v2) for the process driver, which means root.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    fail "missing $*; install it with your package manager (no apt-get here)"
  fi
  if [ "$(id -u)" != 0 ]; then
    fail "missing $*; run this script as root or install it: apt-get install $*"
  fi
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || fail "apt-get update failed"
    apt_updated=1
  fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || fail "apt-get install $* failed"
}

command -v cargo >/dev/null 2>&1 || fail "cargo not found: install Rust from your distribution or rustup, then rerun"
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev

# VMs: QEMU and qemu-img, an ISO tool for cloud-init seeds, cpio for the tiny image.
missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)   # also qemu-nbd (hot standbys)
# Multi-node tests give each agent its own network namespace.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v genisoimage >/dev/null 2>&1 || missing+=(genisoimage)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
# Installing Debian's QEMU can remove a newer qemu-utils from backports: check again.
command -v qemu-img >/dev/null 2>&1 || apt_install qemu-utils
for t in qemu-system-x86_64 qemu-img qemu-nbd genisoimage cpio ip; do
  command -v "$t" >/dev/null 2>&1 || fail "$t is still missing after installing packages"
done

# The process driver runs every instance in its own cgroup.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  cg=/sys/fs/cgroup
elif [ -d /sys/fs/cgroup/memory ]; then
  cg=/sys/fs/cgroup/memory
else
  fail "no cgroup hierarchy mounted at /sys/fs/cgroup (need v2, or v1 with the memory controller)"
fi
if [ ! -w "$cg" ]; then
  fail "$cg is not writable: run nimbus (and its tests) as root so it can create cgroups"
fi
say "ok ($(qemu-system-x86_64 --version | head -1), cgroup $( [ "$cg" = /sys/fs/cgroup ] && echo v2 || echo v1 ), $(cargo --version))"
