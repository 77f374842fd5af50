#!/usr/bin/env bash
# Regenerates hack/peer/modules/peer/go.mod and go.sum from versions.env. Run it only when bumping
# TRAINER_VERSION or JOBSET_VERSION; commit the result. build.sh builds with -mod=readonly and never changes
# these files. The peer gets a module of its own so that its k8s.io/* versions are the ones Trainer and JobSet
# were released with, and so that changing it never changes the control plane's or Kueue's cache key.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-module.sh
source "${here}/../lib/go-module.sh"
go_module_pin "${here}/modules/peer" \
  "$(printf 'module kubetune.local/peer\n\ngo 1.26.0\n\ntool (\n\tgithub.com/kubeflow/trainer/v2/cmd/trainer-controller-manager\n\tsigs.k8s.io/jobset\n)\n\nrequire (\n\tgithub.com/kubeflow/trainer/v2 %s\n\tsigs.k8s.io/jobset %s\n)\n' "${TRAINER_VERSION}" "${JOBSET_VERSION}")
"
