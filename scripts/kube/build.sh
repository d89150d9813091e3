#!/usr/bin/env bash
# Builds kube-apiserver (and kube-controller-manager) from Debian's own `kubernetes` source package,
# once, into a cache outside the repository; later runs find the binaries and return at once.
# Also installs etcd and kubectl's fallback. Needs root (apt-get). See ../shared/reference/kube-test-env.md.
set -euo pipefail
CACHE="${KMTLS_KUBE_CACHE:-/var/cache/kmtls-kube}"
BIN="$CACHE/bin"
if [[ -x "$BIN/kube-apiserver" && -x "$(command -v etcd || true)" ]]; then
  echo "kube test env: cached in $BIN"
  exit 0
fi
mkdir -p "$BIN"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq etcd-server etcd-client golang-go rsync jq golang-github-modern-go-reflect2-dev iptables iproute2 >/dev/null
if ! command -v kubectl >/dev/null; then apt-get install -y -qq kubernetes-client >/dev/null || true; fi
if [[ -x "$BIN/kube-apiserver" ]]; then exit 0; fi
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/kmtls-kube-build.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
if ! ls /etc/apt/sources.list.d/zz-kmtls-debsrc.sources >/dev/null 2>&1; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/zz-kmtls-debsrc.sources
  apt-get update -qq
fi
cd "$SCRATCH"
apt-get source --download-only kubernetes >/dev/null
tar xzf kubernetes_*.orig.tar.gz
cd kubernetes-1.20.2
rm -f vendor/github.com/modern-go/reflect2/*.go
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/
mkdir -p "$SCRATCH/home"
env -u GOFLAGS HOME="$SCRATCH/home" CGO_ENABLED=0 make WHAT=cmd/kube-apiserver >/dev/null
env -u GOFLAGS HOME="$SCRATCH/home" CGO_ENABLED=0 make WHAT=cmd/kube-controller-manager >/dev/null
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$BIN/"
echo "kube test env: built into $BIN"
