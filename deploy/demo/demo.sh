#!/usr/bin/env bash
# vigil demo: three real observer processes on this machine, from the
# example configs in deploy/examples/local. It shows the cluster electing a
# leader, forwarding an operator's write from a follower to the leader,
# surviving kill -9 of the leader, and the killed observer rejoining with
# its state. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-bin}
VIGIL="$BIN/vigil"
CTL="$BIN/vigilctl"
[ -x "$VIGIL" ] && [ -x "$CTL" ] || { echo "demo: run 'make build' first (or 'make demo')" >&2; exit 1; }

RUN=$(mktemp -d /tmp/vigil-demo.XXXXXX)
declare -A PIDS=()
cleanup() {
  for id in "${!PIDS[@]}"; do kill -TERM "${PIDS[$id]}" 2>/dev/null || true; done
  for id in "${!PIDS[@]}"; do wait "${PIDS[$id]}" 2>/dev/null || true; done
  rm -rf "$RUN"
}
trap cleanup EXIT INT TERM

for port in 7101 7102 7103 7201 7202 7203 7301 7302 7303 7401 7402 7403; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "demo: port $port is in use; stop whatever listens there (another demo?) and retry" >&2; exit 1
  fi
done

ts() { date +%H:%M:%S.%3N; }
say() { printf '\n\033[1m[%s] %s\033[0m\n' "$(ts)" "$*"; }
export VIGIL_ADDR=127.0.0.1:7301,127.0.0.1:7302,127.0.0.1:7303

"$VIGIL" keygen > "$RUN/gossip.key"
for i in 1 2 3; do
  sed "s#data_dir: /var/lib/vigil/obs$i#data_dir: $RUN/data/obs$i#" deploy/examples/local/obs$i.yaml > "$RUN/obs$i.yaml"
done
start() { "$VIGIL" observer --config "$RUN/$1.yaml" >>"$RUN/$1.log" 2>&1 & PIDS[$1]=$!; }

leader() { "$CTL" status -o json 2>/dev/null | sed -n 's/.*"leader_id": *"\([^"]*\)".*/\1/p' | head -1; }
wait_leader() { # wait_leader [not-this-id]
  local deadline=$((SECONDS + 30)) l
  while [ $SECONDS -lt $deadline ]; do
    l=$(leader)
    if [ -n "$l" ] && [ "$l" != "${1:-}" ]; then echo "$l"; return 0; fi
    sleep 0.05
  done
  echo "demo: no leader after 30s; logs in $RUN" >&2; return 1
}

say "starting three observers (logs: $RUN/obs*.log)"
for id in obs1 obs2 obs3; do start $id; done
L=$(wait_leader)
say "leader elected: $L"
"$CTL" status

say "groups, synced from the leader's config into Raft and served by every observer"
"$CTL" groups

F=obs1; [ "$L" = obs1 ] && F=obs2
FPORT=730${F#obs}
say "operator pauses pg-main through follower $F (forwarded to leader $L)"
"$CTL" --addr 127.0.0.1:$FPORT pause pg-main --reason "demo maintenance"
"$CTL" --addr 127.0.0.1:$FPORT group pg-main

say "kill -9 the leader $L"
T0=$(date +%s%N)
kill -KILL "${PIDS[$L]}"; wait "${PIDS[$L]}" 2>/dev/null || true; unset "PIDS[$L]"
N=$(wait_leader "$L")
T1=$(date +%s%N)
say "new leader: $N, $(( (T1 - T0) / 1000000 )) ms after the kill"
"$CTL" status

say "resume pg-main through the new cluster, then restart $L from its data directory"
"$CTL" resume pg-main
start "$L"
deadline=$((SECONDS + 30))
until "$CTL" --addr 127.0.0.1:730${L#obs} group pg-main -o json 2>/dev/null | grep -q '"resumed"'; do
  [ $SECONDS -lt $deadline ] || { echo "demo: $L did not catch up; see $RUN/$L.log" >&2; exit 1; }
  sleep 0.1
done
say "$L rejoined and caught up; its view of pg-main:"
"$CTL" --addr 127.0.0.1:730${L#obs} group pg-main
"$CTL" status

say "stopping all observers gracefully (SIGTERM)"
