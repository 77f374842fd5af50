#!/usr/bin/env bash
# Prints the cache key of the Kueue manager binary: its version plus a hash of everything that decides what
# gets built. build.sh and the Python harness (tests/kube/kueue.py) both run this script, so they cannot
# disagree. Independent of hack/cluster/cache-key.sh: a change here never rebuilds the control plane.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-module.sh
source "${here}/../lib/go-module.sh"
go_module_key "${here}" "kueue-${KUEUE_VERSION}" \
  versions.env build.sh ../lib/go-build.sh modules/kueue/go.mod modules/kueue/go.sum
