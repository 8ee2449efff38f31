#!/usr/bin/env bash
# Image store benchmark: nimbus-image vs restic vs borg on the same VM-disk-like file.
#
#   benches/image/run.sh                  # 2 GiB disk
#   SIZE_MIB=512 benches/image/run.sh     # smaller
#
# Environment:
#   SIZE_MIB   size of the disk image in MiB (default 2048)
#   WORK       scratch directory (default /var/tmp/nimbus-imgbench); the debootstrap
#              rootfs and the disk images are kept there between runs
#   TOOLS      which tools to run (default "nimbus restic borg nimbus-256k"); nimbus-256k
#              is nimbus-image with 256 KiB average chunks instead of 1 MiB
#   REPEAT     runs per tool (default 3); the table shows the median of each figure
#              (the machine may be shared: single runs are noisy)
#
# The disk: a raw ext4 file system (mkfs.ext4 -d) holding a debootstrap'd Debian
# (minbase; falls back to files copied from /usr if debootstrap fails), half the
# disk, followed by random data up to SIZE_MIB. The file is fully allocated (no
# holes), so every tool reads the same bytes. The "changed" disk has 1% of its 4 KiB
# blocks overwritten with random data at random places (fixed seed).
#
# Phases, each timed until the data is on disk (the tool, then `sync`), with the
# input in the page cache (it is read once before each phase):
#   (a) first backup of the disk, (b) second backup after the change,
#   (c) full restore of the second backup to a new file (checked with cmp), with
#       the repository's files dropped from the page cache first (cold repository).
# Stored bytes are `du -sb` of each tool's repository after (a) and after (b).
# Comparable settings: restic repository v2 with --compression auto (its default,
# zstd), borg `init -e none` with `--compression zstd,3` and its default chunker,
# nimbus-image with its defaults (FastCDC 1 MiB average, zstd 3, one compression
# thread per CPU and 4 I/O threads).
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-2048}
WORK=${WORK:-/var/tmp/nimbus-imgbench}
TOOLS=${TOOLS:-"nimbus restic borg nimbus-256k"}
REPEAT=${REPEAT:-3}
REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export RESTIC_PASSWORD=${RESTIC_PASSWORD:-nimbus-bench}
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

log() { echo "== $*" >&2; }

need_pkg() { # command package
    if ! command -v "$1" >/dev/null 2>&1; then
        log "installing $2"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
    fi
}

need_pkg restic restic
need_pkg borg borgbackup
need_pkg mkfs.ext4 e2fsprogs
need_pkg qemu-img qemu-utils
need_pkg python3 python3

mkdir -p "$WORK"
cd "$WORK"

# ---- data -------------------------------------------------------------------
if [ ! -d rootfs ]; then
    need_pkg debootstrap debootstrap
    log "debootstrap (minbase bookworm) into $WORK/rootfs"
    rm -rf rootfs.tmp
    if debootstrap --variant=minbase bookworm rootfs.tmp http://deb.debian.org/debian >debootstrap.log 2>&1; then
        mv rootfs.tmp rootfs
        echo debootstrap >rootfs.source
    else
        log "debootstrap failed (see $WORK/debootstrap.log): using files from /usr instead"
        rm -rf rootfs.tmp && mkdir -p rootfs.tmp/usr
        cp -a /usr/share /usr/lib /usr/bin rootfs.tmp/usr/ 2>/dev/null || true
        mv rootfs.tmp rootfs
        echo "copy of /usr" >rootfs.source
    fi
fi

DISK=disk-${SIZE_MIB}.img
DISK2=disk-${SIZE_MIB}-changed.img
if [ ! -f "$DISK" ] || [ ! -f "$DISK2" ]; then
    rootfs_mib=$(( $(du -sm rootfs | cut -f1) ))
    fs_mib=$(( SIZE_MIB / 2 ))
    min_fs=$(( rootfs_mib + rootfs_mib / 3 + 48 ))
    [ "$fs_mib" -lt "$min_fs" ] && fs_mib=$min_fs
    if [ "$fs_mib" -ge "$SIZE_MIB" ]; then
        echo "SIZE_MIB=$SIZE_MIB is too small for the ${rootfs_mib} MiB rootfs" >&2
        exit 1
    fi
    log "building $DISK: ext4 ${fs_mib} MiB with the rootfs ($(cat rootfs.source), ${rootfs_mib} MiB) + random data to ${SIZE_MIB} MiB"
    rm -f fs.img "$DISK" "$DISK2"
    truncate -s "${fs_mib}M" fs.img
    mkfs.ext4 -q -F -L nimbus-bench -E root_owner=0:0 -d rootfs fs.img
    # Fully allocated copy (dd writes the zeros), then deterministic random padding.
    dd if=fs.img of="$DISK" bs=8M status=none
    rm -f fs.img
    # (openssl dies of SIGPIPE when head has enough: not an error)
    { openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
        -iv 00000000000000000000000000000000 </dev/zero 2>/dev/null || true; } |
        head -c $(( (SIZE_MIB - fs_mib) * 1024 * 1024 )) >>"$DISK"
    log "building $DISK2: 1% of the 4 KiB blocks overwritten at random places"
    cp --sparse=never "$DISK" "$DISK2"
    python3 - "$DISK2" <<'EOF'
import os, random, sys
path = sys.argv[1]
rng = random.Random(20240601)
blocks = os.path.getsize(path) // 4096
picked = rng.sample(range(blocks), blocks // 100)
with open(path, "r+b") as f:
    for b in sorted(picked):
        f.seek(b * 4096)
        f.write(rng.randbytes(4096))
print(f"changed {len(picked)} of {blocks} blocks", file=sys.stderr)
EOF
    sync
fi
SIZE_BYTES=$(stat -c %s "$DISK")

log "building imgbench (release)"
(cd "$REPO_ROOT" && cargo build --release -q -p nimbus-image --example imgbench)
IMGBENCH="$REPO_ROOT/target/release/examples/imgbench"

# ---- helpers ------------------------------------------------------------------
now() { date +%s.%N; }
# Puts a disk version at cur/disk.img (the path every tool backs up) and caches it.
stage() {
    mkdir -p cur
    cp --sparse=never "$1" cur/disk.img.tmp && mv cur/disk.img.tmp cur/disk.img
    sync
    cat cur/disk.img >/dev/null
}
# timed <var> <command...>: runs the command then sync; stores seconds in <var>.
timed() {
    local var=$1; shift
    local t0 t1
    sync
    t0=$(now)
    "$@" >>"$WORK/tools.log" 2>&1
    sync
    t1=$(now)
    printf -v "$var" '%s' "$(python3 -c "print(f'{$t1 - $t0:.3f}')")"
}
stored() { du -sb "$1" | cut -f1; }
# Drops a repository's files from the page cache (per file, fadvise DONTNEED), so
# that every restore reads its repository from disk, as one long after the backup
# would. (nimbus-image already drops chunk files after writing them; restic and
# borg leave theirs cached.)
uncache() {
    python3 - "$1" <<'PY'
import os, sys
for dirpath, _, files in os.walk(sys.argv[1]):
    for f in files:
        try:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
        except OSError:
            continue
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
}


# Each tool works in its own directory, which is removed after its run (then
# sync and a pause, so that freeing the space does not slow the next tool down).
cleanup() {
    rm -rf "$@"
    sync
    sleep 5
}

run_nimbus() {
    local store=$WORK/repo-$1
    rm -rf "$store" restore.img
    stage "$DISK";  timed B1 "$IMGBENCH" backup "$store" vm b1 cur/disk.img
    S1=$(stored "$store")
    stage "$DISK2"; timed B2 "$IMGBENCH" backup "$store" vm b2 cur/disk.img
    S2=$(stored "$store")
    uncache "$store"
    timed R "$IMGBENCH" restore "$store" vm b2 restore.img
    cmp "$DISK2" restore.img
    cleanup restore.img "$store"
}

run_nimbus-256k() {
    IMGBENCH_AVG=262144 run_nimbus nimbus-256k
}

run_restic() {
    local repo=$WORK/repo-restic
    rm -rf "$repo" restore-restic
    restic init -q --repository-version 2 -r "$repo" >/dev/null
    stage "$DISK";  timed B1 restic -q -r "$repo" backup --compression auto cur/disk.img
    S1=$(stored "$repo")
    stage "$DISK2"; timed B2 restic -q -r "$repo" backup --compression auto cur/disk.img
    S2=$(stored "$repo")
    uncache "$repo"
    timed R restic -q -r "$repo" restore latest --target restore-restic
    cmp "$DISK2" "$(find restore-restic -name disk.img -type f | head -1)"
    cleanup restore-restic "$repo"
}

run_borg() {
    local repo=$WORK/repo-borg
    rm -rf "$repo" restore-borg
    borg init -e none "$repo" >/dev/null
    stage "$DISK";  timed B1 borg create --compression zstd,3 "$repo::b1" cur/disk.img
    S1=$(stored "$repo")
    stage "$DISK2"; timed B2 borg create --compression zstd,3 "$repo::b2" cur/disk.img
    S2=$(stored "$repo")
    mkdir -p restore-borg
    uncache "$repo"
    timed R bash -c "cd restore-borg && borg extract '$repo::b2'"
    cmp "$DISK2" restore-borg/cur/disk.img
    cleanup restore-borg "$repo"
}

: >tools.log
: >raw.txt
for rep in $(seq "$REPEAT"); do
    for tool in $TOOLS; do
        log "running $tool ($rep/$REPEAT)"
        if [ "$tool" = nimbus ]; then run_nimbus nimbus; else "run_$tool"; fi
        echo "$tool $B1 $B2 $R $S1 $S2" | tee -a raw.txt >&2
    done
done

rm -rf cur

# ---- report -------------------------------------------------------------------
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
python3 /dev/fd/3 "$SIZE_BYTES" "$TOOLS" "$REPEAT" "$LOAD" "$(nproc)" <raw.txt 3<<'EOF' | tee results.md
import statistics, sys
size = int(sys.argv[1])
tools = sys.argv[2].split()
runs = {}
for line in sys.stdin:
    t, b1, b2, r, s1, s2 = line.split()
    runs.setdefault(t, []).append(dict(b1=float(b1), b2=float(b2), r=float(r), s1=int(s1), s2=int(s2)))
rows = {t: {k: statistics.median(run[k] for run in rs) for k in rs[0]} for t, rs in runs.items()}
mb = lambda secs: size / 1e6 / secs
mib = lambda b: f"{b / 2**20:,.0f} MiB"
print(f"Disk: {size / 2**20:,.0f} MiB; MB/s = disk bytes / wall time (incl. sync); "
      f"median of {sys.argv[3]} runs; {sys.argv[5]} CPUs, load average at the end {sys.argv[4]}.\n")
print("| tool | (a) first backup | (b) second backup | (c) restore | stored after (a) | added by (b) | stored total |")
print("|---|---|---|---|---|---|---|")
for t in tools:
    r = rows[t]
    print(f"| {t} | {mb(r['b1']):,.0f} MB/s ({r['b1']:.1f} s) | {mb(r['b2']):,.0f} MB/s ({r['b2']:.1f} s) "
          f"| {mb(r['r']):,.0f} MB/s ({r['r']:.1f} s) | {mib(r['s1'])} | {mib(r['s2'] - r['s1'])} | {mib(r['s2'])} |")
if "nimbus" in rows:
    n = rows["nimbus"]
    peers = [t for t in tools if not t.startswith("nimbus")]
    if peers:
        print()
        print("| nimbus-image vs | (a) backup speed | (b) backup speed | (c) restore speed | stored total |")
        print("|---|---|---|---|---|")
        for t in peers:
            p = rows[t]
            print(f"| {t} | {p['b1'] / n['b1']:.2f}x | {p['b2'] / n['b2']:.2f}x | {p['r'] / n['r']:.2f}x "
                  f"| {n['s2'] / p['s2']:.2f}x ({'smaller' if n['s2'] <= p['s2'] else 'larger'}) |")
EOF
