#!/usr/bin/env bash
# VM benchmark: create-to-guest-ready latency of nimbus vs libvirt vs a bare
# qemu-system-x86_64, with the same guest (the tiny image: kernel + initramfs), the same
# kernel command line, 1 vCPU, 128 MiB and the same accelerator.
#
#   cargo build --release -p nimbus && benches/vm/run.sh
#
# Needs root. Installs what is missing with apt-get (libvirt-daemon-system with its
# sysv flavour, libvirt-clients, qemu-system-x86, genisoimage, jq, python3), starts
# virtlogd and libvirtd if they do not run (and stops them at the end if it started
# them), starts `nimbus up` on a free port with a temporary data directory, builds and
# registers the tiny image, then measures.
#
# What is measured, per VM: the time from just before the create command to the moment
# the guest's "nimbus-guest-ready <hostname>" line is in its serial console file, polled
# every POLL seconds (10 ms) the same way for all three:
#   qemu     qemu-system-x86_64 launched in the background with the argv nimbus's driver
#            builds (crates/nimbus-agent/src/driver/qemu.rs: q35, -cpu max, -accel
#            tcg,tb-size=32 (or kvm + -cpu host), -nodefaults, two QMP sockets,
#            virtio-rng, the cidata seed ISO on virtio, user-mode virtio-net), except
#            -serial file:<console> instead of stdio.
#   nimbus   `nimbus instance create vm-... --vm --image tiny --vcpus 1 --memory 128Mi`
#            (through the HTTP API, the store, the scheduler, the agent, the shim and
#            its cgroup), console polled in the agent's local log file
#            <data>/agent/instances/<name>/output.log. nimbus's own `boot_ms` (QEMU start
#            to marker, seen by the agent twice a second) is reported for reference.
#   libvirt  `virsh define` of a domain XML (direct kernel boot, same kernel, initrd,
#            cmdline, memory, vCPU, accelerator and devices, serial to a file) followed
#            by `virsh start`, against qemu:///system.
# The seed ISOs of the qemu and libvirt guests are made before their clock starts;
# nimbus makes its own inside its create, so that cost counts against nimbus.
# Also recorded: when the create command returned, and "QEMU up": when QEMU's QMP
# socket appeared (qemu, nimbus; QEMU makes it while starting, before the guest runs)
# or when `virsh start` returned (libvirt starts QEMU paused and resumes it just before
# that). Create-to-QEMU-up is the launch path alone, without the TCG boot (seconds,
# and noisy on a busy machine); nimbus minus bare QEMU there is nimbus's start overhead.
# A VM whose QEMU ends before the marker (or that is not ready after TIMEOUT s) is
# counted as failed, its console kept in $WORK/failed, and the run goes on.
# Modes: sequential (one VM at a time, destroyed once ready) and PAR (4) at a time
# (PAR VMs started together, each timed on its own, all destroyed, repeated until at
# least N are measured). Systems take turns VM by VM (batch by batch), in rotating
# order, so drifting background load hits all three alike (the report also gives the
# median of per-round differences, which cancels that drift). One unmeasured warm-up VM
# per system comes first (image fetch into the node cache, libvirt's capability probe,
# page cache). Percentiles are linearly interpolated (numpy's default).
#
# Environment:
#   N=10           VMs measured per system and mode
#   PAR=4          VMs at a time in the concurrent mode
#   POLL=0.01      console polling interval, seconds
#   MODES="seq par"  SYSTEMS="qemu nimbus libvirt"
#   NIMBUS=target/release/nimbus   TIMEOUT=300 (seconds for one VM to be ready)
#   KEEP_WORK=1    keep the scratch directory (consoles, logs, results.tsv)
#
# /dev/kvm: a Debian host with udev has it as root:kvm 0660 (libvirt-qemu is in group
# kvm). Without udev it may be root:root 0600; then libvirtd finds KVM "not usable" for
# its qemu user, throws its QEMU capability cache away on every call and re-probes QEMU
# (seconds per virsh command). The script sets udev's root:kvm 0660 for the run and
# restores the old owner and mode at the end. nimbus runs QEMU as root either way.
#
# Cleanup (on exit, also on failure or Ctrl-C): kills the bare QEMUs, destroys and
# undefines the nbench-* domains, deletes the nimbus instances and stops `nimbus up`.
set -euo pipefail

N=${N:-10}
PAR=${PAR:-4}
POLL=${POLL:-0.01}
MODES=${MODES:-"seq par"}
SYSTEMS=${SYSTEMS:-"qemu nimbus libvirt"}
TIMEOUT=${TIMEOUT:-300}
MEM_MIB=128
REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NIMBUS=${NIMBUS:-$REPO_ROOT/target/release/nimbus}
QEMU=qemu-system-x86_64
VIRSH=(virsh -q -c qemu:///system)
MARKER=nimbus-guest-ready

log() { echo "== $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (libvirt qemu:///system, nimbus cgroups)"

# ---- packages -----------------------------------------------------------------
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
    }
}
missing=()
for p in qemu-system-x86 genisoimage jq python3 libvirt-clients libvirt-daemon-system; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    # libvirt-daemon-system-sysv instead of -systemd: no systemd (PID 1) here, and the
    # systemd flavour would pull a systemd upgrade.
    if [[ " ${missing[*]} " == *" libvirt-daemon-system "* ]]; then
        missing+=(libvirt-daemon-system-sysv)
    fi
    apt_install "${missing[@]}"
fi
command -v virsh >/dev/null || die "virsh missing after installing libvirt-clients"
[ -x /usr/sbin/libvirtd ] || die "/usr/sbin/libvirtd missing after installing libvirt-daemon-system"

if [ ! -x "$NIMBUS" ]; then
    log "building $NIMBUS"
    (cd "$REPO_ROOT" && cargo build --release -p nimbus)
fi

# ---- state and cleanup ----------------------------------------------------------
WORK=$(mktemp -d /tmp/nimbus-vmbench.XXXXXX)
chmod 755 "$WORK" # libvirt's QEMU runs as libvirt-qemu and opens files in here
RESULTS=$WORK/results.tsv # system mode name ready_ms cmd_ms up_ms t0_unix_ms
FAILS=$WORK/failed.tsv    # system mode name FAIL cmd_ms elapsed_ms why
BOOTMS=$WORK/boot_ms.tsv  # mode name boot_ms cpu_throttled_ms
: >"$RESULTS"
: >"$FAILS"
: >"$BOOTMS"
NIMBUS_PID=
STARTED_LIBVIRTD=
STARTED_VIRTLOGD=
KVM_RESTORE=

nimbus_cli() { "$NIMBUS" "$@"; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    for f in "$WORK"/qemu/*/pid; do
        [ -f "$f" ] || continue
        kill "$(cat "$f")" 2>/dev/null
    done
    if [ -n "$STARTED_LIBVIRTD" ] || pgrep -x libvirtd >/dev/null; then
        for d in $("${VIRSH[@]}" list --all --name 2>/dev/null | grep '^nbench-'); do
            "${VIRSH[@]}" destroy "$d" >/dev/null 2>&1
            "${VIRSH[@]}" undefine "$d" >/dev/null 2>&1
        done
    fi
    if [ -n "$NIMBUS_PID" ] && kill -0 "$NIMBUS_PID" 2>/dev/null; then
        local names
        names=$(nimbus_cli instance list -o json 2>/dev/null | jq -r '.[].name' 2>/dev/null)
        for n in $names; do nimbus_cli instance delete "$n" >/dev/null 2>&1; done
        for _ in $(seq 1 300); do
            [ "$(nimbus_cli instance list -o json 2>/dev/null | jq length 2>/dev/null)" = 0 ] && break
            sleep 0.2
        done
        kill "$NIMBUS_PID" 2>/dev/null
        wait "$NIMBUS_PID" 2>/dev/null
    fi
    if [ -n "$STARTED_LIBVIRTD" ]; then kill "$STARTED_LIBVIRTD" 2>/dev/null; fi
    if [ -n "$STARTED_VIRTLOGD" ]; then kill "$STARTED_VIRTLOGD" 2>/dev/null; fi
    if [ -n "$KVM_RESTORE" ]; then
        # shellcheck disable=SC2086
        set -- $KVM_RESTORE
        chgrp "$2" /dev/kvm && chmod "$1" /dev/kvm
    fi
    if [ "${KEEP_WORK:-}" = 1 ] || [ "$rc" != 0 ] || [ -s "$FAILS" ]; then
        log "scratch directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- libvirt daemons ------------------------------------------------------------
if [ -e /dev/kvm ] && [ "$(stat -c %G /dev/kvm)" != kvm ] && getent group kvm >/dev/null; then
    KVM_RESTORE="$(stat -c '%a %g' /dev/kvm)"
    log "/dev/kvm is $(stat -c '%U:%G %a' /dev/kvm): setting udev's root:kvm 0660 for the run"
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi
if ! pgrep -x virtlogd >/dev/null; then
    log "starting virtlogd"
    /usr/sbin/virtlogd -d
    for _ in $(seq 1 50); do [ -s /run/virtlogd.pid ] && break; sleep 0.1; done
    STARTED_VIRTLOGD=$(cat /run/virtlogd.pid 2>/dev/null || true)
fi
if ! pgrep -x libvirtd >/dev/null; then
    log "starting libvirtd"
    /usr/sbin/libvirtd -d
    for _ in $(seq 1 50); do [ -s /run/libvirtd.pid ] && break; sleep 0.1; done
    STARTED_LIBVIRTD=$(cat /run/libvirtd.pid 2>/dev/null || true)
fi
for _ in $(seq 1 100); do "${VIRSH[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
"${VIRSH[@]}" version >/dev/null || die "libvirtd does not answer on qemu:///system"
# Leftover domains of an interrupted run.
for d in $("${VIRSH[@]}" list --all --name | grep '^nbench-' || true); do
    "${VIRSH[@]}" destroy "$d" >/dev/null 2>&1 || true
    "${VIRSH[@]}" undefine "$d" >/dev/null 2>&1 || true
done

# ---- nimbus -------------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export NIMBUS_SERVER=http://127.0.0.1:$PORT
DATA=$WORK/nimbus
log "starting nimbus up on $NIMBUS_SERVER (data $DATA)"
# --cpus 8: each 1-vCPU VM books one core; on a 2-core machine the scheduler would
# otherwise admit only 2 at a time (libvirt and bare QEMU have no admission control).
"$NIMBUS" up --listen "127.0.0.1:$PORT" --data-dir "$DATA" --name bench --cpus 8 \
    >"$WORK/nimbus.log" 2>&1 &
NIMBUS_PID=$!
ACCEL=
for _ in $(seq 1 300); do
    kill -0 "$NIMBUS_PID" 2>/dev/null || { tail -20 "$WORK/nimbus.log" >&2; die "nimbus up exited"; }
    ACCEL=$(nimbus_cli node show bench -o json 2>/dev/null | jq -r '(if type == "array" then .[0] else . end) | .facts.accelerator // empty' 2>/dev/null || true)
    [ -n "$ACCEL" ] && break
    sleep 0.2
done
[ -n "$ACCEL" ] || die "node bench did not report an accelerator within 60 s (see $WORK/nimbus.log)"
ACCEL_REASON=$(nimbus_cli node show bench -o json | jq -r '(if type == "array" then .[0] else . end) | .facts.accelerator_reason // ""')
log "accelerator: $ACCEL ($ACCEL_REASON)"

log "building and registering the tiny image"
nimbus_cli image build tiny >"$WORK/image-build.log" 2>&1 || { tail -20 "$WORK/image-build.log" >&2; die "nimbus image build tiny failed"; }
CMDLINE=$(nimbus_cli image show tiny -o json | jq -r '(if type == "array" then .[0] else . end) | .cmdline')
[ -n "$CMDLINE" ] && [ "$CMDLINE" != null ] || die "image tiny has no kernel command line"

# ---- helpers ----------------------------------------------------------------------
now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }

# alive SYSTEM NAME: is the VM's QEMU still running? (cheap, local checks)
alive() {
    local pid st
    case $1 in
    qemu) pid=$(cat "$WORK/qemu/$2/pid" 2>/dev/null) || return 1 ;;
    nimbus)
        # The shim writes exit.json when QEMU ends.
        [ ! -e "$DATA/agent/instances/$2/exit.json" ]
        return
        ;;
    libvirt) pid=$(cat "/run/libvirt/qemu/$2.pid" 2>/dev/null) || return 1 ;;
    esac
    read -r _ _ st _ <"/proc/$pid/stat" 2>/dev/null || return 1
    [ "$st" != Z ]
}

# wait_marker SYSTEM NAME FILE [SOCKET]: polls FILE every POLL s until the ready line
# appears; fails when the VM's QEMU ended first (checked every 50 polls) or after
# TIMEOUT s. Meanwhile sets T_UP to when SOCKET (QEMU's QMP socket, which QEMU creates
# while it starts up, before the guest runs) was first seen.
wait_marker() {
    local deadline=$((${EPOCHREALTIME%.*} + TIMEOUT)) k=0
    while ! grep -qF "$MARKER $2" "$3" 2>/dev/null; do
        if [ -n "${4:-}" ] && [ -z "$T_UP" ] && [ -S "$4" ]; then T_UP=${EPOCHREALTIME/./}; fi
        if [ $((++k % 50)) = 0 ]; then
            alive "$1" "$2" || { WHY="QEMU ended before the marker"; return 1; }
            [ "${EPOCHREALTIME%.*}" -lt "$deadline" ] || { WHY="not ready after ${TIMEOUT}s"; return 1; }
        fi
        sleep "$POLL"
    done
}

make_seed() { # DIR HOSTNAME: the same NoCloud seed nimbus writes
    mkdir -p "$1/seed"
    printf 'instance-id: %s-1\nlocal-hostname: %s\n' "$2" "$2" >"$1/seed/meta-data"
    printf '#cloud-config\n{}\n' >"$1/seed/user-data"
    genisoimage -quiet -output "$1/seed.iso" -volid cidata -joliet -rock \
        "$1/seed/user-data" "$1/seed/meta-data"
}

prepare() { # SYSTEM NAME: work done before the clock starts
    local d
    case $1 in
    qemu)
        d=$WORK/qemu/$2
        rm -rf "$d" && mkdir -p "$d"
        make_seed "$d" "$2"
        ;;
    libvirt)
        d=$WORK/libvirt/$2
        rm -rf "$d" && mkdir -p "$d"
        make_seed "$d" "$2"
        chmod 755 "$d"
        lv_xml "$2" "$d" >"$d/domain.xml"
        ;;
    nimbus) ;;
    esac
}

qemu_argv() { # NAME DIR -> QARGV: nimbus's argv (qemu.rs), serial to a file
    local accel_arg=$ACCEL cpu=max
    [ "$ACCEL" = tcg ] && accel_arg=tcg,tb-size=32
    [ "$ACCEL" = kvm ] && cpu=host
    QARGV=("$QEMU" -name "$1" -accel "$accel_arg" -machine q35 -cpu "$cpu"
        -m "${MEM_MIB}M" -smp 1 -nodefaults -no-user-config -display none
        -serial "file:$2/console.log" -no-reboot
        -qmp "unix:$2/qmp.sock,server=on,wait=off"
        -qmp "unix:$2/qmp-events.sock,server=on,wait=off"
        -device virtio-rng-pci
        -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE"
        -drive "file=$2/seed.iso,if=virtio,format=raw,readonly=on"
        -netdev user,id=net0 -device virtio-net-pci,netdev=net0)
}

lv_xml() { # NAME DIR: the same guest as a libvirt domain
    local type=qemu cpu="<cpu mode='maximum'/>" tcg="<tcg><tb-cache unit='MiB'>32</tb-cache></tcg>"
    if [ "$ACCEL" = kvm ]; then
        type=kvm cpu="<cpu mode='host-passthrough'/>" tcg=
    fi
    cat <<EOF
<domain type='$type'>
  <name>$1</name>
  <memory unit='MiB'>$MEM_MIB</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$KERNEL</kernel>
    <initrd>$INITRD</initrd>
    <cmdline>$CMDLINE</cmdline>
  </os>
  <features><acpi/>$tcg</features>
  $cpu
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/$QEMU</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$2/seed.iso'/>
      <target dev='vda' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='file'><source path='$2/console.log'/><target port='0'/></serial>
    <rng model='virtio'><backend model='builtin'/></rng>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# measure SYSTEM MODE NAME: create, wait for the marker, append to RESULTS.
measure() {
    local sys=$1 mode=$2 name=$3 t0 t1 t2 con sock=
    T_UP=
    case $sys in
    qemu)
        local d=$WORK/qemu/$name
        qemu_argv "$name" "$d"
        con=$d/console.log
        sock=$d/qmp.sock
        t0=$(now_us)
        "${QARGV[@]}" </dev/null >"$d/qemu.out" 2>&1 &
        echo $! >"$d/pid"
        t1=$(now_us)
        ;;
    nimbus)
        con=$DATA/agent/instances/$name/output.log
        sock=$DATA/agent/instances/$name/qmp.sock
        t0=$(now_us)
        nimbus_cli instance create "$name" --vm --image tiny --vcpus 1 --memory "${MEM_MIB}Mi" >/dev/null
        t1=$(now_us)
        ;;
    libvirt)
        local d=$WORK/libvirt/$name
        con=$d/console.log
        t0=$(now_us)
        "${VIRSH[@]}" define "$d/domain.xml" >/dev/null
        "${VIRSH[@]}" start "$name" >/dev/null
        t1=$(now_us)
        # libvirt starts QEMU paused (-S), sets it up over QMP and lets the vCPUs run
        # just before `virsh start` returns: that is its "QEMU up".
        T_UP=$t1
        ;;
    esac
    if ! wait_marker "$sys" "$name" "$con" "$sock"; then
        t2=$(now_us)
        # Keep the evidence: nimbus removes the instance's files when it is deleted.
        mkdir -p "$WORK/failed"
        cp "$con" "$WORK/failed/$name.console" 2>/dev/null || true
        if [ "$sys" = nimbus ]; then
            nimbus_cli instance show "$name" -o json >"$WORK/failed/$name.json" 2>&1 || true
        fi
        echo "$sys $mode $name FAIL $(((t1 - t0) / 1000)) $(((t2 - t0) / 1000)) $WHY" >>"$FAILS"
        return 0
    fi
    t2=$(now_us)
    local up=-
    [ -n "$T_UP" ] && up=$(((T_UP - t0) / 1000))
    printf '%s %s %s %d %d %s %d\n' "$sys" "$mode" "$name" $(((t2 - t0) / 1000)) $(((t1 - t0) / 1000)) "$up" $((t0 / 1000)) >>"$RESULTS"
}

# destroy SYSTEM NAME: gone and its resources released before this returns.
destroy() {
    local sys=$1 name=$2
    case $sys in
    qemu)
        local pid
        pid=$(cat "$WORK/qemu/$name/pid")
        kill "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        rm -f "$WORK/qemu/$name/pid"
        ;;
    nimbus)
        local bm
        # The API's own figure, for reference (the agent looks twice a second).
        for _ in $(seq 1 100); do
            bm=$(nimbus_cli instance show "$name" -o json | jq -r '(if type == "array" then .[0] else . end) | .boot_ms // empty')
            [ -n "$bm" ] && break
            sleep 0.1
        done
        # How long the CFS quota nimbus gives the VM (its vCPUs) held QEMU back.
        local thr=- st
        for st in /sys/fs/cgroup/cpu/nimbus/bench/"$name"/cpu.stat /sys/fs/cgroup/nimbus/bench/"$name"/cpu.stat; do
            [ -f "$st" ] || continue
            thr=$(awk '$1 == "throttled_time" {printf "%d", $2 / 1e6} $1 == "throttled_usec" {printf "%d", $2 / 1e3}' "$st")
            break
        done
        echo "$MODE_NOW $name ${bm:--} ${thr:--}" >>"$BOOTMS"
        nimbus_cli instance delete "$name" >/dev/null 2>&1 || true
        local gone=
        for _ in $(seq 1 600); do
            if ! nimbus_cli instance show "$name" >/dev/null 2>&1; then gone=1; break; fi
            sleep 0.1
        done
        [ -n "$gone" ] || die "nimbus instance $name not deleted after 60 s"
        ;;
    libvirt)
        "${VIRSH[@]}" destroy "$name" >/dev/null 2>&1 || true # already off if it failed
        "${VIRSH[@]}" undefine "$name" >/dev/null
        ;;
    esac
}

vm_name() { # SYSTEM SUFFIX
    case $1 in
    qemu) echo "nbq-$2" ;;
    nimbus) echo "vm-$2" ;;
    libvirt) echo "nbench-$2" ;;
    esac
}

# run_batch SYSTEM MODE NAME...: starts all at once, waits for all, destroys all.
run_batch() {
    local sys=$1 mode=$2 pids=() n fail=0
    shift 2
    for n in "$@"; do prepare "$sys" "$n"; done
    for n in "$@"; do
        measure "$sys" "$mode" "$n" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    [ "$fail" = 0 ] || die "$sys: a create command failed (files in $WORK)"
    for n in "$@"; do
        if grep -q " $n FAIL " "$FAILS"; then
            log "$sys $n FAILED: $(grep " $n FAIL " "$FAILS" | cut -d' ' -f7-)"
        fi
        destroy "$sys" "$n"
    done
}

rotated() { # ROUND: SYSTEMS rotated by ROUND
    local -a s
    read -ra s <<<"$SYSTEMS"
    local k=${#s[@]} i
    for ((i = 0; i < k; i++)); do echo "${s[$(((i + $1) % k))]}"; done
}

# ---- warm-up: one unmeasured VM of nimbus first (it fetches the image into the
# node's cache, where the other two then take the same kernel and initrd from) ----
MODE_NOW=warm
log "warm-up: nimbus"
run_batch nimbus warm vm-warm
IMGDIR=$DATA/agent/images/tiny
[ -f "$IMGDIR/vmlinuz" ] && [ -f "$IMGDIR/initrd.img" ] || die "no kernel/initrd in $IMGDIR after the first VM"
mkdir -p "$WORK/guest"
cp "$IMGDIR/vmlinuz" "$IMGDIR/initrd.img" "$WORK/guest/"
chmod 755 "$WORK/guest"
KERNEL=$WORK/guest/vmlinuz
INITRD=$WORK/guest/initrd.img
for s in $SYSTEMS; do
    [ "$s" = nimbus ] && continue
    log "warm-up: $s"
    run_batch "$s" warm "$(vm_name "$s" warm)"
done
sed -i '/ warm /d' "$RESULTS"
if grep -q . "$FAILS"; then cat "$FAILS" >&2; die "a warm-up VM failed (files in $WORK)"; fi
sed -i '/^warm /d' "$BOOTMS"

# ---- measurements -------------------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for mode in $MODES; do
    MODE_NOW=$mode
    case $mode in
    seq)
        for ((i = 1; i <= N; i++)); do
            for s in $(rotated "$i"); do
                log "seq $i/$N: $s"
                run_batch "$s" seq "$(vm_name "$s" "s$i")"
            done
        done
        ;;
    par)
        batches=$(((N + PAR - 1) / PAR))
        for ((b = 1; b <= batches; b++)); do
            for s in $(rotated "$b"); do
                log "par batch $b/$batches ($PAR at a time): $s"
                names=()
                for ((j = 1; j <= PAR; j++)); do names+=("$(vm_name "$s" "p$b-$j")"); done
                run_batch "$s" par "${names[@]}"
            done
        done
        ;;
    *) die "unknown mode $mode" ;;
    esac
done

# ---- report -------------------------------------------------------------------------
# pct Q: linear-interpolated percentile of the numbers on stdin.
pct() {
    sort -n | awk -v q="$1" '{v[NR]=$1} END {
        if (NR == 0) { print "-"; exit }
        h = (NR - 1) * q + 1; lo = int(h); f = h - lo
        x = (lo < NR) ? v[lo] + f * (v[lo + 1] - v[lo]) : v[NR]
        printf "%.0f\n", x }'
}
col() { awk -v s="$1" -v m="$2" -v c="$3" '$1 == s && $2 == m {print $c}' "$RESULTS"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "-") printf "%.2f×", a / b; else print "-" }'; }
# paired MODE A B: per round (seq: VM i; par: batch b), mean of A minus mean of B.
# The systems take turns round by round, so this cancels slow drift in machine load.
paired() {
    awk -v m="$1" -v a="$2" -v b="$3" '$2 == m {
        r = $3; sub(/^(vm|nbq|nbench)-/, "", r); sub(/-.*/, "", r)
        sum[$1, r] += $4; cnt[$1, r]++; rounds[r] = 1 }
        END { for (r in rounds) if (cnt[a, r] && cnt[b, r])
            printf "%.0f\n", sum[a, r] / cnt[a, r] - sum[b, r] / cnt[b, r] }' "$RESULTS"
}
sub() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || a == "" || b == "") print "-"; else print a - b }'; }
nfail() { awk -v s="$1" -v m="$2" '$1 == s && $2 == m' "$FAILS" | wc -l; }
mode_label() { case $1 in seq) echo sequential ;; par) echo "$PAR at a time" ;; *) echo "$1" ;; esac; }

qemu_ver=$($QEMU --version | head -1)
lv_ver=$(/usr/sbin/libvirtd --version | head -1)
echo
echo "Machine: nproc $(nproc), Linux $(uname -r), $qemu_ver, $lv_ver" \
    "(virsh $(virsh --version)), accelerator $ACCEL ($ACCEL_REASON)," \
    "nimbus $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" diff --quiet 2>/dev/null || echo '+dirty tree')"
echo "Load average: $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end (other work on the machine counts)."
echo "Guest: tiny image, 1 vCPU, $MEM_MIB MiB, cmdline '$CMDLINE'; console polled every ${POLL}s."
echo
echo "Create to guest ready (ms), p50 and p95 over n VMs; 'vs nimbus' = this system's time ÷ nimbus's (>1: slower than nimbus):"
echo
echo "| system | mode | n | failed | p50 ms | p95 ms | p50 vs nimbus | p95 vs nimbus | create command returned, p50 ms | QEMU up, p50 / p95 ms |"
echo "|---|---|---|---|---|---|---|---|---|---|"
nimbus_cli events -o json 2>/dev/null | jq -r 'select(.kind == "instance_created" or .kind == "instance_scheduled") | "\(.kind) \(.object) \(.at_ms)"' >"$WORK/events.txt" 2>/dev/null || : >"$WORK/events.txt"
declare -A P50 P95 U50 U95
for mode in $MODES; do
    for s in $SYSTEMS; do
        P50[$s.$mode]=$(col "$s" "$mode" 4 | pct 0.5)
        P95[$s.$mode]=$(col "$s" "$mode" 4 | pct 0.95)
        U50[$s.$mode]=$(col "$s" "$mode" 6 | awk '$1 != "-"' | pct 0.5)
        U95[$s.$mode]=$(col "$s" "$mode" 6 | awk '$1 != "-"' | pct 0.95)
    done
    for s in $SYSTEMS; do
        n=$(col "$s" "$mode" 4 | wc -l)
        cmd=$(col "$s" "$mode" 5 | pct 0.5)
        r50=- r95=-
        if [[ " $SYSTEMS " == *" nimbus "* ]]; then
            r50=$(ratio "${P50[$s.$mode]}" "${P50[nimbus.$mode]}")
            r95=$(ratio "${P95[$s.$mode]}" "${P95[nimbus.$mode]}")
        fi
        echo "| $s | $(mode_label "$mode") | $n | $(nfail "$s" "$mode") | ${P50[$s.$mode]} | ${P95[$s.$mode]} | $r50 | $r95 | $cmd | ${U50[$s.$mode]} / ${U95[$s.$mode]} |"
    done
done
echo
for mode in $MODES; do
    ml=$(mode_label "$mode")
    if [[ " $SYSTEMS " == *" nimbus "* && " $SYSTEMS " == *" qemu "* ]]; then
        u=$(sub "${U50[nimbus.$mode]}" "${U50[qemu.$mode]}")
        echo "- $ml: nimbus start overhead over bare QEMU (create command to QEMU up): p50 $u ms, p95 $(sub "${U95[nimbus.$mode]}" "${U95[qemu.$mode]}") ms; target < 50 ms: $(awk -v d="$u" 'BEGIN { print (d != "-" && d < 50) ? "met" : "not met" }')"
        pd=$(paired "$mode" nimbus qemu)
        echo "- $ml: nimbus minus bare QEMU end to end: p50 $(sub "${P50[nimbus.$mode]}" "${P50[qemu.$mode]}") ms, p95 $(sub "${P95[nimbus.$mode]}" "${P95[qemu.$mode]}") ms; median of the per-round differences $(pct 0.5 <<<"$pd") ms (rounds: $(echo $pd))"
    fi
    if [[ " $SYSTEMS " == *" nimbus "* && " $SYSTEMS " == *" libvirt "* ]]; then
        d=$(sub "${P50[libvirt.$mode]}" "${P50[nimbus.$mode]}")
        pd=$(paired "$mode" libvirt nimbus)
        echo "- $ml: libvirt minus nimbus end to end: p50 $d ms, p95 $(sub "${P95[libvirt.$mode]}" "${P95[nimbus.$mode]}") ms; median of the per-round differences $(pct 0.5 <<<"$pd") ms (rounds: $(echo $pd)); nimbus faster at p50: $(awk -v d="$d" 'BEGIN { print (d != "-" && d > 0) ? "yes" : "no" }')"
        echo "- $ml: libvirt minus nimbus, create command to QEMU up: p50 $(sub "${U50[libvirt.$mode]}" "${U50[nimbus.$mode]}") ms"
    fi
    if [[ " $SYSTEMS " == *" nimbus "* ]]; then
        # Where nimbus's start latency goes: the server's event times against the
        # moment the CLI was started (same host clock).
        brk=$(awk -v m="$mode" 'NR == FNR { at[$1, $2] = $3; next }
            $1 == "nimbus" && $2 == m && $6 != "-" && at["instance_created", $3] && at["instance_scheduled", $3] {
                print at["instance_created", $3] - $7, at["instance_scheduled", $3] - $7, $5, $6 }' \
            "$WORK/events.txt" "$RESULTS")
        if [ -n "$brk" ]; then
            echo "- $ml: nimbus start path, p50 ms after the CLI started: instance stored (instance_created event) $(cut -d' ' -f1 <<<"$brk" | pct 0.5), scheduled (instance_scheduled event) $(cut -d' ' -f2 <<<"$brk" | pct 0.5), CLI returned $(cut -d' ' -f3 <<<"$brk" | pct 0.5), QEMU up $(cut -d' ' -f4 <<<"$brk" | pct 0.5)"
        fi
        bm=$(awk -v m="$mode" '$1 == m && $3 != "-" {print $3}' "$BOOTMS")
        echo "- $ml: nimbus API boot_ms (QEMU start to marker, agent looks every 0.5 s): p50 $(pct 0.5 <<<"$bm") ms, p95 $(pct 0.95 <<<"$bm") ms"
        thr=$(awk -v m="$mode" '$1 == m && $4 != "-" {print $4}' "$BOOTMS")
        if [ -n "$thr" ]; then
            echo "- $ml: time nimbus VMs were throttled by their cgroup CPU quota (1 core per vCPU; bare QEMU and libvirt run without one): p50 $(pct 0.5 <<<"$thr") ms, p95 $(pct 0.95 <<<"$thr") ms"
        fi
    fi
done
echo
if grep -q . "$FAILS"; then
    echo "Failed VMs (system mode name FAIL command_ms elapsed_ms why; consoles in $WORK/failed):"
    echo
    echo '```'
    cat "$FAILS"
    for f in "$WORK"/failed/*.console; do
        [ -f "$f" ] || continue
        echo "--- last console lines of $(basename "$f" .console):"
        tail -5 "$f"
    done
    echo '```'
    echo
fi
echo "Raw samples (system mode name ready_ms command_returned_ms qemu_up_ms t0_unix_ms):"
echo
echo '```'
cat "$RESULTS"
echo '```'
