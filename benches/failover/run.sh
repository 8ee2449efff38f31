#!/usr/bin/env bash
# Failover benchmark: how fast nimbus notices a dead node, how fast the work runs again
# elsewhere, and how much data is lost, for hot processes, cold VMs and hot VMs; and
# what the synchronous disk mirror of a hot VM costs the guest's writes.
#
#   cargo build --release -p nimbus && benches/failover/run.sh
#
# Needs root. One `nimbus server` on a Linux bridge and three agents, each in its own
# network namespace with its own address (ip netns + veth; agents are started with
# nsenter --net so they keep the host's cgroup file systems). Server defaults: suspect
# after 1 s, down after 2 s; agents heartbeat every 0.5 s (the defaults). The probation
# of returning nodes is off (--node-probation 0): every run crashes a node and brings
# it back, and the benchmark measures detection and recovery, not readmission.
#
# One run: create the instance, wait until it is ready to fail over (process: running
# with a standby; cold VM: a first automatic backup, --backup-every 5s; hot VM: its
# replica in sync), let it work for a random 0-5 s, then crash its node: SIGKILL of
# the agent, of every process in the node's cgroups (the workload, QEMU) and of the
# node's qemu-nbd replica exports. Measured from the crash (all on the server's clock,
# from event timestamps):
#   detection  crash -> node_down
#   RTO        crash -> the instance running on another node (failover_completed);
#              VMs also: crash -> guest ready (its console marker) on the new node
#   RPO        VMs: the guest counts on its raw disk, writing each value with fsync and
#              then printing it; lost = last value printed before the crash minus the
#              value found on the disk after failover (0 = no completed write lost);
#              cold VMs also: the age of the restored backup (from the event).
# Then the crashed node's agent is restarted and the instance deleted.
#
# Mirror cost: one VM with --ha none and one with --ha hot (replica in sync) each run
# `dd if=/dev/zero of=/dev/vda bs=4k count=$DD_COUNT oflag=direct` (4 KiB writes, one
# at a time, each to the device) $DD_ROUNDS times, timed in the guest with
# /proc/uptime (10 ms resolution; busybox dd prints no timing); reported: MB/s and
# the mean time per write.
#
# Environment: N=10 (runs per kind; N_VM for the VM kinds, default N), KINDS="process
# cold-vm hot-vm", DD_COUNT=500,
# DD_ROUNDS=5, NIMBUS=target/release/nimbus, KEEP_WORK=1 keeps the scratch directory.
set -euo pipefail

N=${N:-10}
N_VM=${N_VM:-$N}
KINDS=${KINDS:-"process cold-vm hot-vm"}
DD_COUNT=${DD_COUNT:-500}
DD_ROUNDS=${DD_ROUNDS:-5}
NIMBUS=$(realpath "${NIMBUS:-target/release/nimbus}")
[ "$(id -u)" = 0 ] || { echo "run as root (cgroups, network namespaces)" >&2; exit 1; }
[ -x "$NIMBUS" ] || { echo "build first: cargo build --release -p nimbus" >&2; exit 1; }
for t in ip nsenter jq curl qemu-nbd; do
  command -v $t >/dev/null || { echo "missing $t (scripts/setup.sh installs QEMU's tools)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/nimbus-failover.XXXXXX)
BR=nbfo$$
NET=10.79.$(( $$ % 200 + 1 ))
PORT=18471
URL=http://$NET.1:$PORT
export NIMBUS_SERVER=$URL
NODES=(1 2 3)
declare -A AGENT_PID

cleanup() {
  for n in "${NODES[@]}"; do
    kill -9 "${AGENT_PID[$n]:-0}" 2>/dev/null || true
    kill_workloads "$n"
    ip netns del "nfo$$-$n" 2>/dev/null || true
  done
  kill -9 "${SERVER_PID:-0}" 2>/dev/null || true
  ip link del "$BR" 2>/dev/null || true
  pkill -9 -f "$WORK" 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && echo "scratch kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
api() { curl -sf "$URL$1"; }

kill_workloads() {
  local n=$1
  for procs in /sys/fs/cgroup/*/nimbus/fo-$n/*/cgroup.procs /sys/fs/cgroup/nimbus/fo-$n/*/cgroup.procs; do
    [ -f "$procs" ] && xargs -r kill -9 < "$procs" 2>/dev/null || true
  done
  pkill -9 -f "qemu-nbd.*$WORK/agent-$n/" 2>/dev/null || true
}

start_agent() {
  local n=$1
  nsenter --net=/var/run/netns/nfo$$-$n "$NIMBUS" agent --server "$URL" --name "fo-$n" \
    --data-dir "$WORK/agent-$n" --cpus 2 --memory 2Gi >>"$WORK/agent-$n.log" 2>&1 &
  AGENT_PID[$n]=$!
  disown
}

wait_for() { # wait_for SECONDS CMD...: until CMD succeeds
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out: $*" >&2; return 1; }
    sleep 0.05
  done
}
node_is() { [ "$(api /v1/nodes/fo-$1 | jq -r .state)" = "$2" ]; }
inst() { api "/v1/instances/$1"; }

# --- network and cluster -------------------------------------------------------
ip link add "$BR" type bridge
ip addr add "$NET.1/24" dev "$BR"
ip link set "$BR" up
for n in "${NODES[@]}"; do
  ns=nfo$$-$n
  ip netns add "$ns"
  ip link add "vfo$$h$n" type veth peer name "vfo$$p$n"
  ip link set "vfo$$p$n" netns "$ns"
  ip link set "vfo$$h$n" master "$BR" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$NET.$((10 + n))/24" dev "vfo$$p$n"
  ip -n "$ns" link set "vfo$$p$n" up
done
"$NIMBUS" server --listen "$NET.1:$PORT" --data-dir "$WORK/server" --node-probation 0 \
  >>"$WORK/server.log" 2>&1 &
SERVER_PID=$!
disown
wait_for 30 curl -sf "$URL/v1/nodes" -o /dev/null
for n in "${NODES[@]}"; do start_agent "$n"; done
for n in "${NODES[@]}"; do wait_for 30 node_is "$n" ready; done
echo "cluster: server on $URL, nodes fo-1..fo-3 in namespaces; building the tiny image" >&2
"$NIMBUS" image build tiny >/dev/null

# The guest's disk counter (see the header).
cat > "$WORK/counter.sh" <<'EOF'
#!/bin/sh
n=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\000' | sed -n 's/^count-\([0-9][0-9]*\).*/\1/p')
[ -n "$n" ] || n=0
echo "found $n"
i=$n
while true; do
  i=$((i+1))
  printf 'count-%d\n' $i | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null && echo "wrote $i"
  sleep 0.05
done
EOF
cat > "$WORK/dd.sh" <<EOF
#!/bin/sh
# Time for the mirror's first full copy: every round below is mirrored.
sleep 20
r=0
while [ \$r -lt $DD_ROUNDS ]; do
  r=\$((r+1))
  t0=\$(cut -d' ' -f1 /proc/uptime)
  dd if=/dev/zero of=/dev/vda bs=4k count=$DD_COUNT oflag=direct 2>/dev/null
  t1=\$(cut -d' ' -f1 /proc/uptime)
  echo "ddsecs \$(awk "BEGIN{print \$t1 - \$t0}")"
done
echo "dd-done"
EOF

event_ms() { # event_ms KIND OBJECT AFTER_MS: timestamp of the first such event after AFTER_MS
  api "/v1/events?limit=1000&after=0" | jq -r --arg k "$1" --arg o "$2" --argjson t "$3" \
    '[.items[] | select(.kind==$k and .object==$o and .at_ms>=$t)][0].at_ms // empty'
}
event_msg() {
  api "/v1/events?limit=1000&after=0" | jq -r --arg k "$1" --arg o "$2" --argjson t "$3" \
    '[.items[] | select(.kind==$k and .object==$o and .at_ms>=$t)][0].message // empty'
}
console_file() { echo "$WORK/agent-$1/instances/$2/output.log"; }
last_wrote() { grep -ao 'wrote [0-9]*' "$1" 2>/dev/null | awk '{print $2}' | sort -n | tail -1; }

RESULTS=$WORK/results.tsv
printf 'kind\trun\tdetection_s\trto_s\tready_s\tlost_writes\tbackup_age_s\n' > "$RESULTS"

run_one() { # run_one KIND I
  local kind=$1 i=$2 name="f$i-${1%%-*}" args
  case $kind in
    process) args=(--memory 32Mi --cpu 0.1 --ha hot -- sh -c 'exec sleep 100000') ;;
    cold-vm) args=(--vm --image tiny --memory 128Mi --disk-size 16Mi --ha cold --backup-every 5s --user-data "$WORK/counter.sh") ;;
    hot-vm) args=(--vm --image tiny --memory 128Mi --disk-size 16Mi --ha hot --user-data "$WORK/counter.sh") ;;
  esac
  "$NIMBUS" instance create "$name" "${args[@]}" >/dev/null
  wait_for 120 sh -c "curl -sf $URL/v1/instances/$name | jq -e '.state==\"running\"' >/dev/null"
  case $kind in
    process|hot-vm) wait_for 120 sh -c "curl -sf $URL/v1/instances/$name | jq -e '.standby.in_sync==true' >/dev/null" ;;
    cold-vm) wait_for 120 sh -c "curl -sf '$URL/v1/instances/$name/backups' | jq -e '[.items[]|select(.state==\"done\")]|length>0' >/dev/null" ;;
  esac
  [ "$kind" = process ] || wait_for 120 sh -c "curl -sf $URL/v1/instances/$name | jq -e '.guest_ready==true' >/dev/null"
  sleep "$(awk -v s=$RANDOM 'BEGIN{srand(s); printf "%.2f", rand()*5}')"
  local node
  node=$(inst "$name" | jq -r .node); node=${node#fo-}
  local t0; t0=$(now_ms)
  kill -9 "${AGENT_PID[$node]}"; kill_workloads "$node"
  local acked=""
  [ "$kind" = process ] || acked=$(last_wrote "$(console_file "$node" "$name")")
  wait_for 60 sh -c "curl -sf $URL/v1/instances/$name | jq -e '.state==\"running\" and .node!=\"fo-$node\"' >/dev/null"
  local t_down t_done ready="" lost="" age=""
  t_down=$(event_ms node_down "fo-$node" "$t0")
  wait_for 30 sh -c "[ -n \"\$(curl -sf '$URL/v1/events?limit=1000' | jq -r '.items[]|select(.kind==\"failover_completed\" and .object==\"$name\")|.at_ms')\" ]"
  t_done=$(event_ms failover_completed "$name" "$t0")
  if [ "$kind" != process ]; then
    wait_for 180 sh -c "curl -sf $URL/v1/instances/$name | jq -e '.guest_ready==true' >/dev/null"
    ready=$(awk -v a="$(now_ms)" -v b="$t0" 'BEGIN{printf "%.2f", (a-b)/1000}')
    local found
    wait_for 60 sh -c "\"$NIMBUS\" instance console $name | grep -aq 'found [0-9]'"
    found=$("$NIMBUS" instance console "$name" | grep -ao 'found [0-9]*' | tail -1 | awk '{print $2}')
    lost=$(( ${acked:-0} > ${found:-0} ? ${acked:-0} - ${found:-0} : 0 ))
  fi
  if [ "$kind" = cold-vm ]; then
    age=$(event_msg failover_completed "$name" "$t0" | sed -n 's/.*data loss (RPO) \([0-9.]*\)s.*/\1/p')
  fi
  printf '%s\t%d\t%.2f\t%.2f\t%s\t%s\t%s\n' "$kind" "$i" \
    "$(awk -v a="$t_down" -v b="$t0" 'BEGIN{print (a-b)/1000}')" \
    "$(awk -v a="$t_done" -v b="$t0" 'BEGIN{print (a-b)/1000}')" \
    "${ready:--}" "${lost:--}" "${age:--}" | tee -a "$RESULTS" >&2
  start_agent "$node"
  # The instance goes in the background; the next run starts once the node is back.
  "$NIMBUS" instance delete "$name" >/dev/null
  wait_for 60 node_is "$node" ready
}

for kind in $KINDS; do
  runs=$N; [ "$kind" = process ] || runs=$N_VM
  for i in $(seq 1 "$runs"); do run_one "$kind" "$i"; done
done

# --- mirror cost ----------------------------------------------------------------
DD=$WORK/dd.tsv
printf 'mirror\tround\tseconds\n' > "$DD"
for mode in off on; do
  name="dd-$mode"
  ha=none; [ $mode = on ] && ha=hot
  "$NIMBUS" instance create "$name" --vm --image tiny --memory 128Mi --disk-size 64Mi \
    --ha $ha --user-data "$WORK/dd.sh" >/dev/null
  wait_for 120 sh -c "curl -sf $URL/v1/instances/$name | jq -e '.state==\"running\"' >/dev/null"
  if [ $mode = on ]; then
    # The guest waits 20 s after boot before writing; the replica must be in sync first.
    wait_for 120 sh -c "curl -sf $URL/v1/instances/$name | jq -e '.standby.in_sync==true' >/dev/null"
    if "$NIMBUS" instance console "$name" | grep -q ddsecs; then
      echo "the guest wrote before its replica was in sync; rerun" >&2; exit 1
    fi
  fi
  wait_for 600 sh -c "\"$NIMBUS\" instance console $name | grep -q dd-done"
  "$NIMBUS" instance console "$name" | grep -a '^ddsecs' | awk -v m=$mode '{print m"\t"NR"\t"$2}' >> "$DD"
  "$NIMBUS" instance delete "$name" >/dev/null
  wait_for 60 sh -c "! curl -sf $URL/v1/instances/$name >/dev/null"
done

# --- report -----------------------------------------------------------------------
python3 - "$RESULTS" "$DD" "$DD_COUNT" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def col(kind, c):
    return [float(r[c]) for r in rows if r["kind"] == kind and r[c] not in ("-", "")]
print("| kind | runs | detection p50 / max (s) | RTO running p50 / max (s) | RTO guest ready p50 / max (s) | writes lost p50 / max | backup age p50 / max (s) |")
print("|---|---|---|---|---|---|---|")
for kind in dict.fromkeys(r["kind"] for r in rows):
    def pm(c, fmt="{:.2f}"):
        v = col(kind, c)
        return f"{fmt.format(statistics.median(v))} / {fmt.format(max(v))}" if v else "-"
    n = len([r for r in rows if r["kind"] == kind])
    print(f"| {kind} | {n} | {pm('detection_s')} | {pm('rto_s')} | {pm('ready_s')} | {pm('lost_writes', '{:.0f}')} | {pm('backup_age_s')} |")
dd = list(csv.DictReader(open(sys.argv[2]), delimiter="\t"))
count = int(sys.argv[3])
print()
print("| mirror | rounds | MB/s (median) | mean time per 4 KiB synchronous write (ms) |")
print("|---|---|---|---|")
res = {}
for m in ("off", "on"):
    secs = [float(r["seconds"]) for r in dd if r["mirror"] == m]
    if not secs:
        continue
    s = statistics.median(secs)
    res[m] = s
    print(f"| {m} | {len(secs)} | {count * 4096 / s / 1e6:.2f} | {s / count * 1000:.2f} |")
if "on" in res and "off" in res:
    print(f"\nmirror on / off write time: {res['on'] / res['off']:.2f}x")
EOF
