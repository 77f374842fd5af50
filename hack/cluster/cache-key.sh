#!/usr/bin/env bash
# Prints the cache key of the local control plane binaries: the pinned Kubernetes version plus a hash of
# everything that decides what gets built (versions.env, the build modules' go.mod/go.sum, the build
# recipe). build.sh and the Python harness (tests/kube/binaries.py) both run this script, so they cannot
# disagree. Changing build.sh changes the key, which is intended: it changes what gets built.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
digest="$(
  cd "${here}" &&
    for f in versions.env build.sh modules/etcd/go.mod modules/etcd/go.sum modules/helm/go.mod \
      modules/helm/go.sum modules/kubernetes/go.mod modules/kubernetes/go.sum modules/kwok/go.mod \
      modules/kwok/go.sum; do
      printf '%s\n' "${f}"
      cat "${f}"
    done | sha256sum | cut -c1-12
)"
echo "k8s-${KUBERNETES_VERSION}-${digest}"
