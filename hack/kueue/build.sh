#!/usr/bin/env bash
# Builds (or reuses) the Kueue manager of the test cluster from the Go module pinned under
# hack/kueue/modules/kueue, and copies Kueue's CRDs (config/components/crd/bases in the module source) and its
# webhook registrations (config/components/webhook/manifests.yaml) next to it. They go to
# ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/kueue/<key>/{bin,crd,webhook}, <key> from
# cache-key.sh. Idempotent; the bin directory is the LAST line on stdout (everything else goes to stderr).
# Runs under `nice` with two compile jobs (KUBETUNE_BUILD_JOBS); one build at a time (flock).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-build.sh
source "${here}/../lib/go-build.sh"

go_build_prepare kueue "$("${here}/cache-key.sh")" kueue

module="${here}/modules/kueue"
go_build "${module}" "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}" \
  "${STAGING}/bin/kueue" sigs.k8s.io/kueue/cmd/kueue
# The CRDs the release's manifests install, straight from the module source the binary was built from.
source_dir="$(cd "${module}" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
mkdir -p "${STAGING}/crd"
cp "${source_dir}"/config/components/crd/bases/*.yaml "${STAGING}/crd/"
mkdir -p "${STAGING}/webhook"
cp "${source_dir}/config/components/webhook/manifests.yaml" "${STAGING}/webhook/"
chmod u+w "${STAGING}"/crd/*.yaml "${STAGING}"/webhook/*.yaml
cp "${here}/versions.env" "${STAGING}/versions.env"
go_build_finish
