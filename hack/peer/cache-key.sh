#!/usr/bin/env bash
# Prints the cache key of the peer's binaries (Kubeflow Trainer's and JobSet's controller managers): their
# versions plus a hash of everything that decides what gets built. build.sh and the Python harness
# (tests/kube/peer.py) both run this script, so they cannot disagree. Independent of the control plane's and
# Kueue's keys: a change here rebuilds only the peer.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-module.sh
source "${here}/../lib/go-module.sh"
go_module_key "${here}" "trainer-${TRAINER_VERSION}-jobset-${JOBSET_VERSION}" \
  versions.env build.sh ../lib/go-build.sh modules/peer/go.mod modules/peer/go.sum
