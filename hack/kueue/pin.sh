#!/usr/bin/env bash
# Regenerates hack/kueue/modules/kueue/go.mod and go.sum from versions.env. Run it only when bumping
# KUEUE_VERSION; commit the result. build.sh builds with -mod=readonly and never changes these files.
# Kueue gets a module of its own so that its k8s.io/* versions are the ones it was released with, and so
# that changing it never changes the control plane's cache key.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-module.sh
source "${here}/../lib/go-module.sh"
go_module_pin "${here}/modules/kueue" \
  "$(printf 'module kubetune.local/kueue\n\ngo 1.26.0\n\ntool sigs.k8s.io/kueue/cmd/kueue\n\nrequire sigs.k8s.io/kueue %s\n' "${KUEUE_VERSION}")
"
