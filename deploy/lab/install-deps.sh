#!/usr/bin/env bash
# Install what vigil's tests need on a Debian machine, when missing:
# protoc and the well-known types, PostgreSQL, HAProxy, iproute2,
# iptables, nftables, Prometheus (promtool), util-linux and e2fsprogs
# (fsfreeze, mkfs.ext4) and grpcurl. Used by
# `make test` and .ci/run, so a fresh machine runs every test instead of
# skipping some. Without root or apt-get it says what is missing and
# leaves the tests to skip with a reason.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=()
command -v protoc >/dev/null || pkgs+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/timestamp.proto ] || pkgs+=(libprotobuf-dev)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs+=(postgresql)
command -v haproxy >/dev/null || pkgs+=(haproxy)
command -v ip >/dev/null || pkgs+=(iproute2)
command -v iptables >/dev/null || pkgs+=(iptables)
command -v nft >/dev/null || pkgs+=(nftables)
command -v promtool >/dev/null || pkgs+=(prometheus)
# The nemesis lab freezes loop-mounted ext4 disks (fsfreeze, mkfs.ext4).
command -v fsfreeze >/dev/null || pkgs+=(util-linux)
command -v mkfs.ext4 >/dev/null || pkgs+=(e2fsprogs)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install-deps: installing ${pkgs[*]}"
    apt-get update -qq
    apt-get install -y -qq "${pkgs[@]}" >/dev/null
  else
    echo "install-deps: missing ${pkgs[*]} (run as root on Debian to install them); tests that need them will skip" >&2
  fi
fi
GOBIN_DIR="$(go env GOPATH)/bin"
if ! command -v grpcurl >/dev/null && ! [ -x "$GOBIN_DIR/grpcurl" ]; then
  echo "install-deps: installing grpcurl"
  go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
fi
