#!/usr/bin/env bash
# vigil lab: hosts as network namespaces on this machine (root, iproute2).
#
#   lab.sh up PREFIX              build the lab, print its hosts
#   lab.sh down PREFIX            tear it down (also kills what runs inside)
#   lab.sh status PREFIX          show hosts, addresses and cuts
#   lab.sh exec PREFIX HOST CMD…  run CMD inside HOST's namespace
#   lab.sh cut PREFIX A B         drop all traffic between hosts A and B
#   lab.sh heal PREFIX A B        undo cut
#
# Hosts: obs1 obs2 obs3 (observers), db1 db2 db3 (PostgreSQL), client, lb
# (HAProxy). Each is a namespace PREFIX-HOST with eth0 on a private
# 10.213.Y.0/24 (Y chosen free of this machine's routes, or SUBNET=10.x.y
# to force one), joined by veth PREFIX-HOST to bridge PREFIX-br, which holds
# 10.213.Y.1 so this machine reaches every host. Hosts have no default
# route: nothing leaves the lab. PREFIX: a lowercase letter then up to 7
# lowercase letters or digits (Linux interface names are at most 15
# characters). State is kept in /run/vigil-lab/PREFIX.env.
#
# A failed "up" tears down what it built (trap). The Go helper for tests,
# deploy/lab/netlab, builds the same thing with unique names per test.
set -euo pipefail

HOSTS=(obs1 obs2 obs3 db1 db2 db3 client lb)
STATE_DIR=/run/vigil-lab

die() { echo "lab: $*" >&2; exit 1; }

check_prefix() {
  [[ "${1:-}" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "PREFIX must be a lowercase letter then up to 7 lowercase letters or digits (got '${1:-}')"
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, bridges, veths)"
  command -v ip >/dev/null || die "'ip' not found: apt-get install -y iproute2"
}

# host_ip SUBNET INDEX -> address of the INDEX-th host (0-based).
host_ip() { echo "$1.$((11 + $2))"; }

# A /24 in 10.213.0.0/16 that no route of this machine overlaps.
pick_subnet() {
  local routes y i
  routes=$(ip -4 route show table all | awk '{d=$1} d ~ /^(local|broadcast|unicast|blackhole|unreachable|prohibit|throw)$/ {d=$2} {print d}')
  for i in $(seq 0 255); do
    y=$(( (RANDOM + i) % 256 ))
    if ! grep -qE "^10\.213\.(0\.0/16|${y}\.)" <<<"$routes"; then
      echo "10.213.$y"
      return 0
    fi
  done
  die "no free /24 in 10.213.0.0/16"
}

lab_down() {
  local prefix=$1 h ns pids
  for h in "${HOSTS[@]}"; do
    ns="$prefix-$h"
    if [ -e "/run/netns/$ns" ]; then
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    fi
  done
  for h in "${HOSTS[@]}"; do
    [ -e "/sys/class/net/$prefix-$h" ] && ip link del "$prefix-$h" 2>/dev/null || true
  done
  [ -e "/sys/class/net/$prefix-br" ] && ip link del "$prefix-br" 2>/dev/null || true
  for h in "${HOSTS[@]}"; do
    [ -e "/run/netns/$prefix-$h" ] && ip netns del "$prefix-$h" 2>/dev/null || true
  done
  rm -f "$STATE_DIR/$prefix.env"
}

lab_up() {
  local prefix=$1 subnet i h ns
  [ -e "/sys/class/net/$prefix-br" ] && die "lab $prefix already exists (lab.sh down $prefix first)"
  for h in "${HOSTS[@]}"; do
    # Never build over (and so never tear down) something that is not ours.
    [ -e "/run/netns/$prefix-$h" ] && die "namespace $prefix-$h already exists (lab.sh down $prefix, or another PREFIX)"
    [ -e "/sys/class/net/$prefix-$h" ] && die "link $prefix-$h already exists (lab.sh down $prefix, or another PREFIX)"
  done
  subnet=${SUBNET:-$(pick_subnet)}
  [[ "$subnet" =~ ^10\.[0-9]+\.[0-9]+$ ]] || die "SUBNET must look like 10.x.y (private), got '$subnet'"

  # Tear down whatever was built if anything below fails.
  # shellcheck disable=SC2064 # expand $prefix now: the trap runs after lab_up returned
  trap "rc=\$?; if [ \$rc -ne 0 ]; then echo \"lab: up failed (exit \$rc), tearing down $prefix\" >&2; lab_down $prefix; fi" EXIT
  trap 'exit 130' INT TERM

  ip link add "$prefix-br" type bridge
  ip link set "$prefix-br" up
  ip addr add "$subnet.1/24" dev "$prefix-br"
  i=0
  for h in "${HOSTS[@]}"; do
    ns="$prefix-$h"
    ip netns add "$ns"
    ip link add "$prefix-$h" type veth peer name eth0 netns "$ns"
    ip link set "$prefix-$h" master "$prefix-br" up
    ip -n "$ns" addr add "$(host_ip "$subnet" $i)/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    i=$((i + 1))
  done
  mkdir -p "$STATE_DIR"
  {
    echo "SUBNET=$subnet"
    echo "BRIDGE=$prefix-br"
    i=0
    for h in "${HOSTS[@]}"; do
      echo "IP_$h=$(host_ip "$subnet" $i)"
      i=$((i + 1))
    done
  } >"$STATE_DIR/$prefix.env"
  trap - EXIT INT TERM
  lab_status "$prefix"
}

lab_status() {
  local prefix=$1 h
  [ -e "$STATE_DIR/$prefix.env" ] || die "no lab $prefix (lab.sh up $prefix)"
  # shellcheck disable=SC1090
  . "$STATE_DIR/$prefix.env"
  echo "lab $prefix: bridge $BRIDGE $SUBNET.1/24"
  printf '  %-7s %-22s %s\n' HOST NETNS ADDRESSES
  for h in "${HOSTS[@]}"; do
    printf '  %-7s %-22s %s\n' "$h" "$prefix-$h" \
      "$(ip -n "$prefix-$h" -4 -o addr show dev eth0 2>/dev/null | awk '{printf "%s ", $4}')"
  done
  echo "  run inside a host: ip netns exec $prefix-db1 CMD   (or: $0 exec $prefix db1 CMD)"
}

host_addr() {
  local prefix=$1 h=$2 v
  # shellcheck disable=SC1090
  . "$STATE_DIR/$prefix.env"
  v="IP_$h"
  [ -n "${!v:-}" ] || die "no host $h in lab $prefix (hosts: ${HOSTS[*]})"
  echo "${!v}"
}

# drop PREFIX HOST SRC on|off: HOST drops (or accepts again) what SRC sends.
drop() {
  local ns="$1-$2" src=$3 on=$4
  if command -v iptables >/dev/null; then
    if [ "$on" = on ]; then
      ip netns exec "$ns" iptables -w -C INPUT -s "$src/32" -j DROP 2>/dev/null ||
        ip netns exec "$ns" iptables -w -I INPUT -s "$src/32" -j DROP
    else
      while ip netns exec "$ns" iptables -w -C INPUT -s "$src/32" -j DROP 2>/dev/null; do
        ip netns exec "$ns" iptables -w -D INPUT -s "$src/32" -j DROP
      done
    fi
  else
    # iproute2 only: a blackhole rule for input from src, before "local".
    if ! ip -n "$ns" rule show pref 1000 | grep -q local; then
      ip -n "$ns" rule add pref 1000 lookup local
      ip -n "$ns" rule del pref 0 lookup local
    fi
    if [ "$on" = on ]; then
      ip -n "$ns" rule show pref 100 | grep -q "from $src " ||
        ip -n "$ns" rule add pref 100 iif eth0 from "$src/32" blackhole
    else
      while ip -n "$ns" rule show pref 100 | grep -q "from $src "; do
        ip -n "$ns" rule del pref 100 iif eth0 from "$src/32" blackhole
      done
    fi
  fi
}

cmd=${1:-}
case "$cmd" in
  up)
    check_prefix "${2:-}"; need_root
    lab_up "$2" ;;
  down)
    check_prefix "${2:-}"; need_root
    lab_down "$2"; echo "lab $2: down" ;;
  status)
    check_prefix "${2:-}"
    lab_status "$2" ;;
  exec)
    check_prefix "${2:-}"; need_root
    [ $# -ge 4 ] || die "usage: $0 exec PREFIX HOST CMD..."
    host_addr "$2" "$3" >/dev/null
    prefix=$2 host=$3; shift 3
    exec ip netns exec "$prefix-$host" "$@" ;;
  cut|heal)
    check_prefix "${2:-}"; need_root
    [ $# -eq 4 ] || die "usage: $0 $cmd PREFIX HOST_A HOST_B"
    a=$(host_addr "$2" "$3"); b=$(host_addr "$2" "$4")
    [ "$cmd" = cut ] && onoff=on || onoff=off
    drop "$2" "$3" "$b" $onoff
    drop "$2" "$4" "$a" $onoff
    echo "lab $2: $cmd $3 <-> $4" ;;
  *)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2 ;;
esac
