#!/usr/bin/env bash
# Prints the cache key of the Kueue manager binary: its version plus a hash of everything that decides what
# gets built. build.sh and the Python harness (tests/kube/kueue.py) both run this script, so they cannot
# disagree. Independent of hack/cluster/cache-key.sh: a change here never rebuilds the control plane.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
digest="$(
  cd "${here}" &&
    for f in versions.env build.sh ../lib/go-build.sh modules/kueue/go.mod modules/kueue/go.sum; do
      printf '%s\n' "${f}"
      cat "${f}"
    done | sha256sum | cut -c1-12
)"
echo "kueue-${KUEUE_VERSION}-${digest}"
