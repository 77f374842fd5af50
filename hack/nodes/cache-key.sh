#!/usr/bin/env bash
# Prints the cache key of the real nodes' binaries (kubelet, kube-proxy, coredns): the pinned Kubernetes
# version plus a hash of everything that decides what gets built. build.sh and the Python harness
# (tests/kube/node_binaries.py) both run this script, so they cannot disagree. Independent of
# hack/cluster/cache-key.sh: a change here never rebuilds the control plane.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cluster/versions.env
source "${here}/../cluster/versions.env"
digest="$(
  cd "${here}" &&
    for f in ../cluster/versions.env versions.env build.sh modules/kubernetes/go.mod modules/kubernetes/go.sum \
      modules/coredns/go.mod modules/coredns/go.sum modules/coredns/main.go; do
      printf '%s\n' "${f}"
      cat "${f}"
    done | sha256sum | cut -c1-12
)"
echo "nodes-${KUBERNETES_VERSION}-${digest}"
