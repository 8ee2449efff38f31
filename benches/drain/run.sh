#!/usr/bin/env bash
# Drain benchmark: what moving a running VM off a node costs its users, live migration
# against the offline move (stop, back up, restore), side by side on the same nodes.
#
#   cargo build --release -p nimbus && benches/drain/run.sh
#
# One `nimbus up` (node a) and a second agent (node b), on loopback. Per run and mode:
# create a VM (tiny image, 128 MiB, 64 MiB disk) whose guest first fills 32 MiB of its
# disk with random data, wait until that is done, then drain the node it runs on
# (`nimbus node drain`, with `--offline` for the offline mode) while a client fetches
# the guest's web page through its forwarded port every 50 ms (the port is looked up
# again after every failure: it changes with the node). Then undrain, delete the VM.
# Measured:
#   drain     wall time of `nimbus node drain` (until the node is empty)
#   paused    live: QEMU's measured downtime on the source (from the instance_moved
#             event); the guest then waits, paused on the target, until the server has
#             placed it there; offline: the downtime nimbus reports (stop to running on
#             the new node, from the same event)
#   gap       what the client saw: last answer before the move to first answer after
#             it (includes the guest's boot when offline, and, live, the time until the
#             new port is known)
#
# Environment: N=5 (runs per mode), MODES="live offline", NIMBUS=target/release/nimbus,
# KEEP_WORK=1 keeps the scratch directory.
set -euo pipefail

N=${N:-5}
MODES=${MODES:-"live offline"}
NIMBUS=$(realpath "${NIMBUS:-target/release/nimbus}")
[ "$(id -u)" = 0 ] || { echo "run as root (cgroups)" >&2; exit 1; }
[ -x "$NIMBUS" ] || { echo "build first: cargo build --release -p nimbus" >&2; exit 1; }
for t in jq curl python3; do
  command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/nimbus-drain.XXXXXX)
PORT=18571
URL=http://127.0.0.1:$PORT
export NIMBUS_SERVER=$URL

cleanup() {
  kill "${CLIENT_PID:-0}" 2>/dev/null || true
  kill "${AGENT_PID:-0}" "${UP_PID:-0}" 2>/dev/null || true
  sleep 2
  pkill -9 -f "$WORK" 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && echo "scratch kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
api() { curl -sf "$URL$1"; }
wait_for() {
  local secs=$1; shift
  local end=$(( $(date +%s) + secs ))
  until "$@"; do
    [ "$(date +%s)" -lt $end ] || { echo "timed out: $*" >&2; exit 1; }
    sleep 0.2
  done
}
node_ready() { api "/v1/nodes/$1" | jq -e '.state=="ready"' >/dev/null 2>&1; }

"$NIMBUS" up --name a --listen 127.0.0.1:$PORT --data-dir "$WORK/a" >"$WORK/up.log" 2>&1 &
UP_PID=$!
wait_for 60 node_ready a
"$NIMBUS" agent --server "$URL" --name b --data-dir "$WORK/b" >"$WORK/b.log" 2>&1 &
AGENT_PID=$!
wait_for 60 node_ready b
"$NIMBUS" image build tiny >/dev/null

cat > "$WORK/fill.sh" <<'EOF'
#!/bin/sh
dd if=/dev/urandom of=/dev/vda bs=1M count=32 seek=1 conv=fsync 2>/dev/null
echo filled > /www/filled.txt
EOF

# The client: one line per answer, "unix-ms", until killed.
client() {
  local port=""
  while true; do
    [ -n "$port" ] || port=$(api /v1/instances/vm | jq -r '.endpoints[0] // "" | split("->")[0]')
    if [ -n "$port" ] && curl -sf --max-time 0.2 "http://127.0.0.1:$port/" >/dev/null; then
      now_ms
    else
      port=""
    fi
    sleep 0.05
  done
}

RESULTS=$WORK/results.tsv
printf 'mode\trun\tdrain_s\tpaused_s\tgap_s\n' > "$RESULTS"
for run in $(seq 1 "$N"); do
  for mode in $MODES; do
    "$NIMBUS" instance create vm --vm --image tiny --memory 128Mi --disk-size 64Mi \
      --port 80 --node-selector nimbus/node=a --user-data "$WORK/fill.sh" >/dev/null
    wait_for 180 sh -c "port=\$(curl -sf $URL/v1/instances/vm | jq -r '.endpoints[0] // \"\" | split(\"->\")[0]'); [ -n \"\$port\" ] && curl -sf http://127.0.0.1:\$port/filled.txt >/dev/null"
    client > "$WORK/answers" &
    CLIENT_PID=$!
    sleep 1
    flag=""; [ "$mode" = offline ] && flag=--offline
    t0=$(now_ms)
    "$NIMBUS" node drain a $flag --timeout 300 >/dev/null
    t1=$(now_ms)
    wait_for 120 sh -c "[ \$(awk -v t=$t1 '\$1>t' $WORK/answers | wc -l) -gt 0 ]"
    kill $CLIENT_PID; wait $CLIENT_PID 2>/dev/null || true
    gap=$(python3 - "$WORK/answers" "$t0" <<'EOF'
import sys
t = [int(l) for l in open(sys.argv[1]) if l.strip()]
t0 = int(sys.argv[2])
before = [x for x in t if x <= t0]
# the longest silence from the drain's start on
prev = before[-1] if before else t0
gaps = [b - a for a, b in zip([prev] + [x for x in t if x > t0], [x for x in t if x > t0])]
print(max(gaps) / 1000 if gaps else "-")
EOF
)
    msg=$(api "/v1/events?limit=1000" | jq -r '[.items[] | select(.kind=="instance_moved" and .object=="vm")] | last | .message')
    case "$mode" in
      live) paused=$(echo "$msg" | sed -n 's/.*QEMU downtime \([0-9]*\) ms.*/\1/p' | awk '{print $1/1000}') ;;
      *) paused=$(echo "$msg" | sed -n 's/.*downtime \([0-9.]*\)s.*/\1/p') ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$run" "$(awk -v a=$t0 -v b=$t1 'BEGIN{print (b-a)/1000}')" \
      "${paused:--}" "$gap" >> "$RESULTS"
    echo "run $run $mode: drain $(( t1 - t0 )) ms; $msg" >&2
    "$NIMBUS" node undrain a >/dev/null
    "$NIMBUS" instance delete vm >/dev/null
    wait_for 60 sh -c "! curl -sf $URL/v1/instances/vm >/dev/null"
  done
done

python3 - "$RESULTS" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("| mode | runs | drain p50 / max (s) | QEMU downtime or offline downtime p50 / max (s) | client gap p50 / max (s) |")
print("|---|---|---|---|---|")
med = {}
for mode in dict.fromkeys(r["mode"] for r in rows):
    def pm(c):
        v = [float(r[c]) for r in rows if r["mode"] == mode and r[c] not in ("-", "")]
        if not v:
            return "-"
        med[(mode, c)] = statistics.median(v)
        return f"{statistics.median(v):.3f} / {max(v):.3f}"
    n = len([r for r in rows if r["mode"] == mode])
    print(f"| {mode} | {n} | {pm('drain_s')} | {pm('paused_s')} | {pm('gap_s')} |")
for c, what in (("paused_s", "downtime"), ("gap_s", "client gap"), ("drain_s", "drain")):
    if ("live", c) in med and ("offline", c) in med and med[("live", c)] > 0:
        print(f"\n{what}: offline / live = {med[('offline', c)] / med[('live', c)]:.1f}x", end="")
print()
EOF
