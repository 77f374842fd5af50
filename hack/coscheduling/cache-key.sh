#!/usr/bin/env bash
# Prints the cache key of coscheduling-scheduler: the scheduler-plugins version of its plugin plus a hash of
# everything that decides what gets built: this directory's versions.env, build.sh and module (go.mod, go.sum
# and the Go sources), the shared ../lib/go-build.sh, and ../cluster/versions.env (the Kubernetes version it
# links against and stamps). build.sh and the Python harness (tests/kube/coscheduling.py) both run this
# script, so they cannot disagree. A change here rebuilds only this scheduler.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-module.sh
source "${here}/../lib/go-module.sh"
mapfile -t sources < <(cd "${here}" && find modules/coscheduling -name '*.go' | LC_ALL=C sort)
go_module_key "${here}" "scheduler-plugins-${SCHEDULER_PLUGINS_VERSION}" \
  versions.env build.sh ../lib/go-build.sh ../cluster/versions.env modules/coscheduling/go.mod \
  modules/coscheduling/go.sum "${sources[@]}"
